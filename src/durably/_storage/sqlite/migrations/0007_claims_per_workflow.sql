-- durably schema version 7 (SQLite): the indexes a claim walks lead with the
-- workflow, so a worker walks only the runs of the workflows it serves, not
-- every pending, sleeping or held run of other workflows sharing the file.
DROP INDEX durably_runs_pending
;
DROP INDEX durably_runs_due
;
DROP INDEX durably_runs_leases
;
CREATE INDEX durably_runs_pending ON durably_runs (workflow, created_at) WHERE status = 'pending'
;
CREATE INDEX durably_runs_due ON durably_runs (workflow, wake_at) WHERE status = 'suspended'
;
CREATE INDEX durably_runs_leases ON durably_runs (workflow, lease_until) WHERE lease_until IS NOT NULL

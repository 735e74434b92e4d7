-- durably schema version 6 (PostgreSQL): the indexes a claim walks lead with
-- the workflow. A worker takes runs only of the workflows it serves; walking
-- one index of all pending runs in created_at order, it read every pending
-- run of other workflows on its way (another app sharing the database, a
-- workflow whose workers are down): 6.5 ms per claim with 10,000 of them,
-- growing with them. Claims now walk each served workflow's runs in order.
DROP INDEX durably.runs_pending
;
DROP INDEX durably.runs_due
;
DROP INDEX durably.runs_leases
;
CREATE INDEX runs_pending ON durably.runs (workflow, created_at) WHERE status = 'pending'
;
CREATE INDEX runs_due ON durably.runs (workflow, wake_at) WHERE status = 'suspended'
;
CREATE INDEX runs_leases ON durably.runs (workflow, lease_until) WHERE lease_until IS NOT NULL

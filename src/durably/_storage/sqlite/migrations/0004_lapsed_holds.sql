-- durably schema version 4 (SQLite): a run a dead worker held while it waited
-- (suspended, still owned) is taken over once its lease lapses, like a running one.
DROP INDEX durably_runs_leased
;
CREATE INDEX durably_runs_leases ON durably_runs (lease_until) WHERE lease_until IS NOT NULL

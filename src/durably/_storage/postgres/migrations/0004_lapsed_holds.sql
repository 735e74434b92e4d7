-- durably schema version 4 (PostgreSQL): a run a dead worker held while it waited
-- (suspended, still owned) is taken over once its lease lapses, like a running one.
DROP INDEX durably.runs_leased
;
CREATE INDEX runs_leases ON durably.runs (lease_until) WHERE lease_until IS NOT NULL

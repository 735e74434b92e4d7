-- durably schema version 6 (SQLite): two indexes every write paid for and
-- no query needs. Claims name the index they walk (INDEXED BY); listings
-- filter durably_runs_by_status; a worker's runs are always named by id
-- (owner = ? AND id IN (...)), so an index on owner alone served nothing.
DROP INDEX durably_runs_listing
;
DROP INDEX durably_runs_owner

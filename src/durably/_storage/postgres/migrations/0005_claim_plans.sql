-- durably schema version 5 (PostgreSQL): two indexes that cost every write
-- and misled the planner. Without statistics (a new table, autovacuum off or
-- behind), a claim chose runs_listing (workflow, status, created_at) and
-- sorted every pending run to take the oldest few: 22 ms for a claim of 100
-- with 50,000 pending, growing with the backlog. Claims now walk runs_pending
-- in created_at order and stop; listings filter runs_by_status. No query
-- looks runs up by owner alone (each names the runs by id), so runs_owner
-- only added an index entry to every claimed row version.
DROP INDEX durably.runs_listing
;
DROP INDEX durably.runs_owner

-- durably schema version 3 (SQLite): runs pinned to the workflow version they started on.
ALTER TABLE durably_runs ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0

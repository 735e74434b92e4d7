-- durably schema version 3 (PostgreSQL): runs pinned to the workflow version they started on.
ALTER TABLE durably.runs ADD COLUMN pinned boolean NOT NULL DEFAULT false

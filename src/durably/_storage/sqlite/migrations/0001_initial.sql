-- durably schema version 1 (SQLite). Times are epoch seconds (REAL).
CREATE TABLE durably_runs (
    id          TEXT PRIMARY KEY,
    workflow    TEXT NOT NULL,
    version     TEXT NOT NULL,
    status      TEXT NOT NULL,
    args        TEXT NOT NULL,
    result      TEXT,
    error       TEXT,
    owner       TEXT,
    epoch       INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    wake_at     REAL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    parent_id   TEXT,
    deadline    REAL,
    priority    INTEGER NOT NULL DEFAULT 0
)
;
-- One partial index per way a run becomes claimable, so a claim or the
-- "when is the next thing due" question never scans sleeping runs.
CREATE INDEX durably_runs_pending ON durably_runs (created_at) WHERE status = 'pending'
;
CREATE INDEX durably_runs_due ON durably_runs (wake_at) WHERE status = 'suspended'
;
CREATE INDEX durably_runs_leased ON durably_runs (lease_until) WHERE status = 'running'
;
CREATE INDEX durably_runs_owner ON durably_runs (owner) WHERE owner IS NOT NULL
;
CREATE INDEX durably_runs_listing ON durably_runs (workflow, status, created_at)
;
CREATE INDEX durably_runs_by_status ON durably_runs (status, created_at)
;
CREATE TABLE durably_journal (
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    position INTEGER NOT NULL,
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    payload  TEXT,
    loc      TEXT,
    at       REAL NOT NULL,
    epoch    INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)
)

-- durably schema version 2 (SQLite): signals, events, cancellation.
ALTER TABLE durably_runs ADD COLUMN cancel_requested REAL
;
ALTER TABLE durably_runs ADD COLUMN cancel_reason TEXT
;
CREATE INDEX durably_runs_children ON durably_runs (parent_id) WHERE parent_id IS NOT NULL
;
CREATE TABLE durably_signals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    consumed_at REAL
)
;
CREATE INDEX durably_signals_unconsumed ON durably_signals (run_id, id)
    WHERE consumed_at IS NULL
;
CREATE TABLE durably_events (
    run_id     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (run_id, key)
)

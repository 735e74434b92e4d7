-- durably schema version 2 (PostgreSQL): signals, events, cancellation.
ALTER TABLE durably.runs ADD COLUMN cancel_requested double precision
;
ALTER TABLE durably.runs ADD COLUMN cancel_reason text
;
CREATE INDEX runs_children ON durably.runs (parent_id) WHERE parent_id IS NOT NULL
;
CREATE TABLE durably.signals (
    id          bigserial PRIMARY KEY,
    run_id      text NOT NULL,
    topic       text NOT NULL,
    payload     text NOT NULL,
    created_at  double precision NOT NULL,
    consumed_at double precision
)
;
CREATE INDEX signals_unconsumed ON durably.signals (run_id, id) WHERE consumed_at IS NULL
;
CREATE TABLE durably.events (
    run_id     text NOT NULL,
    key        text NOT NULL,
    value      text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (run_id, key)
)

-- durably schema version 1 (PostgreSQL). Times are epoch seconds.
CREATE TABLE durably.runs (
    id          text PRIMARY KEY,
    workflow    text NOT NULL,
    version     text NOT NULL,
    status      text NOT NULL,
    args        text NOT NULL,
    result      text,
    error       text,
    owner       text,
    epoch       bigint NOT NULL DEFAULT 0,
    lease_until double precision,
    wake_at     double precision,
    created_at  double precision NOT NULL,
    updated_at  double precision NOT NULL,
    started_at  double precision,
    finished_at double precision,
    parent_id   text,
    deadline    double precision,
    priority    integer NOT NULL DEFAULT 0
)
;
CREATE INDEX runs_pending ON durably.runs (created_at) WHERE status = 'pending'
;
CREATE INDEX runs_due ON durably.runs (wake_at) WHERE status = 'suspended'
;
CREATE INDEX runs_leased ON durably.runs (lease_until) WHERE status = 'running'
;
CREATE INDEX runs_owner ON durably.runs (owner) WHERE owner IS NOT NULL
;
CREATE INDEX runs_listing ON durably.runs (workflow, status, created_at)
;
CREATE INDEX runs_by_status ON durably.runs (status, created_at)
;
CREATE TABLE durably.journal (
    run_id   text NOT NULL,
    seq      integer NOT NULL,
    position integer NOT NULL,
    kind     text NOT NULL,
    name     text NOT NULL,
    payload  text,
    loc      text,
    at       double precision NOT NULL,
    epoch    bigint NOT NULL,
    PRIMARY KEY (run_id, seq)
)

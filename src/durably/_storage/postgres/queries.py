"""Named SQL of the PostgreSQL backend (tables live in schema ``durably``)."""

from __future__ import annotations

from ..base import RUN_COLUMNS

LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock(hashtext('durably.migrate'))"

SCHEMA_EXISTS = "SELECT 1 FROM pg_namespace WHERE nspname = 'durably'"

META_EXISTS = "SELECT to_regclass('durably.meta') IS NOT NULL"

SCHEMA_TABLES = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = 'durably' ORDER BY table_name
"""

CREATE_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS durably;
CREATE TABLE IF NOT EXISTS durably.meta (key text PRIMARY KEY, value text NOT NULL)
"""

# Every durably session plans for index access. durably's statements are
# point lookups by id and walks of an index in the order a claim takes runs;
# a sequential or bitmap scan serves neither, but the planner picks one
# (then sorts all it found) whenever it thinks a table tiny: without
# statistics, in a burst, with autovacuum off. A prepared statement's generic
# plan made then stayed so as the table grew (a claim of 100 with 40,000 runs:
# 59 ms instead of 1.8 ms). Where no index serves, a scan still happens.
SESSION = (
    "SELECT set_config('enable_seqscan', 'off', false),"
    " set_config('enable_bitmapscan', 'off', false)"
)

# Listing runs by workflow alone, or all of them, has no index to walk.
SCAN_ALLOWED = "SET LOCAL enable_seqscan = on"

GET_META = "SELECT value FROM durably.meta WHERE key = %s"

SET_META = """
INSERT INTO durably.meta (key, value) VALUES (%s, %s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

_INSERT_RUNS = """
INSERT INTO durably.runs (id, workflow, version, status, args, created_at, updated_at,
                          parent_id, deadline, priority, epoch, owner, lease_until,
                          started_at, quiet)
{rows}
ON CONFLICT (id) DO NOTHING
RETURNING id, workflow, status
"""
INSERT_RUNS = _INSERT_RUNS.replace(
    "{rows}",
    """SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::float8[], %s::float8[], %s::text[], %s::float8[], %s::int[],
                     %s::bigint[], %s::text[], %s::float8[], %s::float8[], %s::bool[])""",
)
INSERT_RUNS_KINDS = "tttttfftfiitffb"  # arrays.columns: each column's type

# One run (the common start): plain parameters cost the server less than unnest().
INSERT_RUN = _INSERT_RUNS.replace(
    "{rows}",
    """VALUES (%s::text, %s::text, %s::text, %s::text, %s::text, %s::float8, %s::float8,
        %s::text, %s::float8, %s::int, %s::bigint, %s::text, %s::float8, %s::float8,
        %s::bool)""",
)

# A client's start of one run, in one statement: the run created (every
# column returned, nothing read back) and workers told at its commit.
START_RUN = f"""
WITH created AS (
{INSERT_RUN.replace("RETURNING id, workflow, status", "RETURNING " + RUN_COLUMNS).strip()}
)
SELECT {RUN_COLUMNS}, pg_notify('durably_work', workflow)::text FROM created
"""

# A client's start of many runs, in one autocommitted statement (one round
# trip, where a transaction around the insert and its notices took four):
# the ids created, and workers told at its commit, once per workflow.
START_RUNS = f"""
WITH created AS (
{INSERT_RUNS.strip()}
), notes AS (
    SELECT pg_notify('durably_work', workflow) FROM created WHERE status = 'pending'
    GROUP BY workflow
)
SELECT id, (SELECT count(*) FROM notes) FROM created
"""

GET_RUN = f"SELECT {RUN_COLUMNS} FROM durably.runs WHERE id = %s"

LIST_RUNS = f"SELECT {RUN_COLUMNS} FROM durably.runs"

LOAD_JOURNAL = """
SELECT position, kind, name, payload, loc, at, seq, epoch
FROM durably.journal WHERE run_id = %s ORDER BY seq
"""

CLAIM = f"""
WITH fresh AS (
    SELECT id FROM durably.runs
    WHERE status = 'pending' AND workflow = ANY(%(wfs)s)
       AND (NOT pinned OR workflow || '@' || version = ANY(%(wvs)s))
    ORDER BY created_at LIMIT %(n)s FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id FROM durably.runs
    WHERE status = 'suspended' AND wake_at <= %(now)s AND workflow = ANY(%(wfs)s)
       AND (NOT pinned OR workflow || '@' || version = ANY(%(wvs)s))
      AND (owner IS NULL OR lease_until < %(now)s)
    ORDER BY wake_at LIMIT %(n)s FOR UPDATE SKIP LOCKED
), lapsed AS (
    SELECT id FROM durably.runs
    WHERE (status || '') IN ('running', 'suspended') AND lease_until < %(now)s
       AND workflow = ANY(%(wfs)s)
       AND (NOT pinned OR workflow || '@' || version = ANY(%(wvs)s))
    ORDER BY lease_until LIMIT %(n)s FOR UPDATE SKIP LOCKED
), chosen AS (
    SELECT id FROM (
        SELECT id FROM fresh UNION ALL SELECT id FROM due UNION ALL SELECT id FROM lapsed
    ) c LIMIT %(n)s
)
UPDATE durably.runs r
SET owner = %(me)s, epoch = r.epoch + 1, lease_until = %(lease)s, status = 'running',
    wake_at = NULL, started_at = COALESCE(r.started_at, %(now)s), updated_at = %(now)s
WHERE r.id = ANY(ARRAY(SELECT id FROM chosen))
RETURNING {", ".join("r." + c.strip() for c in RUN_COLUMNS.split(","))}
"""

# A run going to sleep until a child ends: its children's rows, so that a
# child's end in flight is waited for (see store.commit).
LOCK_CHILDREN = "SELECT id FROM durably.runs WHERE id = ANY(%s::text[]) ORDER BY id FOR SHARE"

OWNED = """
SELECT id, epoch FROM durably.runs WHERE owner = %s AND id = ANY(%s) FOR NO KEY UPDATE
"""

INSERT_ENTRIES = """
INSERT INTO durably.journal (run_id, seq, position, kind, name, payload, loc, at, epoch)
SELECT * FROM unnest(%s::text[], %s::int[], %s::int[], %s::text[], %s::text[], %s::text[],
                     %s::text[], %s::float8[], %s::bigint[])
"""
INSERT_ENTRIES_KINDS = "tiittttfi"  # arrays.columns: each column's type


UPDATE_RUN = """
UPDATE durably.runs
SET status = COALESCE(%(status)s, status),
    result = COALESCE(%(result)s, result),
    error = COALESCE(%(error)s, error),
    wake_at = %(wake_at)s,
    owner = CASE WHEN %(release)s THEN NULL ELSE owner END,
    lease_until = CASE WHEN NOT %(release)s THEN lease_until
                       WHEN COALESCE(%(status)s, status) = 'running' THEN 0 END,
    finished_at = COALESCE(%(finished)s, finished_at),
    version = COALESCE(%(version)s, version),
    pinned = CASE WHEN %(pin)s THEN true ELSE pinned END,
    updated_at = %(now)s
WHERE id = %(id)s
"""

NOTIFY = "SELECT pg_notify(%s, %s)"

RENEW = """
UPDATE durably.runs SET lease_until = %s
WHERE owner = %s AND status IN ('running', 'suspended') AND id = ANY(%s)
RETURNING id, epoch
"""

RELEASE = """
WITH released AS (
    UPDATE durably.runs SET owner = NULL, updated_at = %s,
        lease_until = CASE WHEN status = 'running' THEN 0 ELSE NULL END
    WHERE owner = %s AND id = ANY(%s) AND (%s::bigint IS NULL OR epoch = %s::bigint)
    RETURNING workflow, status
)
SELECT pg_notify('durably_work', workflow)
FROM (SELECT DISTINCT workflow FROM released WHERE status = 'running') w
"""

NEXT_DUE = """
SELECT LEAST(
    (SELECT MIN(wake_at) FROM durably.runs
     WHERE status = 'suspended' AND workflow = ANY(%(wfs)s)
       AND (NOT pinned OR workflow || '@' || version = ANY(%(wvs)s))),
    (SELECT MIN(lease_until) FROM durably.runs
     WHERE lease_until IS NOT NULL AND workflow = ANY(%(wfs)s)
       AND (NOT pinned OR workflow || '@' || version = ANY(%(wvs)s))))
"""

GET_STATUS_FOR_UPDATE = "SELECT status FROM durably.runs WHERE id = %s FOR UPDATE"

SET_STATUS = """
UPDATE durably.runs
SET status = %(status)s, owner = NULL, lease_until = NULL, wake_at = NULL,
    error = CASE WHEN %(status)s = 'pending' THEN NULL ELSE error END,
    finished_at = CASE WHEN %(status)s = 'pending' THEN NULL ELSE finished_at END,
    updated_at = %(now)s,
    quiet = false  -- whoever runs it now, its end is announced (migration 6)
WHERE id = %(id)s
"""


CONSUME_SIGNAL = """
UPDATE durably.signals SET consumed_at = %s
WHERE id = %s AND run_id = %s AND consumed_at IS NULL
"""

UPSERT_EVENT = """
INSERT INTO durably.events (run_id, key, value, updated_at) VALUES (%s, %s, %s, %s)
ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
"""

# Runs found by id that must be in some state test it as an expression, as
# in SUSPENDED_BY_ID: written plainly (``status = 'suspended'``), it let the
# planner find the run by walking runs_due (partial on that status) through
# every sleeping run, and a generic plan made on an empty table kept doing so
# (a lone run's end with 20,000 runs asleep: p50 1.9 -> 16.6 ms). The
# expression matches no index. The ids come as ``id = ANY(ARRAY(...))``,
# which the primary key serves, not as a join the planner may turn into a
# scan of the whole table.
SUSPENDED_BY_ID = "(status || '') = 'suspended'"

# A suspended run made due now: workers are told at commit (on PostgreSQL
# only a notification wakes a worker's claims before its next poll).
WAKE_PARENTS = f"""
WITH woken AS (
    UPDATE durably.runs SET wake_at = %s
    WHERE {SUSPENDED_BY_ID} AND id = ANY(ARRAY(
        SELECT parent_id FROM durably.runs WHERE parent_id IS NOT NULL AND id = ANY(%s)))
    RETURNING id
)
SELECT pg_notify('durably_work', id) FROM woken
"""

GET_RUNS = f"SELECT {RUN_COLUMNS} FROM durably.runs WHERE id = ANY(%s)"

# A waiter's first read of runs it will wait for: a quiet run (see
# migration 6) that has not ended is made to announce its end, under its
# row's lock, and read as that update left it. It takes no lock another
# statement holds (SKIP LOCKED): a writer locks a batch of runs in its own
# order, and two statements each holding a row the other wants would
# deadlock. Each row comes back with whether it may still be quiet: its
# lock was held (its end may be in flight), or it changed after the
# statement began (it ended, or another waiter cleared the flag), and the
# second part reads it as of then. Those are watched one by one
# (WATCH_RUN), each waiting for its row's lock while holding no other.
WATCH_RUNS = f"""
WITH free AS (
    SELECT id FROM durably.runs
    WHERE id = ANY(%(ids)s) AND quiet
      AND (status || '') NOT IN ('completed', 'failed', 'cancelled')
    FOR NO KEY UPDATE SKIP LOCKED
), heard AS (
    UPDATE durably.runs SET quiet = false
    WHERE id IN (SELECT id FROM free)
    RETURNING {RUN_COLUMNS}
)
SELECT {RUN_COLUMNS}, false FROM heard
UNION ALL
SELECT {RUN_COLUMNS}, quiet AND status NOT IN ('completed', 'failed', 'cancelled')
FROM durably.runs WHERE id = ANY(%(ids)s) AND id NOT IN (SELECT id FROM heard)
"""

WATCH_LOCK_WAIT = "SET LOCAL lock_timeout = '1s'"

WATCH_RUN = f"""
UPDATE durably.runs SET quiet = false
WHERE id = %s AND quiet AND (status || '') NOT IN ('completed', 'failed', 'cancelled')
RETURNING {RUN_COLUMNS}
"""

# Prepared (a waiter reads at every run's end): with scans off and the state
# tested as an expression, its generic plan is the primary key at any size.
ENDED_RUNS = GET_RUNS + " AND (status || '') IN ('completed', 'failed', 'cancelled')"

RUN_STATUS_FOR_UPDATE = "SELECT status FROM durably.runs WHERE id = %s FOR UPDATE"

RUN_STATUS = "SELECT status FROM durably.runs WHERE id = %s"

INSERT_SIGNAL = """
INSERT INTO durably.signals (run_id, topic, payload, created_at) VALUES (%s, %s, %s, %s)
"""

WAKE_SUSPENDED = f"""
WITH woken AS (
    UPDATE durably.runs SET wake_at = %s WHERE id = %s AND {SUSPENDED_BY_ID} RETURNING id
)
SELECT pg_notify('durably_work', id) FROM woken
"""

PENDING_SIGNALS = """
SELECT id, run_id, topic, payload FROM durably.signals
WHERE consumed_at IS NULL AND run_id = ANY(%s) ORDER BY id
"""

GET_EVENT = "SELECT value FROM durably.events WHERE run_id = %s AND key = %s"

CANCEL_REQUESTS = """
SELECT id, COALESCE(cancel_reason, 'cancelled') FROM durably.runs
WHERE cancel_requested IS NOT NULL AND status IN ('pending', 'running', 'suspended')
  AND id = ANY(%s)
"""

_TREE = """
WITH RECURSIVE tree(id) AS (
    SELECT %(id)s::text
    UNION
    SELECT r.id FROM durably.runs r JOIN tree t ON r.parent_id = t.id
)
"""

CANCEL_PENDING_TREE = (
    _TREE
    + """
UPDATE durably.runs
SET status = 'cancelled', finished_at = %(now)s, updated_at = %(now)s, error = %(error)s,
    cancel_requested = COALESCE(cancel_requested, %(now)s),
    cancel_reason = COALESCE(cancel_reason, %(reason)s)
WHERE (status || '') = 'pending' AND id = ANY(ARRAY(SELECT id FROM tree))
RETURNING id
"""
)

MARK_CANCEL_TREE = (
    _TREE
    + """
UPDATE durably.runs
SET cancel_requested = COALESCE(cancel_requested, %(now)s),
    cancel_reason = COALESCE(cancel_reason, %(reason)s),
    wake_at = CASE WHEN status = 'suspended' THEN %(now)s ELSE wake_at END,
    updated_at = %(now)s
WHERE (status || '') IN ('running', 'suspended') AND id = ANY(ARRAY(SELECT id FROM tree))
RETURNING id, status
"""
)

TABLES = {"runs": "durably.runs", "signals": "durably.signals"}

# The common group commit in one statement (one round trip): each run's row
# is updated only where this worker still holds it at that epoch (the row
# lock this takes fences off a concurrent takeover), and only those runs'
# entries are inserted. A run whose row does not change (a step's result in
# mid-run) is share-locked instead of updated, as in APPEND_ONE. Used when
# the batch has nothing but entries and row changes (no new runs, signals,
# events, children or runs going to sleep).
COMMIT_SIMPLE = """
WITH w AS (
    SELECT * FROM unnest(%(ids)s::text[], %(epochs)s::bigint[], %(changes)s::bool[],
        %(statuses)s::text[], %(results)s::text[], %(errors)s::text[],
        %(wakes)s::float8[], %(releases)s::bool[], %(versions)s::text[], %(pins)s::bool[])
        AS w(id, epoch, change, status, result, error, wake_at, release, version, pin)
), held AS (
    SELECT r.id FROM unnest(%(held)s::text[], %(held_epochs)s::bigint[]) AS h(id, epoch)
    JOIN durably.runs r ON r.id = h.id AND r.epoch = h.epoch
    WHERE r.owner = %(me)s
    FOR SHARE OF r
), fence AS (
    UPDATE durably.runs r SET
        status = CASE WHEN w.change THEN COALESCE(w.status, r.status) ELSE r.status END,
        result = COALESCE(w.result, r.result),
        error = COALESCE(w.error, r.error),
        wake_at = CASE WHEN w.change THEN w.wake_at ELSE r.wake_at END,
        owner = CASE WHEN w.release THEN NULL ELSE r.owner END,
        lease_until = CASE WHEN NOT w.release THEN r.lease_until
                           WHEN COALESCE(w.status, r.status) = 'running' THEN 0 END,
        finished_at = CASE WHEN w.status IN ('completed', 'failed', 'cancelled')
                           THEN %(now)s ELSE r.finished_at END,
        version = COALESCE(w.version, r.version),
        pinned = r.pinned OR w.pin,
        updated_at = %(now)s
    FROM w
    WHERE w.change AND r.id = w.id AND r.owner = %(me)s AND r.epoch = w.epoch
    RETURNING r.id, r.status, r.parent_id, r.owner, w.release, r.quiet
), ins AS (
    INSERT INTO durably.journal (run_id, seq, position, kind, name, payload, loc, at, epoch)
    SELECT e.* FROM unnest(%(e_run)s::text[], %(e_seq)s::int[], %(e_pos)s::int[],
        %(e_kind)s::text[], %(e_name)s::text[], %(e_payload)s::text[], %(e_loc)s::text[],
        %(e_at)s::float8[], %(e_epoch)s::bigint[])
        AS e(run_id, seq, position, kind, name, payload, loc, at, epoch)
    WHERE e.run_id IN (SELECT id FROM fence UNION ALL SELECT id FROM held)
), parents AS (
    UPDATE durably.runs p SET wake_at = %(now)s
    WHERE (p.status || '') = 'suspended'
      AND p.id = ANY(ARRAY(SELECT parent_id FROM fence
                           WHERE status IN ('completed', 'failed', 'cancelled')))
      AND p.id NOT IN (SELECT id FROM w)
    RETURNING p.id
), ended AS (
    -- The ended runs in notices of up to about 5,900 bytes (notices.py).
    SELECT id, sum(octet_length(id) + 8) OVER (ORDER BY id) / 5900 AS part FROM fence
    WHERE status IN ('completed', 'failed', 'cancelled') AND NOT quiet
), notes AS (
    SELECT pg_notify('durably_done', string_agg(length(id) || ':' || id, '')) FROM ended
    GROUP BY part
    UNION ALL
    SELECT pg_notify('durably_work', id) FROM fence WHERE release AND status = 'running'
    UNION ALL
    SELECT pg_notify('durably_work', id) FROM parents
)
SELECT id, (SELECT count(*) FROM notes) FROM fence
UNION ALL SELECT id, 0 FROM held
"""

# COMMIT_SIMPLE for a batch of one run (the latency path), with plain
# parameters instead of arrays: a third of the server's work. ``{entries}``
# is one of the two row sources below (most writes carry exactly one entry,
# and unnest() of arrays costs the server more than plain parameters).
_COMMIT_ONE = """
WITH fence AS (
    UPDATE durably.runs r SET
        status = CASE WHEN %(change)s THEN COALESCE(%(status)s, r.status) ELSE r.status END,
        result = COALESCE(%(result)s, r.result),
        error = COALESCE(%(error)s, r.error),
        wake_at = CASE WHEN %(change)s THEN %(wake)s::float8 ELSE r.wake_at END,
        owner = CASE WHEN %(release)s THEN NULL ELSE r.owner END,
        lease_until = CASE WHEN NOT %(release)s THEN r.lease_until
                           WHEN COALESCE(%(status)s, r.status) = 'running' THEN 0 END,
        finished_at = CASE WHEN %(status)s IN ('completed', 'failed', 'cancelled')
                           THEN %(now)s ELSE r.finished_at END,
        version = COALESCE(%(version)s, r.version),
        pinned = r.pinned OR %(pin)s,
        updated_at = %(now)s
    WHERE r.id = %(id)s AND r.owner = %(me)s AND r.epoch = %(epoch)s
    RETURNING r.id, r.status, r.parent_id, r.owner, r.quiet
), ins AS (
    INSERT INTO durably.journal (run_id, seq, position, kind, name, payload, loc, at, epoch)
    {entries}
), parents AS (
    UPDATE durably.runs p SET wake_at = %(now)s
    WHERE (p.status || '') = 'suspended'
      AND p.id = (SELECT parent_id FROM fence  -- one run: one primary-key probe
                  WHERE status IN ('completed', 'failed', 'cancelled'))
    RETURNING p.id
), notes AS (
    SELECT pg_notify('durably_done', length(id) || ':' || id) FROM fence
    WHERE status IN ('completed', 'failed', 'cancelled') AND NOT quiet
    UNION ALL
    SELECT pg_notify('durably_work', id) FROM fence WHERE %(release)s AND status = 'running'
    UNION ALL
    SELECT pg_notify('durably_work', id) FROM parents
)
SELECT id, (SELECT count(*) FROM notes) FROM fence
"""
_ONE_ENTRY = """SELECT f.id, %(seq)s::int, %(pos)s::int, %(kind)s::text, %(name)s::text,
        %(payload)s::text, %(loc)s::text, %(at)s::float8, %(epoch)s::bigint FROM fence f"""
_ENTRIES = """SELECT f.id, e.* FROM fence f, unnest(%(e_seq)s::int[], %(e_pos)s::int[],
        %(e_kind)s::text[], %(e_name)s::text[], %(e_payload)s::text[], %(e_loc)s::text[],
        %(e_at)s::float8[], %(e_epoch)s::bigint[])
        AS e(seq, position, kind, name, payload, loc, at, epoch)"""
COMMIT_ONE = _COMMIT_ONE.replace("{entries}", _ENTRIES)
COMMIT_ONE_ENTRY = _COMMIT_ONE.replace("{entries}", _ONE_ENTRY)

# A step's result mid-run: one entry, no change to the run's row. A share
# lock on the row instead of an update still fences off a takeover (a claim's
# UPDATE waits for it, and this waits for a claim and then sees the new
# epoch), without writing a new row version.
APPEND_ONE = """
INSERT INTO durably.journal (run_id, seq, position, kind, name, payload, loc, at, epoch)
SELECT r.id, %(seq)s::int, %(pos)s::int, %(kind)s::text, %(name)s::text,
    %(payload)s::text, %(loc)s::text, %(at)s::float8, r.epoch
FROM durably.runs r
WHERE r.id = %(id)s AND r.owner = %(me)s AND r.epoch = %(epoch)s
FOR SHARE
RETURNING run_id
"""

"""Named SQL of the SQLite backend."""

from __future__ import annotations

from ..base import RUN_COLUMNS

CREATE_META = """
CREATE TABLE IF NOT EXISTS durably_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
"""

GET_META = "SELECT value FROM durably_meta WHERE key = ?"

SET_META = """
INSERT INTO durably_meta (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

USER_TABLES = """
SELECT name FROM sqlite_master
WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name
"""

INSERT_RUN = """
INSERT INTO durably_runs (id, workflow, version, status, args, created_at, updated_at,
                          parent_id, deadline, priority, epoch, owner, lease_until,
                          started_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO NOTHING
"""


def existing_ids(n_ids: int) -> str:
    return "SELECT id FROM durably_runs WHERE id IN (" + ", ".join("?" * n_ids) + ")"


GET_RUN = f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = ?"

LIST_RUNS = f"SELECT {RUN_COLUMNS} FROM durably_runs"

LOAD_JOURNAL = """
SELECT position, kind, name, payload, loc, at, seq, epoch
FROM durably_journal WHERE run_id = ? ORDER BY seq
"""


def workflow_params(workflows: list[str], versions: list[str] = []) -> dict[str, str]:  # noqa: B006
    params = {f"wf{i}": w for i, w in enumerate(workflows)}
    params.update({f"wv{i}": v for i, v in enumerate(versions)})
    return params


def _runnable(n_workflows: int, n_versions: int) -> str:
    """Runs of these workflows, leaving out runs pinned to a version we lack."""
    names = ", ".join(f":wf{i}" for i in range(n_workflows))
    versions = ", ".join(f":wv{i}" for i in range(n_versions))
    pinned = f"workflow || '@' || version IN ({versions})" if n_versions else "0"
    return f"workflow IN ({names}) AND (pinned = 0 OR {pinned})"


def claim(n_workflows: int, n_versions: int = 0) -> str:
    return f"""
UPDATE durably_runs
SET owner = :me, epoch = epoch + 1, lease_until = :lease, status = 'running',
    wake_at = NULL, started_at = COALESCE(started_at, :now), updated_at = :now
WHERE id IN ({_claimable(n_workflows, n_versions)})
RETURNING {RUN_COLUMNS}
"""


def any_claimable(n_workflows: int, n_versions: int = 0) -> str:
    """Whether :func:`claim` would take anything: a read, so no write lock."""
    return f"SELECT EXISTS ({_claimable(n_workflows, n_versions)})"


def _claimable(n_workflows: int, n_versions: int) -> str:
    wf = _runnable(n_workflows, n_versions)
    # Each part walks the index kept in the order it takes runs, and stops
    # after :n. Left to itself the planner prefers durably_runs_by_status
    # (equality on status) and sorts every suspended or held run on each
    # claim: 15 ms with 20,000 asleep, growing with them.
    return f"""
    SELECT id FROM (
        SELECT id FROM durably_runs INDEXED BY durably_runs_pending
        WHERE status = 'pending' AND {wf}
        ORDER BY created_at LIMIT :n)
    UNION ALL
    SELECT id FROM (
        SELECT id FROM durably_runs INDEXED BY durably_runs_due
        WHERE status = 'suspended' AND wake_at <= :now AND {wf}
          AND (owner IS NULL OR lease_until < :now)
        ORDER BY wake_at LIMIT :n)
    UNION ALL
    SELECT id FROM (
        SELECT id FROM durably_runs INDEXED BY durably_runs_leases
        WHERE status IN ('running', 'suspended') AND lease_until < :now
          AND lease_until IS NOT NULL AND {wf}
        ORDER BY lease_until LIMIT :n)
    LIMIT :n"""


def owned(n_ids: int) -> str:
    return (
        "SELECT id, epoch FROM durably_runs WHERE owner = ? AND id IN ("
        + ", ".join("?" * n_ids)
        + ")"
    )


INSERT_ENTRY = """
INSERT INTO durably_journal (run_id, seq, position, kind, name, payload, loc, at, epoch)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# A step's result in mid-run: one fenced statement, its own transaction.
APPEND_ONE = """
INSERT INTO durably_journal (run_id, seq, position, kind, name, payload, loc, at, epoch)
SELECT id, ?, ?, ?, ?, ?, ?, ?, epoch FROM durably_runs
WHERE id = ? AND owner = ? AND epoch = ?
"""

UPDATE_RUN = """
UPDATE durably_runs
SET status = COALESCE(:status, status),
    result = COALESCE(:result, result),
    error = COALESCE(:error, error),
    wake_at = :wake_at,
    owner = CASE WHEN :release THEN NULL ELSE owner END,
    lease_until = CASE WHEN NOT :release THEN lease_until
                       WHEN COALESCE(:status, status) = 'running' THEN 0 END,
    finished_at = COALESCE(:finished, finished_at),
    version = COALESCE(:version, version),
    pinned = CASE WHEN :pin THEN 1 ELSE pinned END,
    updated_at = :now
WHERE id = :id
"""


def renew(n_ids: int) -> str:
    return (
        "UPDATE durably_runs SET lease_until = ? WHERE owner = ? "
        "AND status IN ('running', 'suspended') AND id IN (" + ", ".join("?" * n_ids) + ") "
        "RETURNING id, epoch"
    )


def release(n_ids: int) -> str:
    return (
        "UPDATE durably_runs SET owner = NULL, updated_at = ?, "
        "lease_until = CASE WHEN status = 'running' THEN 0 ELSE NULL END "
        "WHERE owner = ? AND (? IS NULL OR epoch = ?) AND id IN (" + ", ".join("?" * n_ids) + ")"
    )


def next_due(n_workflows: int, n_versions: int = 0) -> str:
    wf = _runnable(n_workflows, n_versions)
    return f"""
SELECT MIN(t) FROM (
    SELECT * FROM (
        SELECT wake_at AS t FROM durably_runs INDEXED BY durably_runs_due
        WHERE status = 'suspended' AND wake_at IS NOT NULL AND {wf}
        ORDER BY wake_at LIMIT 1)  -- NULLs sort first: a run waiting without a timer
    UNION ALL
    SELECT * FROM (
        SELECT lease_until AS t FROM durably_runs INDEXED BY durably_runs_leases
        WHERE lease_until IS NOT NULL AND {wf} ORDER BY lease_until LIMIT 1)
)
"""


SET_STATUS = """
UPDATE durably_runs
SET status = :status, owner = NULL, lease_until = NULL, wake_at = NULL,
    error = CASE WHEN :status = 'pending' THEN NULL ELSE error END,
    finished_at = CASE WHEN :status = 'pending' THEN NULL ELSE finished_at END,
    updated_at = :now
WHERE id = :id
"""

DATA_VERSION = "PRAGMA data_version"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


CONSUME_SIGNAL = """
UPDATE durably_signals SET consumed_at = ? WHERE id = ? AND run_id = ? AND consumed_at IS NULL
"""

UPSERT_EVENT = """
INSERT INTO durably_events (run_id, key, value, updated_at) VALUES (?, ?, ?, ?)
ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
"""


# ``+status`` where runs found by id must be in some state: a plain
# ``status = ...`` makes SQLite prefer durably_runs_by_status and read every
# run in that state (every sleeping run, on each commit that ends a run).
def wake_parents(n: int) -> str:
    return f"""
UPDATE durably_runs SET wake_at = ?
WHERE +status = 'suspended' AND id IN (
    SELECT parent_id FROM durably_runs WHERE parent_id IS NOT NULL AND id IN ({_marks(n)}))
"""


def get_runs(n: int) -> str:
    return f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE id IN ({_marks(n)})"


def ended_runs(n: int) -> str:
    return get_runs(n) + " AND +status IN ('completed', 'failed', 'cancelled')"


# What ended after a reader's position (see migration 0005).
ENDED_SINCE = "SELECT seq, run_id FROM durably_ended WHERE seq > ? ORDER BY seq"
ENDED_NEWEST = "SELECT COALESCE(max(seq), 0) FROM durably_ended"


def pending_signals(n: int) -> str:
    return f"""
SELECT id, run_id, topic, payload FROM durably_signals
WHERE consumed_at IS NULL AND run_id IN ({_marks(n)}) ORDER BY id
"""


def cancel_requests(n: int) -> str:
    return f"""
SELECT id, COALESCE(cancel_reason, 'cancelled') FROM durably_runs
WHERE cancel_requested IS NOT NULL AND +status IN ('pending', 'running', 'suspended')
  AND id IN ({_marks(n)})
"""


RUN_STATUS = "SELECT status FROM durably_runs WHERE id = ?"

INSERT_SIGNAL = """
INSERT INTO durably_signals (run_id, topic, payload, created_at) VALUES (?, ?, ?, ?)
"""

WAKE_SUSPENDED = "UPDATE durably_runs SET wake_at = ? WHERE id = ? AND status = 'suspended'"

GET_EVENT = "SELECT value FROM durably_events WHERE run_id = ? AND key = ?"

_TREE = """
WITH RECURSIVE tree(id) AS (
    SELECT :id
    UNION
    SELECT r.id FROM durably_runs r JOIN tree t ON r.parent_id = t.id
)
"""

TREE_IDS = _TREE + "SELECT id FROM tree"

CANCEL_PENDING_TREE = (
    _TREE
    + """
UPDATE durably_runs
SET status = 'cancelled', finished_at = :now, updated_at = :now, error = :error,
    cancel_requested = COALESCE(cancel_requested, :now),
    cancel_reason = COALESCE(cancel_reason, :reason)
WHERE +status = 'pending' AND id IN (SELECT id FROM tree)
RETURNING id
"""
)

MARK_CANCEL_TREE = (
    _TREE
    + """
UPDATE durably_runs
SET cancel_requested = COALESCE(cancel_requested, :now),
    cancel_reason = COALESCE(cancel_reason, :reason),
    wake_at = CASE WHEN status = 'suspended' THEN :now ELSE wake_at END,
    updated_at = :now
WHERE +status IN ('running', 'suspended') AND id IN (SELECT id FROM tree)
"""
)

TABLES = {"runs": "durably_runs", "signals": "durably_signals"}

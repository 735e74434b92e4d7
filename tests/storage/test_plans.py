"""Query plans that stay index walks as the tables grow, without statistics.

Found in the throughput benchmark (10,000 runs started at once): a statement
psycopg prepares gets a generic plan, cached for the session; made while
``durably.runs`` was nearly empty, reads by lists of ids were sequential
scans, and stayed so as the table grew (93 million rows read, the server's
CPU per run 4x). And a claim sorted every pending, asleep or held run to take
the oldest few, on both backends, whenever the planner had no statistics.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from durably._engine.journal import Entry
from durably._storage import open_storage
from durably._storage.base import NewRun, RunUpdate, RunWrite
from durably._storage.postgres import libpq
from durably._storage.postgres import queries as pg_queries
from durably._storage.postgres.store import PostgresStorage, commit_simple_params
from durably._storage.sqlite import queries as sqlite_queries

T0 = 1_700_000_000.0


@pytest.fixture
def store(postgres_server) -> Iterator[PostgresStorage]:  # type: ignore[no-untyped-def]
    name = postgres_server.create()
    base, _, _ = postgres_server.url.rpartition("/")
    # One connection: the session whose plans are cached is the one read back.
    storage = PostgresStorage(f"{base}/{name}", pool_size=1)
    storage.migrate()
    try:
        yield storage
    finally:
        storage.close()
        postgres_server.drop(name)


def _runs(lo: int, hi: int) -> list[NewRun]:
    return [
        NewRun(id=f"r{i}", workflow="wf", version="v1", args="[]", created_at=T0 + i)
        for i in range(lo, hi)
    ]


def _sequential_scans(store: PostgresStorage) -> int:
    with store._conn() as conn:
        # The session's counters reach the shared statistics when it next goes idle.
        conn.execute("SELECT pg_stat_force_next_flush()")
    with store._conn() as conn:
        row = conn.execute(
            "SELECT seq_scan FROM pg_stat_user_tables"
            " WHERE schemaname = 'durably' AND relname = 'runs'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def _read_by_ids(store: PostgresStorage, ids: list[str]) -> None:
    store.get_runs(ids)
    store.ended_runs(ids)
    store.pending_signals(ids)
    store.cancel_requests(ids)
    store.renew("w1", ids, T0, 10.0)
    store.release("w1", ids, T0)


def test_reads_by_run_ids_do_not_scan_the_table_once_it_has_grown(
    store: PostgresStorage,
) -> None:
    store.create_runs(_runs(0, 3))
    for _ in range(8):  # past psycopg's prepare threshold (5), on a tiny table
        _read_by_ids(store, ["r0", "r1"])
    for lo in range(3, 3000, 500):
        store.create_runs(_runs(lo, min(lo + 500, 3000)))

    before = _sequential_scans(store)
    for _ in range(3):
        _read_by_ids(store, ["r7", "r2500"])
    assert _sequential_scans(store) - before == 0


def _backlog(store: Any, n: int) -> None:
    """``n`` pending runs and ``n`` asleep and due, in a table never analysed."""
    for lo in range(0, 2 * n, 500):
        store.create_runs(_runs(lo, lo + 500))


def _plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def _explain_prepared(
    conn: psycopg.Connection[Any], sql: str, params: dict[str, Any], plans: str, analyze: bool
) -> dict[str, Any]:
    """The plan ``sql`` runs with as a prepared statement under
    ``plan_cache_mode = plans``. (EXPLAIN of a statement with parameters
    plans for their values: only EXPLAIN EXECUTE shows a generic plan.)"""
    statement = libpq.plan(sql)
    assert statement is not None and statement.names is not None
    conn.execute(b"PREPARE plan_test AS " + statement.sql)
    conn.execute("SELECT set_config('plan_cache_mode', %s, false)", (plans,))
    args = ", ".join(["%s"] * len(statement.names))
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    cur = psycopg.ClientCursor(conn)  # the values inline: EXECUTE takes no $n
    row = cur.execute(
        f"EXPLAIN ({options}) EXECUTE plan_test({args})",
        [params[name] for name in statement.names],
    ).fetchone()
    conn.execute("RESET plan_cache_mode")
    conn.execute("DEALLOCATE plan_test")
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    return dict(plan[0]["Plan"])


@pytest.mark.parametrize("plans", ["auto", "force_generic_plan"])
def test_a_postgres_claim_walks_its_indexes_in_order(store: PostgresStorage, plans: str) -> None:
    # "force_generic_plan": the plan a prepared claim runs with once psycopg
    # has prepared it and PostgreSQL chose its generic plan.
    _backlog(store, 1500)
    now = time.time()
    with store._conn() as conn:
        conn.execute(
            "UPDATE durably.runs SET status = 'suspended', wake_at = created_at"
            " WHERE id IN (SELECT id FROM durably.runs ORDER BY created_at LIMIT 1500)"
        )
        params = {"me": "w1", "lease": now + 30, "now": now, "n": 100}
        params.update(wfs=["wf", "other"], wvs=[])
        plan = _explain_prepared(conn, pg_queries.CLAIM, params, plans, analyze=False)
    parts = {p.get("Subplan Name"): p for p in _plan_nodes(plan)}
    # New runs, runs whose timer is due, held runs whose lease lapsed: each
    # walked in the order taken, then stopped. (The lapsed part used to sort
    # every running and sleeping run, 8 ms with 15,000 asleep, on every claim
    # that found fewer runs than it asked for.)
    for part in ("CTE fresh", "CTE due", "CTE lapsed"):
        nodes = {node["Node Type"] for node in _plan_nodes(parts[part])}
        assert not nodes & {"Sort", "Seq Scan", "Bitmap Heap Scan"}, (part, nodes)
    # The chosen runs are then updated through the primary key.
    top = [p for p in plan["Plans"] if p.get("Parent Relationship") == "Outer"]
    assert [p.get("Index Name") for p in top] == ["runs_pkey"], top
    assert store.claim("w1", ["wf"], 100, now, 30.0) != []


@pytest.mark.parametrize("plans", ["force_custom_plan", "force_generic_plan"])
def test_a_postgres_group_commit_finds_each_run_once_by_its_primary_key(
    store: PostgresStorage, plans: str
) -> None:
    # The group commit is prepared, so after five executions PostgreSQL may
    # run it with its generic plan, which knows nothing of the batch's size.
    # That plan once joined the runs it locks to the batch with a nested loop
    # comparing every pair: 40,000 comparisons for 200 writes, 25 ms, not 3.
    n = 300
    store.create_runs(_runs(0, n))
    now = time.time()
    claimed = store.claim("w1", ["wf"], n, now, 60.0)
    assert len(claimed) == n
    writes = [
        RunWrite(
            r.id,
            r.epoch,
            [Entry(0, "step", "s", "1", None, now, seq=0)],
            RunUpdate(status="completed", result="1", release=True) if i % 3 == 0 else None,
        )
        for i, r in enumerate(claimed)
    ]
    params = commit_simple_params("w1", writes, now)
    with store._conn() as conn:
        plan = _explain_prepared(conn, pg_queries.COMMIT_SIMPLE, params, plans, analyze=True)
        written = conn.execute("SELECT count(*) FROM durably.journal").fetchone()
    assert written == (n,)
    nodes = list(_plan_nodes(plan))
    assert not [node for node in nodes if node["Node Type"] in ("Seq Scan", "Bitmap Heap Scan")]
    compared = max(node.get("Rows Removed by Join Filter", 0) for node in nodes)
    assert compared < n, compared


def test_a_postgres_claim_locks_only_the_runs_it_takes(store: PostgresStorage) -> None:
    # Three workflows with a backlog each: a claim of 30 must lock 30 runs,
    # not 30 of each, or a claim running alongside finds nothing to take.
    # (Claimer A's transaction is held open to stand for that overlap.)
    for wf in ("a", "b", "c"):
        store.create_runs(
            [
                NewRun(id=f"{wf}{i}", workflow=wf, version="v1", args="[]", created_at=T0 + i)
                for i in range(30)
            ]
        )
    now = time.time()
    params = {"me": "A", "lease": now + 30, "now": now, "n": 30, "wfs": ["a", "b", "c"], "wvs": []}
    import psycopg

    with psycopg.connect(store.conninfo) as a:
        a.execute(pg_queries.SESSION)
        assert len(a.execute(pg_queries.CLAIM, params).fetchall()) == 30
        with store._conn() as conn:
            free = conn.execute(
                "SELECT count(*) FROM (SELECT id FROM durably.runs FOR UPDATE SKIP LOCKED) f"
            ).fetchone()
            conn.rollback()
        assert free is not None and free[0] == 60
        assert len(store.claim("B", ["a", "b", "c"], 30, now, 30.0)) == 30
        a.rollback()


def test_a_sqlite_claim_walks_its_indexes_in_order(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plans.db'}"
    store = open_storage(url)
    store.migrate()
    try:
        _backlog(store, 1500)
        raw = sqlite3.connect(tmp_path / "plans.db")
        raw.execute(
            "UPDATE durably_runs SET status = 'suspended', wake_at = created_at"
            " WHERE id IN (SELECT id FROM durably_runs ORDER BY created_at LIMIT 1500)"
        )
        raw.commit()
        params = {"me": "w1", "lease": 1.0, "now": time.time(), "n": 100, "wf0": "wf"}
        steps = [r[3] for r in raw.execute("EXPLAIN QUERY PLAN " + sqlite_queries.claim(1), params)]
        raw.close()
        assert not [s for s in steps if "TEMP B-TREE" in s or s == "SCAN durably_runs"], steps
        for index in ("durably_runs_pending", "durably_runs_due", "durably_runs_leases"):
            assert any(index in s for s in steps), (index, steps)
        assert len(store.claim("w1", ["wf"], 100, time.time(), 30.0)) == 100
    finally:
        store.close()


def _table_reads(url: str) -> tuple[int, int, int]:
    """Rows read by sequential scans of durably.runs, entries read from
    runs_due, and journal rows inserted (all sessions, once they reported)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT t.seq_tup_read, i.idx_tup_read, j.n_tup_ins"
            " FROM pg_stat_user_tables t, pg_stat_user_indexes i, pg_stat_user_tables j"
            " WHERE t.relid = 'durably.runs'::regclass"
            " AND i.indexrelid = 'durably.runs_due'::regclass"
            " AND j.relid = 'durably.journal'::regclass"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def test_a_lone_run_ends_without_reading_the_runs_asleep(store: PostgresStorage) -> None:
    import asyncio

    import psycopg

    import durably

    app = durably.App("plans", database=store.url)

    @app.step()
    async def one(x: int) -> int:
        return x + 1

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        return await one(await one(x))

    async def run(n: int) -> None:
        for i in range(n):
            assert await (await app.start(flow, i)).result(timeout=30) == i + 2

    async def main() -> None:
        async with app.worker():
            await run(30)  # prepared, then given a generic plan, on a tiny table
            with psycopg.connect(store.url, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO durably.runs (id, workflow, version, status, args,"
                    " created_at, updated_at, wake_at) SELECT 's' || g, 'sleeper', '1',"
                    " 'suspended', '[]', 1, 1, 4e9 FROM generate_series(1, 3000) g"
                )
            await run(5)

    asyncio.run(main())
    app.close()
    deadline = time.monotonic() + 10
    while _table_reads(store.url)[2] < 35 * 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # closed sessions report their counters as they exit
    seq_rows, due_rows, journaled = _table_reads(store.url)
    assert journaled >= 35 * 2
    # Five runs ending past 3,000 sleeping ones: a scan of them would read 15,000.
    assert seq_rows < 3000 and due_rows < 3000, (seq_rows, due_rows)


def _sqlite_plan(sql: str, raw: sqlite3.Connection) -> list[str]:
    args: Any = (
        dict.fromkeys(re.findall(r":(\w+)", sql)) if "?" not in sql else [None] * sql.count("?")
    )
    return [str(r[3]) for r in raw.execute("EXPLAIN QUERY PLAN " + sql, args)]


def test_sqlite_statements_find_runs_by_id_through_the_id_index(tmp_path: Path) -> None:
    # Not through durably_runs_by_status, which would read every run in that
    # state: every sleeping run, at each commit that ends a run.
    store = open_storage(f"sqlite:///{tmp_path / 'plans.db'}")
    store.migrate()
    store.close()
    raw = sqlite3.connect(tmp_path / "plans.db")
    try:
        statements = {
            "CANCEL_PENDING_TREE": sqlite_queries.CANCEL_PENDING_TREE,
            "MARK_CANCEL_TREE": sqlite_queries.MARK_CANCEL_TREE,
            "WAKE_SUSPENDED": sqlite_queries.WAKE_SUSPENDED,
        }
        # By lists of ids: from about 50 ids on, SQLite preferred the state's
        # index (a client's read of 500 ended runs read every ended run).
        for n in (1, 3, 50, 500):
            statements[f"wake_parents({n})"] = sqlite_queries.wake_parents(n)
            statements[f"ended_runs({n})"] = sqlite_queries.ended_runs(n)
            statements[f"cancel_requests({n})"] = sqlite_queries.cancel_requests(n)
        for name, sql in statements.items():
            first = _sqlite_plan(sql, raw)[0]
            assert "sqlite_autoindex_durably_runs_1 (id=?)" in first, (name, first)
        # The next due time: the first entry of each ordered index, not a sort.
        steps = _sqlite_plan(sqlite_queries.next_due(2), raw)
        assert not [s for s in steps if "by_status" in s or "TEMP B-TREE" in s], steps
    finally:
        raw.close()


def test_a_prepared_claim_made_on_a_tiny_table_walks_indexes_once_it_has_grown(
    store: PostgresStorage,
) -> None:
    # Claims stay prepared (planning one costs more than running it); its
    # generic plan, made while the table was nearly empty, must not scan.
    store.create_runs(_runs(0, 3))
    for _ in range(15):  # prepared at 5, generic plan from about the 10th
        store.claim("w0", ["none"], 1, T0, 30.0)
    _backlog(store, 1500)
    with store._conn() as conn:
        row = conn.execute(
            "SELECT generic_plans FROM pg_prepared_statements WHERE statement LIKE '%WITH fresh%'"
        ).fetchone()
    assert row is not None and row[0] > 0, row  # the plan used below is the generic one

    before = _sequential_scans(store)
    for _ in range(3):
        assert len(store.claim("w1", ["wf"], 100, T0 + 10_000, 30.0)) == 100
    assert _sequential_scans(store) - before == 0

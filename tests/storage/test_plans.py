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
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from durably._storage import open_storage
from durably._storage.base import NewRun
from durably._storage.postgres import queries as pg_queries
from durably._storage.postgres.store import PostgresStorage
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


def test_a_postgres_claim_walks_its_indexes_in_order(store: PostgresStorage) -> None:
    _backlog(store, 1500)
    now = time.time()
    with store._conn() as conn:
        conn.execute(
            "UPDATE durably.runs SET status = 'suspended', wake_at = created_at"
            " WHERE id IN (SELECT id FROM durably.runs ORDER BY created_at LIMIT 1500)"
        )
        params = {"me": "w1", "lease": now + 30, "now": now, "n": 100}
        params.update(wfs=["wf", "other"], wvs=[])
        row = conn.execute("EXPLAIN (FORMAT JSON) " + pg_queries.CLAIM, params).fetchone()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    parts = {p.get("Subplan Name"): p for p in _plan_nodes(plan[0]["Plan"])}
    # New runs and runs whose timer is due: walked in the order taken, then
    # stopped. (Held runs whose lease lapsed are rare, and without statistics
    # the planner still sorts the running and sleeping ones to find them.)
    for part in ("CTE fresh", "CTE due"):
        nodes = {node["Node Type"] for node in _plan_nodes(parts[part])}
        assert not nodes & {"Sort", "Seq Scan", "Bitmap Heap Scan"}, (part, nodes)
    # The chosen runs are then updated through the primary key.
    top = [p for p in plan[0]["Plan"]["Plans"] if p.get("Parent Relationship") == "Outer"]
    assert [p.get("Index Name") for p in top] == ["runs_pkey"], top
    assert store.claim("w1", ["wf"], 100, now, 30.0) != []


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

"""A commit the server rolls back on a conflict with another transaction (a
deadlock) wrote nothing: the committer sends it again instead of dropping
its runs as if the database were unreachable (PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg

import durably
from durably._errors import WriteConflict
from durably._storage.base import RunUpdate, RunWrite, Storage
from durably._worker.committer import Committer
from storage.test_storage import LEASE, T0, entry, new_run

DONE = RunUpdate(status="completed", result='"done"', release=True)


def _sleeping_parent(storage: Storage) -> None:
    """Run "p", of a workflow no worker of these tests runs, asleep: the
    write that ends its child "c" wakes it, locking c's row, then p's."""
    storage.create_runs([new_run("p")])
    parent = storage.claim("w0", ["wf"], 1, T0, LEASE)[0]
    asleep = RunUpdate(status="suspended", wake_at=T0 + 3600, release=True)
    assert storage.commit("w0", [RunWrite("p", parent.epoch, [], asleep)], T0) == set()


def _child_now(storage: Storage) -> tuple[str, list[int]]:
    """Run "c"'s status and the seqs of its journal."""
    record = storage.get_run("c")
    assert record is not None
    return record.status, [e.seq for e in storage.load_journal("c")]


@contextlib.contextmanager
def _deadlocked(url: str) -> Iterator[None]:
    """Another session holds p's row; once a write waits for it, that
    session asks for c's row: a deadlock, which the write loses."""
    got_both: list[bool] = []
    other = threading.Thread(target=_deadlock, args=(url, "p", "c", _when_blocked(url), got_both))
    other.start()
    time.sleep(0.2)  # p is held before anything else starts
    try:
        yield
    finally:
        other.join(20)
    assert got_both == [True]  # the deadlock happened, and the other session won it


def _deadlock(url: str, holds: str, then_wants: str, ready: Any, done: list[bool]) -> None:
    """Hold ``holds``'s row, wait for ``ready()``, then ask for ``then_wants``'s:
    whoever holds that one and waits for ``holds`` is in a deadlock with this,
    and is the one PostgreSQL rolls back (this session waits ten times longer
    before it looks). ``done`` gets True once this session got both rows."""
    with psycopg.connect(url) as other:
        other.execute("SET LOCAL deadlock_timeout = '10s'")
        other.execute("SELECT 1 FROM durably.runs WHERE id = %s FOR UPDATE", (holds,))
        ready()
        other.execute("SELECT 1 FROM durably.runs WHERE id = %s FOR UPDATE", (then_wants,))
        done.append(True)
    # committed on leaving: both rows free again


def _waiting_for_a_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0])


def _when_blocked(url: str) -> Any:
    def ready() -> None:
        deadline = time.monotonic() + 10
        while not _waiting_for_a_lock(url):
            assert time.monotonic() < deadline, "the commit never waited for the parent's row"
            time.sleep(0.02)

    return ready


def test_a_commit_rolled_back_in_a_deadlock_says_so(pg_storage: tuple[Storage, str]) -> None:
    storage, url = pg_storage
    _sleeping_parent(storage)
    storage.create_runs([new_run("c", parent_id="p", owner="w1", lease_until=T0 + LEASE)])
    outcome: list[Any] = []

    def commit() -> None:
        try:
            outcome.append(storage.commit("w1", [RunWrite("c", 1, [entry(0)], DONE)], T0))
        except Exception as exc:  # noqa: BLE001 - what it raised is the point
            outcome.append(exc)

    with _deadlocked(url):
        writer = threading.Thread(target=commit)
        writer.start()
        writer.join(20)
    assert len(outcome) == 1 and isinstance(outcome[0], WriteConflict), outcome
    assert "DeadlockDetected" in str(outcome[0])
    assert _child_now(storage) == ("running", [])  # nothing of it was written


async def test_the_committer_sends_a_commit_rolled_back_in_a_deadlock_again(
    pg_storage: tuple[Storage, str],
) -> None:
    storage, url = pg_storage
    _sleeping_parent(storage)
    storage.create_runs([new_run("c", parent_id="p", owner="w1", lease_until=T0 + LEASE)])
    committer = Committer(storage, "w1", lambda: T0, asyncio.get_running_loop())
    try:
        with _deadlocked(url):
            write = RunWrite("c", 1, [entry(0)], DONE)
            accepted = await asyncio.wait_for(committer.submit(write), 30)
    finally:
        committer.stop()
    assert accepted is True
    assert _child_now(storage) == ("completed", [0])


async def test_a_lone_runs_write_rolled_back_in_a_deadlock_is_sent_again_not_replayed(
    pg_storage: tuple[Storage, str],
) -> None:
    # The write that ends a lone run goes out from the event loop; rolled
    # back in a deadlock it used to count as a write whose fate is unknown:
    # the run was dropped and replayed, and its last step ran again.
    storage, url = pg_storage
    app = durably.App("test", url)
    ran: list[int] = []

    @app.step()
    async def once(x: int) -> int:
        ran.append(x)
        return x + 1

    @app.workflow(name="child", version="1")
    async def child(ctx: durably.Context, x: int) -> int:
        return await once(x)

    _sleeping_parent(storage)
    try:
        with _deadlocked(url):
            args = '{"args":[41],"kwargs":{}}'
            storage.create_runs([new_run("c", workflow="child", args=args, parent_id="p")])
            async with app.worker():
                assert await app.get_handle("c").result(timeout=30) == 42
    finally:
        app.close()
    assert ran == [41]

"""A commit the server rolls back on a conflict with another transaction (a
deadlock) wrote nothing: the committer sends it again instead of dropping
its runs as if the database were unreachable (PostgreSQL). And the
committer's batches on the event loop's connection, and its stop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import durably
from conftest import eventually
from durably._errors import WriteConflict
from durably._storage import open_storage
from durably._storage.base import RunUpdate, RunWrite, Storage
from durably._worker.committer import CommitFailed, Committer
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
    other = threading.Thread(target=_deadlock, args=(url, "p", "c", got_both))
    other.start()
    time.sleep(0.2)  # p is held before anything else starts
    try:
        yield
    finally:
        other.join(20)
    assert got_both == [True]  # the deadlock happened, and the other session won it


def _deadlock(url: str, holds: str, then_wants: str, got_both: list[bool]) -> None:
    """Hold ``holds``'s row; once another session waits for it, ask for
    ``then_wants``'s, which that session holds: a deadlock, which PostgreSQL
    resolves by rolling the other session back (this one waits ten times
    longer before it looks). ``got_both`` gets True once this one has both."""
    with psycopg.connect(url) as other, psycopg.connect(url, autocommit=True) as probe:
        other.execute("SET LOCAL deadlock_timeout = '10s'")
        other.execute("SELECT 1 FROM durably.runs WHERE id = %s FOR UPDATE", (holds,))
        me = other.info.backend_pid
        deadline = time.monotonic() + 10
        while not probe.execute(
            "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (me,)
        ).fetchone():
            assert time.monotonic() < deadline, f"nobody waited for {holds}'s row"
            time.sleep(0.005)
        other.execute("SELECT 1 FROM durably.runs WHERE id = %s FOR UPDATE", (then_wants,))
        got_both.append(True)
    # committed on leaving: both rows free again


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


async def test_a_batch_rolled_back_in_a_deadlock_on_the_loop_is_sent_again_by_the_thread(
    pg_storage: tuple[Storage, str],
) -> None:
    # A busy worker's writes go out as one statement a batch over the event
    # loop's connection: rolled back, nothing was written, and the thread
    # sends them again (with its patience) instead of dropping their runs.
    storage, url = pg_storage
    _sleeping_parent(storage)
    claimed = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs([new_run("c", parent_id="p", **claimed), new_run("d", **claimed)])
    committer = Committer(storage, "w1", lambda: T0, asyncio.get_running_loop())
    writer: Any = committer._writer
    real_send, raised = writer.send, []

    async def send(prepared: Any, **options: Any) -> Any:
        try:
            return await real_send(prepared, **options)
        except Exception as exc:
            raised.append((type(exc).__name__, len(prepared.run_ids)))
            raise

    writer.send = send
    try:
        await eventually(writer._ready)  # its connection opens in the background
        with _deadlocked(url):
            writes = [RunWrite("c", 1, [entry(0)], DONE), RunWrite("d", 1, [entry(0)])]
            accepted = await asyncio.wait_for(
                asyncio.gather(*(committer.submit(w) for w in writes)), 30
            )
    finally:
        committer.stop()
        await committer.close_writer()
    assert raised == [("WriteConflict", 2)]
    assert accepted == [True, True]
    assert _child_now(storage) == ("completed", [0])
    assert [e.seq for e in storage.load_journal("d")] == [0]


async def test_a_batch_in_flight_keeps_the_loop_connection_while_a_lone_write_ends_on_the_thread(
    pg_storage: tuple[Storage, str],
) -> None:
    # A lone run's write that conflicted goes to the thread and lets the
    # loop's connection go; a batch is sent on it meanwhile. When the thread
    # answers the lone write, the connection must stay the batch's: marked
    # free again, the next write's flush pinged it under the batch, which
    # failed as if the database were unreachable (found in review).
    storage, url = pg_storage
    claimed = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs([new_run(run_id, **claimed) for run_id in "abcd"])
    alone = {"a"}
    committer = Committer(
        storage, "w1", lambda: T0, asyncio.get_running_loop(), alone=lambda r: r in alone
    )
    writer: Any = committer._writer
    real_send, sent = writer.send, []

    async def send(prepared: Any, **options: Any) -> Any:
        ids = getattr(prepared, "run_ids", None) or (prepared.run_id,)
        sent.append(ids)
        if ids == ("a",):
            raise WriteConflict("rolled back (simulated)")
        return await real_send(prepared, **options)

    writer.send = send
    with psycopg.connect(url) as hold_a, psycopg.connect(url) as hold_b:
        try:
            await eventually(writer._ready)  # its connection opens in the background
            hold_a.execute("SELECT 1 FROM durably.runs WHERE id = 'a' FOR UPDATE")
            hold_b.execute("SELECT 1 FROM durably.runs WHERE id = 'b' FOR UPDATE")
            lone = asyncio.ensure_future(committer.submit(RunWrite("a", 1, [entry(0)])))
            await eventually(lambda: sent == [("a",)])
            alone.clear()
            batch = asyncio.gather(*(committer.submit(RunWrite(r, 1, [entry(0)])) for r in "bc"))
            await eventually(lambda: len(sent) == 2)  # the batch, waiting for b's row
            hold_a.commit()
            assert await asyncio.wait_for(lone, 30) is True  # the thread wrote it
            later = asyncio.ensure_future(committer.submit(RunWrite("d", 1, [entry(0)])))
            await asyncio.sleep(0.2)
            hold_b.commit()
            assert await asyncio.wait_for(batch, 30) == [True, True]
            assert await asyncio.wait_for(later, 30) is True
        finally:
            committer.stop()
            await committer.close_writer()
    assert sent == [("a",), ("b", "c"), ("d",)]
    journals = {r: [e.seq for e in storage.load_journal(r)] for r in "abcd"}
    assert journals == {r: [0] for r in "abcd"}


async def test_a_superseded_drivers_write_is_not_told_kept_by_the_new_drivers(
    pg_storage: tuple[Storage, str],
) -> None:
    # Two writes of one run in a queue: a superseded driver's (its claim's
    # epoch is gone) and the new driver's. In one batch, answered by run
    # id, the old one was told it was kept, and its entry was written too.
    storage, url = pg_storage
    storage.create_runs([new_run("x", owner="w1", lease_until=T0 + LEASE)])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE durably.runs SET epoch = 2 WHERE id = 'x'")  # claimed again
    committer = Committer(storage, "w1", lambda: T0, asyncio.get_running_loop())
    writer: Any = committer._writer
    try:
        await eventually(writer._ready)  # its connection opens in the background
        stale, new = RunWrite("x", 1, [entry(0)]), RunWrite("x", 2, [entry(1)])
        answers = await asyncio.wait_for(
            asyncio.gather(committer.submit(stale), committer.submit(new)), 30
        )
    finally:
        committer.stop()
        await committer.close_writer()
    assert answers == [False, True]
    assert [e.seq for e in storage.load_journal("x")] == [1]


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
        async with app.worker() as worker:
            # Warm up: the event loop's own connection opens on first need.
            assert await (await app.start(child, 0)).result(timeout=30) == 1
            writer: Any = worker.committer._writer
            real_send, raised = writer.send, []

            async def send(single: Any, **options: Any) -> Any:
                try:
                    return await real_send(single, **options)
                except Exception as exc:
                    raised.append(type(exc).__name__)
                    raise

            writer.send = send
            with _deadlocked(url):
                args = '{"args":[41],"kwargs":{}}'
                storage.create_runs([new_run("c", workflow="child", args=args, parent_id="p")])
                assert await app.get_handle("c").result(timeout=30) == 42
    finally:
        app.close()
    assert raised == ["WriteConflict"]  # from the loop, then sent by the thread
    assert ran == [0, 41]


async def test_a_commit_that_keeps_conflicting_fails_as_an_outage_with_no_strike(
    pg: tuple[str, Any],
) -> None:
    # A lock held for long, with a lock_timeout set on the database: every
    # try is rolled back (55P03). Its run is replayed later, as after an
    # outage; counted as the write's own error, three of those in a row
    # would have failed the run for good.
    url, _ = pg
    with psycopg.connect(url, autocommit=True) as admin:
        dbname = admin.info.dbname
        admin.execute(f"ALTER DATABASE {dbname} SET lock_timeout = '50ms'")
    storage = open_storage(url)
    storage.migrate()
    storage.create_runs([new_run("c", owner="w1", lease_until=T0 + LEASE)])
    committer = Committer(storage, "w1", lambda: T0, asyncio.get_running_loop())
    try:
        with psycopg.connect(url) as holder:
            holder.execute("SELECT 1 FROM durably.runs WHERE id = 'c' FOR UPDATE")
            write = RunWrite("c", 1, [entry(0)], DONE)
            with pytest.raises(CommitFailed, match="LockNotAvailable") as failed:
                await asyncio.wait_for(committer.submit(write), 30)
    finally:
        committer.stop()
        storage.close()
    assert failed.value.outage is True


async def test_a_write_handed_to_a_stopped_committer_fails_instead_of_waiting_for_good(
    tmp_path: Any,
) -> None:
    # A batch the loop's connection gave back as a worker stopped, or a
    # cancelled driver's last write, reached the thread's queue after the
    # thread had exited: nobody answered it (found in review).
    storage = open_storage(f"sqlite:///{tmp_path / 'stopped.db'}")
    storage.migrate()
    storage.create_runs([new_run("c", owner="w1", lease_until=T0 + LEASE)])
    committer = Committer(storage, "w1", lambda: T0, asyncio.get_running_loop())
    try:
        await asyncio.get_running_loop().run_in_executor(None, committer.stop)
        with pytest.raises(CommitFailed, match="stopping") as failed:
            await asyncio.wait_for(committer.submit(RunWrite("c", 1, [entry(0)])), 5)
        assert failed.value.outage is True
        assert committer._in_flight == 0
    finally:
        storage.close()


async def test_writes_queued_on_the_loop_as_the_committer_stops_are_all_refused(
    tmp_path: Any,
) -> None:
    # Writes queued for the loop's next batch when the committer stops are
    # refused, each of them, even after one's caller gave up on it (a
    # cancelled future once stopped the refusal: the others waited for good).
    storage = open_storage(f"sqlite:///{tmp_path / 'queued.db'}")
    storage.migrate()
    ids = ["a", "b", "c"]
    storage.create_runs([new_run(i, owner="w1", lease_until=T0 + LEASE) for i in ids])
    committer = Committer(storage, "w1", lambda: T0, asyncio.get_running_loop())
    try:
        futures = [committer.submit(RunWrite(i, 1, [entry(0)])) for i in ids]
        assert len(committer._loop_queue) == 3  # (not alone: queued for one batch)
        assert isinstance(futures[0], asyncio.Future)
        futures[0].cancel()
        committer.stop()  # before the loop's next pass takes the batch
        for fut in futures[1:]:
            with pytest.raises(CommitFailed, match="stopping"):
                await asyncio.wait_for(fut, 5)
        assert committer._in_flight == 0
        assert storage.load_journal("b") == []  # nothing was written
    finally:
        storage.close()

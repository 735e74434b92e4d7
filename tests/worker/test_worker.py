"""The worker: concurrency, group commit, the hot path's write and read counts."""

from __future__ import annotations

import asyncio
import contextvars
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import durably
from conftest import eventually
from durably._engine.journal import Entry
from durably._storage.base import RunWrite
from durably._worker.committer import CommitFailed


def peak_counting_step(app: durably.App, seconds: float) -> tuple[Any, dict[str, int]]:
    """A sync step that takes ``seconds``; ``now["peak"]`` is the most run at once."""
    lock = threading.Lock()
    now = {"running": 0, "peak": 0}

    @app.step()
    def busy(n: int) -> int:
        with lock:
            now["running"] += 1
            now["peak"] = max(now["peak"], now["running"])
        threading.Event().wait(seconds)
        with lock:
            now["running"] -= 1
        return n

    return busy, now


def slow_claims(app: durably.App, seconds: float) -> list[float]:
    """Make every claim of ``app`` take ``seconds`` longer; returns when each began."""
    storage = app.storage
    real_claim = storage.claim
    began: list[float] = []

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        began.append(time.monotonic())
        threading.Event().wait(seconds)
        return real_claim(*args, **kwargs)

    storage.claim = slow_claim  # type: ignore[method-assign]
    return began


async def test_runs_execute_concurrently_up_to_the_limit(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    busy, now = peak_counting_step(app, 0.3)

    @app.workflow()
    async def one(ctx: durably.Context, n: int) -> int:
        return int(await busy(n))

    @app.workflow()
    def other(ctx: durably.Context, n: int) -> int:
        return int(busy(n))

    async with app.worker(concurrency=6):
        handles = [await app.start(one if i % 2 else other, i) for i in range(12)]
        results = [await h.result(timeout=30) for h in handles]
    assert results == list(range(12))
    assert now["peak"] == 6  # six at once, never more


async def test_one_write_per_step_and_at_most_one_journal_read_per_run(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0)
    reads: list[str] = []
    storage = app.storage
    real_load = storage.load_journal

    def counting_load(run_id: str) -> Any:
        reads.append(run_id)
        return real_load(run_id)

    storage.load_journal = counting_load  # type: ignore[method-assign]

    @app.step()
    async def s(x: int) -> int:
        return x + 1

    @app.workflow()
    async def three(ctx: durably.Context) -> int:
        return int(await s(await s(await s(0))))

    @app.workflow()
    async def napper(ctx: durably.Context) -> int:
        first = await s(0)
        await ctx.sleep(0.05)
        return int(await s(first))

    async with app.worker() as worker:
        # Started from another thread: created pending, then claimed for the
        # first time, so there is no journal yet and nothing to read.
        handle = await asyncio.to_thread(app.start_sync, three, id="claimed")
        assert await handle.result(timeout=20) == 3
        # The result can reach us (by NOTIFY) before the committer thread
        # has counted its write: wait for the count, then check it exactly.
        await eventually(lambda: worker.committer.writes >= 3)
        assert worker.committer.writes == 3  # the third step's write also ends the run
        assert reads == []
        # Started in the worker's own process and loop: created already
        # claimed through the same group commit, and nothing to read back.
        handle = await app.start(three, id="local")
        assert await handle.result(timeout=20) == 3
        await eventually(lambda: worker.committer.writes >= 3 + 1 + 3)
        assert worker.committer.writes == 3 + 1 + 3
        assert reads == []
        # A run that suspends (no grace: make_app is asked for suspend_after=0)
        # is claimed again when its timer fires: that resumption replays,
        # reading the journal exactly once.
        handle = await asyncio.to_thread(app.start_sync, napper, id="napper")
        assert await handle.result(timeout=20) == 2
        assert reads == ["napper"]


async def test_concurrent_runs_share_commits(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.step()
    async def tick(x: int) -> int:
        await asyncio.sleep(0)
        return x

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        total = 0
        for i in range(5):
            total += int(await tick(i))
        return total + x

    async with app.worker(concurrency=50) as worker:
        handles = [await app.start(flow, i) for i in range(50)]
        assert [await h.result(timeout=60) for h in handles] == [10 + i for i in range(50)]
        assert worker.committer.writes >= 250
        assert worker.committer.batches < worker.committer.writes  # group commit happened


async def test_asyncio_timers_in_workflows_are_durable(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0.0)

    @app.step()
    async def slow() -> str:
        await asyncio.sleep(5)
        return "late"

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        await asyncio.sleep(0.3)  # a durable timer
        try:
            return str(await asyncio.wait_for(slow(), timeout=0.3))
        except asyncio.TimeoutError:
            return "timed out"

    async with app.worker():
        handle = await app.start(flow, id="aio")
        assert await handle.result(timeout=20) == "timed out"
    kinds = [(e.kind, e.name) for e in app.storage.load_journal("aio")]
    assert kinds[:2] == [("timer", "asyncio-timer"), ("fired", "asyncio-timer")]
    assert ("timer", "asyncio-timer") in kinds[2:]


def test_sqlite_is_power_loss_safe_by_default(tmp_path: Any) -> None:
    from durably._storage.sqlite.store import SQLiteStorage

    for query, expected in [("", 2), ("?synchronous=normal", 1)]:
        storage = SQLiteStorage(f"sqlite:///{tmp_path / 'x.db'}{query}")
        storage.migrate()
        level = storage._retry(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        mode = storage._retry(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        storage.close()
        assert (level, mode) == (expected, "wal")


async def test_local_starts_during_a_slow_claim_never_overfill_the_worker(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    slow_claims(app, 0.3)  # the claim is out while starts arrive
    busy, now = peak_counting_step(app, 0.5)

    @app.workflow()
    async def one(ctx: durably.Context, n: int) -> int:
        return int(await busy(n))

    async with app.worker(concurrency=3) as worker:
        await asyncio.sleep(0.1)  # the first claim is now in flight
        handles = [await app.start(one, i) for i in range(8)]
        peak_drivers = 0
        for _ in range(100):
            peak_drivers = max(peak_drivers, len(worker.drivers))
            await asyncio.sleep(0.02)
        results = [await h.result(timeout=30) for h in handles]
    assert results == list(range(8))
    assert now["peak"] <= 3 and peak_drivers <= 3


async def test_a_local_start_during_a_claim_waits_for_it_and_stays_local(
    make_app: Callable[..., durably.App],
) -> None:
    # The claim in flight holds every free slot; once it comes back empty, the
    # start still creates its run claimed by this worker (one create write, no
    # claim of its own) instead of going through the pending queue.
    app = make_app()
    claims = slow_claims(app, 0.3)

    @app.step()
    async def s(x: int) -> int:
        return x + 1

    @app.workflow()
    async def one(ctx: durably.Context) -> int:
        return int(await s(0))

    async with app.worker(concurrency=3) as worker:
        await eventually(lambda: claims)  # the first claim is now in flight
        assert not worker.has_room() and worker.may_have_room()
        handle = await app.start(one, id="during-claim")
        assert await handle.result(timeout=20) == 1
        await eventually(lambda: worker.committer.writes >= 2)
        # Created through the worker's own group commit (the create, then the
        # step's write that also ends the run), never claimed from the queue.
        assert worker.committer.writes == 2
        assert worker.claimed_total == 1


async def test_a_sync_step_queued_for_a_thread_past_its_lease_never_runs(
    make_app: Callable[..., durably.App],
) -> None:
    # The driver checks the lease when it hands a sync step to the thread pool,
    # but the job may wait there (busy threads, a frozen process) until another
    # worker has taken the run over: the lease is checked again in the thread,
    # right before the step runs.
    from concurrent.futures import ThreadPoolExecutor

    app = make_app()
    release = threading.Event()
    ran: list[str] = []

    @app.step()
    def hold() -> int:
        release.wait(20)
        return 1

    @app.step()
    def effect() -> int:
        ran.append("effect")
        return 2

    @app.workflow()
    async def holder(ctx: durably.Context) -> int:
        return int(await hold())

    @app.workflow()
    async def queued(ctx: durably.Context) -> int:
        return int(await effect())

    async with app.worker() as worker:
        worker.step_threads = ThreadPoolExecutor(1)  # one thread, kept busy by hold()
        first = await app.start(holder)
        await eventually(lambda: first.id in worker.drivers and worker.drivers[first.id]._active)
        second = await app.start(queued)
        await eventually(lambda: second.id in worker.drivers and worker.drivers[second.id]._active)
        await asyncio.sleep(0.2)  # effect() now waits in the pool's queue
        # The lease goes stale meanwhile and cannot be renewed (taken over).
        worker.lease_fresh = lambda driver: False  # type: ignore[method-assign]
        app.storage.renew = lambda *args, **kwargs: []  # type: ignore[method-assign]
        release.set()
        await eventually(lambda: second.id not in worker.drivers)
        await asyncio.sleep(0.2)
        assert ran == []  # dropped as taken over, without running its step
        worker.step_threads.shutdown(wait=False)


async def test_a_renewal_that_outlasted_its_lease_is_confirmed_again_before_a_step(
    make_app: Callable[..., durably.App],
) -> None:
    # A driver whose lease looks stale renews it before starting a step. If the
    # process then stands still (a freeze, a long pause) for longer than the
    # lease that renewal bought, the renewal vouches for nothing: another
    # worker may have claimed the run meanwhile, so the lease is checked again.
    app = make_app(lease_seconds=30.0)  # no periodic renewal during the test
    skew = [0.0]
    app.clock = lambda: time.time() + skew[0]
    storage: Any = app.storage
    real_renew = storage.renew
    taken: list[bool] = []
    ran: list[str] = []

    def renew(me: str, ids: list[str], now: float, seconds: float) -> Any:
        if taken:
            return {}  # another worker holds the run now
        kept = real_renew(me, ids, now, seconds)
        skew[0] += 30.0  # the process stood still right after the renewal landed
        taken.append(True)
        return kept

    storage.renew = renew
    real_claim = storage.claim
    # Once taken, the run is another worker's: this one cannot claim it back.
    storage.claim = lambda *args: [] if taken else real_claim(*args)

    @app.step()
    async def before() -> int:
        skew[0] += 25.0  # past 80% of the lease: the next step must confirm it
        return 1

    @app.step()
    async def effect() -> int:
        ran.append("effect")
        return 2

    @app.workflow()
    async def two(ctx: durably.Context) -> int:
        return int(await before()) + int(await effect())

    async with app.worker() as worker:
        handle = await app.start(two)
        await eventually(lambda: taken and handle.id not in worker.drivers)
        await asyncio.sleep(0.2)
    assert ran == []  # dropped as taken over, without running its step


def _lapse(database_url: str, run_id: str) -> None:
    """End ``run_id``'s lease now, as if its holder had stopped renewing it."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url[len("sqlite:///") :])
        with conn:
            conn.execute("UPDATE durably_runs SET lease_until = 0 WHERE id = ?", (run_id,))
        conn.close()
        return
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE durably.runs SET lease_until = 0 WHERE id = %s", (run_id,))


async def test_a_reclaim_after_another_workers_claim_replays_instead_of_adopting(
    make_app: Callable[..., durably.App], database_url: str
) -> None:
    # Worker A stands still past its lease; worker B claims the run, journals
    # the step A was about to retry, and dies; A's next claim takes the run
    # again. A's driver still holds the run as it was before B: it must not
    # carry on from there (it would run the step B journaled once more), the
    # run is replayed from its journal instead. (Found in review.)
    app = make_app(lease_seconds=30.0)
    storage: Any = app.storage
    real_claim = storage.claim
    calls: list[int] = []

    @app.step(retry=durably.Retry(max_attempts=3, initial=1.0))
    async def flaky() -> str:
        calls.append(len(calls))
        if len(calls) == 1:
            raise ConnectionError("the first attempt fails")
        return "A"

    @app.workflow()
    async def wf(ctx: durably.Context) -> str:
        return str(await flaky())

    async with app.worker() as worker:
        handle = await app.start(wf)
        await eventually(lambda: handle.id in worker.drivers and worker.drivers[handle.id]._retries)
        stale = worker.drivers[handle.id]
        storage.claim = lambda *args: []  # A claims nothing while B holds the run
        names = sorted(worker.workflows)
        versions = [f"{n}@{worker.workflows[n].version}" for n in names]
        _lapse(database_url, handle.id)
        (b,) = real_claim("B", names, 1, time.time(), 30.0, versions)
        journal = storage.load_journal(handle.id)
        position = max(e.position for e in journal if e.kind == "attempt")
        seq = max(e.seq for e in journal) + 1
        entry = Entry(position, "step", "flaky", json.dumps("B"), None, time.time(), seq, b.epoch)
        assert storage.commit("B", [RunWrite(handle.id, b.epoch, [entry])], time.time()) == set()
        _lapse(database_url, handle.id)  # B dies
        storage.claim = real_claim
        worker.wake()
        assert await handle.result(timeout=10) == "B"  # B's journaled result, replayed
        assert stale.task is not None and stale.task.done()
    assert calls == [0]  # A's retry never ran: B had journaled the step


async def test_a_run_started_from_a_step_does_not_inherit_the_steps_context(
    make_app: Callable[..., durably.App],
) -> None:
    # Started beside a worker, a run is driven in this process; started from
    # a step, its driver must not carry that step's context (its step key, a
    # value the step set): on any other worker it would not have it.
    app = make_app()
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")

    @app.step()
    async def read() -> list[str]:
        return [tenant.get(), durably.current_step_key()]

    @app.workflow()
    async def inner(ctx: durably.Context) -> list[str]:
        return list(await read())

    @app.step()
    async def launch() -> str:
        tenant.set("acme")
        return (await app.start(inner, id="launched")).id

    @app.workflow()
    async def outer(ctx: durably.Context) -> str:
        return str(await launch())

    async with app.worker():
        launched = await (await app.start(outer)).result(timeout=20)
        got = await app.get_handle(launched).result(timeout=20)
    assert got == ["none", "launched:0"]


async def test_a_failed_write_is_not_reported_as_an_outage(
    make_app: Callable[..., durably.App], caplog: pytest.LogCaptureFixture
) -> None:
    # The committer reports why a write failed (an outage, or the write's own
    # error, e.g. a constraint) before the driver hears CommitFailed; the
    # driver only hands the run back. It used to log every such failure as
    # "database unreachable ... retrying until it is back".
    from durably._worker.committer import CommitFailed

    app = make_app()
    ran: list[int] = []
    two = add_two_steps(app, ran)
    async with app.worker() as worker:
        real_submit = worker.committer.submit
        failures: list[str] = []

        def submit(write: Any) -> Any:
            if write.entries and not failures:
                failures.append(write.run_id)
                future = asyncio.get_running_loop().create_future()
                future.set_exception(CommitFailed("this write is bad"))
                return future
            return real_submit(write)

        worker.committer.submit = submit  # type: ignore[method-assign]
        with caplog.at_level("WARNING", logger="durably"):
            assert await (await app.start(two, 0)).result(timeout=20) == 2
    assert failures
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]


def commit_threads(app: durably.App) -> list[tuple[str, int]]:
    """Record how each write was made, and on which thread: "commit" (the
    committer thread's way), "nowait" (SQLite on the loop), "busy" (that was
    declined), "statement" (a one-statement PostgreSQL write, either way)."""
    storage: Any = app.storage
    real_commit, real_nowait = storage.commit, storage.commit_nowait
    calls: list[tuple[str, int]] = []

    def commit(*args: Any) -> Any:
        calls.append(("commit", threading.get_ident()))
        return real_commit(*args)

    def commit_nowait(*args: Any) -> Any:
        lost = real_nowait(*args)
        calls.append(("nowait" if lost is not None else "busy", threading.get_ident()))
        return lost

    storage.commit = commit
    storage.commit_nowait = commit_nowait
    if hasattr(storage, "one_statement"):
        real_one = storage.one_statement

        def one_statement(*args: Any) -> Any:
            calls.append(("statement", threading.get_ident()))
            return real_one(*args)

        storage.one_statement = one_statement
    return calls


async def test_a_lone_run_skips_the_committer_thread_and_busy_workers_group_on_it(
    make_app: Callable[..., durably.App], backend: str
) -> None:
    app = make_app()
    calls = commit_threads(app)

    @app.step()
    async def s(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    @app.workflow()
    async def three(ctx: durably.Context, x: int) -> int:
        return int(await s(await s(await s(x))))

    loop_thread = threading.get_ident()
    async with app.worker(concurrency=50) as worker:
        # The first run opens PostgreSQL's event-loop connection (in the background).
        assert await (await app.start(three, 0)).result(timeout=20) == 3
        await eventually(lambda: worker.committer.writes >= 4)
        writer: Any = worker.committer._writer
        if writer is not None:
            await eventually(writer._ready)
        calls.clear()
        assert await (await app.start(three, 1)).result(timeout=20) == 4
        await eventually(lambda: worker.committer.writes >= 8)
        lone = list(calls)
        calls.clear()
        sizes = _statement_sizes(app)
        handles = [await app.start(three, i) for i in range(50)]
        assert [await h.result(timeout=60) for h in handles] == [i + 3 for i in range(50)]
    # The create, then one write per step (the last also ends the run), each
    # made on the loop thread: no hand-off to the committer thread and back.
    if backend == "sqlite":
        # (A lease renewal holding the write lock at that very moment sends
        # that one write to the thread: allowed, once.)
        declined = lone.count(("busy", loop_thread))
        assert declined <= 1 and lone.count(("nowait", loop_thread)) == 4 - declined
        assert len([c for c in lone if c[0] == "commit" and c[1] != loop_thread]) == declined
    else:  # sent on the loop's async connection, which never blocks the loop
        assert lone == [("statement", loop_thread)] * 4
    # Fifty runs at once: nearly everything goes through group commits made
    # from the loop (SQLite commits them there, PostgreSQL sends one
    # statement a batch on the loop's own connection), not on the thread.
    batches = [n for n, thread in sizes if thread == loop_thread and n > 1]
    assert sum(batches) > 50 and len(batches) < sum(batches) / 2
    if backend == "sqlite":  # (PostgreSQL's thread takes the creates)
        on_thread = [c for c in calls if c[0] == "commit" and c[1] != loop_thread]
        assert len(on_thread) < sum(batches) / 10
    assert worker.committer.batches < worker.committer.writes


def _statement_sizes(app: durably.App) -> list[tuple[int, int]]:
    """How many writes each commit made from the loop took (PostgreSQL's
    one-statement commits, SQLite's commits on the loop that went through),
    and on which thread it was made."""
    sizes: list[tuple[int, int]] = []
    storage: Any = app.storage
    name = "one_statement" if hasattr(storage, "one_statement") else "commit_nowait"
    real = getattr(storage, name)

    def record(worker_id: str, writes: Any, now: float) -> Any:
        made = real(worker_id, writes, now)
        if made is not None:
            sizes.append((len(writes), threading.get_ident()))
        return made

    setattr(storage, name, record)
    return sizes


def add_two_steps(app: durably.App, ran: list[int] | None = None) -> Any:
    """A workflow of two steps (x + 1 each); ``ran`` records each step's input."""

    @app.step()
    async def s(x: int) -> int:
        if ran is not None:
            ran.append(x)
        return x + 1

    @app.workflow()
    async def two(ctx: durably.Context, x: int) -> int:
        return int(await s(await s(x)))

    return two


async def test_a_lone_run_survives_its_loop_connection_being_cut(
    make_app: Callable[..., durably.App], backend: str
) -> None:
    # PostgreSQL: the server drops the event loop's connection while it is
    # idle. The next write's fate is unknown (it fails as a lost connection),
    # so the run is dropped and replayed; it still ends once, correctly, and
    # the connection is opened again.
    app = make_app()
    ran: list[int] = []
    two = add_two_steps(app, ran)
    async with app.worker() as worker:
        assert await (await app.start(two, 0)).result(timeout=20) == 2
        writer: Any = worker.committer._writer
        if backend == "sqlite":
            assert writer is None  # SQLite commits on the loop itself
            return
        await eventually(lambda: writer._conn is not None)
        first = writer._conn
        with psycopg.connect(app.storage.conninfo, autocommit=True) as admin:  # type: ignore[attr-defined]
            admin.execute("SELECT pg_terminate_backend(%s)", (first.info.backend_pid,))
        for x in (10, 20, 30):
            assert await (await app.start(two, x)).result(timeout=30) == x + 2
        # Each step ran; at most one was run again (the write whose fate was unknown).
        assert {0, 1, 10, 11, 20, 21, 30, 31} <= set(ran) and len(ran) <= 9, ran
        # The connection is opened again on a later lone write's need (at most
        # once a second): keep writing until one has reopened it.
        for x in range(100, 2000, 100):
            assert await (await app.start(two, x)).result(timeout=30) == x + 2
            if writer._conn is not None and writer._conn is not first:
                break
            await asyncio.sleep(0.2)
        assert writer._conn is not None and writer._conn is not first


async def test_a_start_cancelled_mid_send_is_cancelled_on_the_server(
    make_app: Callable[..., durably.App], backend: str
) -> None:
    # PostgreSQL: a lone run's write is sent by the caller's own await, so
    # cancelling the caller (here a start whose create waits on a table lock)
    # cancels the send, and the statement on the server: the run is not
    # created behind the caller's back. Later writes use the loop's
    # connection again (a new one: the interrupted one is dropped).
    app = make_app()
    two = add_two_steps(app)

    async with app.worker() as worker:
        assert await (await app.start(two, 0)).result(timeout=20) == 2
        writer: Any = worker.committer._writer
        if backend == "sqlite":
            assert writer is None  # SQLite commits on the loop itself, never waiting
            return
        await eventually(writer._ready)
        # Once more through the loop's connection, so the create below waits
        # on the lock while executing (a first use waits while being prepared).
        warm = commit_threads(app)
        assert await (await app.start(two, 5)).result(timeout=20) == 7
        assert warm == [("statement", threading.get_ident())] * 3
        with psycopg.connect(app.storage.conninfo) as admin:  # type: ignore[attr-defined]
            admin.execute("LOCK TABLE durably.runs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(app.start(two, 1, id="cancelled"), 0.5)
            assert worker.committer._in_flight == 0
        await eventually(writer._ready)  # the query was cancelled on the server
        calls = commit_threads(app)
        assert await (await app.start(two, 10)).result(timeout=20) == 12
        assert calls == [("statement", threading.get_ident())] * 3
        await asyncio.sleep(0.3)  # a create the server went on with has committed by now
        assert app.storage.get_runs(["cancelled"]) == []  # its create never committed


async def test_a_lone_run_waits_for_another_process_lock_off_the_loop(tmp_path: Any) -> None:
    # The loop never waits on another process's SQLite write lock: the commit
    # it would have made itself goes to the committer thread, which waits.
    # (PostgreSQL never blocks the loop: it sends from it on an async connection.)
    import sqlite3

    app = durably.App("test", f"sqlite:///{tmp_path / 'durably.db'}", lease_seconds=2.0)
    two = add_two_steps(app)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with app.worker():
        assert await (await app.start(two, 0)).result(timeout=20) == 2
        other = sqlite3.connect(str(tmp_path / "durably.db"), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's write, in progress
        ticking = asyncio.get_running_loop().create_task(ticker())
        starting = asyncio.get_running_loop().create_task(app.start(two, 1))
        await asyncio.sleep(0.5)
        held_ticks = ticks
        assert not starting.done()  # its create waits for the lock
        other.execute("COMMIT")
        handle = await asyncio.wait_for(starting, 20)
        assert await handle.result(timeout=20) == 3
        ticking.cancel()
        other.close()
    app.close()
    assert held_ticks >= 20  # about 50: the loop kept running while the lock was held


@pytest.mark.parametrize("answer", ["committed", "fate unknown"])
async def test_a_run_claimed_again_while_its_driver_hands_it_back_gets_a_new_driver(
    make_app: Callable[..., durably.App], answer: str
) -> None:
    """A signal arrives as the run goes to sleep: the run is due again, and
    this worker claims it before its driver has heard that the suspension
    committed. That finishing driver used to adopt the claim and drop it
    with itself (the run waited a whole lease). And if the driver then
    failed (a write whose fate is unknown), its hand-back released the new
    claim under the new driver, so another worker could run it as well."""
    app = make_app(suspend_after=0.0, poll_interval=60.0, lease_seconds=30.0)

    @app.workflow()
    async def waits(ctx: durably.Context) -> str:
        return str(await ctx.wait_for("ping", timeout=120))

    released: list[str] = []
    taken: list[int] = []  # the worker's slots in use as the new driver is about to start
    async with app.worker() as worker:
        real_respawn = worker._respawn

        def respawn(record: Any, claimed_at: float) -> None:
            taken.append(worker._occupied() - worker._reserved)  # not a claim in flight
            real_respawn(record, claimed_at)

        worker._respawn = respawn  # type: ignore[method-assign]
        storage: Any = app.storage
        real_release = storage.release

        def release(worker_id: str, run_ids: Any, now: float, *, epoch: Any = None) -> Any:
            if epoch is not None:  # a driver handing its run back (a stopping worker gives none)
                released.extend(run_ids)
            return real_release(worker_id, run_ids, now, epoch=epoch)

        storage.release = release
        real_submit = worker.committer.submit
        raced: list[str] = []

        async def submit(write: RunWrite) -> bool:
            kept = await real_submit(write)
            u = write.update
            if not raced and u is not None and u.release and u.status == "suspended":
                raced.append(write.run_id)
                await app.signal(write.run_id, "ping", "hello")  # due again at once
                run = write.run_id
                # Claimed again, and the claim handed to the worker (which
                # spawns at once when its claim comes back).
                await eventually(
                    lambda: (
                        (app.storage.get_run(run) or write).epoch > write.epoch
                        and worker._claiming is None
                    )
                )
                if answer == "fate unknown":
                    raise CommitFailed("connection lost after sending", outage=True)
            return bool(kept)

        worker.committer.submit = submit  # type: ignore[method-assign]
        handle = await app.start(waits, id="raced")
        assert await handle.result(timeout=20) == "hello"  # not after a 30 s lease
    assert raced == ["raced"] and "raced" not in released
    # Its slot stayed taken from the claim to the new driver (the old one is
    # gone by then): a claim or a start in between could have put one run
    # more in the worker than its concurrency allows.
    assert taken == [1]


@pytest.mark.parametrize("between", ["another worker", "nobody"])
async def test_a_driver_never_goes_on_under_a_claim_its_worker_made_again_since(
    make_app: Callable[..., durably.App], between: str
) -> None:
    """The worker stood still (its renewals failed) past its lease; then it
    claimed the run again, the answer lost on the way (no new driver for it).
    If another worker held the run in between, it may have run the step the
    old driver has due: renewals by the same owner used to let that driver go
    on all the same. A driver now goes on only under its own claim (a newer
    one of its worker is left to that claim's answer); without it, it stops,
    and the step runs once, under a new claim, replayed."""
    # Kept in memory through the retry's wait (not suspended), as a driver is.
    app = make_app(poll_interval=60.0, lease_seconds=1.0, suspend_after=60.0)
    other = make_app()
    attempts: list[tuple[float, int]] = []  # (when, the run's claim epoch then)

    @app.step(retry=durably.Retry(max_attempts=2, initial=3.5))
    async def flaky(x: int) -> int:
        record = await asyncio.to_thread(app.storage.get_run, "stale")
        attempts.append((time.monotonic(), record.epoch if record else -1))
        if len(attempts) == 1:
            raise ValueError("first attempt fails; the retry is due in 3.5 s")
        return x

    @app.workflow()
    async def retried(ctx: durably.Context, x: int) -> int:
        return int(await flaky(x))

    blocked = [False]
    async with app.worker() as worker:
        storage: Any = app.storage
        real_renew, real_claim = storage.renew, storage.claim

        def stands_still(real: Any) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                if blocked[0]:
                    raise durably.DatabaseUnavailable("this worker stands still", reached=False)
                return real(*args, **kwargs)

            return call

        storage.renew, storage.claim = stands_still(real_renew), stands_still(real_claim)
        handle = await app.start(retried, 7, id="stale")
        await eventually(lambda: len(attempts) == 1)
        first = attempts[0][1]
        blocked[0] = True  # this worker stands still
        await asyncio.sleep(1.2)  # its lease lapses
        if between == "another worker":
            taken = other.storage.claim("w2", ["retried"], 10, time.time(), 1.0)
            assert [r.id for r in taken] == ["stale"]
            await asyncio.sleep(1.2)  # and the other worker's
        again = real_claim(worker.id, ["retried"], 10, time.time(), 1.0)
        expected = first + (2 if between == "another worker" else 1)
        assert [r.epoch for r in again] == [expected]  # this worker's, unknown to it
        blocked[0] = False
        assert await handle.result(timeout=20) == 7
    retries = [epoch for _, epoch in attempts[1:]]
    # Never under the old driver (which thought its claim was `first`) while
    # the run was held under a claim it never heard of: once, under a new one.
    assert len(retries) == 1 and retries[0] > expected, (first, retries)

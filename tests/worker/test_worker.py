"""The worker: concurrency, group commit, the hot path's write and read counts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import durably
from conftest import eventually


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
        level = storage._conn().execute("PRAGMA synchronous").fetchone()[0]
        mode = storage._conn().execute("PRAGMA journal_mode").fetchone()[0]
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


def commit_threads(app: durably.App) -> list[tuple[str, int]]:
    """Record which storage call wrote each batch, and on which thread ("busy":
    a commit on the loop was declined)."""
    storage = app.storage
    real_commit, real_nowait = storage.commit, storage.commit_nowait
    calls: list[tuple[str, int]] = []

    def commit(*args: Any) -> Any:
        calls.append(("commit", threading.get_ident()))
        return real_commit(*args)

    def commit_nowait(*args: Any) -> Any:
        lost = real_nowait(*args)
        calls.append(("nowait" if lost is not None else "busy", threading.get_ident()))
        return lost

    storage.commit = commit  # type: ignore[method-assign]
    storage.commit_nowait = commit_nowait  # type: ignore[method-assign]
    return calls


async def test_a_lone_run_commits_on_the_loop_and_busy_workers_group_on_the_thread(
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
        handle = await app.start(three, 0)
        assert await handle.result(timeout=20) == 3
        await eventually(lambda: worker.committer.writes >= 4)
        lone = [c for c in calls if c[0] != "busy"]  # PostgreSQL: never on the loop
        calls.clear()
        handles = [await app.start(three, i) for i in range(50)]
        assert [await h.result(timeout=60) for h in handles] == [i + 3 for i in range(50)]
    assert len(lone) == 4  # the create, then one write per step (the last ends the run)
    if backend == "sqlite":
        # A local file and nothing to group with: no hand-off to the thread.
        assert lone == [("nowait", loop_thread)] * 4
    else:
        # A network round trip never blocks the loop: always the thread.
        assert all(kind == "commit" and thread != loop_thread for kind, thread in lone)
    # Fifty runs at once: nearly everything goes through the committer
    # thread's group commits.
    on_thread = [c for c in calls if c[0] == "commit" and c[1] != loop_thread]
    assert len(on_thread) > len(calls) / 2
    assert worker.committer.batches < worker.committer.writes


async def test_a_lone_run_waits_for_another_process_lock_off_the_loop(tmp_path: Any) -> None:
    # The loop never waits on another process's SQLite write lock: the commit
    # it would have made itself goes to the committer thread, which waits.
    # (PostgreSQL commits always go through the thread: see the test above.)
    import sqlite3

    app = durably.App("test", f"sqlite:///{tmp_path / 'durably.db'}", lease_seconds=2.0)

    @app.step()
    async def s(x: int) -> int:
        return x + 1

    @app.workflow()
    async def two(ctx: durably.Context, x: int) -> int:
        return int(await s(await s(x)))

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

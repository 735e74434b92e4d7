"""Semantic 5: waiting costs nothing; leases keep live work where it is (semantic 4)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import pytest

import durably
from conftest import eventually


async def test_sleeping_run_is_suspended_and_leaves_memory(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0.2)

    @app.workflow()
    async def nap(ctx: durably.Context) -> str:
        await ctx.sleep("long", 2.0)
        return "rested"

    @app.workflow()
    def sync_nap(ctx: durably.Context) -> str:
        ctx.sleep("long", 2.0)
        return "rested too"

    async with app.worker() as worker:
        a = await app.start(nap, id="nap-async")
        b = await app.start(sync_nap, id="nap-sync")
        started = time.monotonic()
        await eventually(lambda: a.status_sync() == b.status_sync() == "suspended")
        await eventually(lambda: not worker.drivers)  # nothing of them left in memory
        assert time.monotonic() - started < 1.5  # well before the timers are due
        record = app.storage.get_run("nap-async")
        assert record is not None and record.owner is None and record.wake_at is not None
        assert await a.result(timeout=20) == "rested"
        assert await b.result(timeout=20) == "rested too"


async def test_short_sleep_stays_in_memory_but_reads_suspended(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=5.0)
    seen: list[str] = []

    @app.workflow()
    async def blink(ctx: durably.Context) -> str:
        await ctx.sleep("short", 0.6)
        return "ok"

    async with app.worker() as worker:
        handle = await app.start(blink, id="blink")
        await eventually(lambda: handle.status_sync() == "suspended")
        seen.append(handle.status_sync())
        assert "blink" in worker.drivers  # within the grace period it stays here
        claims = worker.claimed_total
        assert await handle.result(timeout=20) == "ok"
        assert worker.claimed_total == claims  # woke without a new claim
    assert seen == ["suspended"]


async def test_long_backoff_suspends_until_the_next_attempt(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0.1)
    attempts: list[float] = []

    @app.step(retry=durably.Retry(max_attempts=2, initial=1.0))
    def once_broken() -> str:
        attempts.append(time.time())
        if len(attempts) == 1:
            raise TimeoutError("upstream slow")
        return "recovered"

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        return str(await once_broken())

    async with app.worker() as worker:
        handle = await app.start(flow, id="backoff")
        await eventually(lambda: handle.status_sync() == "suspended")
        record = app.storage.get_run("backoff")
        assert record is not None and record.wake_at is not None
        assert abs(record.wake_at - (attempts[0] + 1.0)) < 0.5
        await eventually(lambda: not worker.drivers)
        assert await handle.result(timeout=20) == "recovered"
    assert attempts[1] - attempts[0] >= 1.0


async def test_step_longer_than_the_lease_is_not_taken_over(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(lease_seconds=0.6)
    runs: list[str] = []

    @app.step()
    async def slow() -> str:
        runs.append("slow")
        await asyncio.sleep(2.0)  # more than three leases
        return "done"

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        return str(await slow())

    async with app.worker(), app.worker():  # two workers compete for the run
        handle = await app.start(flow, id="long")
        assert await handle.result(timeout=20) == "done"
    assert runs == ["slow"]


async def test_sleep_until_an_aware_datetime(make_app: Callable[..., durably.App]) -> None:
    app = make_app(suspend_after=0.0)

    @app.workflow()
    async def renewal(ctx: durably.Context, at: dt.datetime) -> float:
        await ctx.sleep_until("renew-at", at)
        return ctx.now().timestamp()

    @app.workflow()
    async def naive(ctx: durably.Context) -> None:
        await ctx.sleep_until("bad", dt.datetime(2030, 1, 1))  # no timezone

    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.8)
    async with app.worker():
        woke = await (await app.start(renewal, when)).result(timeout=20)
        assert woke >= when.timestamp()
        with pytest.raises(durably.WorkflowFailed, match="timezone-aware"):
            await (await app.start(naive)).result(timeout=20)


async def test_a_run_put_to_sleep_for_less_than_a_poll_wakes_on_time(
    make_app: Callable[..., durably.App],
) -> None:
    """On PostgreSQL nothing told the worker's claim loop of a run it had
    just put to sleep: a timer due before the loop's next look (up to a whole
    poll away) fired late. With the default settings one ``ctx.sleep(3)`` in
    three took 5 s."""
    app = make_app(suspend_after=0.0, poll_interval=60.0, lease_seconds=30.0)

    @app.workflow()
    async def nap(ctx: durably.Context) -> float:
        await ctx.sleep("nap", 1.0)
        return time.time()

    async with app.worker():
        for i in range(3):
            began = time.time()
            woke = await (await app.start(nap, id=f"nap-{i}")).result(timeout=30)
            assert woke - began < 10  # on its timer, not at a 60 s poll

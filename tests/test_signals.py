"""Signals and events: waiting on the outside world costs nothing (issue: waiting)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

import durably
from conftest import eventually


async def test_signal_sent_before_the_run_started_is_delivered(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def approval(ctx: durably.Context) -> object:
        return await ctx.wait_for("approval")

    handle = await app.start(approval, id="a-1")
    await app.signal("a-1", "approval", {"ok": True, "by": "ada"})  # no worker yet
    async with app.worker():
        assert await handle.result(timeout=20) == {"ok": True, "by": "ada"}
    kinds = [(e.kind, e.name) for e in app.storage.load_journal("a-1")]
    assert kinds == [("wait", "approval"), ("signal", "approval")]


async def test_two_signals_one_wait_the_second_stays_queued(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0.1)

    @app.workflow()
    async def two_waits(ctx: durably.Context) -> list[object]:
        first = await ctx.wait_for("vote")
        await ctx.sleep("between", 0.3)  # leaves memory: the second waits in the database
        second = await ctx.wait_for("vote")
        return [first, second]

    handle = await app.start(two_waits)
    await app.signal(handle.id, "vote", 1)
    await app.signal(handle.id, "vote", 2)
    await app.signal(handle.id, "other-topic", "ignored")
    async with app.worker():
        assert await handle.result(timeout=20) == [1, 2]
    leftover = app.storage.pending_signals([handle.id])
    assert [(s.topic, s.payload) for s in leftover] == [("other-topic", '"ignored"')]


async def test_waiting_run_is_suspended_out_of_memory_and_woken_by_a_signal(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0.2)

    @app.workflow()
    async def waiter(ctx: durably.Context) -> str:
        return f"got {await ctx.wait_for('go')}"

    @app.workflow()
    def sync_waiter(ctx: durably.Context) -> str:
        return f"got {ctx.wait_for('go')}"

    async with app.worker() as worker:
        a = await app.start(waiter, id="w-async")
        b = await app.start(sync_waiter, id="w-sync")
        await eventually(lambda: a.status_sync() == b.status_sync() == "suspended")
        await eventually(lambda: not worker.drivers)  # nothing left in memory
        record = app.storage.get_run("w-async")
        assert record is not None and record.owner is None and record.wake_at is None
        await app.signal("w-async", "go", "A")
        await b.signal("go", "B")
        assert await a.result(timeout=20) == "got A"
        assert await b.result(timeout=20) == "got B"


async def test_signal_while_the_run_is_held_in_memory(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=30.0)

    @app.workflow()
    async def waiter(ctx: durably.Context) -> object:
        return await ctx.wait_for("go")

    async with app.worker() as worker:
        handle = await app.start(waiter)
        await eventually(lambda: handle.status_sync() == "suspended")
        claims = worker.claimed_total
        await app.signal(handle.id, "go", [1, 2])
        assert await handle.result(timeout=20) == [1, 2]
        assert worker.claimed_total == claims  # delivered in memory, no new claim


async def test_wait_timeout_raises_timeout_error_and_keeps_late_signals(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def impatient(ctx: durably.Context) -> list[object]:
        try:
            await ctx.wait_for("answer", timeout=timedelta(seconds=0.3))
        except TimeoutError as exc:
            assert isinstance(exc, durably.WaitTimeout)
            outcome: list[object] = ["timed out"]
        await ctx.sleep("pause", 0.5)
        outcome.append(await ctx.wait_for("answer", timeout=5))
        return outcome

    async with app.worker():
        handle = await app.start(impatient)
        await asyncio.sleep(0.6)  # after the first wait timed out
        await app.signal(handle.id, "answer", "late")
        assert await handle.result(timeout=20) == ["timed out", "late"]


async def test_a_wait_given_up_by_asyncio_does_not_consume_a_signal(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context) -> list[object]:
        try:
            await asyncio.wait_for(ctx.wait_for("x"), timeout=0.2)
        except asyncio.TimeoutError:
            pass
        await ctx.sleep("pause", 0.4)
        return [await ctx.wait_for("x")]

    async with app.worker():
        handle = await app.start(flow)
        await asyncio.sleep(0.3)
        await app.signal(handle.id, "x", "for the second wait")
        assert await handle.result(timeout=20) == ["for the second wait"]


async def test_signal_raced_against_a_timer(make_app: Callable[..., durably.App]) -> None:
    app = make_app(suspend_after=0.0)

    @app.workflow()
    async def race(ctx: durably.Context) -> list[str]:
        results = []
        for round_ in range(2):
            signal = asyncio.ensure_future(ctx.wait_for("ping"))
            # Long enough that the signal (sent right after the start) wins
            # round 0 even on a loaded machine; round 1 has no signal.
            timer = asyncio.ensure_future(ctx.sleep(f"tick-{round_}", 1.5))
            done, _ = await asyncio.wait({signal, timer}, return_when=asyncio.FIRST_COMPLETED)
            results.append("signal" if signal in done else "timer")
            signal.cancel()
            timer.cancel()
        await ctx.sleep("end", 0.3)  # suspend and replay the whole race
        return results

    async with app.worker():
        handle = await app.start(race)
        await app.signal(handle.id, "ping")
        assert await handle.result(timeout=20) == ["signal", "timer"]


async def test_signals_to_unknown_or_finished_runs_are_refused(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def quick(ctx: durably.Context) -> int:
        return 1

    with pytest.raises(durably.RunNotFound, match="no run with id 'ghost'"):
        await app.signal("ghost", "x")
    async with app.worker():
        handle = await app.start(quick)
        await handle.result(timeout=20)
    with pytest.raises(durably.RunFinished, match="completed"):
        await app.signal(handle.id, "x", 1)
    with pytest.raises(durably.PayloadError):
        await app.signal(handle.id, "x", object())


async def test_events_are_readable_from_outside(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.workflow()
    async def stages(ctx: durably.Context) -> str:
        ctx.set_event("stage", "charged")
        await ctx.wait_for("continue")
        ctx.set_event("stage", {"name": "shipped", "n": 2})
        return "done"

    async with app.worker():
        handle = await app.start(stages, id="ev-1")
        assert await app.get_event("ev-1", "stage", timeout=10) == "charged"
        with pytest.raises(TimeoutError):
            await app.get_event("ev-1", "never-set", timeout=0.2)
        await app.signal("ev-1", "continue")
        assert await handle.result(timeout=20) == "done"
    assert app.get_event_sync("ev-1", "stage") == {"name": "shipped", "n": 2}
    with pytest.raises(durably.RunNotFound):
        await app.get_event("ghost", "stage", timeout=0.1)


async def test_get_event_waits_until_the_event_is_set(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def slow(ctx: durably.Context) -> None:
        await ctx.sleep("first", 0.5)
        ctx.set_event("ready", True)
        await ctx.wait_for("end")

    async with app.worker():
        handle = await app.start(slow)
        started = time.monotonic()
        assert await app.get_event(handle.id, "ready", timeout=10) is True
        assert time.monotonic() - started >= 0.4
        await handle.cancel()


async def test_a_suspended_run_is_woken_by_a_signal_without_waiting_for_a_poll(
    make_app: Callable[..., durably.App],
) -> None:
    """On PostgreSQL a signal to a suspended run made it due, but told no
    worker: it waited for the worker's next poll (4 s of the default 5 s
    here). Workers are now notified in the signal's own transaction."""
    app = make_app(suspend_after=0.0, poll_interval=60.0, lease_seconds=30.0)

    @app.workflow()
    async def waits(ctx: durably.Context) -> str:
        return str(await ctx.wait_for("ping", timeout=120))

    async with app.worker():
        for i in range(2):
            handle = await app.start(waits, id=f"woken-{i}")
            await eventually_status(handle, "suspended")
            began = time.monotonic()
            await app.signal(handle.id, "ping", f"hello {i}")
            assert await handle.result(timeout=30) == f"hello {i}"
            assert time.monotonic() - began < 10  # woken by the signal, not a 60 s poll


async def eventually_status(handle: durably.WorkflowHandle, status: str) -> None:
    for _ in range(200):
        if await handle.status() == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {handle.id} never became {status}")

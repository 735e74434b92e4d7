"""Semantic 9: cancellation and deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

import durably
from conftest import eventually


def kinds(app: durably.App, run_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in app.storage.load_journal(run_id)]


async def test_cancel_during_a_sleep_runs_compensation(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def booking(ctx: durably.Context) -> str:
        await ctx.run("reserve", lambda: "r-1")
        try:
            await ctx.sleep("hold", 60)
        except asyncio.CancelledError:
            await ctx.run("release", lambda: "released")
            raise
        return "kept"

    async with app.worker():
        handle = await app.start(booking, id="b-1")
        await eventually(lambda: handle.status_sync() == "suspended")
        await handle.cancel()
        with pytest.raises(durably.WorkflowCancelled, match="was cancelled"):
            await handle.result(timeout=20)
    assert await handle.status() == "cancelled"
    assert kinds(app, "b-1") == [
        ("step", "reserve"),
        ("timer", "hold"),
        ("cancel", "cancel"),
        ("step", "release"),
    ]


async def test_cancel_during_a_step_lets_it_finish_and_raises_at_the_next_operation(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    started = threading.Event()
    release = threading.Event()

    @app.step()
    def charge() -> str:
        started.set()
        release.wait(10)
        return "ch-1"

    @app.workflow()
    async def order(ctx: durably.Context) -> str:
        receipt = await charge()
        try:
            await ctx.run("ship", lambda: "shipped")
        except asyncio.CancelledError:
            await ctx.run("refund", lambda: f"refunded {receipt}")
            raise
        return "shipped"

    async with app.worker():
        handle = await app.start(order, id="c-1")
        await asyncio.to_thread(started.wait, 10)
        await handle.cancel()
        await asyncio.sleep(0.2)
        release.set()
        with pytest.raises(durably.WorkflowCancelled):
            await handle.result(timeout=20)
    journal = app.storage.load_journal("c-1")
    assert [(e.kind, e.name) for e in journal] == [
        ("step", "charge"),
        ("cancel_at", "cancel"),
        ("step", "refund"),
    ]
    assert journal[0].payload == '"ch-1"'  # the executing step finished and was journaled
    assert journal[2].payload == '"refunded ch-1"'


async def test_cancel_while_waiting_for_a_signal_and_sync_workflows(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0.1)

    @app.workflow()
    async def waiter(ctx: durably.Context) -> object:
        return await ctx.wait_for("never")

    @app.workflow()
    def sync_sleeper(ctx: durably.Context) -> str:
        try:
            ctx.sleep("long", 60)
        except asyncio.CancelledError:
            ctx.run("cleanup", lambda: None)
            raise
        return "woke"

    async with app.worker() as worker:
        a = await app.start(waiter)
        b = await app.start(sync_sleeper)
        await eventually(lambda: a.status_sync() == b.status_sync() == "suspended")
        await eventually(lambda: not worker.drivers)
        await a.cancel()
        await b.cancel(reason="user asked")
        with pytest.raises(durably.WorkflowCancelled):
            await a.result(timeout=20)
        with pytest.raises(durably.WorkflowCancelled, match="user asked"):
            await b.result(timeout=20)
    assert ("step", "cleanup") in kinds(app, b.id)


async def test_cancelled_run_that_returns_after_compensating_is_still_cancelled(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def swallow(ctx: durably.Context) -> str:
        try:
            await ctx.sleep("nap", 60)
        except asyncio.CancelledError:
            return "handled"
        return "slept"

    async with app.worker():
        handle = await app.start(swallow)
        await eventually(lambda: handle.status_sync() == "suspended")
        await handle.cancel()
        with pytest.raises(durably.WorkflowCancelled):
            await handle.result(timeout=20)


async def test_cancel_before_start_and_after_the_end(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    ran: list[str] = []

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        ran.append("ran")
        return "done"

    never = await app.start(flow, id="never")
    assert await never.cancel() == "cancelled"  # no worker ever ran it
    async with app.worker():
        done = await app.start(flow, id="done")
        assert await done.result(timeout=20) == "done"
        assert await done.cancel() == "completed"  # an ended run is left as is
        await asyncio.sleep(0.3)
    assert ran == ["ran"]  # the cancelled run was never resumed
    with pytest.raises(durably.WorkflowCancelled):
        await never.result(timeout=1)
    with pytest.raises(durably.RunNotFound):
        await app.cancel("ghost")


async def test_cancelling_a_parent_cancels_its_children(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def child(ctx: durably.Context) -> str:
        await ctx.wait_for("never")
        return "child done"

    @app.workflow()
    async def parent(ctx: durably.Context) -> str:
        try:
            return str(await ctx.child(child, id="kid"))
        except asyncio.CancelledError:
            raise

    async with app.worker():
        handle = await app.start(parent, id="dad")
        await eventually(lambda: app.storage.get_run("kid") is not None)
        await eventually(lambda: app.get_handle("kid").status_sync() == "suspended")
        await handle.cancel()
        with pytest.raises(durably.WorkflowCancelled):
            await handle.result(timeout=20)
        with pytest.raises(durably.WorkflowCancelled):
            await app.get_handle("kid").result(timeout=20)


async def test_deadline_cancels_the_run_never_before(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow(deadline=60)
    async def slow(ctx: durably.Context) -> str:
        await ctx.sleep("nap", 30)
        return "done"

    async with app.worker():
        started = time.time()
        handle = await app.start(slow, deadline=0.6)
        with pytest.raises(durably.WorkflowCancelled, match="deadline"):
            await handle.result(timeout=20)
    record = app.storage.get_run(handle.id)
    assert record is not None and record.deadline is not None
    assert record.deadline == pytest.approx(started + 0.6, abs=0.2)
    cancel = next(e for e in app.storage.load_journal(handle.id) if e.kind == "cancel")
    assert cancel.at >= record.deadline


async def test_workflow_default_deadline(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.workflow(deadline=0.4)
    async def capped(ctx: durably.Context) -> str:
        await ctx.wait_for("never")
        return "?"

    async with app.worker():
        handle = await app.start(capped)
        with pytest.raises(durably.WorkflowCancelled, match="deadline"):
            await handle.result(timeout=20)


async def test_a_suspended_run_is_cancelled_without_waiting_for_a_poll(
    make_app: Callable[..., durably.App],
) -> None:
    """On PostgreSQL a cancellation made a sleeping run due (to run its
    compensation) but told no worker, so it waited for the worker's poll."""
    app = make_app(suspend_after=0.0, poll_interval=60.0, lease_seconds=30.0)

    @app.workflow()
    async def sleeps(ctx: durably.Context) -> str:
        try:
            await ctx.sleep("long", 300)
        except asyncio.CancelledError:
            return await ctx.run("undo", lambda: "compensated")
        return "slept"

    async with app.worker():
        handle = await app.start(sleeps, id="sleeper")
        await eventually(lambda: app.storage.get_run("sleeper").status == "suspended")  # type: ignore[union-attr]
        began = time.monotonic()
        await handle.cancel("changed my mind")
        with pytest.raises(durably.WorkflowCancelled):
            await handle.result(timeout=30)
        assert time.monotonic() - began < 10  # by the cancellation, not a 60 s poll
        undo = [e for e in app.storage.load_journal("sleeper") if e.name == "undo"]
        assert len(undo) == 1

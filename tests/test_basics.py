"""The basic life of a run on both backends: start, execute, result."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import durably


@dataclasses.dataclass
class Order:
    id: str
    total: int
    placed: dt.datetime


async def test_async_workflow_with_decorated_and_inline_steps(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    calls: list[str] = []

    @app.step()
    async def load(order_id: str) -> Order:
        calls.append("load")
        return Order(order_id, 42, dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))

    @app.step()
    def charge(total: int) -> str:
        calls.append("charge")
        return f"rcpt-{total}"

    @app.workflow()
    async def flow(ctx: durably.Context, order_id: str) -> dict[str, object]:
        order = await load(order_id)
        assert isinstance(order, Order) and isinstance(order.placed, dt.datetime)
        receipt = await ctx.run("charge", charge, order.total)
        stamp = ctx.now()
        return {"receipt": receipt, "aware": stamp.tzinfo is not None}

    async with app.worker(concurrency=4):
        handle = await app.start(flow, "o-1", id="order-o-1")
        assert await handle.result(timeout=20) == {"receipt": "rcpt-42", "aware": True}
        assert await handle.status() == "completed"
    assert calls == ["load", "charge"]


def test_sync_workflow_and_blocking_client_api(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.step()
    def double(x: int) -> int:
        return 2 * x

    @app.workflow()
    def flow(ctx: durably.Context, x: int) -> list[object]:
        a = double(x)
        b = ctx.run("add-one", lambda: a + 1)
        return [a, b, str(ctx.uuid4()), 0 <= ctx.random() < 1]

    async def serve() -> list[object]:
        async with app.worker(concurrency=2):
            handle = await asyncio.to_thread(app.start_sync, flow, 5)
            return await asyncio.to_thread(handle.result_sync, 20)

    a, b, ident, in_range = asyncio.run(serve())
    assert (a, b, in_range) == (10, 11, True)
    uuid.UUID(str(ident))


def _recording_flow(app: durably.App, runs: list[int]) -> Any:
    """A workflow of one step that records each time the step runs."""

    @app.step()
    def effect(n: int) -> int:
        runs.append(n)
        return n

    @app.workflow()
    async def flow(ctx: durably.Context, n: int) -> int:
        return await effect(n)

    return flow


async def test_start_is_idempotent_by_id(make_app: Callable[..., durably.App]) -> None:
    app = make_app()
    runs: list[int] = []
    flow = _recording_flow(app, runs)

    first = await app.start(flow, 1, id="same")
    second = await app.start(flow, 2, id="same")
    assert first.id == second.id == "same"
    async with app.worker():
        assert await second.result(timeout=20) == 1
    assert runs == [1]


async def test_start_in_a_worker_process_is_idempotent_by_id(
    make_app: Callable[..., durably.App],
) -> None:
    # A start beside a worker creates the run already claimed, in one
    # statement; an id that exists must still find the existing run.
    app = make_app()
    runs: list[int] = []
    flow = _recording_flow(app, runs)

    async with app.worker():
        first = await app.start(flow, 1, id="same")
        assert await first.result(timeout=20) == 1
        second = await app.start(flow, 2, id="same")
        assert second.id == "same"
        assert await second.result(timeout=20) == 1
        other = await app.start(flow, 3, id="other")
        assert await other.result(timeout=20) == 3
    assert runs == [1, 3]


async def test_failed_run_carries_the_error(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.workflow()
    async def boom(ctx: durably.Context) -> None:
        raise KeyError("missing thing")

    async with app.worker():
        handle = await app.start(boom)
        with pytest.raises(durably.WorkflowFailed) as info:
            await handle.result(timeout=20)
    assert "KeyError: 'missing thing'" in str(info.value)
    assert info.value.error_type == "KeyError"
    assert "raise KeyError" in info.value.traceback
    assert await handle.status() == "failed"


async def test_result_timeout_is_a_timeout_error(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.workflow()
    async def never(ctx: durably.Context) -> None:
        return None

    handle = await app.start(never)  # no worker runs
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.2)
    assert await handle.status() == "pending"

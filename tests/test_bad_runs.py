"""One bad run never stops the others or the worker (issue 4's last invariant)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

import durably
from conftest import eventually


@dataclasses.dataclass
class Order:
    id: str
    total: int


async def test_arguments_that_no_longer_decode_fail_only_that_run_and_are_retryable(
    make_app: Callable[..., durably.App],
) -> None:
    old = make_app()

    @old.workflow(name="ship", version="1")
    async def ship_v1(ctx: durably.Context, order: dict) -> str:  # type: ignore[type-arg]
        return "shipped"

    await old.start("ship", {"id": "o-1"}, id="bad")  # no total: v2 cannot decode it
    await old.start("ship", {"id": "o-2", "total": 5}, id="good")

    new = make_app()

    @new.workflow(name="ship", version="1")
    async def ship_v2(ctx: durably.Context, order: Order) -> str:
        return f"shipped {order.id} for {order.total}"

    async with new.worker() as worker:
        assert await new.get_handle("good").result(timeout=20) == "shipped o-2 for 5"
        with pytest.raises(durably.WorkflowFailed) as info:
            await new.get_handle("bad").result(timeout=20)
        assert "total" in info.value.message  # names what was wrong
        await eventually(lambda: not worker.drivers)  # nothing stuck in the worker

    fixed = make_app()

    @fixed.workflow(name="ship", version="1")
    async def ship_v3(ctx: durably.Context, order: dict) -> str:  # type: ignore[type-arg]
        return f"shipped {order['id']} without a total"

    assert fixed.storage.set_status("bad", "pending", fixed.clock(), expect=("failed",))
    async with fixed.worker():
        assert await fixed.get_handle("bad").result(timeout=20) == "shipped o-1 without a total"


async def test_runs_of_a_workflow_no_worker_knows_wait_visibly(
    make_app: Callable[..., durably.App],
) -> None:
    everything = make_app()

    @everything.workflow()
    async def legacy(ctx: durably.Context) -> str:
        return "legacy done"

    @everything.workflow()
    async def current(ctx: durably.Context) -> str:
        return "current done"

    await everything.start(legacy, id="orphan")
    partial = make_app()
    partial.workflow(current)  # this deployment no longer has `legacy`
    async with partial.worker():
        handle = await partial.start(current)
        assert await handle.result(timeout=20) == "current done"
        with pytest.raises(TimeoutError):
            await partial.get_handle("orphan").result(timeout=0.5)
    record = partial.storage.get_run("orphan")
    assert record is not None and record.status == "pending" and record.owner is None
    async with everything.worker():  # a worker that knows it comes back
        assert await everything.get_handle("orphan").result(timeout=20) == "legacy done"


async def test_a_result_that_no_longer_decodes_fails_that_run_clearly(
    make_app: Callable[..., durably.App],
) -> None:
    first = make_app(suspend_after=0.0)

    @first.workflow(name="flow", version="1")
    async def flow_v1(ctx: durably.Context) -> str:
        await ctx.run("load", lambda: {"id": "o-1"})
        await ctx.sleep("pause", 0.3)
        return "done"

    async with first.worker():
        handle = await first.start("flow", id="decode")
        await eventually(lambda: handle.status_sync() == "suspended")

    second = make_app()

    def load() -> Order:
        return Order("o-1", 1)

    @second.workflow(name="flow", version="1")
    async def flow_v2(ctx: durably.Context) -> str:
        order = await ctx.run("load", load)
        await ctx.sleep("pause", 0.3)
        return order.id

    async with second.worker():
        with pytest.raises(durably.WorkflowFailed, match="no longer decodes"):
            await second.get_handle("decode").result(timeout=20)

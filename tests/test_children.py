"""Child workflows: results, failures, fan-out, deterministic ids."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import pytest

import durably


@dataclasses.dataclass
class Quote:
    sku: str
    cents: int


async def test_child_result_failure_and_fan_out(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.workflow()
    async def price(ctx: durably.Context, sku: str) -> Quote:
        if sku == "broken":
            raise LookupError(f"no price for {sku}")
        cents = await ctx.run("lookup", lambda: len(sku) * 100)
        return Quote(sku, cents)

    @app.workflow()
    async def order(ctx: durably.Context, skus: list[str]) -> dict[str, object]:
        single = await ctx.child(price, "apple")
        assert isinstance(single, Quote)
        handles = [ctx.start_child(price, sku) for sku in skus]
        results = await asyncio.gather(*handles, return_exceptions=True)
        failures = [
            f"{type(r).__name__}: {r.error_type}: {r.message}"
            for r in results
            if isinstance(r, durably.ChildFailed)
        ]
        return {
            "single": single.cents,
            "many": [r.cents for r in results if isinstance(r, Quote)],
            "failures": failures,
            "ids": [h.id for h in handles],
        }

    async with app.worker():
        handle = await app.start(order, ["kiwi", "broken", "banana"], id="o-1")
        result = await handle.result(timeout=30)
    assert result["single"] == 500
    assert result["many"] == [400, 600]
    assert result["failures"] == ["ChildFailed: LookupError: no price for broken"]
    assert result["ids"] == ["o-1/1", "o-1/2", "o-1/3"]  # deterministic: parent id/position
    children = {r.id: r for r in await app.list_runs(workflow="price")}
    assert {c.parent_id for c in children.values()} == {"o-1"}
    assert children["o-1/2"].status == "failed"


async def test_child_with_explicit_id_and_sync_parent(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    def add(ctx: durably.Context, a: int, b: int) -> int:
        return int(ctx.run("add", lambda: a + b))

    @app.workflow()
    def parent(ctx: durably.Context) -> list[int]:
        started = ctx.start_child(add, 1, 2, id="my-child")
        direct = ctx.child(add, 10, 20)
        return [started.result(), direct]

    async with app.worker():
        handle = await app.start(parent)
        assert await handle.result(timeout=30) == [3, 30]
    assert await app.get_handle("my-child").result(timeout=5) == 3


async def test_unknown_child_workflow_is_a_clear_error(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def parent(ctx: durably.Context) -> str:
        try:
            await ctx.child("no-such-workflow")
        except durably.UnknownWorkflowError as exc:
            return str(exc)
        return "?"

    async with app.worker():
        message = await (await app.start(parent)).result(timeout=20)
    assert "'no-such-workflow' is not a workflow" in message


async def test_child_arguments_are_checked_when_it_is_started(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def child(ctx: durably.Context, value: int) -> int:
        return value

    @app.workflow()
    async def parent(ctx: durably.Context) -> None:
        await ctx.child(child, object())

    async with app.worker():
        with pytest.raises(durably.WorkflowFailed, match="argument 'value' of workflow 'child'"):
            await (await app.start(parent)).result(timeout=20)


async def test_a_child_id_that_is_the_run_itself_or_its_parent_fails_the_child(
    make_app: Callable[..., durably.App],
) -> None:
    """A child started with its run's own id or an ancestor's attached to
    that run, and they waited for each other forever."""
    app = make_app()

    @app.workflow()
    async def selfish(ctx: durably.Context) -> str:
        try:
            return str(await ctx.child(selfish, id=ctx.run_id))
        except durably.ChildFailed as exc:
            return exc.message

    @app.workflow()
    async def node(ctx: durably.Context, depth: int, root: str) -> str:
        # Down to ``depth``, then a child with the root's id (an ancestor's).
        target = root if depth == 0 else f"{ctx.run_id}-{depth}"
        try:
            return str(await ctx.child(node, depth - 1, root, id=target))
        except durably.ChildFailed as exc:
            return exc.message

    async with app.worker():
        own = await (await app.start(selfish, id="me")).result(timeout=10)
        assert "this run's own id" in own, own
        for depth in (1, 3):  # the parent's id, a great-grandparent's
            said = await (await app.start(node, depth, f"top{depth}", id=f"top{depth}")).result(
                timeout=10
            )
            assert "the id of an ancestor of this run" in said, said


async def test_two_children_with_one_id_are_refused(
    make_app: Callable[..., durably.App],
) -> None:
    """The second child with the same id replaced the first in the worker's
    memory: the run waited for the first forever (and failed with a message
    about non-durable awaits)."""
    app = make_app()

    @app.workflow()
    async def leaf(ctx: durably.Context, x: int) -> int:
        return x

    @app.workflow()
    async def twins(ctx: durably.Context) -> str:
        first = ctx.start_child(leaf, 1, id="twin")
        try:
            ctx.start_child(leaf, 2, id="twin")
        except durably.ConfigurationError as exc:
            return f"{await first} {exc}"
        return "no error"

    async with app.worker():
        said = await (await app.start(twins)).result(timeout=10)
        assert said.startswith("1 child id 'twin' is already used"), said


async def test_a_suspended_parent_is_woken_by_its_child_without_waiting_for_a_poll(
    make_app: Callable[..., durably.App],
) -> None:
    """On PostgreSQL a child's end made its suspended parent due but told no
    worker: the parent ended a whole poll (5 s by default) after its child.
    Workers are now notified in the transaction that ends the child."""
    app = make_app(suspend_after=0.0, poll_interval=60.0, lease_seconds=30.0)

    @app.workflow()
    async def kid(ctx: durably.Context) -> float:
        await ctx.sleep("nap", 0.5)  # its parent is suspended by then
        return await ctx.run("ended at", time.time)

    @app.workflow()
    async def parent(ctx: durably.Context) -> float:
        return float(await ctx.child(kid))

    async with app.worker():
        for i in range(2):
            handle = await app.start(parent, id=f"parent-{i}")
            child_ended = await handle.result(timeout=60)
            assert time.time() - child_ended < 10  # woken by the child, not a 60 s poll

"""What a run's engine objects leave behind (src/durably/_engine/aio.py and
threaded.py)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator

import pytest

import durably
from durably._engine.aio import AsyncInstance, WorkflowLoop
from durably._engine.threaded import SyncInstance


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The cyclic garbage collector off, and what it would have freed kept."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_a_finished_run_leaves_nothing_for_the_cyclic_collector(
    make_app: Callable[..., durably.App], no_collector: None
) -> None:
    # A run's instance, its loop, its task and its Context referred to one
    # another: each run's objects waited for a collection (27 a run), and
    # with them the collector's pauses grew.
    app = make_app()

    @app.step()
    async def add_one(x: int) -> int:
        return x + 1

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        return await add_one(await add_one(x))

    async with app.worker():
        for x in range(5):
            handle = await app.start(flow, x)
            assert await handle.result() == x + 2
    gc.collect()
    left = [o for o in gc.garbage if isinstance(o, (AsyncInstance, WorkflowLoop))]
    assert left == []


async def test_a_finished_sync_run_leaves_nothing_for_the_cyclic_collector(
    make_app: Callable[..., durably.App], no_collector: None
) -> None:
    app = make_app()

    @app.step()
    def add_one(x: int) -> int:
        return x + 1

    @app.workflow()
    def flow(ctx: durably.Context, x: int) -> int:
        return add_one(add_one(x))  # type: ignore[no-any-return]

    async with app.worker():
        for x in range(5):
            handle = await app.start(flow, x)
            assert await handle.result() == x + 2
    gc.collect()
    assert [o for o in gc.garbage if isinstance(o, SyncInstance)] == []

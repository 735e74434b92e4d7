"""What a run's engine objects leave behind (src/durably/_engine/aio.py and
threaded.py)."""

from __future__ import annotations

import gc
import subprocess
import sys
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


_STUBBORN = """
import asyncio, gc, logging, sys
import durably

logging.basicConfig(level=logging.WARNING, format="LOG %(name)s: %(message)s")
app = durably.App("t", sys.argv[1])

@app.workflow()
async def flow(ctx: durably.Context) -> int:
    never = asyncio.Event()

    async def stubborn() -> None:
        async with asyncio.timeout(3600):  # its timer is cancelled as it is freed
            while True:
                try:
                    await never.wait()
                except asyncio.CancelledError:
                    pass  # the cancellation at the run's end, ignored

    asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    return 1

async def main() -> None:
    async with app.worker():
        handle = await app.start(flow, id="stubborn")
        assert await handle.result() == 1
    app.close()
    gc.collect()
    print("collected")

asyncio.run(main())
"""


def test_a_task_of_the_workflow_that_ignored_its_cancellation_is_reported_when_freed(
    database_url: str,
) -> None:
    # Such a task outlives the run in a cycle with the run's instance: the
    # collector frees them together, and asyncio then reports the pending
    # task through the workflow loop, whose instance is gone by then.
    done = subprocess.run(
        [sys.executable, "-c", _STUBBORN, database_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "collected" in done.stdout
    assert "run stubborn: Task was destroyed but it is pending" in done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr

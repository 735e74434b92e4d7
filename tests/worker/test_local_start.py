"""A start by a process whose worker drives the run: created claimed, and,
for a generated id, the run's code begun while its creation is in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import durably
from conftest import eventually


def prologue_and_step(app: durably.App) -> tuple[Any, list[int], list[bool]]:
    """A workflow that notes its input in its code before its first step
    (``began``); its step notes whether the run's row was committed when the
    step began (``saw_row``)."""
    began: list[int] = []
    saw_row: list[bool] = []

    @app.step()
    async def first(x: int) -> int:
        run_id = durably.current_step_key().rsplit(":", 1)[0]
        saw_row.append(app.storage.get_run(run_id) is not None)
        return x + 1

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        began.append(x)
        return int(await first(x))

    return flow, began, saw_row


@contextlib.contextmanager
def creations_held(worker: Any) -> Iterator[None]:
    """Hold back every new run's creation (its write waits before it is
    sent) until the block ends; everything else the worker writes or claims
    goes on."""
    release = asyncio.Event()
    real = worker.committer.submit

    async def held(write: Any) -> bool:
        if write.create is not None:
            await release.wait()
        return bool(await real(write))

    worker.committer.submit = held
    try:
        yield
    finally:
        worker.committer.submit = real
        release.set()


async def test_a_generated_ids_code_begins_during_its_creation_and_its_step_after(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    flow, began, saw_row = prologue_and_step(app)
    async with app.worker() as worker:
        assert await (await app.start(flow, 0)).result(timeout=20) == 1
        with creations_held(worker):
            starting = asyncio.get_running_loop().create_task(app.start(flow, 1))
            await eventually(lambda: began == [0, 1])  # its code runs meanwhile
            await asyncio.sleep(0.3)
            assert not starting.done()  # its creation waits for the block
            assert saw_row == [True]  # its first step does not begin before it
        handle = await asyncio.wait_for(starting, 20)
        assert await handle.result(timeout=20) == 2
    assert saw_row == [True, True]
    assert began == [0, 1]


async def test_a_given_ids_code_waits_for_its_creation(
    make_app: Callable[..., durably.App],
) -> None:
    # A given id may name a run that exists: its code must not run here
    # unless this start created it.
    app = make_app()
    flow, began, saw_row = prologue_and_step(app)
    async with app.worker() as worker:
        assert await (await app.start(flow, 0)).result(timeout=20) == 1
        with creations_held(worker):
            starting = asyncio.get_running_loop().create_task(app.start(flow, 1, id="given"))
            await asyncio.sleep(0.5)
            assert not starting.done()
            assert began == [0]
        handle = await asyncio.wait_for(starting, 20)
        assert await handle.result(timeout=20) == 2
    assert began == [0, 1]
    assert saw_row == [True, True]


async def test_code_begun_for_a_run_that_was_not_created_writes_nothing(
    make_app: Callable[..., durably.App],
) -> None:
    # The worker is told the id is new, but it exists (the one case in which
    # the early driver's run is not created, besides a failed or cancelled
    # insert): the driver stops before its first step, and the existing run,
    # its journal and the worker's slots are as they were.
    app = make_app()
    flow, began, saw_row = prologue_and_step(app)
    async with app.worker() as worker:
        assert await (await app.start(flow, 5, id="taken")).result(timeout=20) == 6
        row = app.storage.get_run("taken")
        journal = app.storage.load_journal("taken")
        run = app._new_run(flow, (7,), {}, "taken")
        assert await worker.start_local(run, new_id=True) is False
        await eventually(lambda: not _run_tasks("taken"))
        assert began == [5, 7]  # its code began, then stopped at its first step
        assert saw_row == [True]
        assert "taken" not in worker.drivers
        await eventually(lambda: worker._occupied() == 0)  # (a claim in flight holds slots)
        assert app.storage.get_run("taken") == row
        assert app.storage.load_journal("taken") == journal
        # The start the caller would then make finds the existing run.
        assert await (await app.start(flow, 7, id="taken")).result(timeout=20) == 6
    assert began == [5, 7]


async def test_a_start_cancelled_during_its_creation_stops_the_code_it_began(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    flow, began, saw_row = prologue_and_step(app)
    async with app.worker() as worker:
        assert await (await app.start(flow, 0)).result(timeout=20) == 1
        with creations_held(worker):
            starting = asyncio.get_running_loop().create_task(app.start(flow, 1))
            await eventually(lambda: began == [0, 1])
            starting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await starting
            await eventually(lambda: not _run_tasks())
            await asyncio.sleep(0.3)
            assert saw_row == [True]  # its step never began
        await eventually(lambda: worker._occupied() == 0)  # (claims waited for the block too)
        # The worker goes on as before.
        assert await (await app.start(flow, 2)).result(timeout=20) == 3


async def test_code_begun_whose_driver_is_cancelled_before_the_creation_is_driven_anew(
    make_app: Callable[..., durably.App],
) -> None:
    # The early driver's task is cancelled while the insert waits (as a
    # shutdown cancelling every task would): once created, the run gets a
    # driver of its own, and the start answers as usual.
    app = make_app()
    flow, began, saw_row = prologue_and_step(app)
    async with app.worker() as worker:
        assert await (await app.start(flow, 0)).result(timeout=20) == 1
        with creations_held(worker):
            starting = asyncio.get_running_loop().create_task(app.start(flow, 1))
            await eventually(lambda: began == [0, 1])
            (early,) = _run_tasks()
            early.cancel()
            await eventually(early.done)
        handle = await asyncio.wait_for(starting, 20)
        assert await handle.result(timeout=20) == 2
        await eventually(lambda: not worker.drivers)
    assert began == [0, 1, 1]  # its code began again under its new driver
    assert saw_row == [True, True]


@pytest.mark.parametrize("given_id", [False, True])
async def test_a_worker_stopping_during_a_local_creation_hands_the_run_back(
    make_app: Callable[..., durably.App], given_id: bool
) -> None:
    # The worker stops while a start's insert waits: the stop waits for it,
    # and the run it created (held by this worker) is drained like the runs
    # it drove (ended, or handed back for another worker to take at once),
    # not driven by a stopped worker nor left to its lease.
    app = make_app()
    flow, _, saw_row = prologue_and_step(app)
    async with app.worker() as worker:
        assert await (await app.start(flow, 0)).result(timeout=20) == 1
        with creations_held(worker):
            starting = asyncio.get_running_loop().create_task(
                app.start(flow, 1, id="late" if given_id else None)
            )
            await asyncio.sleep(0.3)
            stopping = asyncio.get_running_loop().create_task(worker.stop())
            await asyncio.sleep(0.3)
            assert not stopping.done()  # it waits for the creation
        handle = await asyncio.wait_for(starting, 20)
        await asyncio.wait_for(stopping, 20)
    # Drained with the others: ended before the stop returned, or handed
    # back (claimable at once); never held by the stopped worker. (Pending:
    # the start met a claim in flight, waited for it, found the worker
    # stopping and created the run unclaimed.)
    row = app.storage.get_run(handle.id)
    assert row is not None and row.owner is None
    assert row.status in ("pending", "running", "completed")
    steps_then = len(saw_row)
    await asyncio.sleep(0.3)
    assert len(saw_row) == steps_then  # nothing ran after the stop returned
    async with app.worker():  # another worker takes it up at once
        assert await handle.result(timeout=20) == 2
    assert saw_row == [True, True]


def _run_tasks(run_id: str = "") -> list[asyncio.Task[Any]]:
    """Driver tasks not yet done (of ``run_id``, or any)."""
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith(f"durably-run-{run_id}") and not t.done()
    ]

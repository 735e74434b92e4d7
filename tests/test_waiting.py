"""Waiting for results: many waiters share their reads of the database."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import pytest

import durably


def count_reads(app: durably.App) -> dict[str, list[int]]:
    """Per storage read method of ``app``: the number of ids of each call."""
    storage: Any = app.storage
    calls: dict[str, list[int]] = collections.defaultdict(list)
    for name in ("get_run", "get_runs", "ended_runs"):
        real = getattr(storage, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            ids = args[0]
            calls[_name].append(1 if isinstance(ids, str) else len(ids))
            return _real(*args)

        setattr(storage, name, counted)
    return calls


def add_flow(app: durably.App) -> Any:
    @app.step()
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        return int(await double(x))

    return flow


async def test_many_waiters_share_their_reads(
    make_app: Callable[..., durably.App], backend: str
) -> None:
    # The client has no worker: every result comes from the database. Each
    # run's first read is batched with the other waiters'; after that only
    # ended rows are read, and on PostgreSQL only the runs a NOTIFY names.
    workers, client = make_app(), make_app()
    add_flow(workers)
    flow = add_flow(client)
    reads = count_reads(client)
    n = 200
    async with workers.worker(concurrency=50):
        handles = [await client.start(flow, i) for i in range(n)]
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert results == [2 * i for i in range(n)]
    assert reads["get_run"] == []  # no read per waiter
    assert sum(reads["get_runs"]) == n  # each run's first read, once...
    assert len(reads["get_runs"]) < n / 4  # ...in shared batches
    if backend == "postgres":
        # Ended rows read by name, about once each (a full re-read at most
        # when the listener (re)connects or the fallback re-check runs).
        assert sum(reads["ended_runs"]) <= 3 * n


async def test_waiting_on_unknown_runs_fails_them_and_not_the_others(
    make_app: Callable[..., durably.App],
) -> None:
    workers, client = make_app(), make_app()
    add_flow(workers)
    flow = add_flow(client)
    async with workers.worker():
        real = [await client.start(flow, i) for i in range(3)]
        ghosts = [client.get_handle(f"ghost-{i}") for i in range(3)]
        outcomes = await asyncio.gather(
            *(h.result(timeout=30) for h in real + ghosts), return_exceptions=True
        )
        assert outcomes[:3] == [0, 2, 4]
        for outcome in outcomes[3:]:
            assert isinstance(outcome, durably.RunNotFound)
            assert "no run with id 'ghost-" in str(outcome)
        with pytest.raises(durably.RunNotFound, match="ghost-sync"):
            await asyncio.to_thread(client.get_handle("ghost-sync").result_sync, 30)

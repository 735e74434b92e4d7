"""The benchmark's workflows for durably (``durably worker bench_durably:app``).

The database comes from ``DURABLY_DATABASE_URL`` (set by the runner). Marker
files named by environment variables count step executions across processes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os

from common import bump

import durably

app = durably.App("bench")


def _mark(env: str) -> None:
    path = os.environ.get(env)
    if path:
        bump(path)


# -- the 3-step workflow (async, the fast path) -------------------------------------


@app.step()
async def add_one(x: int) -> int:
    return x + 1


@app.step()
async def double(x: int) -> int:
    return x * 2


@app.step()
async def minus_three(x: int) -> int:
    return x - 3


@app.workflow(version="1")
async def three_steps(ctx: durably.Context, x: int) -> int:
    a = await add_one(x)
    b = await double(a)
    return await minus_three(b)


# -- sleepers: a durable timer until an absolute time ----------------------------------


@app.step()
async def mark_asleep(x: int) -> int:
    _mark("BENCH_ASLEEP_MARK")
    return x


@app.step()
async def mark_done(x: int) -> int:
    _mark("BENCH_DONE_MARK")
    return x


@app.workflow(version="1")
async def sleeper(ctx: durably.Context, x: int, wake_at: float) -> int:
    await mark_asleep(x)
    await ctx.sleep_until("nap", dt.datetime.fromtimestamp(wake_at, tz=dt.timezone.utc))
    return await mark_done(x)


# -- blocked runs for the recovery scenario -----------------------------------------------


@app.step()
async def slow_double(x: int) -> int:
    if os.environ.get("BENCH_BLOCK"):
        _mark("BENCH_BLOCK_MARK")
        await asyncio.sleep(3600)  # this worker gets SIGKILLed while it waits here
    return x * 2


@app.step()
async def finish(x: int) -> int:
    _mark("BENCH_DONE_MARK")
    return x - 3


@app.workflow(version="1")
async def blocker(ctx: durably.Context, x: int) -> int:
    a = await add_one(x)
    b = await slow_double(a)
    return await finish(b)

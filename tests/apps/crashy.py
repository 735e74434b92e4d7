"""Workflow shapes for crash tests. Each records every real step execution."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import durably

from .effects import _connect, blocked, record

app = durably.App("crashy")


def _maybe_hang(step: str) -> None:
    if blocked(step):
        time.sleep(600)  # the test SIGKILLs us here


@app.step()
def a(x: int) -> int:
    record("a")
    return x + 1


@app.step()
def b(x: int) -> int:
    record("b")
    _maybe_hang("b")
    return x * 10


@app.step()
def c(x: int) -> int:
    record("c")
    return x + 5


@app.workflow()
def sequential(ctx: durably.Context, x: int) -> int:
    return c(b(a(x)))


@app.workflow()
async def sleeper(ctx: durably.Context, x: int, seconds: float) -> dict[str, float]:
    first = await ctx.run("before", lambda: (record("before"), x)[1])
    woke = ctx.now()
    await ctx.sleep("nap", timedelta(seconds=seconds))
    after = await ctx.run("after", lambda: (record("after"), time.time())[1])
    return {"first": first, "slept_from": woke.timestamp(), "after": after}


_FAILS = {"flaky": 2}


@app.step(retry=durably.Retry(max_attempts=4, initial=1.5, backoff=1.0))
def flaky(x: int) -> int:
    record("flaky")
    key = durably.current_step_key()
    conn = _connect()
    try:
        tries = conn.execute(
            "SELECT count(*) FROM effects WHERE key = ? AND step = 'flaky'", (key,)
        ).fetchone()[0]
    finally:
        conn.close()
    if tries <= _FAILS["flaky"]:
        raise ConnectionError(f"try {tries} failed")
    return x * 3


@app.workflow()
async def retrying(ctx: durably.Context, x: int) -> int:
    return await flaky(x)


@app.step()
async def fast(x: int) -> int:
    record("fast")
    return x + 100


@app.step()
async def slow(x: int) -> int:
    record("slow")
    if blocked("slow"):
        await asyncio.sleep(600)
    return x + 200


@app.workflow()
async def parallel(ctx: durably.Context, x: int) -> list[int]:
    results = await asyncio.gather(fast(x), slow(x))
    return list(results)

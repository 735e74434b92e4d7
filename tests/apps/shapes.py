"""One workflow of every shape, for the crash suite (tests/test_crash_points.py).

Every step records each real execution in the effects ledger (``apps.effects``)
under its journal name, so the test can compare what ran with what the journal
holds. Step names are unique within a run. What an uninterrupted run returns
is written next to each workflow (``EXPECTED`` in the test mirrors it).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import durably

from .effects import _connect, record

app = durably.App("shapes")

WORK_SECONDS = 0.02  # each step takes a little time, so steps overlap and get cut off


def _work(step: str, value: Any) -> Any:
    """The body of every ``ctx.run`` step: record one execution, return ``value``."""
    record(step)
    time.sleep(WORK_SECONDS)
    return value


def _executions(step: str) -> int:
    """How often ``step`` ran for the current step key (this execution included)."""
    conn = _connect()
    try:
        row = conn.execute(
            "SELECT count(*) FROM effects WHERE key = ? AND step = ?",
            (durably.current_step_key(), step),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


# -- sequential async steps: (x + 1) * 10 + 5 -------------------------------------------


@app.step()
async def s1(x: int) -> int:
    record("s1")
    await asyncio.sleep(WORK_SECONDS)
    return x + 1


@app.step()
async def s2(x: int) -> int:
    record("s2")
    await asyncio.sleep(WORK_SECONDS)
    return x * 10


@app.step()
async def s3(x: int) -> int:
    record("s3")
    await asyncio.sleep(WORK_SECONDS)
    return x + 5


@app.workflow()
async def sequential(ctx: durably.Context, x: int) -> int:
    return await s3(await s2(await s1(x)))


# -- a sync workflow with sync steps: ((x + 2) * 3) - 1 -----------------------------------


@app.step()
def t1(x: int) -> int:
    record("t1")
    time.sleep(WORK_SECONDS)
    return x + 2


@app.step()
def t2(x: int) -> int:
    record("t2")
    time.sleep(WORK_SECONDS)
    return x * 3


@app.step()
def t3(x: int) -> int:
    record("t3")
    time.sleep(WORK_SECONDS)
    return x - 1


@app.workflow()
def sync_flow(ctx: durably.Context, x: int) -> int:
    return t3(t2(t1(x)))


# -- a durable sleep: [x, x + 1] ------------------------------------------------------------


@app.workflow()
async def sleeper(ctx: durably.Context, x: int, seconds: float) -> list[int]:
    before = await ctx.run("nap_before", _work, "nap_before", x)
    await ctx.sleep("nap", timedelta(seconds=seconds))
    after = await ctx.run("nap_after", _work, "nap_after", before + 1)
    return [before, after]


# -- a step retried with backoff (fails twice, then succeeds): x * 7 ------------------------

FAILURES = 2  # executions of ``flaky`` that fail before one succeeds


@app.step(retry=durably.Retry(max_attempts=5, initial=0.4, backoff=3.0, max_interval=5.0))
async def flaky(x: int) -> int:
    # Counted in the ledger, not by attempt number: a crash that cuts an attempt
    # off before its failure was journaled does not add a failure.
    record("flaky")
    if _executions("flaky") <= FAILURES:
        raise ConnectionError("flaky service is down")
    return x * 7


@app.workflow()
async def retrying(ctx: durably.Context, x: int) -> int:
    return await flaky(x)


# -- parallel steps with asyncio.gather: [x, x + 1, x + 2] -----------------------------------


@app.workflow()
async def fan_out(ctx: durably.Context, x: int) -> list[int]:
    results = await asyncio.gather(*(ctx.run(f"g{i}", _work, f"g{i}", x + i) for i in range(3)))
    return list(results)


# -- a step that raises, compensated after StepFailed: "refunded <x>: ValueError" -----------


@app.step(retry=durably.Retry(max_attempts=1))
async def charge(x: int) -> int:
    record("charge")
    raise ValueError(f"card declined for {x}")


@app.workflow()
async def saga(ctx: durably.Context, x: int) -> str:
    reserved = await ctx.run("reserve", _work, "reserve", x)
    try:
        await charge(reserved)
    except durably.StepFailed as exc:
        return str(
            await ctx.run("refund", _work, "refund", f"refunded {reserved}: {exc.error_type}")
        )
    return "charged"


# -- a wait for a signal "go" (the test sends it): "<payload>/<x>" ----------------------------


@app.workflow()
async def approval(ctx: durably.Context, x: int) -> str:
    asked = await ctx.run("ask", _work, "ask", x)
    answer = await ctx.wait_for("go")
    return str(await ctx.run("act", _work, "act", f"{answer}/{asked}"))


# -- a child workflow: {"child": 2x + 1, "after": x} ----------------------------------------


@app.workflow()
async def kid(ctx: durably.Context, x: int) -> int:
    one = await ctx.run("k1", _work, "k1", x * 2)
    return int(await ctx.run("k2", _work, "k2", one + 1))


@app.workflow()
async def family(ctx: durably.Context, x: int) -> dict[str, int]:
    before = await ctx.run("p_before", _work, "p_before", x)
    got = await ctx.child(kid, before)
    after = await ctx.run("p_after", _work, "p_after", before)
    return {"child": got, "after": after}


# -- cancelled while it sleeps (the test cancels it), compensated: ends "cancelled" ---------


@app.workflow()
async def cancellable(ctx: durably.Context, x: int) -> str:
    await ctx.run("c_before", _work, "c_before", x)
    try:
        await ctx.sleep("long_nap", timedelta(minutes=10))
    except asyncio.CancelledError:
        await ctx.run("c_undo", _work, "c_undo", x)
        raise
    await ctx.run("c_after", _work, "c_after", x)
    return "not cancelled"

"""Workflows that wait (signals, timers, children, cancellation, deadlines) for
crash tests. Every real step execution is recorded in the effects ledger.

Steps named in ``CRASHY_BLOCK`` hang in that worker so a test can SIGKILL it
there; steps given a ``gate`` path wait until the test creates that file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta
from typing import Any

import durably

from .effects import blocked, record

app = durably.App("waity")


def _effect(step: str, value: Any = None, note: str = "") -> Any:
    """Record one real execution of ``step``; hang if this worker is told to."""
    record(step, note)
    if blocked(step):
        time.sleep(600)  # the test SIGKILLs us here
    return value


def _gated(step: str, gate: str, value: Any) -> Any:
    """Record ``step``, then wait until the file ``gate`` exists (the test opens it)."""
    record(step)
    give_up = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < give_up:
        time.sleep(0.02)
    return value


# -- signals --------------------------------------------------------------------


@app.workflow()
async def approval(ctx: durably.Context, x: int, recheck: float) -> dict[str, Any]:
    """One wait for ``approve``, then a second, short one that must time out: a
    signal handed to the first wait is never handed out again."""
    before = await ctx.run("before", _effect, "before", x)
    payload = await ctx.wait_for("approve")
    try:
        again = await ctx.wait_for("approve", timeout=recheck)
    except TimeoutError:
        again = "timed out"
    after = await ctx.run("after", _effect, "after", x + 1)
    return {"before": before, "payload": payload, "again": again, "after": after}


@app.workflow()
async def two_waits(ctx: durably.Context) -> list[Any]:
    """Two waits on one topic with a step (``between``) in between."""
    first = await ctx.wait_for("t")
    await ctx.run("between", _effect, "between", None)
    second = await ctx.wait_for("t")
    return [first, second]


@app.workflow()
async def collect(ctx: durably.Context, n: int) -> list[Any]:
    """``n`` waits on one topic, each followed by a step."""
    got = []
    for _ in range(n):
        value = await ctx.wait_for("t")
        got.append(await ctx.run("got", _effect, "got", value))
    return got


# -- cancellation -----------------------------------------------------------------


@app.workflow()
async def cancel_in_step(ctx: durably.Context, gate: str) -> str:
    """Cancelled while ``work`` executes: ``work`` finishes and is journaled, the
    cancellation is raised at ``next``, and ``undo`` compensates what was done."""
    done: list[Any] = []
    try:
        done.append(await ctx.run("work", _gated, "work", gate, "worked"))
        await ctx.run("next", _effect, "next", None)
    except asyncio.CancelledError:
        await ctx.run("undo", _effect, "undo", None, json.dumps(done))
        raise
    return "not cancelled"


@app.workflow()
async def cancel_in_sleep(ctx: durably.Context, seconds: float) -> str:
    await ctx.run("before", _effect, "before", None)
    try:
        await ctx.sleep("nap", timedelta(seconds=seconds))
    except asyncio.CancelledError:
        await ctx.run("undo", _effect, "undo", None)
        raise
    await ctx.run("after", _effect, "after", None)
    return "not cancelled"


@app.workflow()
def cancel_in_wait(ctx: durably.Context) -> str:
    """A ``def`` workflow: cancellation reaches a blocked sync wait too."""
    ctx.run("before", _effect, "before", None)
    try:
        ctx.wait_for("never")
    except asyncio.CancelledError:
        ctx.run("undo", _effect, "undo", None)
        raise
    ctx.run("after", _effect, "after", None)
    return "not cancelled"


# -- children -----------------------------------------------------------------------


@app.workflow()
async def kid(ctx: durably.Context, x: int) -> int:
    """Three steps; ``k2`` can be made to hang (CRASHY_BLOCK=k2)."""
    one = await ctx.run("k1", _effect, "k1", x + 1)
    two = await ctx.run("k2", _effect, "k2", one * 10)
    return int(await ctx.run("k3", _effect, "k3", two + 5))


@app.workflow()
async def waiting_kid(ctx: durably.Context, x: int) -> dict[str, Any]:
    """A child that waits for a signal ``go`` between two steps."""
    one = await ctx.run("k1", _effect, "k1", x + 1)
    try:
        go = await ctx.wait_for("go")
    except asyncio.CancelledError:
        await ctx.run("kid_undo", _effect, "kid_undo", None)
        raise
    three = await ctx.run("k3", _effect, "k3", one + 100)
    return {"one": one, "go": go, "three": three}


@app.workflow()
async def parent(ctx: durably.Context, x: int, child: str) -> dict[str, Any]:
    """Runs child workflow ``child`` (``kid`` or ``waiting_kid``) between two steps."""
    before = await ctx.run("p_before", _effect, "p_before", x)
    try:
        got = await ctx.child(child, before)
    except asyncio.CancelledError:
        await ctx.run("p_undo", _effect, "p_undo", None)
        raise
    after = await ctx.run("p_after", _effect, "p_after", "after")
    return {"child": got, "after": after}


# -- deadlines ----------------------------------------------------------------------


@app.workflow()
async def deadlined(ctx: durably.Context) -> str:
    """Waits for a signal that never comes; only its deadline ends it."""
    await ctx.run("before", _effect, "before", None)
    try:
        await ctx.wait_for("never")
    except asyncio.CancelledError:
        await ctx.run("undo", _effect, "undo", None)
        raise
    return "not cancelled"

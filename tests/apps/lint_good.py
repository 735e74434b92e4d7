"""Workflows that only read time, randomness and ids through the context.

Direct calls appear only inside lambdas and nested functions run as steps.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
import uuid
from datetime import datetime, timedelta

import durably

app = durably.App("lint-good")


@app.step()
def stamp() -> float:
    return time.time() + datetime.now().timestamp()  # a step: allowed


@app.workflow()
async def tidy(ctx: durably.Context) -> str:
    now = ctx.now()
    roll = ctx.random()
    token = ctx.uuid4()
    await ctx.sleep("pause", timedelta(seconds=1))
    wall = await ctx.run("wall", lambda: time.time())
    today = await ctx.run("today", lambda: dt.datetime.now().isoformat())
    salt = await ctx.run("salt", lambda: os.urandom(4).hex())

    async def pick() -> int:
        time.sleep(0)
        return random.randint(1, 6)

    picked = await ctx.run("pick", pick)
    made = await ctx.run("made", lambda: str(uuid.uuid4()))
    return f"{now.isoformat()} {roll} {token} {wall} {today} {salt} {picked} {made}"


@app.workflow()
def tidy_sync(ctx: durably.Context, x: int) -> float:
    def wall() -> float:
        return time.time()

    now: float = ctx.run("wall", wall)
    return now + x + stamp()

"""Workflows that read the clock, randomness and UUIDs directly (``durably check`` flags them).

Each offending line ends with a ``# BAD: <call>`` marker the lint tests look for.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
import uuid
from datetime import datetime

import durably

app = durably.App("lint-bad")


@app.workflow()
async def clocks(ctx: durably.Context) -> float:
    started = time.time()  # BAD: time.time
    today = dt.datetime.now()  # BAD: dt.datetime.now
    stamp = datetime.now()  # BAD: datetime.now
    await ctx.run("fine", lambda: time.time())
    return started + today.timestamp() + stamp.timestamp()


@app.workflow()
def chance(ctx: durably.Context) -> str:
    roll = random.randint(1, 6)  # BAD: random.randint
    token = uuid.uuid4()  # BAD: uuid.uuid4
    salt = os.urandom(8)  # BAD: os.urandom

    def helper() -> int:
        return random.randint(1, 6) + len(os.urandom(2))

    ctx.run("helper", helper)
    return f"{roll}-{token}-{salt.hex()}"


@app.workflow()
async def napper(ctx: durably.Context, seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)  # BAD: time.sleep

    async def nested() -> str:
        time.sleep(0)
        return str(uuid.uuid4())

    await ctx.run("nested", nested)

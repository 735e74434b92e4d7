"""Wait up to three days for a user to activate; nudge them if they do not.

Without durable execution this is a cron job, a query and a flag column.
Here it is a few lines, and the three days cost nothing: the run is a row
in the database until the signal arrives or the timer fires.

Run it (SQLite in the current folder, with a 2-second "three days"):

    python examples/activation_nudge.py

Your signup handler would call ``app.start(onboarding, user_id, id=...)``
and your activation endpoint ``app.signal(run_id, "activated", {...})``.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import durably

app = durably.App("onboarding")

WAIT = timedelta(seconds=float(os.environ.get("NUDGE_WAIT_SECONDS", 3 * 24 * 3600)))


@app.step()
def send_welcome(user_id: str) -> str:
    print(f"  welcome mail to {user_id}")
    return "welcome-sent"


@app.step()
def send_nudge(user_id: str) -> str:
    print(f"  nudge mail to {user_id}: finish setting up your account!")
    return "nudge-sent"


@app.workflow(version="1")
async def onboarding(ctx: durably.Context, user_id: str) -> str:
    await send_welcome(user_id)
    try:
        activation = await ctx.wait_for("activated", timeout=WAIT)
    except TimeoutError:
        await send_nudge(user_id)
        return "nudged"
    return f"activated via {activation['via']}"


async def main() -> None:
    async with app.worker():
        eager = await app.start(onboarding, "ada", id="onboarding-ada")
        idle = await app.start(onboarding, "bob", id="onboarding-bob")
        await app.signal(eager.id, "activated", {"via": "email link"})
        print(f"ada: {await eager.result(timeout=60)}")  # one write: steps print meanwhile
        print(f"bob: {await idle.result(timeout=60)}")


if __name__ == "__main__":
    os.environ.setdefault("NUDGE_WAIT_SECONDS", "2")
    WAIT = timedelta(seconds=float(os.environ["NUDGE_WAIT_SECONDS"]))
    asyncio.run(main())

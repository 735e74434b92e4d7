"""Human approval with a deadline, and compensation when it is refused.

An expense is reserved against the budget, then waits for a manager. An
approval books it; a rejection, a timeout or a cancellation (the run's
deadline) releases the reservation: the compensation lives in the same
function as the happy path.

Run it (SQLite in the current folder):

    python examples/approval.py
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import durably

app = durably.App("expenses")

DECISION_WINDOW = timedelta(seconds=float(os.environ.get("APPROVAL_WINDOW_SECONDS", 2 * 86400)))


@app.step()
def reserve_budget(expense_id: str, cents: int) -> str:
    print(f"  reserved {cents / 100:.2f} for {expense_id}")
    return f"hold-{expense_id}"


@app.step()
def release_budget(hold: str) -> None:
    print(f"  released {hold}")


@app.step()
def book_expense(hold: str) -> str:
    print(f"  booked {hold}")
    return f"booked-{hold}"


@app.workflow(version="1", deadline=timedelta(days=7))
async def expense_approval(ctx: durably.Context, expense_id: str, cents: int) -> str:
    hold = await reserve_budget(expense_id, cents)
    ctx.set_event("status", "waiting for a manager")
    try:
        decision = await ctx.wait_for("decision", timeout=DECISION_WINDOW)
    except TimeoutError:
        await release_budget(hold)
        ctx.set_event("status", "expired")
        return "expired"
    except asyncio.CancelledError:
        await release_budget(hold)  # compensation still runs steps
        raise
    if not decision.get("approved"):
        await release_budget(hold)
        ctx.set_event("status", f"rejected by {decision.get('by')}")
        return "rejected"
    booking = await book_expense(hold)
    ctx.set_event("status", f"approved by {decision.get('by')}")
    return booking


async def main() -> None:
    async with app.worker():
        yes = await app.start(expense_approval, "exp-1", 4200, id="expense-exp-1")
        no = await app.start(expense_approval, "exp-2", 99900, id="expense-exp-2")
        print(f"exp-1: {await app.get_event(yes.id, 'status', timeout=30)}")
        await app.signal(yes.id, "decision", {"approved": True, "by": "grace"})
        await app.signal(no.id, "decision", {"approved": False, "by": "grace"})
        print(f"exp-1: {await yes.result(timeout=60)}")  # one write: steps print meanwhile
        print(f"exp-2: {await no.result(timeout=60)}")
        print(f"exp-2 status: {await app.get_event(no.id, 'status')}")


if __name__ == "__main__":
    asyncio.run(main())

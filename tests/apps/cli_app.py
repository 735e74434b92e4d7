"""A tiny app for the command-line tests (``apps.cli_app:app``)."""

from __future__ import annotations

import os

import durably

from .effects import record

app = durably.App("cli")

not_an_app = "just a string"


@app.step()
def hello(name: str) -> str:
    return f"hello {name}"


@app.step()
def shout(text: str) -> str:
    return text.upper() + "!"


@app.workflow()
def greet(ctx: durably.Context, name: str) -> dict[str, str]:
    text = hello(name)
    loud = shout(text)
    return {"text": text, "loud": loud}


@app.workflow()
async def add(ctx: durably.Context, a: int, b: int) -> int:
    total: int = await ctx.run("sum", lambda: a + b)
    return total


@app.step()
def prepare(marker: str) -> str:
    record("prepare")
    return "prepared"


@app.step()
def finish(marker: str) -> str:
    record("finish")
    return "finished"


@app.workflow()
def fragile(ctx: durably.Context, marker: str) -> str:
    """Fails in workflow code (not in a step) while the marker file exists.

    The failure is not journaled as a step result, so after ``durably retry``
    the run replays ``prepare`` from the journal and re-evaluates the check.
    """
    prepared = prepare(marker)
    if os.path.exists(marker):
        raise RuntimeError(f"marker {marker} says the code is still broken")
    return prepared + " and " + finish(marker)


@app.workflow()
async def approve(ctx: durably.Context) -> object:
    import asyncio

    try:
        return await ctx.wait_for("decision")
    except asyncio.CancelledError:
        await ctx.run("undo", lambda: "undone")
        raise

"""Semantics 2 and 7 end to end: replay matches the journal or fails loudly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import durably
from conftest import wait_until


async def _until_suspended(handle: durably.WorkflowHandle) -> None:
    for _ in range(500):
        if await handle.status() == "suspended":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("run never suspended")


async def test_changed_code_under_the_same_version_fails_the_run_visibly(
    make_app: Callable[..., durably.App],
) -> None:
    old = make_app(suspend_after=0.0)

    @old.workflow(name="signup", version="1")
    async def signup_v1(ctx: durably.Context) -> str:
        await ctx.run("charge", lambda: "ch_1")
        await ctx.sleep("cooldown", 1.0)
        return "done"

    async with old.worker():
        handle = await old.start("signup", id="s-1")
        await _until_suspended(handle)

    new = make_app(suspend_after=0.0)
    ran: list[str] = []

    @new.workflow(name="signup", version="1")
    async def signup_v1_edited(ctx: durably.Context) -> str:
        await ctx.run("charge_card", lambda: ran.append("charge_card"))
        return "done"

    async with new.worker():
        with pytest.raises(durably.WorkflowFailed) as info:
            await new.get_handle("s-1").result(timeout=20)
    err = info.value
    assert err.error_type == "NonDeterminismError"
    assert "'signup'" in err.message and "'s-1'" in err.message and "position 0" in err.message
    assert "the journal holds step 'charge' at " in err.message
    assert "test_determinism.py:" in err.message.split("the code now asks for")[1]
    assert ran == []  # never ran a new step in place of a recorded one
    assert await new.get_handle("s-1").status() == "failed"


async def test_resumed_run_replays_journaled_values_and_parallel_steps(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app(suspend_after=0.0)
    executions: list[str] = []

    @app.step()
    async def work(name: str, delay: float) -> str:
        executions.append(name)
        await asyncio.sleep(delay)
        return name.upper()

    @app.workflow()
    async def flow(ctx: durably.Context) -> dict[str, object]:
        values = await asyncio.gather(work("x", 0.2), work("y", 0.0), work("z", 0.1))
        stamp, rnd, ident = ctx.now(), ctx.random(), ctx.uuid4()
        await ctx.sleep("pause", 0.5)
        return {"values": list(values), "now": stamp.isoformat(), "r": rnd, "u": str(ident)}

    async with app.worker():
        handle = await app.start(flow, id="f-1")
        await _until_suspended(handle)
        # The run left memory; waking it replays everything above.
        result = await handle.result(timeout=20)
    assert result["values"] == ["X", "Y", "Z"]
    assert sorted(executions) == ["x", "y", "z"]  # no step ran twice
    entries = app.storage.load_journal("f-1")
    recorded = {e.kind: e.payload for e in entries if e.kind in ("now", "random", "uuid")}
    assert str(result["r"]) == recorded["random"]
    assert f'"{result["u"]}"' == recorded["uuid"]
    step_positions = sorted(e.position for e in entries if e.kind == "step")
    assert step_positions == [0, 1, 2]


def test_wall_clock_branching_is_caught_at_replay(make_app: Callable[..., durably.App]) -> None:
    import time

    app = make_app(suspend_after=0.0)
    calls = {"n": 0}

    @app.workflow()
    def flaky_flow(ctx: durably.Context) -> str:
        # Non-deterministic on purpose: a different branch on replay.
        calls["n"] += 1
        name = "first-branch" if calls["n"] == 1 else "second-branch"
        ctx.run(name, time.time)
        ctx.sleep("wait", 0.3)
        return "ok"

    async def go() -> None:
        async with app.worker():
            handle = await app.start(flaky_flow, id="w-1")
            with pytest.raises(durably.WorkflowFailed, match="NonDeterminismError"):
                await handle.result(timeout=20)

    asyncio.run(go())
    wait_until(lambda: calls["n"] >= 2, what="a replay")

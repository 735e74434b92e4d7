"""The replay engine on its own: journal in, commands and outcome out (no database)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import durably
from durably._engine.instance import Instance, RunInfo, StepCall, TimerCall
from durably._engine.journal import Entry, History, Kind
from durably._registry import WorkflowDef

CLOCK = 1_000.0


def step(pos: int, name: str, value: Any, seq: int | None = None) -> Entry:
    return Entry(
        pos,
        Kind.STEP,
        name,
        json.dumps(value),
        "flows.py:10",
        CLOCK,
        seq if seq is not None else pos,
    )


_made: list[Instance] = []


@pytest.fixture(autouse=True)
def _abandon_instances() -> Any:
    yield
    while _made:
        _made.pop().abandon()


async def replay(fn: Callable[..., Any], entries: list[Entry], *args: Any) -> Instance:
    definition = WorkflowDef(fn, "wf", "1", asyncio.iscoroutinefunction(fn))
    info = RunInfo("wf", "run-1", History(entries), lambda: CLOCK)
    text = json.dumps({"args": list(args), "kwargs": {}})
    instance = definition.instantiate(info, text, asyncio.get_running_loop(), ThreadPoolExecutor(2))
    _made.append(instance)
    await instance.start()
    return instance


def noop(x: int = 0) -> int:
    return x


async def test_recorded_steps_are_answered_from_the_journal() -> None:
    seen: list[int] = []

    async def wf(ctx: durably.Context) -> None:
        seen.append(await ctx.run("a", noop, 1))
        seen.append(await ctx.run("b", noop, 2))

    instance = await replay(wf, [step(0, "a", 41)])
    assert seen == [41]
    _, commands = instance.drain()
    assert [(c.position, c.name) for c in commands if isinstance(c, StepCall)] == [(1, "b")]
    assert instance.outcome is None


async def test_changed_step_name_is_a_non_determinism_error_with_locations() -> None:
    async def wf(ctx: durably.Context) -> None:
        await ctx.run("charge_card", noop)

    instance = await replay(wf, [step(0, "charge", "ok")])
    assert instance.outcome is not None and instance.outcome.diverged
    message = instance.outcome.error["message"]  # type: ignore[index]
    assert "'wf'" in message and "'run-1'" in message and "position 0" in message
    assert "step 'charge' at flows.py:10" in message
    assert "step 'charge_card' at tests/engine/test_replay.py:" in message or (
        "step 'charge_card' at" in message and "test_replay.py:" in message
    )


async def test_history_the_code_no_longer_reaches_diverges() -> None:
    async def wf(ctx: durably.Context) -> int:
        return int(await ctx.run("a", noop))

    instance = await replay(wf, [step(0, "a", 1), step(1, "b", 2)])
    assert instance.outcome is not None and instance.outcome.diverged
    assert "step 'b'" in instance.outcome.error["message"]  # type: ignore[index]


async def test_divergence_cannot_be_swallowed_by_user_code() -> None:
    ran_other = []

    async def wf(ctx: durably.Context) -> str:
        try:
            await ctx.run("renamed", noop)
        except BaseException:  # noqa: BLE001 - user code trying to swallow everything
            ran_other.append(True)
        await ctx.run("other", noop)  # must not be issued
        return "finished anyway"

    instance = await replay(wf, [step(0, "original", 1)])
    _, commands = instance.drain()
    assert instance.outcome is not None and instance.outcome.diverged
    assert not [c for c in commands if isinstance(c, StepCall)]


async def test_gather_positions_follow_call_order_not_completion_order() -> None:
    async def wf(ctx: durably.Context) -> list[int]:
        return list(await asyncio.gather(ctx.run("a", noop), ctx.run("b", noop)))

    # b completed (and was journaled) before a.
    instance = await replay(wf, [step(1, "b", 20, seq=0), step(0, "a", 10, seq=1)])
    assert instance.outcome is not None and instance.outcome.status == "completed"
    assert json.loads(instance.outcome.result or "null") == [10, 20]


@pytest.mark.parametrize("first", ["step", "timer"])
async def test_first_completed_race_replays_the_recorded_winner(first: str) -> None:
    async def wf(ctx: durably.Context) -> str:
        timer = asyncio.ensure_future(ctx.sleep("deadline", 60))
        work = asyncio.ensure_future(ctx.run("work", noop))
        done, _ = await asyncio.wait({timer, work}, return_when=asyncio.FIRST_COMPLETED)
        winner = "step" if work in done else "timer"
        await ctx.run("after", noop)
        return winner

    timer = Entry(0, Kind.TIMER, "deadline", json.dumps({"fire_at": CLOCK + 60}), None, CLOCK)
    fired = Entry(0, Kind.FIRED, "deadline", None, None, CLOCK + 60)
    work, after = step(1, "work", None), step(2, "after", None)
    # The loser may still complete while the code waits on "after".
    history = [timer, work, after] if first == "step" else [timer, fired, work, after]
    for seq, entry in enumerate(history):
        entry.seq = seq
    instance = await replay(wf, history)
    assert instance.outcome is not None
    assert json.loads(instance.outcome.result or "null") == first


async def test_journaled_values_replay() -> None:
    async def wf(ctx: durably.Context) -> list[Any]:
        return [ctx.now().timestamp(), ctx.random(), str(ctx.uuid4())]

    u = "12345678-1234-5678-1234-567812345678"
    entries = [
        Entry(0, Kind.NOW, "now", "1234.5", None, CLOCK, 0),
        Entry(1, Kind.RANDOM, "random", "0.25", None, CLOCK, 1),
        Entry(2, Kind.UUID, "uuid", json.dumps(u), None, CLOCK, 2),
    ]
    instance = await replay(wf, entries)
    assert json.loads(instance.outcome.result or "null") == [1234.5, 0.25, u]  # type: ignore[union-attr]
    assert instance.drain() == ([], [])


async def test_live_values_are_journaled_once() -> None:
    async def wf(ctx: durably.Context) -> float:
        return ctx.random()

    instance = await replay(wf, [])
    entries, _ = instance.drain()
    assert [(e.position, e.kind) for e in entries] == [(0, Kind.RANDOM)]
    assert json.loads(instance.outcome.result or "null") == json.loads(entries[0].payload or "")  # type: ignore[union-attr]


async def test_timer_without_firing_is_rearmed_at_its_recorded_time() -> None:
    async def wf(ctx: durably.Context) -> None:
        await ctx.sleep("nap", 5)

    recorded = Entry(0, Kind.TIMER, "nap", json.dumps({"fire_at": 777.0}), None, CLOCK, 0)
    instance = await replay(wf, [recorded])
    entries, commands = instance.drain()
    assert entries == []  # not journaled twice
    assert commands == [TimerCall(0, "nap", 777.0)]


async def test_failed_step_replays_as_step_failed() -> None:
    async def wf(ctx: durably.Context) -> str:
        try:
            await ctx.run("pay", noop)
        except durably.StepFailed as exc:
            return f"{exc.error_type}|{exc.message}|{exc.attempts}"
        return "no error"

    info = {"type": "ValueError", "message": "card declined", "traceback": "tb", "attempts": 3}
    failed = Entry(0, Kind.STEP_FAILED, "pay", json.dumps(info), None, CLOCK, 0)
    instance = await replay(wf, [failed])
    assert json.loads(instance.outcome.result or "null") == "ValueError|card declined|3"  # type: ignore[union-attr]


async def test_sync_workflow_replays_in_its_thread() -> None:
    def wf(ctx: durably.Context, x: int) -> list[int]:
        return [ctx.run("a", noop), ctx.run("b", noop, x)]

    instance = await replay(wf, [step(0, "a", 5)], 3)
    _, commands = instance.drain()
    assert [(c.position, c.name, c.args) for c in commands if isinstance(c, StepCall)] == [
        (1, "b", (3,))
    ]
    instance.abandon()


async def test_sync_workflow_divergence() -> None:
    def wf(ctx: durably.Context) -> None:
        ctx.run("new-name", noop)

    instance = await replay(wf, [step(0, "old-name", 5)])
    assert instance.outcome is not None and instance.outcome.diverged
    assert "'old-name'" in instance.outcome.error["message"]  # type: ignore[index]


async def test_workflow_io_on_a_foreign_loop_fails_with_advice() -> None:
    async def wf(ctx: durably.Context) -> None:
        await asyncio.get_running_loop().run_in_executor(None, noop)

    instance = await replay(wf, [])
    assert instance.outcome is not None and instance.outcome.status == "failed"
    assert "step" in instance.outcome.error["message"]  # type: ignore[index]

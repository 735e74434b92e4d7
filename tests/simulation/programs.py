"""Random workflow programs, the workflow that runs them, and their oracle.

A program is JSON: a list of operations (steps that fail a few times first,
sleeps from milliseconds to days, parallel steps, steps that always fail,
journaled clock reads, signal waits, child programs). ``interpret`` runs one
as a durably workflow; ``expected`` computes, without durably, what an
uninterrupted run returns and how often each step must execute.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import durably

MAX_ATTEMPTS = 4


@dataclass
class Ledger:
    """Every real execution of a simulated step: (step key, op label, tick)."""

    rows: list[tuple[str, str, int]] = field(default_factory=list)
    tick: Any = None  # the simulator's tick function

    def record(self, label: str) -> int:
        key = durably.current_step_key()
        self.rows.append((key, label, self.tick()))
        return sum(1 for k, _, _ in self.rows if k == key)


def generate(rng: random.Random, depth: int = 0) -> list[dict[str, Any]]:
    kinds = ["step", "step", "sleep", "gather", "fail", "now"]
    if depth == 0:
        kinds += ["wait", "child"]  # children neither wait for signals nor have children
    ops: list[dict[str, Any]] = []
    for index in range(rng.randint(1, 6)):
        kind = rng.choice(kinds)
        label = f"{depth}.{index}"
        if kind == "step":
            ops.append(_step(rng, label))
        elif kind == "sleep":
            ops.append({"t": "sleep", "s": rng.choice([0.01, 0.5, 3.0, 60.0, 3600.0, 86400.0 * 7])})
        elif kind == "gather":
            ops.append(
                {
                    "t": "gather",
                    "items": [_step(rng, f"{label}.{i}") for i in range(rng.randint(2, 4))],
                }
            )
        elif kind == "fail":
            ops.append({"t": "fail", "label": label, "attempts": rng.randint(1, 3)})
        elif kind == "now":
            ops.append({"t": "now"})
        elif kind == "wait":
            ops.append({"t": "wait", "topic": f"topic-{label}"})
        else:
            ops.append({"t": "child", "ops": generate(rng, depth + 1)})
    return ops


def _step(rng: random.Random, label: str) -> dict[str, Any]:
    return {
        "t": "step",
        "label": label,
        "v": rng.randint(0, 99),
        "fail": rng.randint(0, 2),
        "backoff": rng.choice([0.05, 2.0, 600.0]),
    }


def signals_of(ops: list[dict[str, Any]]) -> list[str]:
    """Topics the program waits on (its own, not its children's)."""
    return [op["topic"] for op in ops if op["t"] == "wait"]


def payload(run_id: str, topic: str) -> str:
    return f"{run_id}/{topic}"


def expected(run_id: str, ops: list[dict[str, Any]]) -> Any:
    """What an uninterrupted run of ``ops`` (as run ``run_id``) returns."""
    out: list[Any] = []
    for op in ops:
        kind = op["t"]
        if kind == "step":
            out.append(op["v"] * 2 + 1)
        elif kind == "sleep":
            out.append(None)
        elif kind == "gather":
            out.append([item["v"] * 2 + 1 for item in op["items"]])
        elif kind == "fail":
            out.append(f"failed:{op['attempts']}")
        elif kind == "now":
            out.append("now")
        elif kind == "wait":
            out.append(payload(run_id, op["topic"]))
        else:
            out.append(expected("", op["ops"]))
    return out


def executions_needed(ops: list[dict[str, Any]]) -> dict[str, int]:
    """Label -> how many times the step executes in an uninterrupted run."""
    needed: dict[str, int] = {}
    for op in ops:
        if op["t"] == "step":
            needed[op["label"]] = op["fail"] + 1
        elif op["t"] == "gather":
            for item in op["items"]:
                needed[item["label"]] = item["fail"] + 1
        elif op["t"] == "fail":
            needed[op["label"]] = op["attempts"]
        elif op["t"] == "child":
            needed.update({f"child:{k}": v for k, v in executions_needed(op["ops"]).items()})
    return needed


def register(app: durably.App, ledger: Ledger) -> Any:
    """The steps and the interpreter workflow, on ``app``."""

    async def run_step(label: str, value: int, fail: int) -> int:
        executions = ledger.record(label)
        if executions <= fail:
            raise ConnectionError(f"{label}: simulated failure {executions}")
        return value * 2 + 1

    async def always_fails(label: str) -> None:
        ledger.record(label)
        raise ValueError(f"{label} always fails")

    def step_call(ctx: durably.Context, op: dict[str, Any]) -> Any:
        policy = durably.Retry(max_attempts=MAX_ATTEMPTS, initial=op["backoff"], backoff=2.0)
        return ctx.run(op["label"], run_step, op["label"], op["v"], op["fail"], retry=policy)

    @app.workflow(name="program", version="1")
    async def interpret(ctx: durably.Context, ops: list[dict[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for op in ops:
            kind = op["t"]
            if kind == "step":
                out.append(await step_call(ctx, op))
            elif kind == "sleep":
                out.append(await ctx.sleep("sleep", op["s"]))
            elif kind == "gather":
                out.append(list(await asyncio.gather(*(step_call(ctx, i) for i in op["items"]))))
            elif kind == "fail":
                policy = durably.Retry(max_attempts=op["attempts"], initial=0.5)
                try:
                    await ctx.run(op["label"], always_fails, op["label"], retry=policy)
                except durably.StepFailed as exc:
                    out.append(f"failed:{exc.attempts}")
            elif kind == "now":
                ctx.now()
                out.append("now")
            elif kind == "wait":
                out.append(await ctx.wait_for(op["topic"]))
            else:
                out.append(await ctx.child(interpret, op["ops"]))
        return out

    return interpret

"""Workflows for the chaos runner (``scripts/chaos.py``).

Every workflow is a mix of the things that break under faults: sequential
steps (async and sync), parallel steps, durable sleeps, a step that fails
deterministically for its first attempts, signals and child workflows.

Every real step execution is recorded in an *effects ledger*, a SQLite file
named by ``CHAOS_EFFECTS``: the run id and position (from
``durably.current_step_key()``), the step's name, its *stage* (the index of
the step in the run's sequential chain: steps started together by
``asyncio.gather`` share a stage, and a stage only starts once every step of
the previous one is journaled), how many executions the step is expected to
need (1, or ``fails + 1`` for a flaky step), the pid, the start time, and when
the worker last confirmed the run's lease before starting it (the runner tells
a zombie that started a step unchecked from one frozen between its check and
the step's first line, a window every lease leaves).

Each workflow's result is computable in advance from its arguments and the
signals sent to it: :func:`expected` is the oracle.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import durably
from durably._worker.steps import lease_confirmed_at  # not public: this harness only

ENV = "CHAOS_EFFECTS"

app = durably.App("chaos")

MOD = 1_000_003

LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    run_id   TEXT NOT NULL,
    position INTEGER NOT NULL,
    step     TEXT NOT NULL,
    stage    INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    pid      INTEGER NOT NULL,
    at       REAL NOT NULL,
    checked  REAL
)
"""


# -- the effects ledger ----------------------------------------------------------


def connect_ledger(path: str | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path or os.environ[ENV], timeout=60)
    return conn


def init_ledger(path: str) -> None:
    conn = connect_ledger(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(LEDGER_SCHEMA)
        conn.execute("CREATE INDEX IF NOT EXISTS effects_key ON effects (run_id, position)")
        conn.commit()
    finally:
        conn.close()


def record(step: str, stage: int, expected_runs: int = 1) -> int:
    """Record one real execution of the current step; returns how many there were so far."""
    at, checked = time.time(), lease_confirmed_at()
    run_id, _, position = durably.current_step_key().rpartition(":")
    conn = connect_ledger()
    try:
        with conn:
            conn.execute(
                "INSERT INTO effects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, int(position), step, stage, expected_runs, os.getpid(), at, checked),
            )
        return int(
            conn.execute(
                "SELECT count(*) FROM effects WHERE run_id = ? AND position = ?",
                (run_id, int(position)),
            ).fetchone()[0]
        )
    finally:
        conn.close()


# -- the arithmetic every step does (the oracle uses the same) -----------------


def mix(x: int, stage: int) -> int:
    return (x * 7 + stage * 13 + 1) % MOD


# -- steps -----------------------------------------------------------------------


def work(x: int, stage: int, delay: float) -> int:
    """A sync step: record, take a while (so kills land mid-step), compute."""
    record("work", stage)
    if delay:
        time.sleep(delay)
    return mix(x, stage)


async def awork(x: int, stage: int, delay: float) -> int:
    """An async step."""
    record("awork", stage)
    if delay:
        await asyncio.sleep(delay)
    return mix(x, stage)


def flaky(x: int, stage: int, fails: int) -> int:
    """Fails (retryably) for its first ``fails`` executions, whichever worker runs them."""
    tries = record("flaky", stage, fails + 1)
    if tries <= fails:
        raise ConnectionError(f"flaky: execution {tries} of {fails + 1} fails on purpose")
    return mix(x, stage) + 1


def flaky_retry(fails: int) -> durably.Retry:
    # Attempts journaled as failed <= executions that failed, so fails + 1
    # attempts always suffice; the margin covers a failed ledger write.
    return durably.Retry(max_attempts=fails + 4, initial=0.2, backoff=1.5, max_interval=1.0)


@app.step(name="final")
def final(x: int, stage: int) -> int:
    """A decorated sync step (journal name from ``name=``)."""
    record("final", stage)
    return mix(x, stage)


@app.step(name="afinal")
async def afinal(x: int, stage: int) -> int:
    """A decorated async step."""
    record("afinal", stage)
    return mix(x, stage)


# -- workflows -------------------------------------------------------------------


@app.workflow(version="1")
async def chain(ctx: durably.Context, x: int, n: int, delay: float) -> int:
    """``n`` sequential async steps."""
    for stage in range(n):
        x = await ctx.run(f"s{stage}", awork, x, stage, delay)
    return x


@app.workflow(version="1")
def chain_sync(ctx: durably.Context, x: int, n: int, delay: float) -> int:
    """``n`` sequential sync steps in a sync workflow, then a decorated step."""
    for stage in range(n):
        x = ctx.run(f"s{stage}", work, x, stage, delay)
    return final(x, n)


@app.workflow(version="1")
async def napper(ctx: durably.Context, x: int, seconds: float) -> int:
    """A step, a durable sleep, a step."""
    x = await ctx.run("before", awork, x, 0, 0.0)
    await ctx.sleep("nap", seconds)
    return await afinal(x, 1)


@app.workflow(version="1")
async def retrier(ctx: durably.Context, x: int, fails: int, delay: float) -> int:
    """A step, a step failing its first ``fails`` executions, a step."""
    x = await ctx.run("s0", awork, x, 0, delay)
    x = await ctx.run("flaky", flaky, x, 1, fails, retry=flaky_retry(fails))
    return await ctx.run("s2", awork, x, 2, delay)


@app.workflow(version="1")
async def waiter(ctx: durably.Context, x: int, delay: float) -> int:
    """Two waits for signals on one topic (taken in the order they were sent)."""
    x = await ctx.run("s0", awork, x, 0, delay)
    first = await ctx.wait_for("go")
    x = await ctx.run("s1", awork, x + int(first), 1, delay)
    second = await ctx.wait_for("go")
    return await ctx.run("s2", awork, x + int(second), 2, delay)


@app.workflow(version="1")
async def fanout(ctx: durably.Context, x: int, k: int, delay: float) -> int:
    """A step; then two parallel steps and ``k`` child chains at once; then a step."""
    x = await ctx.run("s0", awork, x, 0, delay)
    results = await asyncio.gather(
        ctx.run("p0", awork, x, 1, delay),
        ctx.run("p1", awork, x + 1, 1, delay),
        *(ctx.child(chain, x + 10 + j, 2, delay) for j in range(k)),
    )
    return await afinal(sum(results) % MOD, 2)


@app.workflow(version="1")
def saga_sync(ctx: durably.Context, x: int, seconds: float, fails: int, delay: float) -> int:
    """A sync workflow using everything: step, sleep, flaky step, signal, child, step."""
    x = ctx.run("s0", work, x, 0, delay)
    ctx.sleep("nap", seconds)
    x = ctx.run("flaky", flaky, x, 1, fails, retry=flaky_retry(fails))
    x += int(ctx.wait_for("go"))
    x = ctx.run("s2", work, x, 2, delay)
    x += ctx.child(chain, x, 2, delay)
    return final(x % MOD, 3)


SIGNALS_NEEDED = {"waiter": 2, "saga_sync": 1}


# -- the oracle ------------------------------------------------------------------


def expected(workflow: str, args: Sequence[Any], signals: Sequence[int] = ()) -> int:
    """What an uninterrupted run of ``workflow(*args)`` returns, given its signals."""
    if workflow == "chain":
        x, n, _ = args
        for stage in range(n):
            x = mix(x, stage)
        return x
    if workflow == "chain_sync":
        x, n, _ = args
        for stage in range(n):
            x = mix(x, stage)
        return mix(x, n)
    if workflow == "napper":
        x, _ = args
        return mix(mix(x, 0), 1)
    if workflow == "retrier":
        x, _, _ = args
        return mix(mix(mix(x, 0), 1) + 1, 2)
    if workflow == "waiter":
        x, _ = args
        first, second = signals
        return mix(mix(mix(x, 0) + first, 1) + second, 2)
    if workflow == "fanout":
        x, k, _ = args
        x = mix(x, 0)
        parts = [mix(x, 1), mix(x + 1, 1)]
        parts += [expected("chain", [x + 10 + j, 2, 0]) for j in range(k)]
        return mix(sum(parts) % MOD, 2)
    if workflow == "saga_sync":
        x, _, _, _ = args
        (signal,) = signals
        x = mix(mix(x, 0), 1) + 1 + signal
        x = mix(x, 2)
        x += expected("chain", [x, 2, 0])
        return mix(x % MOD, 3)
    raise ValueError(f"unknown chaos workflow {workflow!r}")

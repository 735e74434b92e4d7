"""Deterministic simulation: random programs, random crashes, an oracle.

Each seed builds a few random workflow programs, runs them on the real
engine and workers in one thread on a virtual clock (see
durably.testing.Simulator), kills workers at random journal boundaries and
moments (mid-step, mid-replay), starts new ones, and checks every run
against an oracle computed without durably. A failing seed reproduces
exactly: ``pytest "tests/simulation/test_simulation.py::test_seed[<n>]"``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import pytest

import durably
from durably.testing import Simulator

from .programs import Ledger, executions_needed, expected, generate, payload, register, signals_of

SEEDS = int(os.environ.get("DURABLY_SIM_SEEDS", "300"))


def simulate(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    app = durably.App("sim", "sqlite:///unused-by-simulation.db", lease_seconds=5.0)
    ledger = Ledger()
    program = register(app, ledger)
    sim = Simulator(app, seed=seed, concurrency=rng.choice([1, 4, 16]))
    sim.restart_after = lambda: rng.uniform(0, 10)
    ledger.tick = sim.tick
    runs = {f"run-{i}": generate(rng) for i in range(rng.randint(1, 5))}
    plan = [rng.random() for _ in range(rng.randint(0, 3))]
    for number in sorted(rng.sample(range(1, 40), k=rng.randint(0, 2))):
        sim.crash_at_commit(number, rng.choice(["before", "after"]))

    async def scenario(sim: Simulator) -> dict[str, Any]:
        await sim.start_worker()
        if rng.random() < 0.5:
            await sim.start_worker()
        handles = [await app.start(program, ops, id=run_id) for run_id, ops in runs.items()]
        loop = asyncio.get_running_loop()
        for run_id, ops in runs.items():
            for topic in signals_of(ops):
                loop.call_later(
                    rng.uniform(0, 20), app.signal_sync, run_id, topic, payload(run_id, topic)
                )
        for fraction in plan:  # kill some worker at a random moment, start another
            loop.call_later(fraction * 30, crash_one, sim, rng)
        if rng.random() < 0.5:  # a worker whose lease lapses while it keeps working
            loop.call_later(rng.uniform(0, 20), stall_one, sim, rng)
        results = {}
        for handle in handles:
            results[handle.id] = await handle.result(timeout=86400 * 90)
        await sim.stop_all()
        return results

    results = sim.run(scenario)
    return {"sim": sim, "runs": runs, "results": results, "ledger": ledger}


def stall_one(sim: Simulator, rng: random.Random) -> None:
    if sim.workers:
        sim.stall(rng.choice(sim.workers), rng.uniform(6, 20))
        if len(sim.workers) < 2:
            sim.start_worker_soon()  # someone to take its runs over


def crash_one(sim: Simulator, rng: random.Random) -> None:
    if sim.workers:
        sim.crash(rng.choice(sim.workers))  # a replacement starts after restart_after


def check(outcome: dict[str, Any], seed: int) -> None:
    sim: Simulator = outcome["sim"]
    storage = sim.storage
    crashes = sim.crashes
    where = f"seed {seed} ({crashes} crashes)"
    committed: dict[tuple[str, int], int] = {}  # (run, position) -> tick its completion committed
    for tick, writes in sim.commit_ticks:
        for write in writes:
            for entry in write.entries:
                if entry.kind in ("step", "step_failed"):
                    committed.setdefault((write.run_id, entry.position), tick)
    all_runs = {r.id: r for r in storage.list_runs(durably._storage.base.RunFilter(limit=10_000))}
    for run_id, ops in outcome["runs"].items():
        assert outcome["results"][run_id] == expected(run_id, ops), (
            f"{where}: wrong result of {run_id}"
        )
        assert all_runs[run_id].status == "completed", where
    for run in all_runs.values():
        assert run.status == "completed", f"{where}: {run.id} is {run.status}"
        journal = storage.load_journal(run.id)
        completions = [
            (e.position, e.kind)
            for e in journal
            if e.kind in ("step", "step_failed", "fired", "signal", "child_done")
        ]
        positions = [p for p, _ in completions]
        assert len(positions) == len(set(positions)), f"{where}: {run.id} completed twice"
        timers = {
            e.position: json.loads(e.payload or "{}")["fire_at"]
            for e in journal
            if e.kind == "timer"
        }
        for entry in journal:
            if entry.kind == "fired":
                assert entry.at >= timers[entry.position], f"{where}: early timer in {run.id}"
    executed: dict[str, list[int]] = {}
    labels: dict[str, str] = {}
    for key, label, tick in outcome["ledger"].rows:
        executed.setdefault(key, []).append(tick)
        labels[key] = label
    for key, ticks in executed.items():
        run_id, _, position = key.rpartition(":")
        done = committed.get((run_id, int(position)))
        assert done is not None, f"{where}: step {key} ran but never completed"
        assert all(t < done for t in ticks), f"{where}: step {key} ran again after it was journaled"
    check_write_ahead(executed, labels, committed, where)
    for run_id, ops in outcome["runs"].items():
        needed = executions_needed(ops)
        for label, count in needed.items():
            if label.startswith("child:"):
                continue
            keys = [k for k, lab in labels.items() if lab == label and k.startswith(run_id + ":")]
            runs_of = sum(len(executed[k]) for k in keys)
            width = len(keys) or 1
            assert count * width <= runs_of <= (count + crashes) * width, (
                f"{where}: step {label} of {run_id} ran {runs_of} times, needs {count}"
            )


@pytest.mark.parametrize("seed", range(SEEDS))
def test_seed(seed: int) -> None:
    check(simulate(seed), seed)


def test_one_seed_is_one_execution() -> None:
    first, second = simulate(7), simulate(7)
    assert first["sim"].storage.dump() == second["sim"].storage.dump()
    assert [r[1] for r in first["ledger"].rows] == [r[1] for r in second["ledger"].rows]


def check_write_ahead(
    executed: dict[str, list[int]],
    labels: dict[str, str],
    committed: dict[tuple[str, int], int],
    where: str,
) -> None:
    """Steps of one run are sequential (but for the members of one gather):
    every execution of a step began after every earlier step's result was
    durable, so no step re-ran after its successor started."""
    by_run: dict[str, list[tuple[int, str]]] = {}
    for key, label in labels.items():
        run_id, _, _ = key.rpartition(":")
        by_run.setdefault(run_id, []).append((int(label.split(".")[1]), key))
    for run_id, steps in by_run.items():
        for index, key in steps:
            started = min(executed[key])
            for other_index, other in steps:
                if other_index >= index:
                    continue
                run, _, position = other.rpartition(":")
                done = committed[(run, int(position))]
                assert done < started, (
                    f"{where}: step {labels[key]} of {run_id} started before the result of "
                    f"its predecessor {labels[other]} was durable"
                )
                assert max(executed[other]) < started, (
                    f"{where}: step {labels[other]} of {run_id} ran again after its "
                    f"successor {labels[key]} started"
                )

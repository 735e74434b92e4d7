"""The crash suite: every workflow shape x every fault point x both backends.

For each (fault point, backend) one run of every shape in ``apps.shapes`` is
started at once, then one ``durably worker`` is spawned with that fault point
armed (``DURABLY_FAULT``), at a count that makes it die part-way through the
work rather than at its very start. The approval run gets its signal and the
cancellable run its cancellation as soon as each waits, so depending on the
point they arrive before the crash, while no worker is alive, or afterwards.
Once the faulted worker died (SIGKILL, return code -9) a clean worker takes
over; every run must then reach its terminal state and satisfy the invariants
checked by the ``check_*`` helpers below, against the effects ledger (every
real step execution) and the journal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

import durably
from apps import effects
from apps.shapes import app as shapes
from conftest import Workers
from durably._engine.journal import Entry
from durably._faults import POINTS

APP = "apps.shapes:app"
CONCURRENCY = 16
SLEEP_SECONDS = 1.5  # the sleeper's timer: longer than the 1 s grace, so it leaves memory
SETTLE_TIMEOUT = 45.0  # every run terminal within this (typically a few seconds)
TIMER_LATE_BOUND = 10.0  # a due timer fires within this once a worker is alive
TERMINAL = ("completed", "failed", "cancelled")

# The count'th time each point is reached kills the worker. An uninterrupted
# worker reaches these points (for the 10 runs below) about: claim.after 5x,
# replay.* 13x, step.* 25x, commit.* 20-25x, and the others once; each count lands
# the crash part-way through the work, with some runs ahead of it and some behind.
FAULTS = {
    "claim.after": "claim.after:2",  # after claiming the child (or woken runs)
    "replay.before": "replay.before:10",  # replaying a run claimed after the first batch
    "replay.after": "replay.after:11",
    "step.before": "step.before:8",  # the first wave of steps is executing
    "step.after_effect": "step.after_effect:12",  # effects done, results not journaled
    "commit.before": "commit.before:6",
    "commit.after": "commit.after:10",
    "timer.fire": "timer.fire:1",  # the sleeper's timer is due
    "signal.deliver": "signal.deliver:1",  # the approval signal is being handed over
    "child.done": "child.done:1",  # the child's end is being handed to its parent
    "cancel.deliver": "cancel.deliver:1",  # the cancellation is being raised
    "renew.before": "renew.before:1",  # the first lease renewal
}

COMPLETIONS = {"step", "step_failed", "fired", "signal", "wait_timeout", "child_done", "cancel"}
OPENINGS = {"timer", "wait", "child"}


@dataclass(frozen=True)
class Shape:
    """One run and what an uninterrupted run of it does."""

    workflow: str
    args: tuple[Any, ...]
    status: str
    result: Any
    steps: dict[str, int]  # step name -> executions an uninterrupted run needs
    sequential: bool = True  # its steps run one after another
    started_by_test: bool = True
    journal: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), no attempts


RUNS: dict[str, Shape] = {
    "sequential": Shape(
        "sequential",
        (1,),
        "completed",
        25,
        {"s1": 1, "s2": 1, "s3": 1},
        journal=[("step", "s1"), ("step", "s2"), ("step", "s3")],
    ),
    "sync_flow": Shape(
        "sync_flow",
        (1,),
        "completed",
        8,
        {"t1": 1, "t2": 1, "t3": 1},
        journal=[("step", "t1"), ("step", "t2"), ("step", "t3")],
    ),
    "sleeper": Shape(
        "sleeper",
        (1, SLEEP_SECONDS),
        "completed",
        [1, 2],
        {"nap_before": 1, "nap_after": 1},
        journal=[("step", "nap_before"), ("timer", "nap"), ("fired", "nap"), ("step", "nap_after")],
    ),
    "retrying": Shape(
        "retrying",
        (2,),
        "completed",
        14,
        {"flaky": 3},  # fails twice, then succeeds
        journal=[("step", "flaky")],
    ),
    "fan_out": Shape(
        "fan_out",
        (3,),
        "completed",
        [3, 4, 5],
        {"g0": 1, "g1": 1, "g2": 1},
        sequential=False,
    ),
    "saga": Shape(
        "saga",
        (4,),
        "completed",
        "refunded 4: ValueError",
        {"reserve": 1, "charge": 1, "refund": 1},
        journal=[("step", "reserve"), ("step_failed", "charge"), ("step", "refund")],
    ),
    "approval": Shape(
        "approval",
        (5,),
        "completed",
        "yes/5",
        {"ask": 1, "act": 1},
        journal=[("step", "ask"), ("wait", "go"), ("signal", "go"), ("step", "act")],
    ),
    "family": Shape(
        "family",
        (6,),
        "completed",
        {"child": 13, "after": 6},
        {"p_before": 1, "p_after": 1},
        journal=[
            ("step", "p_before"),
            ("child", "kid"),
            ("child_done", "kid"),
            ("step", "p_after"),
        ],
    ),
    "family/1": Shape(  # the child: "<parent id>/<position>"
        "kid",
        (6,),
        "completed",
        13,
        {"k1": 1, "k2": 1},
        started_by_test=False,
        journal=[("step", "k1"), ("step", "k2")],
    ),
    "cancellable": Shape(
        "cancellable",
        (7,),
        "cancelled",
        None,
        {"c_before": 1, "c_undo": 1},  # never c_after
        journal=[
            ("step", "c_before"),
            ("timer", "long_nap"),
            ("cancel", "cancel"),
            ("step", "c_undo"),
        ],
    ),
}

Row = tuple[str, str, str, int, float]  # effects ledger: key, step, note, pid, at


@dataclass
class Crash:
    """What the faulted worker did, for the checks and their messages."""

    point: str
    spec: str
    backend: str
    pid: int
    crashed: bool = False  # died at the fault point (SIGKILL)
    clean_pid: int | None = None
    clean_started: float | None = None  # wall clock when the clean worker was spawned

    def where(self, run_id: str) -> str:
        shape = RUNS[run_id].workflow
        how = "crashed" if self.crashed else "fault not reached"
        return f"run {run_id!r} (shape {shape}) at fault {self.spec} on {self.backend} [{how}]"


# -- invariants ---------------------------------------------------------------------


def position_of(key: str) -> int:
    return int(key.rpartition(":")[2])


def check_outcome(app: durably.App, run_id: str, crash: Crash) -> None:
    """The run ended as an uninterrupted run does, with the same result."""
    shape = RUNS[run_id]
    record = app.storage.get_run(run_id)
    assert record is not None, f"{crash.where(run_id)}: the run is gone"
    assert record.status == shape.status, (
        f"{crash.where(run_id)}: status {record.status!r}, expected {shape.status!r}"
        f" (error: {record.error})"
    )
    handle = app.get_handle(run_id)
    if shape.status == "cancelled":
        with pytest.raises(durably.WorkflowCancelled):
            handle.result_sync(timeout=5)
    else:
        result = handle.result_sync(timeout=5)
        assert result == shape.result, (
            f"{crash.where(run_id)}: result {result!r}, expected {shape.result!r}"
        )


def check_journal_shape(journal: list[Entry], run_id: str, crash: Crash) -> None:
    """The journal (failed attempts aside) is what an uninterrupted run writes."""
    shape = RUNS[run_id]
    kinds = [(e.kind, e.name) for e in journal if e.kind != "attempt"]
    if shape.journal:
        assert kinds == shape.journal, (
            f"{crash.where(run_id)}: journal {kinds}, expected {shape.journal}"
        )
    else:  # parallel steps complete in any order
        assert sorted(kinds) == sorted(("step", name) for name in shape.steps), (
            f"{crash.where(run_id)}: journal {kinds}, expected one step entry each of"
            f" {sorted(shape.steps)}"
        )


def check_completed_once(journal: list[Entry], run_id: str, crash: Crash) -> None:
    """Nothing completed twice: seqs are unique, every position has at most one
    completion and at most one opening (timer, wait, child), one cancellation."""
    seqs = Counter(e.seq for e in journal)
    twice = sorted(seq for seq, n in seqs.items() if n > 1)
    assert not twice, f"{crash.where(run_id)}: journal seqs {twice} appear more than once"
    for group, what in ((COMPLETIONS, "completions"), (OPENINGS, "openings")):
        per_position = Counter(e.position for e in journal if e.kind in group)
        doubled = {
            pos: [(e.seq, e.kind, e.name) for e in journal if e.position == pos and e.kind in group]
            for pos, n in per_position.items()
            if n > 1
        }
        assert not doubled, f"{crash.where(run_id)}: several {what} at one position: {doubled}"
    cancels = [e for e in journal if e.kind in ("cancel", "cancel_at")]
    assert len(cancels) <= 1, f"{crash.where(run_id)}: cancelled more than once: {cancels}"


def check_no_rerun_after_record(
    journal: list[Entry], rows: list[Row], run_id: str, crash: Crash
) -> None:
    """A step whose result (or final failure) is journaled never runs again.

    Both clocks are the same host's ``time.time()``: the ledger row is written
    when the step's body starts, the journal entry's ``at`` is read after the
    body returned. So every legitimate execution starts strictly before the
    entry's ``at``; no tolerance for clock granularity is needed (both values
    are stored as full doubles on both backends).
    """
    for entry in journal:
        if entry.kind not in ("step", "step_failed"):
            continue
        key = f"{run_id}:{entry.position}"
        late = [r for r in rows if r[0] == key and r[4] > entry.at]
        assert not late, (
            f"{crash.where(run_id)}: step {entry.name!r} ({key}) was journaled as"
            f" {entry.kind!r} at {entry.at:.6f} (seq {entry.seq}, epoch {entry.epoch}) but"
            f" ran again afterwards: {[(r[1], r[3], f'{r[4]:.6f}') for r in late]}"
        )


def check_sequential_order(rows: list[Row], run_id: str, crash: Crash) -> None:
    """In a sequential shape no step (re-)ran after its successor started:
    executions ordered by start time have non-decreasing positions."""
    if not RUNS[run_id].sequential:
        return
    ordered = sorted(rows, key=lambda r: r[4])
    positions = [position_of(r[0]) for r in ordered]
    assert positions == sorted(positions), (
        f"{crash.where(run_id)}: a step ran after its successor had started:"
        f" {[(r[1], position_of(r[0]), r[3]) for r in ordered]}"
    )


def check_execution_counts(
    journal: list[Entry], rows: list[Row], run_id: str, crash: Crash
) -> None:
    """Each step ran as often as an uninterrupted run needs, at most once more,
    and a re-execution only follows a crash that cut the step off (the first
    execution in the crashed worker, the last in the clean one)."""
    shape = RUNS[run_id]
    by_step: dict[str, list[Row]] = {}
    for row in rows:
        by_step.setdefault(row[1], []).append(row)
    unexpected = sorted(set(by_step) - set(shape.steps))
    assert not unexpected, f"{crash.where(run_id)}: steps {unexpected} should never have run"
    journaled = {e.name: e.position for e in journal if e.kind in ("step", "step_failed")}
    for step, need in shape.steps.items():
        ran = sorted(by_step.get(step, []), key=lambda r: r[4])
        extra = 1 if crash.crashed else 0
        assert need <= len(ran) <= need + extra, (
            f"{crash.where(run_id)}: step {step!r} ran {len(ran)} times, expected"
            f" {need}{f' or {need + 1}' if extra else ''}:"
            f" {[(r[0], r[3], f'{r[4]:.6f}') for r in ran]}"
        )
        keys = {r[0] for r in ran}
        assert keys == {f"{run_id}:{journaled.get(step)}"}, (
            f"{crash.where(run_id)}: step {step!r} ran under keys {sorted(keys)}, journaled"
            f" at position {journaled.get(step)}"
        )
        if len(ran) > need:
            pids = [r[3] for r in ran]
            assert pids[0] == crash.pid and pids[-1] == crash.clean_pid, (
                f"{crash.where(run_id)}: step {step!r} re-ran, but not as a step cut off by"
                f" the crash of worker {crash.pid} and re-run by worker {crash.clean_pid}:"
                f" pids {pids}"
            )


def check_timers(journal: list[Entry], rows: list[Row], run_id: str, crash: Crash) -> None:
    """A timer never fires early (nor does a step after it start early), and fires
    within TIMER_LATE_BOUND of being due with a worker alive."""
    timers = {e.position: e for e in journal if e.kind == "timer"}
    for fired in (e for e in journal if e.kind == "fired"):
        timer = timers.get(fired.position)
        assert timer is not None, f"{crash.where(run_id)}: {fired} fired without a timer"
        fire_at = float(json.loads(timer.payload or "{}")["fire_at"])
        assert fired.at >= fire_at, (
            f"{crash.where(run_id)}: timer {timer.name!r} due at {fire_at:.6f} fired early,"
            f" at {fired.at:.6f}"
        )
        alive_from = max(fire_at, crash.clean_started or fire_at)
        assert fired.at <= alive_from + TIMER_LATE_BOUND, (
            f"{crash.where(run_id)}: timer {timer.name!r} due at {fire_at:.6f} fired"
            f" {fired.at - alive_from:.1f}s after it was due with a worker alive"
        )
        early = [r for r in rows if position_of(r[0]) > fired.position and r[4] < fire_at]
        assert not early, f"{crash.where(run_id)}: steps after the timer ran early: {early}"


# -- the test -------------------------------------------------------------------------


def test_every_fault_point_has_a_crash() -> None:
    assert set(FAULTS) == set(POINTS), "give every fault point of durably._faults a count"


def _journal(app: durably.App, run_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in app.storage.load_journal(run_id)]


def _drive(app: durably.App, workers: Workers, crash: Crash) -> None:
    """Run the faulted worker until it dies (then a clean one) or finishes; send the
    signal and the cancellation once their runs wait; return when all runs ended."""
    faulted = workers.spawn(APP, CONCURRENCY, DURABLY_FAULT=crash.spec)
    crash.pid = faulted.pid
    signalled = cancelled = False
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        if crash.clean_pid is None and faulted.poll() is not None:
            assert faulted.returncode == -signal.SIGKILL, (
                f"worker with DURABLY_FAULT={crash.spec} on {crash.backend} exited with"
                f" {faulted.returncode}, not by the fault's SIGKILL"
            )
            crash.crashed = True
            crash.clean_started = time.time()
            crash.clean_pid = workers.spawn(APP, CONCURRENCY).pid
        if not signalled and ("wait", "go") in _journal(app, "approval"):
            app.signal_sync("approval", "go", "yes")
            signalled = True
        if not cancelled and ("timer", "long_nap") in _journal(app, "cancellable"):
            app.cancel_sync("cancellable")
            cancelled = True
        runs = {r.id: r.status for r in app.list_runs_sync()}
        if signalled and cancelled and set(runs) >= set(RUNS):
            if all(status in TERMINAL for status in runs.values()):
                break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"fault {crash.spec} on {crash.backend}"
                f" ({'crashed' if crash.crashed else 'not reached'}): runs not ended after"
                f" {SETTLE_TIMEOUT}s: {runs} (signal sent: {signalled}, cancel sent: {cancelled})"
            )
        time.sleep(0.05)
    if faulted.poll() is None:  # the fault was never reached: it finished everything
        faulted.send_signal(signal.SIGTERM)
        try:
            faulted.wait(timeout=15)
        except subprocess.TimeoutExpired:
            faulted.kill()
            faulted.wait()
        crash.clean_pid = faulted.pid


@pytest.mark.parametrize("point", sorted(POINTS))
def test_crash_at_fault_point(point: str, workers: Workers, database_url: str) -> None:
    app = shapes
    app.use_database(database_url)
    backend = database_url.partition(":")[0]
    crash = Crash(point, FAULTS[point], backend, pid=0)
    for run_id, shape in RUNS.items():
        if shape.started_by_test:
            app.start_sync(shape.workflow, *shape.args, id=run_id)

    _drive(app, workers, crash)

    # Every fault point is reached at the chosen count by this mix of runs.
    assert crash.crashed, f"fault {crash.spec} on {backend} was never reached"
    runs = sorted(r.id for r in app.list_runs_sync())
    assert runs == sorted(RUNS), f"fault {crash.spec} on {backend}: runs {runs}"
    ledger = str(workers.effects)
    for run_id in RUNS:
        journal = app.storage.load_journal(run_id)
        rows = effects.rows(ledger, run_id)
        rows = [r for r in rows if r[0].rpartition(":")[0] == run_id]  # not "family/1" in "family"
        check_outcome(app, run_id, crash)
        check_journal_shape(journal, run_id, crash)
        check_completed_once(journal, run_id, crash)
        check_no_rerun_after_record(journal, rows, run_id, crash)
        check_sequential_order(rows, run_id, crash)
        check_execution_counts(journal, rows, run_id, crash)
        check_timers(journal, rows, run_id, crash)


@pytest.mark.parametrize("spec", ["commit.before:2", "commit.after:2", "commit.after:3"])
def test_crash_around_a_lone_runs_commit(spec: str, workers: Workers, database_url: str) -> None:
    # A worker driving a single run commits on its event loop (SQLite) or
    # sends from it (PostgreSQL), not through the committer thread: crash
    # there too, and check the same invariants.
    app = shapes
    app.use_database(database_url)
    backend = database_url.partition(":")[0]
    crash = Crash("commit", spec, backend, pid=0)
    app.start_sync("sequential", 1, id="sequential")
    faulted = workers.spawn(APP, CONCURRENCY, DURABLY_FAULT=spec)
    crash.pid = faulted.pid
    assert faulted.wait(timeout=SETTLE_TIMEOUT) == -signal.SIGKILL, f"{spec} never reached"
    crash.crashed = True
    crash.clean_started = time.time()
    crash.clean_pid = workers.spawn(APP, CONCURRENCY).pid
    assert app.get_handle("sequential").result_sync(timeout=SETTLE_TIMEOUT) == 25
    journal = app.storage.load_journal("sequential")
    rows = effects.rows(str(workers.effects), "sequential")
    check_journal_shape(journal, "sequential", crash)
    check_completed_once(journal, "sequential", crash)
    check_no_rerun_after_record(journal, rows, "sequential", crash)
    check_sequential_order(rows, "sequential", crash)
    check_execution_counts(journal, rows, "sequential", crash)

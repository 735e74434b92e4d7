"""Signals, children, cancellation and deadlines across real worker processes
and real SIGKILL (semantics 4, 5 and 9).

Each test drives ``durably worker`` processes running ``apps.waity`` and
proves what happened through the effects ledger (every real step execution)
and the run's journal.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import durably
from apps import effects
from apps.waity import app as waity
from conftest import Workers, wait_until

APP = "apps.waity:app"
RESULT_TIMEOUT = 15


def client(database_url: str) -> durably.App:
    waity.use_database(database_url)
    return waity


def journal(app: durably.App, run_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in app.storage.load_journal(run_id)]


def entries(app: durably.App, run_id: str, kind: str) -> list[Any]:
    return [e for e in app.storage.load_journal(run_id) if e.kind == kind]


def ran(workers: Workers, run_id: str, step: str) -> int:
    return effects.count(str(workers.effects), run_id, step)


def queued(app: durably.App, run_id: str) -> list[object]:
    return [json.loads(s.payload) for s in app.storage.pending_signals([run_id])]


def waiting_on(app: durably.App, run_id: str, topic: str) -> bool:
    """The run is suspended in a wait for ``topic`` that has no signal yet."""
    record = app.storage.get_run(run_id)
    if record is None or record.status != "suspended":
        return False
    kinds = journal(app, run_id)
    return bool(kinds) and kinds[-1] == ("wait", topic)


# -- signals --------------------------------------------------------------------------


def test_signal_sent_while_no_worker_runs_is_delivered_exactly_once(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("approval", 1, 0.5, id="sig-1")
    app.signal_sync("sig-1", "approve", {"ok": True})
    assert handle.status_sync() == "pending"  # nothing has run it yet
    assert queued(app, "sig-1") == [{"ok": True}]

    workers.spawn(APP)
    result = handle.result_sync(timeout=RESULT_TIMEOUT)

    # The first wait got the signal; the second one found nothing and timed out.
    assert result == {"before": 1, "payload": {"ok": True}, "again": "timed out", "after": 2}
    assert journal(app, "sig-1") == [
        ("step", "before"),
        ("wait", "approve"),
        ("signal", "approve"),
        ("wait", "approve"),
        ("wait_timeout", "approve"),
        ("step", "after"),
    ]
    assert [json.loads(e.payload) for e in entries(app, "sig-1", "signal")] == [{"ok": True}]
    assert queued(app, "sig-1") == []  # consumed
    assert ran(workers, "sig-1", "before") == 1
    assert ran(workers, "sig-1", "after") == 1


def test_signal_after_the_waiting_worker_was_killed_reaches_a_new_worker(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("approval", 5, 0.5, id="sig-2")
    first = workers.spawn(APP)
    wait_until(lambda: waiting_on(app, "sig-2", "approve"), 10, "the run to wait")
    workers.kill(first)

    app.signal_sync("sig-2", "approve", ["yes", 42])
    workers.spawn(APP)
    result = handle.result_sync(timeout=RESULT_TIMEOUT)

    assert result == {"before": 5, "payload": ["yes", 42], "again": "timed out", "after": 6}
    assert ran(workers, "sig-2", "before") == 1  # answered from the journal on replay
    assert ran(workers, "sig-2", "after") == 1
    assert journal(app, "sig-2") == [
        ("step", "before"),
        ("wait", "approve"),
        ("signal", "approve"),
        ("wait", "approve"),
        ("wait_timeout", "approve"),
        ("step", "after"),
    ]
    wait = entries(app, "sig-2", "wait")[0]
    signal = entries(app, "sig-2", "signal")[0]
    assert signal.epoch > wait.epoch  # delivered by the new worker's claim
    assert queued(app, "sig-2") == []


def test_second_signal_stays_queued_for_the_next_wait_across_a_kill(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("two_waits", id="sig-3")
    first = workers.spawn(APP, CRASHY_BLOCK="between")
    wait_until(lambda: waiting_on(app, "sig-3", "t"), 10, "the run to wait")
    app.signal_sync("sig-3", "t", "A")
    app.signal_sync("sig-3", "t", "B")

    wait_until(lambda: ran(workers, "sig-3", "between") == 1, 10, "the step between the waits")
    # The first wait took A (journaled before the next step began); B is queued.
    assert journal(app, "sig-3") == [("wait", "t"), ("signal", "t")]
    assert json.loads(entries(app, "sig-3", "signal")[0].payload) == "A"
    assert queued(app, "sig-3") == ["B"]
    workers.kill(first)

    workers.spawn(APP)
    assert handle.result_sync(timeout=RESULT_TIMEOUT) == ["A", "B"]
    assert journal(app, "sig-3") == [
        ("wait", "t"),
        ("signal", "t"),
        ("step", "between"),
        ("wait", "t"),
        ("signal", "t"),
    ]
    assert [json.loads(e.payload) for e in entries(app, "sig-3", "signal")] == ["A", "B"]
    assert ran(workers, "sig-3", "between") == 2  # cut off by the kill, re-ran once
    assert queued(app, "sig-3") == []


# -- cancellation ---------------------------------------------------------------------


def test_cancel_during_a_step_journals_it_and_compensates_across_a_kill(
    workers: Workers, database_url: str, tmp_path: Path
) -> None:
    app = client(database_url)
    gate = tmp_path / "gate"
    handle = app.start_sync("cancel_in_step", str(gate), id="can-1")
    first = workers.spawn(APP, CRASHY_BLOCK="undo")
    wait_until(lambda: ran(workers, "can-1", "work") == 1, 10, "the step to start")

    assert handle.cancel_sync() == "running"
    time.sleep(0.5)  # let the worker see the request while the step still executes
    gate.touch()  # the step finishes after the cancel request
    wait_until(lambda: ran(workers, "can-1", "undo") == 1, 10, "compensation to start")
    assert handle.status_sync() == "running"
    workers.kill(first)  # mid-compensation

    workers.spawn(APP)
    with pytest.raises(durably.WorkflowCancelled):
        handle.result_sync(timeout=RESULT_TIMEOUT)
    assert handle.status_sync() == "cancelled"
    assert journal(app, "can-1") == [
        ("step", "work"),
        ("cancel_at", "cancel"),
        ("step", "undo"),
    ]
    assert json.loads(entries(app, "can-1", "step")[0].payload) == "worked"
    assert ran(workers, "can-1", "work") == 1  # it finished; never re-ran
    assert ran(workers, "can-1", "next") == 0  # cancellation raised here instead
    undo = [r for r in effects.rows(str(workers.effects), "can-1") if r[1] == "undo"]
    assert len(undo) == 2  # cut off by the kill, re-ran once on the new worker
    # Both times the compensation saw the cancelled step's result.
    assert [json.loads(r[2]) for r in undo] == [["worked"], ["worked"]]


def test_cancel_during_a_sleep_while_no_worker_runs(workers: Workers, database_url: str) -> None:
    app = client(database_url)
    handle = app.start_sync("cancel_in_sleep", 30.0, id="can-2")
    first = workers.spawn(APP)
    wait_until(
        lambda: handle.status_sync() == "suspended" and ("timer", "nap") in journal(app, "can-2"),
        10,
        "the run to sleep",
    )
    workers.kill(first)
    requested = time.time()
    assert handle.cancel_sync() == "suspended"

    started = time.time()
    workers.spawn(APP)
    with pytest.raises(durably.WorkflowCancelled):
        handle.result_sync(timeout=RESULT_TIMEOUT)
    assert time.time() - started < 10  # woken by the cancel, not by the 30 s timer
    assert handle.status_sync() == "cancelled"
    assert journal(app, "can-2") == [
        ("step", "before"),
        ("timer", "nap"),
        ("cancel", "cancel"),
        ("step", "undo"),
    ]
    assert entries(app, "can-2", "cancel")[0].at >= requested
    assert ran(workers, "can-2", "before") == 1
    assert ran(workers, "can-2", "undo") == 1
    assert ran(workers, "can-2", "after") == 0


def test_cancel_during_a_wait_in_a_sync_workflow_across_a_kill(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("cancel_in_wait", id="can-3")
    first = workers.spawn(APP, CRASHY_BLOCK="undo")
    wait_until(lambda: waiting_on(app, "can-3", "never"), 10, "the run to wait")

    handle.cancel_sync()
    wait_until(lambda: ran(workers, "can-3", "undo") == 1, 10, "compensation to start")
    workers.kill(first)  # mid-compensation: the new worker replays the cancel entry

    workers.spawn(APP)
    with pytest.raises(durably.WorkflowCancelled):
        handle.result_sync(timeout=RESULT_TIMEOUT)
    assert handle.status_sync() == "cancelled"
    assert journal(app, "can-3") == [
        ("step", "before"),
        ("wait", "never"),
        ("cancel", "cancel"),
        ("step", "undo"),
    ]
    assert ran(workers, "can-3", "before") == 1
    assert ran(workers, "can-3", "undo") == 2
    assert ran(workers, "can-3", "after") == 0
    with pytest.raises(durably.DurablyError):
        app.signal_sync("can-3", "never", 1)  # it ended: signals are refused


# -- children ---------------------------------------------------------------------------


def test_child_whose_worker_dies_mid_step_still_returns_to_its_parent(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("parent", 3, "kid", id="fam-5")
    child_id = "fam-5/1"  # the child's default id: parent id / position
    first = workers.spawn(APP, CRASHY_BLOCK="k2")
    wait_until(lambda: ran(workers, child_id, "k2") == 1, 10, "the child's step k2")
    workers.kill(first)

    workers.spawn(APP)
    assert handle.result_sync(timeout=RESULT_TIMEOUT) == {
        "child": (3 + 1) * 10 + 5,
        "after": "after",
    }
    assert ran(workers, "fam-5", "p_before") == 1
    assert ran(workers, "fam-5", "p_after") == 1
    assert ran(workers, child_id, "k1") == 1
    assert ran(workers, child_id, "k2") == 2  # cut off by the kill, re-ran once
    assert ran(workers, child_id, "k3") == 1
    assert journal(app, child_id) == [("step", "k1"), ("step", "k2"), ("step", "k3")]
    assert journal(app, "fam-5") == [
        ("step", "p_before"),
        ("child", "kid"),
        ("child_done", "kid"),
        ("step", "p_after"),
    ]
    assert json.loads(entries(app, "fam-5", "child")[0].payload)["id"] == child_id
    runs = {r.id: r for r in app.list_runs_sync()}
    assert sorted(runs) == ["fam-5", child_id]
    assert runs[child_id].parent_id == "fam-5"
    assert runs[child_id].status == "completed"


def test_parent_replayed_after_its_child_finished_does_not_restart_it(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("parent", 7, "waiting_kid", id="fam-6")
    child_id = "fam-6/1"
    first = workers.spawn(APP)
    wait_until(
        lambda: waiting_on(app, child_id, "go") and handle.status_sync() == "suspended",
        10,
        "the parent to wait on its waiting child",
    )
    workers.kill(first)

    # With no worker alive the child is signalled. The parent cannot be claimed
    # before its child ends (nothing wakes it), so it is replayed afterwards.
    app.signal_sync(child_id, "go", "green")
    workers.spawn(APP)
    result = handle.result_sync(timeout=RESULT_TIMEOUT)

    assert result == {"child": {"one": 8, "go": "green", "three": 108}, "after": "after"}
    runs = {r.id: r for r in app.list_runs_sync()}
    assert sorted(runs) == ["fam-6", child_id]  # exactly one child run
    assert runs[child_id].status == "completed"
    assert ran(workers, "fam-6", "p_before") == 1
    assert ran(workers, "fam-6", "p_after") == 1
    assert ran(workers, child_id, "k1") == 1
    assert ran(workers, child_id, "k3") == 1
    assert journal(app, "fam-6") == [
        ("step", "p_before"),
        ("child", "waiting_kid"),
        ("child_done", "waiting_kid"),
        ("step", "p_after"),
    ]
    started = entries(app, "fam-6", "child")[0]
    done = entries(app, "fam-6", "child_done")[0]
    assert done.epoch > started.epoch  # the parent was replayed on a new claim
    finished_at = runs[child_id].finished_at
    assert finished_at is not None and done.at >= finished_at


def test_cancelling_a_parent_cancels_its_child_across_a_kill(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("parent", 1, "waiting_kid", id="fam-7")
    child_id = "fam-7/1"
    first = workers.spawn(APP, CRASHY_BLOCK="kid_undo,p_undo")
    wait_until(
        lambda: waiting_on(app, child_id, "go") and handle.status_sync() == "suspended",
        10,
        "the parent to wait on its waiting child",
    )

    handle.cancel_sync()
    wait_until(
        lambda: ran(workers, child_id, "kid_undo") == 1 and ran(workers, "fam-7", "p_undo") == 1,
        10,
        "both compensations to start",
    )
    workers.kill(first)

    workers.spawn(APP)
    with pytest.raises(durably.WorkflowCancelled):
        handle.result_sync(timeout=RESULT_TIMEOUT)
    with pytest.raises(durably.WorkflowCancelled):
        app.get_handle(child_id).result_sync(timeout=RESULT_TIMEOUT)
    runs = {r.id: r for r in app.list_runs_sync()}
    assert sorted(runs) == ["fam-7", child_id]
    assert runs["fam-7"].status == "cancelled"
    assert runs[child_id].status == "cancelled"
    assert journal(app, child_id) == [
        ("step", "k1"),
        ("wait", "go"),
        ("cancel", "cancel"),
        ("step", "kid_undo"),
    ]
    assert journal(app, "fam-7") == [
        ("step", "p_before"),
        ("child", "waiting_kid"),
        ("cancel", "cancel"),
        ("step", "p_undo"),
    ]
    assert ran(workers, child_id, "kid_undo") == 2
    assert ran(workers, "fam-7", "p_undo") == 2
    assert ran(workers, child_id, "k3") == 0
    assert ran(workers, "fam-7", "p_after") == 0


# -- deadlines -------------------------------------------------------------------------


def test_deadline_passing_while_no_worker_runs_cancels_on_the_next_worker(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("deadlined", id="dl-1", deadline=2.5)
    record = app.storage.get_run("dl-1")
    assert record is not None and record.deadline is not None
    deadline = record.deadline
    first = workers.spawn(APP)
    wait_until(lambda: waiting_on(app, "dl-1", "never"), 10, "the run to wait")
    workers.kill(first)
    assert time.time() < deadline, "the worker must die before the deadline"

    time.sleep(deadline - time.time() + 0.5)  # the deadline passes with no worker alive
    assert handle.status_sync() == "suspended"
    assert ("cancel", "cancel") not in journal(app, "dl-1")

    workers.spawn(APP)
    with pytest.raises(durably.WorkflowCancelled):
        handle.result_sync(timeout=RESULT_TIMEOUT)
    assert handle.status_sync() == "cancelled"
    assert journal(app, "dl-1") == [
        ("step", "before"),
        ("wait", "never"),
        ("cancel", "cancel"),
        ("step", "undo"),
    ]
    cancel = entries(app, "dl-1", "cancel")[0]
    assert cancel.at >= deadline  # never before the deadline
    assert json.loads(cancel.payload)["reason"] == "its deadline passed"
    assert ran(workers, "dl-1", "before") == 1
    assert ran(workers, "dl-1", "undo") == 1


def test_deadline_is_never_early_with_a_live_worker(workers: Workers, database_url: str) -> None:
    app = client(database_url)
    workers.spawn(APP)
    # The worker is up (a process start can take longer than the deadline on
    # a loaded machine): the run below is claimed well before its deadline.
    warm = app.start_sync("cancel_in_sleep", 0.01, id="dl-2-warm-up")
    assert warm.result_sync(timeout=RESULT_TIMEOUT) == "not cancelled"
    handle = app.start_sync("deadlined", id="dl-2", deadline=1.5)
    record = app.storage.get_run("dl-2")
    assert record is not None and record.deadline is not None
    with pytest.raises(durably.WorkflowCancelled):
        handle.result_sync(timeout=RESULT_TIMEOUT)
    cancel = entries(app, "dl-2", "cancel")[0]
    assert cancel.at >= record.deadline
    assert journal(app, "dl-2")[-2:] == [("cancel", "cancel"), ("step", "undo")]
    assert ran(workers, "dl-2", "undo") == 1


def test_signals_sent_at_any_moment_each_reach_one_wait_in_order(
    workers: Workers, database_url: str
) -> None:
    # Signals arrive while the run executes a step, while it is suspended but
    # still held in memory (grace period), after it left memory, and while its
    # worker is dead; each is handed to exactly one wait, in the order sent.
    app = client(database_url)
    handle = app.start_sync("collect", 7, id="sig-4")
    first = workers.spawn(APP)
    wait_until(lambda: waiting_on(app, "sig-4", "t"), 10, "the run to wait")
    for i, pause in enumerate([0.0, 0.0, 0.3, 1.3, 0.05]):
        time.sleep(pause)
        app.signal_sync("sig-4", "t", i)
    workers.kill(first)
    app.signal_sync("sig-4", "t", 5)
    workers.spawn(APP)
    time.sleep(0.2)
    app.signal_sync("sig-4", "t", 6)
    assert handle.result_sync(timeout=RESULT_TIMEOUT) == [0, 1, 2, 3, 4, 5, 6]
    assert [json.loads(e.payload) for e in entries(app, "sig-4", "signal")] == list(range(7))
    assert queued(app, "sig-4") == []


def test_parent_deadline_passing_while_no_worker_runs_cancels_its_child(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("parent", 2, "waiting_kid", id="dl-3", deadline=2.5)
    record = app.storage.get_run("dl-3")
    assert record is not None and record.deadline is not None
    deadline = record.deadline
    child_id = "dl-3/1"
    first = workers.spawn(APP)
    wait_until(
        lambda: waiting_on(app, child_id, "go") and handle.status_sync() == "suspended",
        10,
        "the parent to wait on its waiting child",
    )
    workers.kill(first)
    assert time.time() < deadline, "the worker must die before the deadline"
    time.sleep(deadline - time.time() + 0.5)
    assert handle.status_sync() == "suspended"

    workers.spawn(APP)
    with pytest.raises(durably.WorkflowCancelled):
        handle.result_sync(timeout=RESULT_TIMEOUT)
    with pytest.raises(durably.WorkflowCancelled):
        app.get_handle(child_id).result_sync(timeout=RESULT_TIMEOUT)
    assert journal(app, "dl-3") == [
        ("step", "p_before"),
        ("child", "waiting_kid"),
        ("cancel", "cancel"),
        ("step", "p_undo"),
    ]
    assert journal(app, child_id) == [
        ("step", "k1"),
        ("wait", "go"),
        ("cancel", "cancel"),
        ("step", "kid_undo"),
    ]
    for run_id in ("dl-3", child_id):
        assert entries(app, run_id, "cancel")[0].at >= deadline
    assert ran(workers, "dl-3", "p_undo") == 1
    assert ran(workers, child_id, "kid_undo") == 1
    assert ran(workers, child_id, "k3") == 0

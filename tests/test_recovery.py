"""Crash recovery with real worker processes and real SIGKILL (semantics 3, 4, 5, 6)."""

from __future__ import annotations

import time
from pathlib import Path

import durably
from apps import effects
from apps.crashy import app as crashy
from conftest import Workers, wait_until


def client(database_url: str) -> durably.App:
    crashy.use_database(database_url)
    return crashy


def journal_names(app: durably.App, run_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in app.storage.load_journal(run_id)]


def test_kill_mid_step_resumes_at_that_step_with_the_same_key(
    workers: Workers, database_url: str
) -> None:
    app = client(database_url)
    handle = app.start_sync("sequential", 1, id="seq-1")
    first = workers.spawn(CRASHY_BLOCK="b")
    wait_until(lambda: effects.count(str(workers.effects), "seq-1", "b") == 1, what="b to start")
    workers.kill(first)
    killed_at = time.time()
    workers.spawn()
    assert handle.result_sync(timeout=30) == (1 + 1) * 10 + 5
    rows = effects.rows(str(workers.effects), "seq-1")
    steps = [r[1] for r in rows]
    assert steps == ["a", "b", "b", "c"]  # a never re-ran; b was cut off and re-ran once
    b_keys = {r[0] for r in rows if r[1] == "b"}
    assert b_keys == {"seq-1:1"}  # the re-run saw the same idempotency key
    resumed_at = [r[4] for r in rows if r[1] == "b"][1]
    assert resumed_at - killed_at < 1.0 + 3.0  # about one lease (1s) plus process start
    kinds = journal_names(app, "seq-1")
    assert kinds == [("step", "a"), ("step", "b"), ("step", "c")]


def test_kill_during_sleep_wakes_on_a_new_worker(workers: Workers, database_url: str) -> None:
    app = client(database_url)
    handle = app.start_sync("sleeper", 7, 2.0, id="nap-1")
    first = workers.spawn()
    wait_until(lambda: handle.status_sync() == "suspended", what="the run to suspend")
    workers.kill(first)
    workers.spawn()
    result = handle.result_sync(timeout=30)
    assert result["first"] == 7
    assert result["after"] >= result["slept_from"] + 2.0  # never early
    assert effects.count(str(workers.effects), "nap-1", "before") == 1
    assert effects.count(str(workers.effects), "nap-1", "after") == 1


def test_due_timer_fires_after_every_worker_restarted(workers: Workers, database_url: str) -> None:
    app = client(database_url)
    handle = app.start_sync("sleeper", 1, 1.5, id="nap-2")
    first = workers.spawn()
    wait_until(lambda: handle.status_sync() == "suspended", what="the run to suspend")
    workers.kill(first)
    time.sleep(2.0)  # the timer is due while no worker is alive
    workers.spawn()
    assert handle.result_sync(timeout=30)["first"] == 1


def test_kill_during_retry_backoff_keeps_attempts(workers: Workers, database_url: str) -> None:
    app = client(database_url)
    handle = app.start_sync("retrying", 4, id="retry-1")
    first = workers.spawn()
    wait_until(
        lambda: sum(1 for k, _ in journal_names(app, "retry-1") if k == "attempt") == 1,
        what="the first failed attempt to be journaled",
    )
    workers.kill(first)
    workers.spawn()
    assert handle.result_sync(timeout=30) == 12
    assert effects.count(str(workers.effects), "retry-1", "flaky") == 3
    assert journal_names(app, "retry-1") == [
        ("attempt", "flaky"),
        ("attempt", "flaky"),
        ("step", "flaky"),
    ]


def test_kill_between_parallel_steps(workers: Workers, database_url: str) -> None:
    app = client(database_url)
    handle = app.start_sync("parallel", 1, id="par-1")
    first = workers.spawn(CRASHY_BLOCK="slow")
    wait_until(
        lambda: (
            ("step", "fast") in journal_names(app, "par-1")
            and effects.count(str(workers.effects), "par-1", "slow") == 1
        ),
        what="fast journaled while slow runs",
    )
    workers.kill(first)
    workers.spawn()
    assert handle.result_sync(timeout=30) == [101, 201]
    assert effects.count(str(workers.effects), "par-1", "fast") == 1
    assert effects.count(str(workers.effects), "par-1", "slow") == 2


def test_two_processes_starting_one_id_run_it_once(
    workers: Workers, database_url: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    script = (
        "import sys, time; from apps.crashy import app; app.use_database(sys.argv[1]);"
        "t = float(sys.argv[2]);"
        "time.sleep(max(0, t - time.time()));"
        "print(app.start_sync('sequential', 5, id='dup-1').id)"
    )
    go = str(time.time() + 1.5)
    env = workers.env()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url, go],
            env=env,
            cwd=str(Path(__file__).parent),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outs == ["dup-1", "dup-1"]
    workers.spawn()
    workers.spawn()
    app = client(database_url)
    assert app.get_handle("dup-1").result_sync(timeout=30) == (5 + 1) * 10 + 5
    assert [r[1] for r in effects.rows(str(workers.effects), "dup-1")] == ["a", "b", "c"]
    assert len(app.list_runs_sync()) == 1

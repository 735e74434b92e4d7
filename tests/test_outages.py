"""Database outages (PostgreSQL): workers and clients ride them out.

The outage is a TCP proxy between durably and the server that drops every
connection and refuses new ones (see outage_proxy.py); the worker process is
never restarted.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import durably
from apps import effects
from apps.crashy import app as crashy
from conftest import Workers, wait_until
from outage_proxy import OutageProxy

pytestmark = pytest.mark.timeout(300)

# How long the outage of the first test lasts (60 reproduces issue 4's longest).
OUTAGE_SECONDS = float(os.environ.get("DURABLY_OUTAGE_SECONDS", "5"))
# How many runs the last test is recovering when the outage hits.
RECOVERING = int(os.environ.get("DURABLY_OUTAGE_RUNS", "300"))


def spawn(workers: Workers, url: str, log: Path) -> Any:
    import subprocess
    import sys

    handle = log.open("w")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "durably",
            "worker",
            "apps.crashy:app",
            "--database",
            url,
            "--log-level",
            "INFO",
        ],
        env=workers.env(),
        cwd=str(Path(__file__).parent),
        stdout=handle,
        stderr=handle,
    )


def test_worker_survives_an_outage_without_losing_or_repeating_work(
    pg: tuple[str, OutageProxy], tmp_path: Path
) -> None:
    url, proxy = pg
    workers = Workers(url, tmp_path / "effects.db")
    crashy.use_database(url)
    runs = [crashy.start_sync("sleeper", i, 1.5, id=f"s-{i}") for i in range(10)]
    runs += [crashy.start_sync("sequential", i, id=f"q-{i}") for i in range(10)]
    log = tmp_path / "worker.log"
    worker = spawn(workers, proxy.url(url.rpartition("/")[2]), log)
    try:
        wait_until(lambda: effects.count(str(workers.effects), "s-0", "before") == 1)
        proxy.cut()
        time.sleep(OUTAGE_SECONDS)
        assert worker.poll() is None  # the worker rides the outage out
        proxy.restore()
        results = {h.id: h.result_sync(timeout=60) for h in runs}
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    for i in range(10):
        assert results[f"q-{i}"] == (i + 1) * 10 + 5
        assert results[f"s-{i}"]["first"] == i
    text = log.read_text()
    try:
        assert_no_journaled_step_ran_again(crashy, str(workers.effects), [h.id for h in runs])
    except AssertionError as exc:  # rare under load: keep what the worker saw
        said = [line for line in text.splitlines() if "durably" in line and "psycopg" not in line]
        raise AssertionError(f"{exc}\nworker log:\n" + "\n".join(said)) from None
    assert "Traceback" not in text, text
    assert 1 <= text.count("database unreachable") <= 3, text
    assert "database reachable again" in text


def assert_no_journaled_step_ran_again(app: durably.App, ledger: str, run_ids: list[str]) -> None:
    """A step may re-run if the outage cut it off before its record was durable,
    never once its result was journaled; and at most once more than needed."""
    for run_id in run_ids:
        executions: dict[str, list[float]] = {}
        for key, _, _, _, at in effects.rows(ledger, run_id):
            executions.setdefault(key, []).append(at)
        for entry in app.storage.load_journal(run_id):
            if entry.kind != "step":
                continue
            started = executions.get(f"{run_id}:{entry.position}", [])
            assert 1 <= len(started) <= 2, (run_id, entry.name, started)
            assert all(at <= entry.at for at in started), (run_id, entry.name, started, entry.at)


def test_clients_fail_clearly_or_wait_through_an_outage(
    pg: tuple[str, OutageProxy], tmp_path: Path
) -> None:
    url, proxy = pg
    workers = Workers(url, tmp_path / "effects.db")
    worker = workers.spawn()  # the worker talks to the server directly
    client = durably.App("crashy", proxy.url(url.rpartition("/")[2]))
    client._workflows = crashy._workflows  # same workflows, other connection
    try:
        before = client.start_sync("sleeper", 1, 3.0, id="during")
        outcome: dict[str, Any] = {}

        def wait_for_result() -> None:
            try:
                outcome["value"] = before.result_sync(timeout=60)
            except Exception as exc:  # noqa: BLE001 - asserted below
                outcome["error"] = exc

        waiting = threading.Thread(target=wait_for_result)
        waiting.start()
        time.sleep(0.3)
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(durably.DatabaseUnavailable, match="cannot reach PostgreSQL"):
            client.start_sync("sequential", 2, id="refused")
        assert time.monotonic() - started < 15
        time.sleep(1)
        proxy.restore()
        waiting.join(timeout=60)
        assert outcome.get("value", {}).get("first") == 1, outcome  # waited through it
        after = client.start_sync("sequential", 3, id="after")  # same process, works again
        assert after.result_sync(timeout=30) == 45
    finally:
        client.close()
        workers.stop_all()
        worker.wait(timeout=20)


def test_outage_while_recovering_many_runs(pg: tuple[str, OutageProxy], tmp_path: Path) -> None:
    url, proxy = pg
    workers = Workers(url, tmp_path / "effects.db")
    crashy.use_database(url)
    count = RECOVERING
    for i in range(count):
        crashy.start_sync("sequential", i, id=f"r-{i}")
    log = tmp_path / "worker.log"
    worker = spawn(workers, proxy.url(url.rpartition("/")[2]), log)
    try:
        wait_until(lambda: len(crashy.list_runs_sync(status="completed", limit=count)) >= 20)
        proxy.cut()
        time.sleep(3)
        proxy.restore()
        wait_until(
            lambda: len(crashy.list_runs_sync(status="completed", limit=count)) == count,
            timeout=120,
            what="every run to complete",
        )
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    assert "Traceback" not in log.read_text()

"""A CI-sized chaos run on each backend (semantics 3 and 4 under real SIGKILLs).

``scripts/chaos.py`` starts worker processes, starts a seeded mix of
multi-step workflows (sleeps, retries, signals, children), SIGKILLs random
workers while they run, drains, and accounts for every run. Here it runs
small (3 workers, 60 runs, 10 s) with no PostgreSQL restart: a restart would
disturb the other tests running in parallel. Longer runs and restarts:
``python scripts/chaos.py --help``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAOS = ROOT / "scripts" / "chaos.py"


@pytest.mark.timeout(90)
def test_chaos_run_loses_nothing(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # ``backend`` is conftest's fixture, parametrised over sqlite and postgres.
    env = dict(os.environ)
    if backend == "postgres":
        # Skips (locally) or fails (CI=true) exactly like the other PostgreSQL tests.
        server = request.getfixturevalue("postgres_server")
        env["DURABLY_TEST_POSTGRES_URL"] = server.url
    account_path = tmp_path / "account.json"
    command = [
        sys.executable,
        str(CHAOS),
        "--backend",
        backend,
        "--workers",
        "3",
        "--runs",
        "60",
        "--seconds",
        "10",
        "--kill-interval",
        "1.5",
        "--pause-interval",  # also freeze workers past their lease: zombies must stop
        "3",
        "--seed",
        "20240611",
        "--drain-timeout",
        "30",
        "--json",
        str(account_path),
    ]
    proc = subprocess.run(
        command, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=85
    )
    output = proc.stdout + proc.stderr
    assert account_path.exists(), f"no account written (exit {proc.returncode}):\n{output}"
    account = json.loads(account_path.read_text())
    figures = {
        key: account[key]
        for key in (
            "started",
            "completed",
            "failed",
            "lost",
            "stuck",
            "wrong",
            "reexecuted_after_successor",
            "reexecuted_after_journaled",
            "early_timers",
            "kills",
        )
    }
    assert proc.returncode == 0, f"chaos run failed: {figures}\n{output}"
    assert account["started"] == 60, output
    assert account["completed"] == account["started"], output
    assert account["lost"] == 0, output
    assert account["stuck"] == 0, output
    assert account["wrong"] == 0, output
    assert account["failed"] == 0, output
    assert account["reexecuted_after_successor"] == 0, output
    assert account["reexecuted_after_journaled"] == 0, output
    assert account["early_timers"] == 0, output
    assert account["kills"] >= 1, output
    assert account["pauses"] >= 1, output
    assert account["children"] >= 1 and account["children_completed"] == account["children"]
    assert account["valid"] is True

"""``durably demo``: the README's first command, end to end."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path


def run_demo(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "durably", "demo"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_kills_the_worker_after_the_charge_and_resumes_without_charging_twice(
    tmp_path: Path,
) -> None:
    first = run_demo(tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "killed worker 1 with SIGKILL" in out
    assert "resumed the run by replaying its journal" in out
    assert "The card was charged once" in out
    assert "claim 2" in out  # the timeline shows the takeover
    timeline = out[out.index("The run's journal") :]
    steps = ["create_customer", "charge_card", "provision_workspace", "send_welcome_email"]
    positions = [timeline.index(f"step {name}") for name in steps]
    assert positions == sorted(positions)
    assert timeline.index("claim 2") > timeline.index("step charge_card")
    assert timeline.index("claim 2") < timeline.index("step provision_workspace")

    conn = sqlite3.connect(tmp_path / "durably.db")
    charges = conn.execute(
        "SELECT count(*) FROM demo_effects WHERE step = 'charge_card'"
    ).fetchone()[0]
    conn.close()
    assert charges == 1

    again = run_demo(tmp_path)  # a second demo in the same folder works too
    assert again.returncode == 0, again.stdout + again.stderr

"""The examples run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str, folder: Path, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, **env},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_activation_nudge(tmp_path: Path) -> None:
    out = run("activation_nudge.py", tmp_path, NUDGE_WAIT_SECONDS="1")
    assert "ada: activated via email link" in out, out
    assert "bob: nudged" in out, out
    assert out.count("nudge mail to bob") == 1, out
    assert "nudge mail to ada" not in out, out


def test_approval(tmp_path: Path) -> None:
    out = run("approval.py", tmp_path)
    assert "exp-1: booked-hold-exp-1" in out, out
    assert "exp-2: rejected" in out, out
    assert "released hold-exp-2" in out and "released hold-exp-1" not in out, out
    assert "exp-2 status: rejected by grace" in out, out

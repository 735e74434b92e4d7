"""A ledger of real step executions, shared by test processes.

Steps call :func:`record` each time they actually run; tests count rows to
prove what ran once, what re-ran, and with which idempotency key.
"""

from __future__ import annotations

import os
import sqlite3
import time

import durably

ENV = "DURABLY_TEST_EFFECTS"


def _connect(path: str | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path or os.environ[ENV], timeout=60)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS effects (key TEXT, step TEXT, note TEXT, pid INTEGER, at REAL)"
    )
    return conn


def record(step: str, note: str = "") -> None:
    conn = _connect()
    try:
        with conn:
            conn.execute(
                "INSERT INTO effects VALUES (?, ?, ?, ?, ?)",
                (durably.current_step_key(), step, note, os.getpid(), time.time()),
            )
    finally:
        conn.close()


def rows(path: str, run_id: str | None = None) -> list[tuple[str, str, str, int, float]]:
    conn = _connect(path)
    try:
        if run_id is None:
            return conn.execute("SELECT * FROM effects ORDER BY at").fetchall()
        return conn.execute(
            "SELECT * FROM effects WHERE key LIKE ? ORDER BY at", (run_id + ":%",)
        ).fetchall()
    finally:
        conn.close()


def count(path: str, run_id: str, step: str) -> int:
    return sum(1 for r in rows(path, run_id) if r[1] == step)


def blocked(step: str) -> bool:
    """True in a worker told to hang inside ``step`` (so a test can kill it there)."""
    return step in os.environ.get("CRASHY_BLOCK", "").split(",")

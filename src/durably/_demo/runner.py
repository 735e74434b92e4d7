"""``durably demo``: start a signup run, kill its worker mid-flow, resume it.

Everything is real: the workers are separate processes running
``durably worker``, the kill is SIGKILL (no cleanup, no goodbye), and the
second worker knows nothing but what the journal in ``./durably.db`` says.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from typing import IO, Any
from urllib.parse import urlsplit

import click

from .._cli.timeline import render
from .._engine.journal import Kind

LEASE_SECONDS = "2"


def _say(text: str = "", **style: Any) -> None:
    click.echo(click.style(text, **style) if style else text)


def _spawn(url: str, env: dict[str, str], log: IO[str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "durably",
        "worker",
        "durably._demo.signup:app",
        "--database",
        url,
        "--concurrency",
        "4",
        "--log-level",
        "WARNING",
    ]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)


def _effects_file(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return (parts.netloc + path) if parts.netloc else path
    return os.path.abspath("durably-demo-effects.db")


def _effects(path: str, run_id: str) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute(
            "SELECT step, detail, pid FROM demo_effects WHERE run_key LIKE ? ORDER BY at",
            (run_id + ":%",),
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def run_demo(database: str | None) -> int:
    url = database or "sqlite:///durably.db"
    env = dict(os.environ)
    env["DURABLY_DATABASE_URL"] = url
    env["DURABLY_LEASE_SECONDS"] = LEASE_SECONDS
    env["DURABLY_DEMO_EFFECTS"] = _effects_file(url)
    os.environ.update({k: env[k] for k in ("DURABLY_DATABASE_URL", "DURABLY_DEMO_EFFECTS")})

    from . import signup

    app = signup.app
    app.use_database(url)
    run_id = f"signup-{uuid.uuid4().hex[:8]}"
    log = tempfile.NamedTemporaryFile("w+", prefix="durably-demo-", suffix=".log", delete=False)

    _say("durably demo: a signup flow that survives its worker being killed", bold=True)
    _say(f"database: {url}")
    _say("flow:     create_customer -> charge_card -> provision_workspace -> send_welcome_email")
    _say()
    handle = app.start_sync(signup.signup, "ada@example.com", id=run_id)
    _say(f"1. started run {run_id} for ada@example.com")

    slow = dict(env, DURABLY_DEMO_PROVISION_SECONDS="30")
    first = _spawn(url, slow, log)
    _say(f"2. worker 1 (pid {first.pid}) picked it up")
    deadline = time.monotonic() + 60
    charged = False
    while time.monotonic() < deadline and first.poll() is None:
        entries = app.storage.load_journal(run_id)
        if any(e.kind == Kind.STEP and e.name == "charge_card" for e in entries):
            charged = True
            break
        time.sleep(0.01)
    if not charged:
        first.kill()
        _say("the first worker never journaled the charge; its log:", fg="red")
        log.seek(0)
        _say(log.read())
        return 1
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    _say(
        "3. charge_card was journaled; killed worker 1 with SIGKILL while it was "
        "provisioning the workspace",
        fg="red",
    )

    second = _spawn(url, env, log)
    _say(
        f"4. started worker 2 (pid {second.pid}); it takes the run over once worker 1's "
        f"{LEASE_SECONDS}s lease lapses"
    )
    try:
        result = handle.result_sync(timeout=90)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=15)
        except subprocess.TimeoutExpired:
            second.kill()
    _say(
        "5. worker 2 resumed the run by replaying its journal: create_customer and "
        "charge_card were answered from the journal, provisioning ran live",
        fg="green",
    )
    _say(f"   result: {result}")
    _say()
    record = app.storage.get_run(run_id)
    assert record is not None
    _say("The run's journal (durably show " + run_id + "):", bold=True)
    for line in render(record, app.storage.load_journal(run_id)):
        _say(line)
    _say()
    effects = _effects(_effects_file(url), run_id)
    _say("What each step did to the outside world (one row per real execution):", bold=True)
    for step, detail, pid in effects:
        who = "worker 1" if pid == first.pid else "worker 2" if pid == second.pid else f"pid {pid}"
        _say(f"   {step:<20} {detail:<28} by {who}")
    charges = sum(1 for step, _, _ in effects if step == "charge_card")
    _say()
    if charges == 1:
        _say(
            "The card was charged once: the run resumed after the crash without charging twice.",
            fg="green",
            bold=True,
        )
        app.close()
        return 0
    _say(f"The card was charged {charges} times: that is a bug.", fg="red", bold=True)
    app.close()
    return 1

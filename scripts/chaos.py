#!/usr/bin/env python
"""Chaos runner: real worker processes, real SIGKILLs, real database restarts.

    python scripts/chaos.py --backend sqlite|postgres --workers N --runs N --seconds S
                            [--pg-restarts N] [--seed N] [--json PATH]

What it does:

1. Creates a fresh database: a SQLite file in a temporary directory, or a new
   PostgreSQL database created through the admin URL in
   ``DURABLY_TEST_POSTGRES_URL`` (default
   ``postgresql://postgres@127.0.0.1:5432/test``) and dropped at the end.
2. Starts N ``durably worker chaos_app:app`` processes (lease 1 s).
3. Over S seconds starts the runs, spread out, a seeded random mix of the
   workflows in ``scripts/chaos_app.py`` (sequential async and sync steps,
   parallel steps, sleeps, steps failing their first attempts on purpose,
   signals and child workflows), and sends the signals at random moments,
   some before the run reaches its wait. Meanwhile it SIGKILLs random
   workers at random moments and starts replacements, and with
   ``--pg-restarts`` restarts PostgreSQL that many times. With
   ``--pause-interval`` it also freezes random workers (SIGSTOP) for longer
   than a lease and lets them go on (SIGCONT): a long GC pause, a VM freeze.
4. Drains: every worker alive, no more faults, until every run is terminal
   (bounded by ``--drain-timeout`` + 2 leases).
5. Prints an account and writes it as JSON (``--json``). The figures:

   started        runs whose ``app.start`` returned
   completed      of those, runs that completed
   failed         runs (or children) that ended failed or cancelled: none should
   lost           started runs without a row, children journaled as started
                  without a row
   stuck          runs (children included) not terminal after the drain
   wrong          runs (children included) that completed with a result other than
                  the oracle's (``chaos_app.expected``)
   reexecuted_after_successor
                  runs in which a step began executing, its lease confirmed
                  only after a step of a later stage of the same sequential
                  chain had begun (checked on the effects ledger, which records
                  every real execution and when its lease was last confirmed)
   reexecuted_after_journaled
                  runs in which a step began executing, its lease confirmed
                  only after its result was journaled
   frozen_in_lease_window
                  executions that began after a successor or their own record
                  but whose lease was confirmed before, in a worker frozen
                  (SIGSTOP) between that check and the step's first line: the
                  window every lease leaves (docs/guarantees.md); reported, not
                  a failure
   early_timers   timers whose firing was journaled before their due time
   step_reexecutions
                  executions beyond the expected ones (1 per step, ``fails + 1``
                  for a step failing on purpose), i.e. steps cut off by a kill
   worst_takeover for each kill, the runs the killed worker held (its owner
                  column right after the kill, with their claim epoch); for each
                  such run the time from the kill (or from when the run could
                  next proceed: its due timer, its next signal or child end) to
                  its next progress (a new claim, a journal entry under a newer
                  epoch, a step execution by another process, its end); the max
   drain_seconds  from the end of the fault phase until every run was terminal

The JSON account also holds the evidence for every suspect run (its row,
journal, effects and the kills that touched it), the kill, pause and worker
logs; the temporary directory (effects ledger, worker logs) is kept when the
account is invalid.

Exit code 0 when the account is valid (no lost, stuck, failed, wrong,
re-executed-after-successor or re-executed-after-journaled run and no early
timer), 1 when it is not, 2 when the run could not be set up.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import chaos_app  # noqa: E402

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_RESTART_CMD = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"]
LEASE = 1.0
TERMINAL = ("completed", "failed", "cancelled")

# The workload: workflow -> weight.
MIX = {
    "chain": 20,
    "chain_sync": 15,
    "napper": 15,
    "retrier": 15,
    "waiter": 15,
    "fanout": 10,
    "saga_sync": 10,
}


def log(message: str) -> None:
    print(f"[chaos] {message}", flush=True)


def with_dbname(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


# -- direct reads of durably's tables --------------------------------------------------


class Database:
    """Read-only queries on durably's tables, reconnecting after failures.

    SQL is written with ``?`` placeholders and ``{runs}``, ``{journal}``,
    ``{signals}`` for the table names of the backend.
    """

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self._conn: Any = None
        if backend == "sqlite":
            self.tables = {
                "runs": "durably_runs",
                "journal": "durably_journal",
                "signals": "durably_signals",
            }
        else:
            self.tables = {
                "runs": "durably.runs",
                "journal": "durably.journal",
                "signals": "durably.signals",
            }

    def _connect(self) -> Any:
        if self.backend == "sqlite":
            import sqlite3

            path = self.url.split("sqlite:///", 1)[1]
            return sqlite3.connect(path, timeout=30)
        import psycopg

        return psycopg.connect(self.url, autocommit=True, connect_timeout=3)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        sql = sql.format(**self.tables)
        if self.backend != "sqlite":
            sql = sql.replace("?", "%s")
        try:
            if self._conn is None:
                self._conn = self._connect()
            cur = self._conn.execute(sql, params)
            rows = cur.fetchall()
            if self.backend == "sqlite":
                self._conn.commit()  # end the read transaction: see new commits next time
            return list(rows)
        except Exception:
            self.close()
            raise

    def try_query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]] | None:
        try:
            return self.query(sql, params)
        except Exception:  # noqa: BLE001 - the database may be restarting
            return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


# -- the plan --------------------------------------------------------------------------


@dataclass
class PlannedRun:
    index: int
    id: str
    workflow: str
    args: list[Any]
    offset: float  # seconds after the beginning
    signal_delays: list[float]  # seconds after the start returned
    signal_payloads: list[int]
    started_at: float | None = None
    start_attempts: int = 0
    signals_sent: list[float | None] = field(default_factory=list)
    signal_uncertain: list[bool] = field(default_factory=list)


def plan_runs(rng: random.Random, runs: int, seconds: float, seed: int) -> list[PlannedRun]:
    names = list(MIX)
    weights = [MIX[n] for n in names]
    offsets = sorted(rng.uniform(0, seconds * 0.95) for _ in range(runs))
    plan = []
    for index, offset in enumerate(offsets):
        wf = rng.choices(names, weights)[0]
        x = rng.randrange(1, 100_000)
        delay = rng.choice([0.0, 0.01, 0.05, 0.1, 0.3])
        if wf in ("chain", "chain_sync"):
            args: list[Any] = [x, rng.randint(3, 6), delay]
        elif wf == "napper":
            args = [x, round(rng.uniform(0.2, 3.0), 3)]
        elif wf == "retrier":
            args = [x, rng.randint(1, 3), delay]
        elif wf == "waiter":
            args = [x, delay]
        elif wf == "fanout":
            args = [x, rng.randint(1, 3), delay]
        else:  # saga_sync
            args = [x, round(rng.uniform(0.1, 2.0), 3), rng.randint(1, 2), delay]
        needed = chaos_app.SIGNALS_NEEDED.get(wf, 0)
        delays = sorted(
            rng.uniform(0.0, 0.05) if rng.random() < 0.35 else rng.uniform(0.1, 4.0)
            for _ in range(needed)
        )
        payloads = rng.sample(range(1, 1_000_000), needed)
        plan.append(
            PlannedRun(
                index=index,
                id=f"chaos-{seed}-{index:05d}-{wf}",
                workflow=wf,
                args=args,
                offset=offset,
                signal_delays=delays,
                signal_payloads=payloads,
                signals_sent=[None] * needed,
                signal_uncertain=[False] * needed,
            )
        )
    return plan


def plan_kills(rng: random.Random, seconds: float, interval: float, workers: int) -> list[tuple]:
    """(offset, worker slot) pairs: exponential gaps with mean ``interval``."""
    if interval <= 0:
        return []
    kills = []
    t = 0.3 + rng.expovariate(1 / interval)
    while t < seconds:
        kills.append((t, rng.randrange(workers)))
        t += max(0.05, rng.expovariate(1 / interval))
    if not kills and seconds >= 1:
        kills.append((seconds / 2, rng.randrange(workers)))
    return kills


# -- worker processes ------------------------------------------------------------------


@dataclass
class Kill:
    index: int
    slot: int
    pid: int
    at: float
    held: list[tuple[str, str, int, float | None]] = field(default_factory=list)
    held_known: bool = True


class WorkerPool:
    def __init__(self, url: str, effects: Path, logdir: Path, n: int, concurrency: int) -> None:
        self.url = url
        self.logdir = logdir
        self.n = n
        self.concurrency = concurrency
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(SCRIPTS), *filter(None, [self.env.get("PYTHONPATH")])]
        )
        self.env[chaos_app.ENV] = str(effects)
        self.env["DURABLY_LEASE_SECONDS"] = str(LEASE)
        self.env.pop("DURABLY_FAULT", None)
        self.slots: list[subprocess.Popen[bytes] | None] = [None] * n
        self.killed: set[int] = set()
        self.spawned = 0
        self.unexpected_exits: list[dict[str, Any]] = []
        self.spawn_log: list[dict[str, Any]] = []

    def spawn(self, slot: int) -> subprocess.Popen[bytes]:
        self.spawned += 1
        logfile = self.logdir / f"worker-{self.spawned:03d}-slot{slot}.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "durably",
                    "worker",
                    "chaos_app:app",
                    "--database",
                    self.url,
                    "--concurrency",
                    str(self.concurrency),
                    "--log-level",
                    "WARNING",
                ],
                env=self.env,
                cwd=str(self.logdir),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc.logfile = logfile  # type: ignore[attr-defined]
        self.slots[slot] = proc
        self.spawn_log.append({"pid": proc.pid, "slot": slot, "at": round(time.time(), 3)})
        return proc

    def start_all(self) -> None:
        for slot in range(self.n):
            self.spawn(slot)

    def alive(self) -> int:
        return sum(1 for p in self.slots if p is not None and p.poll() is None)

    def kill(self, slot: int) -> tuple[int, float]:
        proc = self.slots[slot]
        assert proc is not None
        self.killed.add(proc.pid)
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return proc.pid, at

    def reap(self) -> None:
        """Replace workers that died on their own (and say so)."""
        for slot, proc in enumerate(self.slots):
            if proc is None or proc.poll() is None or proc.pid in self.killed:
                continue
            tail = ""
            with contextlib.suppress(OSError):
                tail = Path(proc.logfile).read_text(errors="replace")[-2000:]  # type: ignore[attr-defined]
            self.unexpected_exits.append(
                {"pid": proc.pid, "returncode": proc.returncode, "at": time.time(), "log": tail}
            )
            log(f"worker pid {proc.pid} exited by itself (code {proc.returncode}); replacing it")
            self.spawn(slot)

    def stop_all(self) -> None:
        procs = [p for p in self.slots if p is not None and p.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused worker cannot stop
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- watching the runs a killed worker held --------------------------------------------


class TakeoverWatch(threading.Thread):
    """Polls the runs killed workers held and notes when each is claimed again."""

    def __init__(self, db: Database) -> None:
        super().__init__(name="chaos-takeover-watch", daemon=True)
        self.db = db
        self.lock = threading.Lock()
        self.pending: dict[str, int] = {}  # run id -> epoch held at the kill
        self.seen: dict[tuple[str, int], float] = {}  # (run id, held epoch) -> first seen
        self.stop_event = threading.Event()

    def add(self, run_id: str, epoch: int) -> None:
        with self.lock:
            # A run may be held by several kills in a row: watch the newest epoch.
            self.pending[run_id] = epoch

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            with self.lock:
                watch = dict(self.pending)
            if not watch:
                continue
            ids = list(watch)
            marks = ",".join("?" for _ in ids)
            rows = self.db.try_query(
                f"SELECT id, epoch, status FROM {{runs}} WHERE id IN ({marks})", tuple(ids)
            )
            if rows is None:
                continue
            now = time.time()
            with self.lock:
                for run_id, epoch, status in rows:
                    held = self.pending.get(run_id)
                    if held is None:
                        continue
                    if int(epoch) > held or status in TERMINAL:
                        self.seen[(run_id, held)] = now
                        del self.pending[run_id]

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)
        self.db.close()


# -- PostgreSQL restarts ---------------------------------------------------------------


class Restarter:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.thread: threading.Thread | None = None
        self.done: list[dict[str, Any]] = []

    @staticmethod
    def unavailable(command: list[str]) -> str | None:
        if shutil.which(command[0]) is None:
            return f"{command[0]} not found"
        if command[0] == "pg_ctlcluster" and hasattr(os, "geteuid") and os.geteuid() != 0:
            return "pg_ctlcluster needs root"
        return None

    def busy(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        def restart() -> None:
            began = time.time()
            try:
                proc = subprocess.run(self.command, capture_output=True, text=True, timeout=120)
                rc, out = proc.returncode, (proc.stdout + proc.stderr).strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                rc, out = -1, str(exc)
            ended = time.time()
            self.done.append({"began": began, "ended": ended, "returncode": rc, "output": out})
            state = "done" if rc == 0 else f"FAILED (code {rc}): {out[-300:]}"
            log(f"PostgreSQL restart {state} in {ended - began:.1f}s")

        log("restarting PostgreSQL")
        self.thread = threading.Thread(target=restart, name="chaos-pg-restart", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()


# -- the runner ------------------------------------------------------------------------


class Chaos:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.seed = opts.seed if opts.seed is not None else random.randrange(1_000_000)
        self.rng = random.Random(self.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="durably-chaos-"))
        self.effects = self.tmp / "effects.db"
        self.admin_url = os.environ.get("DURABLY_TEST_POSTGRES_URL", DEFAULT_PG_URL)
        self.pg_name: str | None = None
        self.url = ""
        self.events: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.kills: list[Kill] = []
        self.pauses: list[dict[str, Any]] = []
        self.frozen: dict[int, tuple[subprocess.Popen[bytes], threading.Timer]] = {}
        self.start_errors = 0
        self.signal_errors = 0
        self.signal_rejected: list[str] = []
        self.last_error_log = 0.0
        self.pg_skip_reason: str | None = None
        self.restarter: Restarter | None = None

    # -- setup and teardown ------------------------------------------------------------
    def create_database(self) -> None:
        if self.opts.backend == "sqlite":
            self.url = f"sqlite:///{self.tmp / 'durably.db'}"
        else:
            import psycopg

            self.pg_name = f"durably_chaos_{os.getpid()}_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
                admin.execute(f'CREATE DATABASE "{self.pg_name}"')
            self.url = with_dbname(self.admin_url, self.pg_name)
        chaos_app.init_ledger(str(self.effects))
        os.environ[chaos_app.ENV] = str(self.effects)
        chaos_app.app.use_database(self.url)
        chaos_app.app.storage  # noqa: B018 - opens and migrates before the workers start

    def drop_database(self) -> None:
        chaos_app.app.close()
        if self.pg_name is None:
            return
        import psycopg

        for attempt in range(30):  # PostgreSQL may still be coming back from a restart
            try:
                with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
                return
            except psycopg.Error as exc:
                if attempt == 29:
                    log(f"could not drop database {self.pg_name}: {exc}")
                time.sleep(1)

    # -- the event queue ---------------------------------------------------------------
    def at(self, when: float, kind: str, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self.events, (when, self._seq, kind, payload))

    def note_error(self, what: str, exc: BaseException) -> None:
        now = time.time()
        if now - self.last_error_log > 2.0:
            self.last_error_log = now
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log(f"{what} failed, retrying: {type(exc).__name__}: {first[:200]}")

    def do_start(self, run: PlannedRun, now: float) -> None:
        run.start_attempts += 1
        try:
            chaos_app.app.start_sync(run.workflow, *run.args, id=run.id)
        except Exception as exc:  # noqa: BLE001 - retried: start is idempotent by id
            self.start_errors += 1
            self.note_error(f"start of {run.id}", exc)
            self.at(now + 0.25, "start", run)
            return
        run.started_at = time.time()
        for i, delay in enumerate(run.signal_delays):
            self.at(run.started_at + delay, "signal", (run, i))

    def signal_stored(self, run: PlannedRun, i: int) -> bool:
        rows = self.db.query(
            "SELECT count(*) FROM {signals} WHERE run_id = ? AND topic = 'go' AND payload = ?",
            (run.id, json.dumps(run.signal_payloads[i])),
        )
        return bool(rows[0][0])

    def do_signal(self, run: PlannedRun, i: int, now: float) -> None:
        if i > 0 and run.signals_sent[i - 1] is None:
            self.at(now + 0.05, "signal", (run, i))  # keep the order they are sent in
            return
        from durably import RunFinished, RunNotFound

        try:
            if run.signal_uncertain[i] and self.signal_stored(run, i):
                run.signals_sent[i] = now  # the failed attempt had gone through
                return
            chaos_app.app.signal_sync(run.id, "go", run.signal_payloads[i])
        except (RunFinished, RunNotFound) as exc:
            self.signal_rejected.append(f"{run.id}: {exc}")
            run.signals_sent[i] = now
            return
        except Exception as exc:  # noqa: BLE001 - retried once we know it did not land
            self.signal_errors += 1
            run.signal_uncertain[i] = True
            self.note_error(f"signal to {run.id}", exc)
            self.at(now + 0.25, "signal", (run, i))
            return
        run.signals_sent[i] = time.time()

    def owned_by(self, pid: int) -> list[tuple[str, str, int, float | None]] | None:
        rows = self.db.try_query(
            "SELECT id, status, epoch, wake_at FROM {runs} WHERE owner LIKE ? AND status IN "
            "('running', 'suspended', 'pending')",
            (f"%:{pid}:%",),
        )
        if rows is None:
            return None
        return [(r[0], r[1], int(r[2]), r[3]) for r in rows]

    def do_kill(self, slot: int) -> None:
        proc = self.pool.slots[slot]
        if proc is None or proc.poll() is not None:
            return
        before = self.owned_by(proc.pid)
        pid, at = self.pool.kill(slot)
        kill = Kill(index=len(self.kills), slot=slot, pid=pid, at=at)
        after = None
        for _ in range(3):
            after = self.owned_by(pid)
            if after is not None:
                break
            time.sleep(0.05)
        if after is not None:
            kill.held = after
        elif before is not None:
            kill.held = before
        else:
            kill.held_known = False
        for run_id, _status, epoch, _wake in kill.held:
            self.watch.add(run_id, epoch)
        self.kills.append(kill)
        self.pool.spawn(slot)

    def do_pause(self, slot: int, now: float) -> None:
        """Freeze a worker (SIGSTOP) for longer than a lease, then let it go on (SIGCONT).

        It wakes up a zombie: its runs were taken over meanwhile, and it must
        not write to them, nor start any step another worker already journaled.
        """
        proc = self.pool.slots[slot]
        if proc is None or proc.poll() is not None:
            return
        seconds = self.opts.pause_seconds * self.rng_pauses.uniform(0.75, 1.25)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGSTOP)
        self.pauses.append({"pid": proc.pid, "at": round(now, 3), "seconds": round(seconds, 3)})
        # Resumed from a timer thread: the main loop itself may be blocked on a
        # lock the frozen worker holds (SQLite).
        timer = threading.Timer(seconds, self.resume, (proc,))
        timer.daemon = True
        self.frozen[proc.pid] = (proc, timer)
        timer.start()

    def resume(self, proc: subprocess.Popen[bytes]) -> None:
        self.frozen.pop(proc.pid, None)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)

    def resume_all(self) -> None:
        for proc, timer in list(self.frozen.values()):
            timer.cancel()
            self.resume(proc)

    def all_terminal(self) -> tuple[bool, str]:
        if any(r.started_at is None for r in self.plan):
            return False, "starts pending"
        if any(s is None for r in self.plan for s in r.signals_sent):
            return False, "signals pending"
        rows = self.db.try_query(
            "SELECT count(*), SUM(CASE WHEN status IN ('completed', 'failed', 'cancelled') "
            "THEN 1 ELSE 0 END) FROM {runs}"
        )
        if rows is None:
            return False, "database unavailable"
        total, terminal = int(rows[0][0]), int(rows[0][1] or 0)
        return total == terminal and total >= len(self.plan), f"{terminal}/{total} terminal"

    def progress(self, phase: str, began: float) -> None:
        started = sum(1 for r in self.plan if r.started_at is not None)
        rows = self.db.try_query("SELECT status, count(*) FROM {runs} GROUP BY status")
        if rows is None:
            states = "database unavailable"
        else:
            counts = dict(rows)
            states = " ".join(f"{s}={counts[s]}" for s in sorted(counts))
        log(
            f"{phase} t={time.time() - began:5.1f}s started={started}/{len(self.plan)} "
            f"[{states}] workers={self.pool.alive()}/{self.pool.n} kills={len(self.kills)} "
            f"pg-restarts={len(self.restarter.done) if self.restarter else 0}"
        )

    def handle(self, kind: str, payload: Any, now: float) -> None:
        if kind == "start":
            self.do_start(payload, now)
        elif kind == "signal":
            run, i = payload
            self.do_signal(run, i, now)
        elif kind == "kill":
            self.do_kill(payload)
        elif kind == "pause":
            self.do_pause(payload, now)
        elif kind == "pg_restart":
            assert self.restarter is not None
            if self.restarter.busy():
                self.at(now + 1.0, "pg_restart")
            else:
                self.restarter.start()

    # -- the whole thing ---------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        opts = self.opts
        log(
            f"seed {self.seed}: backend {opts.backend}, {opts.workers} workers, {opts.runs} runs "
            f"over {opts.seconds}s, kill every ~{opts.kill_interval}s, "
            + (
                f"pause one for ~{opts.pause_seconds}s every ~{opts.pause_interval}s, "
                if opts.pause_interval > 0
                else ""
            )
            + f"{opts.pg_restarts} PostgreSQL restarts; files in {self.tmp}"
        )
        self.plan = plan_runs(self.rng, opts.runs, opts.seconds, self.seed)
        kills = plan_kills(self.rng, opts.seconds, opts.kill_interval, opts.workers)
        # Pauses draw from their own generator: the rest of the plan stays the same.
        self.rng_pauses = random.Random(self.seed * 7919 + 1)
        pauses = (
            plan_kills(self.rng_pauses, opts.seconds, opts.pause_interval, opts.workers)
            if opts.pause_interval > 0
            else []
        )
        restarts: list[float] = []
        if opts.pg_restarts:
            if opts.backend != "postgres":
                self.pg_skip_reason = "--pg-restarts only applies to --backend postgres"
            else:
                command = opts.pg_restart_cmd.split() if opts.pg_restart_cmd else PG_RESTART_CMD
                self.pg_skip_reason = Restarter.unavailable(command)
                if self.pg_skip_reason is None:
                    self.restarter = Restarter(command)
                    gap = opts.seconds / (opts.pg_restarts + 1)
                    restarts = [
                        gap * (k + 1) + self.rng.uniform(-0.2, 0.2) * gap
                        for k in range(opts.pg_restarts)
                    ]
            if self.pg_skip_reason:
                log(f"skipping the {opts.pg_restarts} PostgreSQL restarts: {self.pg_skip_reason}")

        self.create_database()
        self.db = Database(opts.backend, self.url)
        self.watch = TakeoverWatch(Database(opts.backend, self.url))
        self.pool = WorkerPool(self.url, self.effects, self.tmp, opts.workers, opts.concurrency)
        self.pool.start_all()
        self.watch.start()
        began = time.time()
        for run in self.plan:
            self.at(began + run.offset, "start", run)
        for offset, slot in kills:
            self.at(began + offset, "kill", slot)
        for offset, slot in pauses:
            self.at(began + offset, "pause", slot)
        for offset in restarts:
            self.at(began + offset, "pg_restart")

        # Fault phase.
        fault_end = began + opts.seconds
        next_progress = began + opts.progress
        while True:
            now = time.time()
            if now >= fault_end:
                break
            while self.events and self.events[0][0] <= now:
                _, _, kind, payload = heapq.heappop(self.events)
                self.handle(kind, payload, now)
                now = time.time()
            self.pool.reap()
            if now >= next_progress:
                self.progress("faults", began)
                next_progress = now + opts.progress
            wake = min(self.events[0][0] if self.events else fault_end, fault_end, now + 0.05)
            time.sleep(max(0.0, wake - time.time()))

        # Drain: no more faults, every worker alive, until every run is terminal.
        self.resume_all()  # every worker runs during the drain
        self.events = [e for e in self.events if e[2] in ("start", "signal")]
        heapq.heapify(self.events)
        if self.restarter is not None and self.restarter.busy():
            log("waiting for the PostgreSQL restart in progress")
            self.restarter.wait()
        drain_began = time.time()
        latest_signal = max((e[0] for e in self.events), default=drain_began)
        drain_deadline = max(drain_began, latest_signal) + opts.drain_timeout + 2 * LEASE
        log(f"draining (at most {drain_deadline - drain_began:.0f}s)")
        drained = False
        state = ""
        next_check = 0.0
        while True:
            now = time.time()
            while self.events and self.events[0][0] <= now:
                _, _, kind, payload = heapq.heappop(self.events)
                self.handle(kind, payload, now)
                now = time.time()
            self.pool.reap()
            if now >= next_check:
                drained, state = self.all_terminal()
                if drained:
                    break
                next_check = now + 0.1
            if now >= drain_deadline:
                log(f"drain timed out: {state}")
                break
            if now >= next_progress:
                self.progress("drain ", began)
                next_progress = now + opts.progress
            time.sleep(0.02)
        drain_seconds = time.time() - drain_began
        self.progress("end   ", began)
        self.watch.stop()
        account = self.account(drain_seconds, drained, time.time() - began)
        self.pool.stop_all()
        self.db.close()
        return account

    # -- the account -------------------------------------------------------------------
    def account(self, drain_seconds: float, drained: bool, elapsed: float) -> dict[str, Any]:
        db = self.db
        for attempt in range(60):
            try:
                runs = db.query(
                    "SELECT id, workflow, status, result, error, args, parent_id, epoch, "
                    "finished_at FROM {runs}"
                )
                journal = db.query(
                    "SELECT run_id, seq, position, kind, name, payload, at, epoch FROM {journal} "
                    "ORDER BY run_id, seq"
                )
                break
            except Exception as exc:
                if attempt == 59:
                    raise
                self.note_error("reading the database", exc)
                time.sleep(1)
        ledger = chaos_app.connect_ledger(str(self.effects))
        try:
            effects = ledger.execute(
                "SELECT run_id, position, step, stage, expected, pid, at, checked FROM effects "
                "ORDER BY at"
            ).fetchall()
        finally:
            ledger.close()

        rows = {r[0]: r for r in runs}
        entries: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for e in journal:
            entries[e[0]].append(e)
        by_run: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for e in effects:
            by_run[e[0]].append(e)

        problems: dict[str, list[str]] = defaultdict(list)
        started = [r for r in self.plan if r.started_at is not None]
        completed = failed = 0
        lost: list[str] = []
        stuck: list[str] = []
        wrong: list[str] = []
        failed_ids: list[str] = []

        def judge(run_id: str, want: Any) -> None:
            nonlocal completed, failed
            row = rows[run_id]
            status = row[2]
            if status not in TERMINAL:
                stuck.append(run_id)
                last = entries[run_id][-1] if entries.get(run_id) else None
                where = f"last journal entry {last[3]} {last[4]!r} (position {last[2]})"
                problems["stuck"].append(
                    f"{run_id}: {status}, epoch {row[7]}, "
                    + (where if last else "nothing journaled")
                )
            elif status == "completed":
                if row[6] is None:
                    completed += 1
                got = json.loads(row[3]) if row[3] is not None else None
                if got != want:
                    wrong.append(run_id)
                    problems["wrong"].append(f"{run_id}: got {got!r}, expected {want!r}")
            else:
                failed += 1
                failed_ids.append(run_id)
                try:
                    error = json.loads(row[4] or "{}")
                    why = f"{error.get('type')}: {error.get('message')}"
                except ValueError:
                    why = str(row[4])
                problems["failed"].append(f"{run_id}: {status}: {why[:300]}")

        for run in started:
            if run.id not in rows:
                lost.append(run.id)
                problems["lost"].append(f"{run.id}: started at {run.started_at:.3f}, no row")
                continue
            judge(run.id, chaos_app.expected(run.workflow, run.args, run.signal_payloads))
        planned = {r.id for r in self.plan}
        children = [r for r in runs if r[6] is not None]
        for row in children:
            child_args = json.loads(row[5]).get("args", [])
            judge(row[0], chaos_app.expected(row[1], child_args))
        for run_id, items in entries.items():
            for e in items:
                if e[3] == "child":
                    child_id = json.loads(e[5] or "{}").get("id")
                    if child_id not in rows:
                        lost.append(child_id)
                        problems["lost"].append(f"{child_id}: child of {run_id}, no row")
        strays = [r[0] for r in runs if r[6] is None and r[0] not in planned]
        for run_id in strays:
            problems["stray"].append(f"{run_id}: a row nobody started")

        # Steps re-executed after a later stage began, or after being journaled:
        # judged by when the worker last confirmed the lease (a zombie must
        # check before it starts anything); one frozen between that check and
        # the step's first line is the window every lease leaves, reported.
        def checked(e: tuple[Any, ...]) -> float:
            return float(e[7]) if e[7] is not None else float(e[6])

        in_window: list[str] = []
        after_successor: set[str] = set()
        for run_id, items in by_run.items():
            top_stage, top_at = -1, 0.0
            for e in sorted(items, key=lambda e: (e[6], e[3])):
                if e[3] < top_stage and e[6] > top_at:
                    what = (
                        f"{run_id}: step {e[2]!r} (position {e[1]}, stage {e[3]}) began at "
                        f"{e[6]:.3f} (lease confirmed at {checked(e):.3f}) in pid {e[5]}, "
                        f"after stage {top_stage} began at {top_at:.3f}"
                        + self.frozen_note(e[5], e[6])
                    )
                    if checked(e) > top_at or not self.frozen_between(e[5], checked(e), e[6]):
                        after_successor.add(run_id)
                        problems["reexecuted_after_successor"].append(what)
                    else:
                        in_window.append(what)
                if e[3] > top_stage:
                    top_stage, top_at = e[3], e[6]
        journaled: dict[tuple[str, int], float] = {}
        for run_id, items in entries.items():
            for e in items:
                if e[3] in ("step", "step_failed"):
                    journaled[(run_id, e[2])] = e[6]
        after_journaled: set[str] = set()
        executions: dict[tuple[str, int], list[tuple[Any, ...]]] = defaultdict(list)
        for e in effects:
            executions[(e[0], e[1])].append(e)
            recorded = journaled.get((e[0], e[1]))
            if recorded is not None and e[6] > recorded:
                what = (
                    f"{e[0]}: step {e[2]!r} at position {e[1]} began at {e[6]:.3f} (lease "
                    f"confirmed at {checked(e):.3f}) in pid {e[5]}, its result was journaled "
                    f"at {recorded:.3f}" + self.frozen_note(e[5], e[6])
                )
                if checked(e) > recorded or not self.frozen_between(e[5], checked(e), e[6]):
                    after_journaled.add(e[0])
                    problems["reexecuted_after_journaled"].append(what)
                else:
                    in_window.append(what)
        if in_window:
            problems["frozen_in_lease_window"] = sorted(set(in_window))
        reexecutions = sum(
            max(0, len(items) - max(i[4] for i in items)) for items in executions.values()
        )

        # Timers never fire early.
        early = 0
        for run_id, items in entries.items():
            due = {e[2]: json.loads(e[5])["fire_at"] for e in items if e[3] == "timer"}
            for e in items:
                if e[3] == "fired" and e[2] in due and e[6] < due[e[2]]:
                    early += 1
                    problems["early_timers"].append(
                        f"{run_id}: timer at position {e[2]} fired at {e[6]:.3f}, "
                        f"due {due[e[2]]:.3f}"
                    )

        takeovers = self.takeovers(rows, entries, by_run)
        measured = [t for t in takeovers if t["seconds"] is not None]
        worst = max(measured, key=lambda t: t["seconds"], default=None)
        pg_done = self.restarter.done if self.restarter else []
        valid = not (
            lost or stuck or wrong or failed_ids or after_successor or after_journaled or early
        ) and len(started) == len(self.plan)
        opts = self.opts
        suspects = set(lost) | set(stuck) | set(wrong) | set(failed_ids)
        suspects |= after_successor | after_journaled
        suspects |= {p.split(":", 1)[0] for p in problems.get("early_timers", [])}
        evidence = {
            run_id: {
                "row": [str(v) for v in rows[run_id]] if run_id in rows else None,
                "journal": [
                    {
                        "seq": e[1],
                        "position": e[2],
                        "kind": e[3],
                        "name": e[4],
                        "payload": e[5],
                        "at": e[6],
                        "epoch": e[7],
                    }
                    for e in entries.get(run_id, [])
                ],
                "effects": [
                    {
                        "position": e[1],
                        "step": e[2],
                        "stage": e[3],
                        "pid": e[5],
                        "at": e[6],
                        "lease_confirmed": e[7],
                    }
                    for e in by_run.get(run_id, [])
                ],
                "kills": [
                    {"kill": k.index, "pid": k.pid, "at": k.at, "held": k.held}
                    for k in self.kills
                    if any(e[5] == k.pid for e in by_run.get(run_id, []))
                    or any(h[0] == run_id for h in k.held)
                ],
            }
            for run_id in sorted(suspects)[:20]
        }
        import durably

        return {
            "backend": opts.backend,
            "durably": f"{durably.__version__} from {Path(durably.__file__).parent}",
            "seed": self.seed,
            "workers": opts.workers,
            "runs_planned": opts.runs,
            "seconds": opts.seconds,
            "started": len(started),
            "completed": completed,
            "failed": failed,
            "lost": len(lost),
            "stuck": len(stuck),
            "wrong": len(wrong),
            "reexecuted_after_successor": len(after_successor),
            "reexecuted_after_journaled": len(after_journaled),
            "frozen_in_lease_window": len(set(in_window)),
            "early_timers": early,
            "step_executions": len(effects),
            "step_reexecutions": reexecutions,
            "children": len(children),
            "children_completed": sum(1 for r in children if r[2] == "completed"),
            "journal_entries": len(journal),
            "signals_sent": sum(1 for r in self.plan for s in r.signals_sent if s is not None),
            "signals_rejected": self.signal_rejected,
            "start_retries": self.start_errors,
            "signal_retries": self.signal_errors,
            "kills": len(self.kills),
            "pauses": len(self.pauses),
            "pause_log": self.pauses,
            "worker_spawns": self.pool.spawn_log,
            "kills_held_unknown": sum(1 for k in self.kills if not k.held_known),
            "runs_held_by_killed_workers": len(takeovers),
            "takeovers_measured": len(measured),
            "worst_takeover_seconds": worst["seconds"] if worst else None,
            "worst_takeover": worst,
            "takeovers_not_observed": [t for t in takeovers if t["seconds"] is None][:20],
            "pg_restarts": sum(1 for r in pg_done if r["returncode"] == 0),
            "pg_restarts_requested": opts.pg_restarts,
            "pg_restarts_failed": [r for r in pg_done if r["returncode"] != 0],
            "pg_restarts_skipped": self.pg_skip_reason,
            "pg_restart_durations": [round(r["ended"] - r["began"], 2) for r in pg_done],
            "worker_exits_unexpected": len(self.pool.unexpected_exits),
            "worker_exit_details": self.pool.unexpected_exits[:5],
            "drain_seconds": round(drain_seconds, 3),
            "drained": drained,
            "elapsed_seconds": round(elapsed, 3),
            "valid": valid,
            "problems": {k: v[:50] for k, v in problems.items()},
            "evidence": evidence,
            "kill_log": [
                {
                    "kill": k.index,
                    "pid": k.pid,
                    "at": round(k.at, 3),
                    "held": [h[0] for h in k.held],
                }
                for k in self.kills
            ],
            "files": str(self.tmp),
        }

    def frozen_between(self, pid: int, checked: float, began: float) -> bool:
        """Whether ``pid`` was frozen after ``checked`` and let go before ``began``.

        Only that excuses a step begun after its lease check went stale: any
        other gap there (an await, a queue) is the engine's to close.
        """
        slack = 0.1  # the pause is logged as sent; the signals land a moment later
        return any(
            p["pid"] == pid
            and checked <= p["at"] + slack
            and p["at"] + p["seconds"] <= began + slack
            for p in self.pauses
        )

    def frozen_note(self, pid: int, at: float) -> str:
        """Says so when ``pid`` had been frozen (SIGSTOP) shortly before ``at``."""
        for pause in self.pauses:
            end = pause["at"] + pause["seconds"]
            if pause["pid"] == pid and pause["at"] <= at <= end + 2 * LEASE:
                return f" (pid {pid} was frozen from {pause['at']:.3f} to {end:.3f})"
        return ""

    def takeovers(
        self,
        rows: dict[str, tuple[Any, ...]],
        entries: dict[str, list[tuple[Any, ...]]],
        by_run: dict[str, list[tuple[Any, ...]]],
    ) -> list[dict[str, Any]]:
        """One record per (kill, run the killed worker held)."""
        sent: dict[str, list[float]] = {
            r.id: [s for s in r.signals_sent if s is not None] for r in self.plan
        }
        child_ends: dict[str, list[float]] = defaultdict(list)
        for row in rows.values():
            if row[6] is not None and row[8] is not None:
                child_ends[row[6]].append(float(row[8]))
        out = []
        for kill in self.kills:
            for run_id, status, epoch, wake_at in kill.held:
                if status == "running":
                    baseline: float | None = kill.at
                elif wake_at is not None:
                    baseline = max(kill.at, float(wake_at))
                else:  # waiting for a signal or a child: from when one arrived
                    later = [t for t in sent.get(run_id, []) + child_ends[run_id] if t >= kill.at]
                    baseline = min(later) if later else None
                if baseline is None:
                    continue  # nothing woke it after the kill: no takeover to time
                marks = []
                seen = self.watch.seen.get((run_id, epoch))
                if seen is not None:
                    marks.append(seen)
                marks += [e[6] for e in entries.get(run_id, []) if int(e[7]) > epoch]
                marks += [
                    e[6] for e in by_run.get(run_id, []) if e[6] > kill.at and e[5] != kill.pid
                ]
                row = rows.get(run_id)
                if row is not None and row[2] in TERMINAL and int(row[7]) > epoch and row[8]:
                    marks.append(float(row[8]))
                progress = min(marks) if marks else None
                out.append(
                    {
                        "kill": kill.index,
                        "pid": kill.pid,
                        "killed_at": round(kill.at, 3),
                        "run": run_id,
                        "status_at_kill": status,
                        "from": round(baseline, 3),
                        "seconds": (
                            round(max(0.0, progress - baseline), 3)
                            if progress is not None
                            else None
                        ),
                    }
                )
        return out


# -- output ----------------------------------------------------------------------------


def report(acc: dict[str, Any]) -> str:
    worst = acc["worst_takeover"]
    worst_text = (
        f"{worst['seconds']:.2f} s (run {worst['run']}, {worst['status_at_kill']} "
        f"in pid {worst['pid']}, kill #{worst['kill']})"
        if worst
        else "n/a"
    )
    restarts = f"{acc['pg_restarts']} of {acc['pg_restarts_requested']}"
    if acc["pg_restarts_skipped"]:
        restarts += f" (skipped: {acc['pg_restarts_skipped']})"
    lines = [
        f"durably chaos account: backend={acc['backend']} seed={acc['seed']} "
        f"workers={acc['workers']} runs={acc['runs_planned']} seconds={acc['seconds']}",
        f"  started                     {acc['started']}",
        f"  completed                   {acc['completed']}",
        f"  failed (unexpectedly)       {acc['failed']}",
        f"  lost                        {acc['lost']}",
        f"  stuck                       {acc['stuck']}",
        f"  wrong results               {acc['wrong']}",
        f"  re-executed after successor {acc['reexecuted_after_successor']}",
        f"  re-executed after journaled {acc['reexecuted_after_journaled']}",
        f"  frozen in the lease window  {acc['frozen_in_lease_window']} (allowed)",
        f"  timers fired early          {acc['early_timers']}",
        f"  step re-executions          {acc['step_reexecutions']} "
        f"(of {acc['step_executions']} executions)",
        f"  children                    {acc['children']} ({acc['children_completed']} completed)",
        f"  signals sent                {acc['signals_sent']}",
        f"  kills                       {acc['kills']} "
        f"({acc['runs_held_by_killed_workers']} runs held, "
        f"{acc['takeovers_measured']} takeovers timed)",
        f"  worst takeover              {worst_text}",
        f"  pg restarts                 {restarts}",
        f"  workers exiting on their own {acc['worker_exits_unexpected']}",
        f"  drain time                  {acc['drain_seconds']:.2f} s"
        + ("" if acc["drained"] else " (timed out)"),
        f"  verdict                     {'VALID' if acc['valid'] else 'INVALID'}",
    ]
    for kind, items in acc["problems"].items():
        lines.append(f"  {kind}:")
        lines += [f"    {item}" for item in items[:10]]
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run durably workflows under SIGKILLs and database restarts; "
        "print what was lost, stuck, wrong or re-executed."
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--workers", type=int, default=3, help="worker processes")
    parser.add_argument("--runs", type=int, default=60, help="top-level runs to start")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the fault phase")
    parser.add_argument("--pg-restarts", type=int, default=0, help="PostgreSQL restarts")
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (random)")
    parser.add_argument("--json", type=Path, default=None, help="write the account here")
    parser.add_argument(
        "--kill-interval", type=float, default=2.0, help="mean seconds between kills (0: none)"
    )
    parser.add_argument(
        "--pause-interval",
        type=float,
        default=0.0,
        help="mean seconds between freezing a worker with SIGSTOP (0: never)",
    )
    parser.add_argument(
        "--pause-seconds", type=float, default=2.5, help="how long a frozen worker stays frozen"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="runs per worker")
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds")
    parser.add_argument("--progress", type=float, default=3.0, help="seconds between logs")
    parser.add_argument(
        "--pg-restart-cmd",
        default=None,
        help=f"command restarting PostgreSQL (default: {' '.join(PG_RESTART_CMD)})",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary files (kept anyway on failure)"
    )
    opts = parser.parse_args(argv)
    if opts.workers < 1 or opts.runs < 0 or opts.seconds <= 0 or opts.pg_restarts < 0:
        parser.error("need --workers >= 1, --runs >= 0, --seconds > 0, --pg-restarts >= 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    # The runner reports database trouble itself (once per couple of seconds).
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # clean up: stop the workers, drop the database

    signal.signal(signal.SIGTERM, terminate)
    chaos = Chaos(opts)
    account: dict[str, Any] | None = None
    try:
        account = chaos.run()
    except KeyboardInterrupt:
        log("interrupted")
    except Exception as exc:  # noqa: BLE001 - reported, exit code 2
        log(f"could not run: {type(exc).__name__}: {exc}")
        import traceback

        traceback.print_exc()
    finally:
        chaos.resume_all()
        if hasattr(chaos, "pool"):
            chaos.pool.stop_all()
        if hasattr(chaos, "watch") and chaos.watch.is_alive():
            chaos.watch.stop()
        if chaos.restarter is not None:
            chaos.restarter.wait()
        with contextlib.suppress(Exception):
            chaos.drop_database()
    if account is None:
        log(f"files kept in {chaos.tmp}")
        return 2
    print(report(account), flush=True)
    if opts.json is not None:
        opts.json.write_text(json.dumps(account, indent=2, default=str))
    if account["valid"] and not opts.keep:
        shutil.rmtree(chaos.tmp, ignore_errors=True)
    else:
        log(f"files kept in {chaos.tmp}")
    return 0 if account["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())

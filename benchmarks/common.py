"""Helpers shared by the benchmark runner and its scenario subprocesses.

Nothing here knows about an engine's internals: databases are created and
dropped, processes are started and killed, files are counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from durably._loops import chosen_loop, run_loop

T = TypeVar("T")

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
REPO = HERE.parent

# Where PostgreSQL is: an admin URL whose database can create and drop others.
PG_ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


PROGRESS = "    > "  # the runner forwards lines that start with this


def progress(message: str) -> None:
    """A progress line on stderr (the runner forwards it to the terminal)."""
    print(f"{PROGRESS}{message}", file=sys.stderr, flush=True)


# -- statistics --------------------------------------------------------------------


def event_loop_name() -> str:
    """The event loop every async client and in-process worker runs on here."""
    return chosen_loop("auto")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on :func:`event_loop_name`'s loop (uvloop when installed: the
    bench extra installs it, as uvicorn picks it for a web app), the way
    ``durably worker`` picks its loop, for every engine alike, so no engine's
    figure depends on which loop it got."""
    return run_loop("auto", main)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """Percentiles of timings given in seconds, and the samples (in ms) for pooling."""
    ms = [s * 1000.0 for s in seconds]
    return {**summary_of_ms(ms), "samples_ms": [round(x, 4) for x in ms]}


def summary_of_ms(ms: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "mean_ms": statistics.fmean(ms) if ms else float("nan"),
        "min_ms": min(ms) if ms else float("nan"),
        "max_ms": max(ms) if ms else float("nan"),
    }


# -- databases ---------------------------------------------------------------------


def _pg_url_with_db(admin_url: str, dbname: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{dbname}"


@contextlib.contextmanager
def fresh_database(backend: str, tag: str) -> Iterator[dict[str, Any]]:
    """A fresh database for one engine x scenario, removed afterwards.

    Yields ``{"backend", "url", "path"|"dbname", "tmpdir"}``; ``url`` is a
    plain ``sqlite:///...`` or ``postgresql://...`` URL every engine accepts.
    """
    tmpdir = tempfile.mkdtemp(prefix=f"bench-{tag}-")
    info: dict[str, Any] = {"backend": backend, "tmpdir": tmpdir}
    try:
        if backend == "sqlite":
            path = os.path.join(tmpdir, "bench.sqlite")
            info.update(url=f"sqlite:///{path}", path=path)
            yield info
        elif backend == "postgres":
            import psycopg

            dbname = f"bench_{tag}_{uuid.uuid4().hex[:8]}".lower().replace("-", "_")
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}"')
            info.update(url=_pg_url_with_db(PG_ADMIN_URL, dbname), dbname=dbname)
            try:
                yield info
            finally:
                with (
                    contextlib.suppress(Exception),
                    psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn,
                ):
                    conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        else:
            raise ValueError(f"unknown backend {backend!r}")
    finally:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)


def count_rows(db: dict[str, Any]) -> dict[str, int]:
    """Rows in every table of the database (all schemas but the catalogs)."""
    counts: dict[str, int] = {}
    if db["backend"] == "sqlite":
        import sqlite3

        conn = sqlite3.connect(db["path"], timeout=60)
        try:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for name in names:
                counts[name] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        finally:
            conn.close()
    else:
        import psycopg

        with psycopg.connect(db["url"], autocommit=True) as conn:
            tables = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_type='BASE TABLE' "
                "AND table_schema NOT IN ('pg_catalog','information_schema')"
            ).fetchall()
            for schema, name in tables:
                row = conn.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()
                counts[f"{schema}.{name}"] = row[0] if row else 0
    return counts


def database_bytes(db: dict[str, Any]) -> int:
    if db["backend"] == "sqlite":
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(db["path"] + suffix)
        return total
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (db["dbname"],)).fetchone()
        return int(row[0]) if row else 0


def pg_transactions(dbname: str) -> int:
    """Committed + rolled-back transactions of one database (pg_stat_database)."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (dbname,),
        ).fetchone()
        return int(row[0]) if row else 0


def pg_stat_statements_available() -> bool:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute("SHOW shared_preload_libraries").fetchone()
        return bool(row) and "pg_stat_statements" in str(row[0])


# -- marker files: cheap cross-process counters ---------------------------------------

_fds: dict[str, int] = {}


def bump(path: str) -> None:
    """Append one byte to ``path`` (the file's size counts the calls, any process)."""
    fd = _fds.get(path)
    if fd is None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fds[path] = fd
    os.write(fd, b".")


def marks(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def wait_marks(path: str, n: int, timeout: float, what: str, tick: float = 0.01) -> float:
    """Wait until ``path`` counts ``n``; return the time it did (time.time())."""
    deadline = time.monotonic() + timeout
    last_report = time.monotonic()
    while True:
        count = marks(path)
        if count >= n:
            return time.time()
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"{what}: {count}/{n} after {timeout:.0f}s")
        if now - last_report > 5:
            progress(f"{what}: {count}/{n}")
            last_report = now
        time.sleep(tick)


# -- processes ------------------------------------------------------------------------


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(APPS), str(HERE)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def spawn(argv: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen[bytes]:
    """Start a process with its output in ``log_path``, in its own process group."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=str(APPS),
        start_new_session=True,
    )
    proc._bench_log = log  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process started by :func:`spawn` (and its group), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    _close_log(proc)


def _close_log(proc: subprocess.Popen[bytes]) -> None:
    log = getattr(proc, "_bench_log", None)
    if log is not None:
        log.close()


def kill9(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process itself (not a graceful stop), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    _close_log(proc)


def wait_for_text(path: str, text: str, timeout: float, proc: Any = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, errors="replace") as f:
                if text in f.read():
                    return True
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            tail = ""
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"process exited with {proc.returncode} before ready:\n{tail}")
        time.sleep(0.05)
    return False


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def rss_sample(pid: int, samples: int = 5, interval: float = 0.2) -> int:
    """Median RSS over a few samples (smooths allocator noise)."""
    values = []
    for _ in range(samples):
        values.append(rss_bytes(pid))
        time.sleep(interval)
    return int(statistics.median(values))


def thread_count(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).num_threads())


def log_tail(path: str, chars: int = 2000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""

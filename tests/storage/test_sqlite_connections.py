"""SQLite's per-thread connections under fork, signals and foreign threads.

Each case runs in a child process: a hang or a crash there is a failure
here, not a stuck test run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_PRELUDE = """
import os, sys, threading, time
from durably._storage import open_storage
store = open_storage(sys.argv[1])
store.migrate()
"""


def _run(script: str, db: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _PRELUDE + script, f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


LONG_QUERY = (
    "store._retry(lambda c: c.execute('WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL "
    "SELECT i + 1 FROM n WHERE i < 3000000) SELECT count(*) FROM n').fetchone())"
)


def test_a_fork_while_another_thread_queries_leaves_the_child_working(tmp_path: Path) -> None:
    """The child of a fork made while another thread used its connection (a
    worker's thread, under multiprocessing's fork or gunicorn's preload) hung
    on its first query: it waited for that connection's lock, held at the
    fork by a thread the child does not have. (A thread inside SQLite's own
    code at the fork can still leave SQLite's mutexes held in the child: fork
    before starting threads that query, as SQLite itself advises.)"""
    done = _run(
        """
busy = threading.Thread(target=lambda: store._retry(lambda conn: time.sleep(1.0)))
busy.start()
time.sleep(0.2)
pid = os.fork()
if pid == 0:
    out = []
    t = threading.Thread(target=lambda: out.append(store.get_run("r-none")))
    t.start(); t.join(20)
    os._exit(0 if not t.is_alive() and out == [None] else 3)
_, status = os.waitpid(pid, 0)
busy.join()
print("parent still works:", store.get_run("r-none"))
sys.exit(os.waitstatus_to_exitcode(status))
""",
        tmp_path / "fork.db",
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "parent still works: None" in done.stdout


def test_closing_from_a_signal_handler_during_a_query_does_not_deadlock(tmp_path: Path) -> None:
    """A SIGALRM handler that closes the storage (the "on SIGTERM: close and
    exit" pattern) ran on the thread whose query held its connection's lock,
    and waited for that lock forever."""
    done = _run(
        f"""
import signal
from durably._errors import DatabaseError
signal.signal(signal.SIGALRM, lambda *_: store.close())
signal.setitimer(signal.ITIMER_REAL, 0.05)
try:
    for _ in range(200):
        {LONG_QUERY.replace("3000000", "200000")}
except DatabaseError as exc:
    print("closed:", exc)
""",
        tmp_path / "signal.db",
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "storage is closed" in done.stdout


@pytest.mark.parametrize("how", ["threading", "_thread"])
def test_connections_of_ended_threads_are_closed(how: str, tmp_path: Path) -> None:
    """Threads come and go (executors, listeners, threads started outside
    ``threading``): their connections must not stay open until close()."""
    db = tmp_path / "threads.db"
    start = (
        "threading.Thread(target=query).start()"
        if how == "threading"
        else "import _thread; _thread.start_new_thread(query, ())"
    )
    done = _run(
        f"""
def open_files():
    return sum(1 for fd in os.listdir("/proc/self/fd")
               if os.path.realpath(f"/proc/self/fd/{{fd}}").startswith({str(db)!r}))
one = open_files()
finished = []
def query():
    store.get_run("r-none")
    finished.append(1)
for i in range(30):
    {start}
    while len(finished) <= i:
        time.sleep(0.005)
time.sleep(0.3)
print("open", open_files(), "one", one)
sys.exit(0 if open_files() <= 2 * one else 4)
""",
        db,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])

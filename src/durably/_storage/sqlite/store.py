"""SQLite backend: one file, WAL, several processes.

Each thread gets its own connection (see ``connections.py``). Writes run in
``BEGIN IMMEDIATE`` transactions so that SQLite's busy handler (not an error)
arbitrates between processes; anything that still reports "locked" or "busy" is retried here
with backoff, so ``database is locked`` never reaches the user.

Durability: ``synchronous=FULL`` by default (a commit survives power loss).
Its cost is one fsync per *group* commit, shared by every run whose entries
went into it. ``?synchronous=normal`` in the URL trades the last commits
before a power cut (never before a process crash) for speed.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from ..._engine.journal import Entry
from ..._errors import ConfigurationError, DatabaseError, DatabaseUnavailable, RunNotFound
from ..base import (
    Listener,
    NewRun,
    RunFilter,
    RunRecord,
    RunWrite,
    Signal,
    Storage,
)
from ..common import (
    SCHEMA_KEY,
    Listeners,
    cancelled_error,
    check_consumed,
    check_open,
    check_version,
    filter_sql,
    lone_append,
    lone_create,
    migrations,
    partition,
    run_row,
    split_statements,
    sql_missed,
    start_answers,
    wake_missed,
)
from . import queries as q
from .connections import ConnectionClosed, Connections

T = TypeVar("T")


_SQLITE_IOERR = 10
# Primary result codes of trouble with the disk or file system, not the data.
_ENVIRONMENT = frozenset({_SQLITE_IOERR, 13, 14})  # IOERR, FULL, CANTOPEN

_SYNC_MODES = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
_CHUNK = 500
_BUSY_GIVE_UP = 300.0  # seconds of continuous contention before reporting it
POLL_INTERVAL = 0.02  # seconds between checks for changes by other processes


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme not in ("sqlite", "sqlite3"):
        raise ConfigurationError(f"not a SQLite URL: {url!r}")
    path = unquote(parts.path)
    if parts.netloc:
        path = unquote(parts.netloc) + path
    elif path.startswith("/"):
        path = path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
    if not path or path == ":memory:":
        raise ConfigurationError(
            f"{url!r}: durably needs a SQLite file that several connections can share; "
            "use e.g. sqlite:///durably.db"
        )
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return path, options


class SQLiteStorage(Storage):
    backend = "sqlite"
    commits_on_loop = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.path, options = parse_url(url)
        mode = options.pop("synchronous", "full").lower()
        if mode not in _SYNC_MODES:
            raise ConfigurationError(
                f"{url!r}: synchronous={mode!r} is not one of {sorted(_SYNC_MODES)}"
            )
        self.synchronous = _SYNC_MODES[mode]
        if options:
            raise ConfigurationError(
                f"{url!r}: unknown option(s) {sorted(options)}; SQLite URLs accept "
                "synchronous=full|normal"
            )
        self._connections = Connections(self._connect)
        self._listeners = Listeners("durably-sqlite-poll", self._poll_loop)

    # -- connections -------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise DatabaseError(
                f"{self.url}: folder {folder!r} does not exist; create it or point "
                "DURABLY_DATABASE_URL elsewhere"
            )
        try:
            # No SQLite busy handler: it wakes waiters unfairly (one process can
            # starve for seconds); _retry's jittered short backoff shares the lock.
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0.0
            )
            conn.execute("PRAGMA busy_timeout = 0")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise  # _retry waits for the lock
            raise self._foreign(exc) from None
        except sqlite3.DatabaseError as exc:
            raise self._foreign(exc) from None
        return conn

    def _foreign(self, exc: Exception) -> DatabaseError:
        return DatabaseError(
            f"{self.path!r} is not a usable durably database: it is not a SQLite file "
            f"or it is corrupt ({exc}). Point DURABLY_DATABASE_URL (or --database) at "
            "a durably database or at a new file."
        )

    def close(self) -> None:
        self._listeners.close()
        self._connections.close()

    def _retry(self, fn: Callable[[sqlite3.Connection], T], *, patient: bool = True) -> T:
        """Run ``fn`` (one statement or transaction), riding out contention
        (unless not ``patient``: then contention raises :class:`_Busy`)."""
        deadline = time.monotonic() + _BUSY_GIVE_UP
        delay = 0.0005
        while True:
            try:
                return self._connections.run(fn)
            except ConnectionClosed:
                raise DatabaseError(f"{self.url}: storage is closed") from None
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    primary = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
                    if primary in _ENVIRONMENT:
                        # The disk, not the data: like an outage, it can pass
                        # (space freed, a file system back). A full disk or a
                        # file that cannot be opened wrote nothing; an I/O error
                        # mid-commit leaves the commit's fate unknown.
                        raise DatabaseUnavailable(
                            f"{self.url}: {exc}", reached=primary == _SQLITE_IOERR
                        ) from exc
                    raise DatabaseError(f"{self.url}: {exc}") from exc
                if not patient:
                    raise _Busy() from exc
                if time.monotonic() > deadline:
                    raise DatabaseUnavailable(
                        f"{self.url}: still busy after {_BUSY_GIVE_UP:.0f}s of "
                        "retrying; another process holds a write lock"
                    ) from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.002)
            except sqlite3.DatabaseError as exc:
                if type(exc) is sqlite3.DatabaseError:  # "file is not a database" & co
                    raise self._foreign(exc) from None
                raise DatabaseError(f"{self.url}: {type(exc).__name__}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- schema ----------------------------------------------------------------
    def migrate(self) -> None:
        steps = migrations("durably._storage.sqlite")

        def run(conn: sqlite3.Connection) -> None:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise DatabaseError(f"{self.url}: could not switch to WAL mode ({mode})")
            with self._write(conn):
                tables = [r[0] for r in conn.execute(q.USER_TABLES)]
                if "durably_meta" not in tables:
                    if tables:
                        shown = ", ".join(tables[:5])
                        raise DatabaseError(
                            f"{self.path!r} is a SQLite database that durably did not "
                            f"create (it holds tables {shown}). durably keeps its "
                            "journal in a file of its own: point DURABLY_DATABASE_URL "
                            "(or --database) at a new file such as sqlite:///durably.db"
                        )
                    conn.execute(q.CREATE_META)
                    current = 0
                else:
                    row = conn.execute(q.GET_META, (SCHEMA_KEY,)).fetchone()
                    if row is None:
                        raise DatabaseError(
                            f"{self.path!r}: durably_meta has no schema version; the "
                            "database is damaged or not durably's"
                        )
                    current = int(row[0])
                check_version(current, len(steps), repr(self.path))
                for step in steps[current:]:
                    for statement in split_statements(step.sql):
                        conn.execute(statement)
                    conn.execute(q.SET_META, (SCHEMA_KEY, str(step.version)))

        self._retry(run)

    # -- runs ------------------------------------------------------------------
    def create_runs(self, runs: Sequence[NewRun]) -> list[tuple[RunRecord, bool]]:
        ids = [r.id for r in runs]

        def tx(conn: sqlite3.Connection) -> list[tuple[RunRecord, bool]]:
            with self._write(conn):
                existed: set[str] = set()
                for chunk in _chunks(ids):
                    existed.update(r[0] for r in conn.execute(q.existing_ids(len(chunk)), chunk))
                conn.executemany(q.INSERT_RUN, [run_row(r) for r in runs])
                return start_answers(runs, set(ids) - existed, lambda others: _read(conn, others))

        return self._retry(tx) if runs else []

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._retry(lambda c: c.execute(q.GET_RUN, (run_id,)).fetchone())
        return RunRecord(*row) if row else None

    def list_runs(self, where: RunFilter) -> list[RunRecord]:
        tail, params = filter_sql(where, "?")
        rows = self._retry(lambda c: c.execute(q.LIST_RUNS + tail, params).fetchall())
        return [RunRecord(*r) for r in rows]

    def load_journal(self, run_id: str) -> list[Entry]:
        rows = self._retry(lambda c: c.execute(q.LOAD_JOURNAL, (run_id,)).fetchall())
        return [Entry(*r) for r in rows]

    # -- workers ---------------------------------------------------------------
    def claim(
        self,
        worker_id: str,
        workflows: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        versions: Sequence[str] = (),
    ) -> list[RunRecord]:
        if not workflows or limit <= 0:
            return []
        sql = q.claim(len(workflows), len(versions))
        params: dict[str, Any] = {
            "me": worker_id,
            "lease": now + lease_seconds,
            "now": now,
            "n": limit,
            **q.workflow_params(list(workflows), list(versions)),
        }

        probe = q.any_claimable(len(workflows), len(versions))

        def tx(conn: sqlite3.Connection) -> list[RunRecord]:
            # Most wake-ups find nothing new (any commit, ours too, wakes the
            # claim loop): find that out without taking the write lock.
            if not conn.execute(probe, params).fetchone()[0]:
                return []
            with self._write(conn):
                rows = conn.execute(sql, params).fetchall()
            return [RunRecord(*r) for r in rows]

        return self._retry(tx)

    def commit(self, worker_id: str, writes: Sequence[RunWrite], now: float) -> set[str]:
        return self._commit(worker_id, writes, now, patient=True)

    def commit_nowait(
        self, worker_id: str, writes: Sequence[RunWrite], now: float
    ) -> set[str] | None:
        # A local file: without contention a commit waits only for the disk.
        try:
            return self._commit(worker_id, writes, now, patient=False)
        except _Busy:
            return None

    def _commit(
        self, worker_id: str, writes: Sequence[RunWrite], now: float, *, patient: bool
    ) -> set[str]:
        if not writes:
            return set()
        create = lone_create(writes)
        if create is not None:  # a start in this process: no claim to check yet
            row = run_row(create)

            def insert(conn: sqlite3.Connection) -> set[str]:
                made = conn.execute(q.INSERT_RUN, row).rowcount
                return set() if made == 1 else {create.id}

            return self._retry(insert, patient=patient)
        append = lone_append(writes)
        if append is not None:
            w, e = append
            row = (e.seq, e.position, e.kind, e.name, e.payload, e.loc, e.at)
            fence = (w.run_id, worker_id, w.epoch)

            def one(conn: sqlite3.Connection) -> set[str]:
                kept = conn.execute(q.APPEND_ONE, row + fence).rowcount
                return set() if kept == 1 else {w.run_id}

            return self._retry(one, patient=patient)

        def tx(conn: sqlite3.Connection) -> set[str]:
            with self._write(conn):
                creates = [w.create for w in writes if w.create is not None]
                if creates:  # runs started in this process, created already claimed
                    conn.executemany(q.INSERT_RUN, [run_row(c) for c in creates])
                owned: dict[str, int] = {}
                for chunk in _chunks([w.run_id for w in writes]):
                    owned.update(conn.execute(q.owned(len(chunk)), [worker_id, *chunk]))
                part = partition(writes, owned, now)
                if part.entries:
                    conn.executemany(q.INSERT_ENTRY, part.entries)
                if part.consumed:
                    taken = conn.executemany(q.CONSUME_SIGNAL, part.consumed).rowcount
                    check_consumed(taken, part)
                if part.events:
                    conn.executemany(q.UPSERT_EVENT, part.events)
                if part.children:
                    conn.executemany(q.INSERT_RUN, [run_row(c) for c in part.children])
                missed = sql_missed(
                    "?", q.TABLES, lambda sql, args: conn.execute(sql, args).fetchone()
                )
                wake_missed(part, now, missed)
                if part.updates:
                    conn.executemany(q.UPDATE_RUN, part.updates)
                for chunk in _chunks(part.ended):
                    conn.execute(q.wake_parents(len(chunk)), [now, *chunk])
            return part.rejected

        return self._retry(tx, patient=patient)

    def renew(
        self, worker_id: str, run_ids: Sequence[str], now: float, lease_seconds: float
    ) -> dict[str, int]:
        ids = list(run_ids)

        def tx(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            renewed: list[tuple[str, int]] = []
            with self._write(conn):
                for chunk in _chunks(ids):
                    params = [now + lease_seconds, worker_id, *chunk]
                    renewed += conn.execute(q.renew(len(chunk)), params).fetchall()
            return renewed

        return {run_id: int(epoch) for run_id, epoch in self._retry(tx)} if ids else {}

    def release(
        self, worker_id: str, run_ids: Sequence[str], now: float, *, epoch: int | None = None
    ) -> None:
        ids = list(run_ids)

        def tx(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                for chunk in _chunks(ids):
                    params = [now, worker_id, epoch, epoch, *chunk]
                    conn.execute(q.release(len(chunk)), params)

        if ids:
            self._retry(tx)

    def next_due(
        self, workflows: Sequence[str], now: float, versions: Sequence[str] = ()
    ) -> float | None:
        if not workflows:
            return None
        sql = q.next_due(len(workflows), len(versions))
        params = q.workflow_params(list(workflows), list(versions))
        row = self._retry(lambda c: c.execute(sql, params).fetchone())
        return None if row is None or row[0] is None else float(row[0])

    def set_status(
        self, run_id: str, status: str, now: float, *, expect: Sequence[str] = ()
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            with self._write(conn):
                row = conn.execute("SELECT status FROM durably_runs WHERE id = ?", (run_id,))
                found = row.fetchone()
                if found is None or (expect and found[0] not in expect):
                    return False
                conn.execute(q.SET_STATUS, {"status": status, "now": now, "id": run_id})
                return True

        return self._retry(tx)

    # -- signals, events, cancellation -----------------------------------------
    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        return self._read_runs(q.get_runs, run_ids)

    def ended_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        return self._read_runs(q.ended_runs, run_ids)

    def ended_since(self, position: int | None) -> tuple[list[str], int] | None:
        def read(conn: sqlite3.Connection) -> tuple[list[str], int] | None:
            if position is None:
                return [], conn.execute(q.ENDED_NEWEST).fetchone()[0]
            rows = conn.execute(q.ENDED_SINCE, (position,)).fetchall()
            if not rows:
                if conn.execute(q.ENDED_NEWEST).fetchone()[0] < position:
                    return None  # a different log (the file was replaced or restored)
                return [], position  # (the newest end is never dropped)
            if rows[0][0] > position + 1:
                return None  # ends just after position were dropped from the log
            return [r[1] for r in rows], rows[-1][0]

        return self._retry(read)

    def _read_runs(self, sql: Callable[[int], str], run_ids: Sequence[str]) -> list[RunRecord]:
        ids = list(run_ids)

        return self._retry(lambda conn: _read(conn, ids, sql)) if ids else []

    def send_signal(self, run_id: str, topic: str, payload: str, now: float) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            with self._write(conn):
                check_open(conn.execute(q.RUN_STATUS, (run_id,)).fetchone(), run_id)
                conn.execute(q.INSERT_SIGNAL, (run_id, topic, payload, now))
                conn.execute(q.WAKE_SUSPENDED, (now, run_id))

        self._retry(tx)

    def pending_signals(self, run_ids: Sequence[str]) -> list[Signal]:
        ids = list(run_ids)

        def read(conn: sqlite3.Connection) -> list[Signal]:
            found: list[Signal] = []
            for chunk in _chunks(ids):
                sql = q.pending_signals(len(chunk))
                found.extend(Signal(*r) for r in conn.execute(sql, chunk))
            return sorted(found, key=lambda signal: signal.id)

        return self._retry(read) if ids else []

    def get_event(self, run_id: str, key: str) -> str | None:
        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(q.GET_EVENT, (run_id, key)).fetchone()
            if row is not None:
                return str(row[0])
            if conn.execute(q.RUN_STATUS, (run_id,)).fetchone() is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            return None

        return self._retry(read)

    def request_cancel(self, run_id: str, now: float, reason: str) -> str:
        params = {"id": run_id, "now": now, "reason": reason, "error": cancelled_error(reason)}

        def tx(conn: sqlite3.Connection) -> str:
            with self._write(conn):
                row = conn.execute(q.RUN_STATUS, (run_id,)).fetchone()
                if row is None:
                    raise RunNotFound(f"no run with id {run_id!r}")
                ended = [r[0] for r in conn.execute(q.CANCEL_PENDING_TREE, params)]
                conn.execute(q.MARK_CANCEL_TREE, params)
                for chunk in _chunks(ended):
                    conn.execute(q.wake_parents(len(chunk)), [now, *chunk])
                return str(conn.execute(q.RUN_STATUS, (run_id,)).fetchone()[0])

        return self._retry(tx)

    def cancel_requests(self, run_ids: Sequence[str]) -> dict[str, str]:
        ids = list(run_ids)

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            found: dict[str, str] = {}
            for chunk in _chunks(ids):
                found.update(conn.execute(q.cancel_requests(len(chunk)), chunk))
            return found

        return self._retry(read) if ids else {}

    # -- wake-ups --------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    def _poll_loop(self, stop: threading.Event, dispatch: Listener) -> None:
        # PRAGMA data_version changes when another connection commits; reading
        # it touches only shared memory, so polling it costs next to nothing.
        def version(conn: sqlite3.Connection) -> int:
            return int(conn.execute(q.DATA_VERSION).fetchone()[0])

        last = self._retry(version)
        # Commits between subscribe() and the first read above went unseen.
        dispatch("", "")
        while not stop.wait(POLL_INTERVAL):
            try:
                current = self._retry(version, patient=False)
            except (_Busy, DatabaseError):
                continue  # busy: next time; closed: told to stop too
            if current != last:
                last = current
                dispatch("", "")


class _Busy(Exception):
    """Another connection holds the write lock (an impatient write gave up)."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _read(
    conn: sqlite3.Connection, run_ids: list[str], sql: Callable[[int], str] = q.get_runs
) -> list[RunRecord]:
    rows: list[RunRecord] = []
    for chunk in _chunks(run_ids):
        rows.extend(RunRecord(*r) for r in conn.execute(sql(len(chunk)), chunk))
    return rows


def _chunks(items: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start : start + _CHUNK])

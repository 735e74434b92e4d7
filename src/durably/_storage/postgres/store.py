"""PostgreSQL backend: many workers on many machines, one database.

Claims use ``FOR UPDATE SKIP LOCKED`` so workers never queue behind each
other; a commit locks the rows of the runs it writes (``FOR NO KEY UPDATE``)
and checks their claim epoch, so a worker whose lease was taken over can
never append to a run it no longer owns. Wake-ups arrive by
``LISTEN/NOTIFY``; workers also poll rarely as a fallback.

Sessions plan for index access (``q.SESSION``). Statements whose best plan
depends on how many runs they name run with ``prepare=False``: planned at
each execution, not once by a generic plan made while the tables were empty
(docs/design.md).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from ... import _config
from ..._engine.journal import Entry
from ..._errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    RunNotFound,
    WriteConflict,
)
from ..base import (
    CHANNEL_CANCEL,
    CHANNEL_DONE,
    CHANNEL_EVENT,
    CHANNEL_SIGNAL,
    CHANNEL_WORK,
    CHANNELS,
    CONFLICT_PAUSE,
    CONFLICT_TRIES,
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
from .arrays import bool_array, columns, float_array, int_array, text_array
from .loop_writer import CONFLICTS, LoopWriter
from .notices import done_ids, done_payloads

try:
    import psycopg
    import psycopg_pool
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError(
        "PostgreSQL support needs the postgres extra: pip install 'durably[postgres]'"
    ) from exc

log = logging.getLogger("durably.storage")

# How long a call waits for a connection before saying the database is down.
CONNECT_PATIENCE = 10.0
# A pooled connection used this recently is not pinged before its next use:
# the ping would cost a round trip on every operation of a busy worker.
IDLE_CHECK = 2.0
_used: dict[int, float] = {}


def _configure(conn: psycopg.Connection[Any]) -> None:
    conn.execute(q.SESSION)  # plans for index access (see q.SESSION)


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
    last = _used.get(id(conn))
    if last is None or time.monotonic() - last > IDLE_CHECK:
        psycopg_pool.ConnectionPool.check_connection(conn)


T = TypeVar("T")
P = ParamSpec("P")


def _again_on_conflict(write: Callable[P, T]) -> Callable[P, T]:
    """For a write that is a transaction of its own: rolled back on a
    conflict, it wrote nothing, so it is sent again rather than failing a
    client's start, signal or cancel (or a worker's claim) on another
    transaction's locks. The committer retries its commits itself."""

    @functools.wraps(write)
    def again(*args: P.args, **kwargs: P.kwargs) -> T:
        for tried in range(1, CONFLICT_TRIES):
            try:
                return write(*args, **kwargs)
            except WriteConflict:
                time.sleep(CONFLICT_PAUSE * tried)
        return write(*args, **kwargs)

    return again


@dataclass(frozen=True)
class OneStatement:
    """A write that is one statement: it returns a row if the write was kept
    (the run is still ours) and none if the run's claim was lost."""

    sql: str
    params: Any
    run_id: str

    def lost(self, rows: Sequence[Any]) -> set[str]:
        return set() if rows else {self.run_id}


@dataclass(frozen=True)
class BatchStatement:
    """Writes of many runs in one statement (``q.COMMIT_SIMPLE``): it returns
    the id of each run whose write was kept, first in each row."""

    sql: str
    params: Any
    run_ids: tuple[str, ...]

    def lost(self, rows: Sequence[Any]) -> set[str]:
        return set(self.run_ids) - {row[0] for row in rows}


def _describe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        return "the PostgreSQL database"
    host = info.get("host", "localhost")
    port = info.get("port", "5432")
    name = info.get("dbname", "")
    return f"PostgreSQL at {host}:{port}/{name}"


class PostgresStorage(Storage):
    backend = "postgres"

    def __init__(self, url: str, *, pool_size: int = 8) -> None:
        self.url = url
        self.spin_wait = _config.spin_wait()  # read now: a bad value is said at once
        self._where = _describe(url)
        self.conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self._pool = psycopg_pool.ConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            open=False,
            check=_check_if_idle,
            configure=_configure,
            name="durably",
        )
        self._opened = False
        self._open_lock = threading.Lock()
        self._listeners = Listeners("durably-pg-listen", self._listen_loop)

    # -- connections -------------------------------------------------------
    def _open(self) -> None:
        with self._open_lock:
            if self._opened:
                return
            try:
                # Connect once directly first: a refused connection then says why,
                # instead of the pool's "initialization incomplete" after a timeout.
                psycopg.connect(self.conninfo, connect_timeout=10).close()
                self._pool.open(wait=True, timeout=10.0)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                raise DatabaseUnavailable(self.unreachable(exc), reached=False) from None
            self._opened = True

    def unreachable(self, exc: Exception) -> str:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (
            f"cannot reach {self._where}: {reason}. Is the server running, and is "
            "DURABLY_DATABASE_URL (or --database) right?"
        )

    @contextlib.contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        if not self._opened:
            self._open()
        try:
            handout = self._pool.connection(timeout=CONNECT_PATIENCE)
            conn = handout.__enter__()
        except psycopg_pool.PoolClosed:
            # Closed by its app, not an outage to wait out.
            raise DatabaseError(f"{self._where}: storage is closed") from None
        except (psycopg_pool.PoolTimeout, psycopg.OperationalError) as exc:
            # No connection: nothing of the operation reached the server.
            raise DatabaseUnavailable(self.unreachable(exc), reached=False) from None
        try:
            yield conn
        except CONFLICTS as exc:
            # Sent by the server: the statement was rolled back, whatever
            # became of the connection since.
            handout.__exit__(type(exc), exc, exc.__traceback__)
            raise WriteConflict(f"{self._where}: {type(exc).__name__}: {exc}") from exc
        except psycopg.OperationalError as exc:
            handout.__exit__(type(exc), exc, exc.__traceback__)
            raise DatabaseUnavailable(self.unreachable(exc)) from None
        except psycopg.Error as exc:
            handout.__exit__(type(exc), exc, exc.__traceback__)
            raise DatabaseError(f"{self._where}: {type(exc).__name__}: {exc}") from exc
        except BaseException as exc:
            handout.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            _used[id(conn)] = time.monotonic()
            handout.__exit__(None, None, None)

    def close(self) -> None:
        self._listeners.close()
        with contextlib.suppress(Exception):
            self._pool.close(timeout=2.0)

    def loop_writer(self) -> LoopWriter:
        return LoopWriter(self, IDLE_CHECK)

    # -- schema ----------------------------------------------------------------
    def migrate(self) -> None:
        try:
            probe = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(self.unreachable(exc)) from None
        except psycopg.ProgrammingError as exc:
            raise ConfigurationError(f"{self._where}: bad connection URL ({exc})") from None
        steps = migrations("durably._storage.postgres")
        with probe:
            with probe.transaction():
                probe.execute(q.LOCK_MIGRATIONS)
                schema = probe.execute(q.SCHEMA_EXISTS).fetchone()
                has_meta = probe.execute(q.META_EXISTS).fetchone()[0]  # type: ignore[index]
                if schema and not has_meta:
                    tables = [r[0] for r in probe.execute(q.SCHEMA_TABLES)]
                    if tables:
                        raise DatabaseError(
                            f"{self._where} has a schema 'durably' that durably did not "
                            f"create (tables: {', '.join(tables[:5])}). Use another "
                            "database, or rename that schema."
                        )
                current = 0
                if has_meta:
                    row = probe.execute(q.GET_META, (SCHEMA_KEY,)).fetchone()
                    if row is None:
                        raise DatabaseError(
                            f"{self._where}: durably.meta has no schema version; the "
                            "schema is damaged or not durably's"
                        )
                    current = int(row[0])
                check_version(current, len(steps), self._where)
                if current < len(steps):
                    for statement in split_statements(q.CREATE_SCHEMA.replace(";", "\n;\n")):
                        probe.execute(statement)  # type: ignore[arg-type]
                    for step in steps[current:]:
                        for statement in split_statements(step.sql):
                            probe.execute(statement)  # type: ignore[arg-type]
                        probe.execute(q.SET_META, (SCHEMA_KEY, str(step.version)))
        self._open()

    # -- runs ------------------------------------------------------------------
    def _insert_runs(self, conn: psycopg.Connection[Any], runs: Sequence[NewRun]) -> set[str]:
        """Insert runs (ON CONFLICT DO NOTHING); the ids created, runnable ones announced."""
        if len(runs) == 1:
            created = conn.execute(q.INSERT_RUN, _run_row(runs[0])).fetchall()
        else:
            params = columns([_run_row(r) for r in runs], q.INSERT_RUNS_KINDS)
            created = conn.execute(q.INSERT_RUNS, params).fetchall()
        workflows = sorted({wf for _, wf, status in created if status == "pending"})
        if workflows:
            with conn.cursor() as cur:
                cur.executemany(q.NOTIFY, [(CHANNEL_WORK, wf) for wf in workflows])
        return {str(row[0]) for row in created}

    def create_runs(self, runs: Sequence[NewRun]) -> list[tuple[RunRecord, bool]]:
        if not runs:
            return []
        if len(runs) == 1 and not runs[0].owner:  # one start: one round trip
            return [self._start_one(runs[0])]
        # The insert commits before the ids that existed are read: each is
        # sent again on its own, so a conflict in the read does not insert
        # again and answer "not created" for runs this call created.
        created = self._insert_committed(runs)
        return start_answers(runs, created, self._runs_by_id)

    @_again_on_conflict
    def _start_one(self, run: NewRun) -> tuple[RunRecord, bool]:
        with self._conn() as conn:
            row = conn.execute(q.START_RUN, _run_row(run)).fetchone()
            if row is not None:
                return RunRecord(*row[:-1]), True
            # The id exists: a new statement sees it even if it was created
            # by a transaction that committed while the insert waited.
            found = conn.execute(q.GET_RUN, (run.id,)).fetchone()
        if found is None:
            raise DatabaseError(f"{self._where}: run {run.id!r} vanished on creation")
        return RunRecord(*found), False

    @_again_on_conflict
    def _insert_committed(self, runs: Sequence[NewRun]) -> set[str]:
        params = columns([_run_row(r) for r in runs], q.INSERT_RUNS_KINDS)
        with self._conn() as conn:
            return {str(row[0]) for row in conn.execute(q.START_RUNS, params)}

    @_again_on_conflict
    def _runs_by_id(self, run_ids: list[str]) -> list[RunRecord]:
        # A new statement sees runs other transactions created meanwhile.
        return self._read_runs(q.GET_RUNS, run_ids)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._conn() as conn:
            row = conn.execute(q.GET_RUN, (run_id,)).fetchone()
        return RunRecord(*row) if row else None

    def list_runs(self, where: RunFilter) -> list[RunRecord]:
        tail, params = filter_sql(where, "%s")
        with self._conn() as conn, conn.transaction():
            conn.execute(q.SCAN_ALLOWED)
            rows = conn.execute(q.LIST_RUNS + tail, params, prepare=False).fetchall()  # type: ignore[arg-type]
        return [RunRecord(*r) for r in rows]

    def load_journal(self, run_id: str) -> list[Entry]:
        with self._conn() as conn:
            rows = conn.execute(q.LOAD_JOURNAL, (run_id,)).fetchall()
        return [Entry(*r) for r in rows]

    # -- workers ---------------------------------------------------------------
    @_again_on_conflict
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
        params = {
            "me": worker_id,
            "lease": now + lease_seconds,
            "now": now,
            "n": limit,
            "wfs": list(workflows),
            "wvs": list(versions),
        }
        with self._conn() as conn:
            rows = conn.execute(q.CLAIM, params).fetchall()
        return [RunRecord(*r) for r in rows]

    def commit(self, worker_id: str, writes: Sequence[RunWrite], now: float) -> set[str]:
        if not writes:
            return set()
        single = self.one_statement(worker_id, writes, now)
        if single is not None:
            with self._conn() as conn:
                rows = conn.execute(single.sql, single.params, prepare=True).fetchall()
            return single.lost(rows)
        # Pipelined: only what the next decision depends on waits for the
        # server (the claim check, and rarely signals or missed wake-ups);
        # the writes and the COMMIT go out together.
        with self._conn() as conn, conn.pipeline() as pipe, conn.transaction():
            creates = [w.create for w in writes if w.create is not None]
            if creates:  # runs started in this process, created already claimed
                self._insert_runs(conn, creates)
            ids = [w.run_id for w in writes]
            params = (worker_id, text_array(ids))
            owned = dict(conn.execute(q.OWNED, params, prepare=False).fetchall())
            part = partition(writes, owned, now)
            with conn.cursor() as cur:
                if part.consumed:
                    cur.executemany(q.CONSUME_SIGNAL, part.consumed)
                    pipe.sync()
                    check_consumed(cur.rowcount, part)
                children = sorted({c for _, u in part.sleepers for c in u.wake_children})
                if children:
                    # A child's end in flight holds its row: waited for here, so
                    # the check below sees it (that end's statement found this
                    # run running, not asleep, and did not wake it).
                    cur.execute(q.LOCK_CHILDREN, (text_array(children),))
                missed = sql_missed(
                    "%s", q.TABLES, lambda sql, args: cur.execute(sql, args).fetchone()
                )
                woken = wake_missed(part, now, missed)
                if part.entries:
                    cur.execute(q.INSERT_ENTRIES, columns(part.entries, q.INSERT_ENTRIES_KINDS))
                if part.events:
                    cur.executemany(q.UPSERT_EVENT, part.events)
                if part.children:
                    self._insert_runs(conn, part.children)
                if part.updates:
                    cur.executemany(q.UPDATE_RUN, part.updates)
                if part.ended:
                    cur.execute(q.WAKE_PARENTS, (now, part.ended), prepare=False)
                notes = [(CHANNEL_DONE, p) for p in done_payloads(part.ended)]
                notes += [  # handed back (a worker stopping): others may take them now
                    (CHANNEL_WORK, u["id"])
                    for u in part.updates
                    if u["release"] and u["status"] == "running"
                ]
                notes += [(CHANNEL_EVENT, run_id) for run_id in sorted({e[0] for e in part.events})]
                notes += [(CHANNEL_WORK, run_id) for run_id in sorted(woken)]
                # A claim meanwhile skipped the children locked above (FOR
                # UPDATE SKIP LOCKED): one not started yet waited for the next
                # poll. Claims look again once this commits (one notice a
                # commit: a parent of many children sleeps again after each).
                if children:
                    notes.append((CHANNEL_WORK, children[0]))
                if notes:
                    cur.executemany(q.NOTIFY, notes)
        return part.rejected

    def batchable(self, write: RunWrite) -> bool:
        """Whether ``write`` fits a batch of :meth:`one_statement`."""
        return _simple(write)

    def one_statement(
        self, worker_id: str, writes: Sequence[RunWrite], now: float
    ) -> OneStatement | BatchStatement | None:
        """The single autocommitted statement that makes ``writes`` durable:
        for the shapes a lone run writes (its claimed create, a step's result,
        its end), and for a batch of runs' entries and row changes
        (``q.COMMIT_SIMPLE``); None for anything else.

        The batch statement is prepared: its generic plan walks the primary
        key once per write at any batch size (tests/storage/test_plans.py),
        and planning it afresh cost the server more than running it (2.4
        against 3.3 ms for 200 writes)."""
        if len(writes) != 1:
            if not all(_simple(w) for w in writes):
                return None
            params = commit_simple_params(worker_id, writes, now)
            return BatchStatement(q.COMMIT_SIMPLE, params, tuple(w.run_id for w in writes))
        write = writes[0]
        create = lone_create(writes)
        if create is not None:  # started in this process, created claimed (so no NOTIFY)
            return OneStatement(q.INSERT_RUN, _run_row(create), write.run_id)
        append = lone_append(writes)
        if append is not None:  # a step's result in mid-run (see q.APPEND_ONE)
            params = _entry_params(append[1])
            params.update(me=worker_id, id=write.run_id, epoch=write.epoch)
            return OneStatement(q.APPEND_ONE, params, write.run_id)
        if not _simple(write):
            return None
        u = write.update
        entries = write.entries
        params = {"me": worker_id, "id": write.run_id, "epoch": write.epoch}
        if len(entries) == 1:
            params.update(_entry_params(entries[0]))
            statement = q.COMMIT_ONE_ENTRY
        else:
            params.update(
                e_seq=[e.seq for e in entries],
                e_pos=[e.position for e in entries],
                e_kind=[e.kind for e in entries],
                e_name=[e.name for e in entries],
                e_payload=[e.payload for e in entries],
                e_loc=[e.loc for e in entries],
                e_at=[e.at for e in entries],
                e_epoch=[write.epoch for _ in entries],
            )
            statement = q.COMMIT_ONE
        params.update(
            now=now,
            change=u is not None,
            status=u.status if u else None,
            result=u.result if u else None,
            error=u.error if u else None,
            wake=u.wake_at if u else None,
            release=bool(u and u.release),
            version=u.version if u else None,
            pin=bool(u and u.pin),
        )
        return OneStatement(statement, params, write.run_id)

    @_again_on_conflict
    def renew(
        self, worker_id: str, run_ids: Sequence[str], now: float, lease_seconds: float
    ) -> dict[str, int]:
        if not run_ids:
            return {}
        with self._conn() as conn:
            params = (now + lease_seconds, worker_id, text_array(run_ids))
            rows = conn.execute(q.RENEW, params, prepare=False).fetchall()
        return {str(run_id): int(epoch) for run_id, epoch in rows}

    @_again_on_conflict
    def release(
        self, worker_id: str, run_ids: Sequence[str], now: float, *, epoch: int | None = None
    ) -> None:
        if run_ids:
            with self._conn() as conn:
                params = (now, worker_id, text_array(run_ids), epoch, epoch)
                conn.execute(q.RELEASE, params, prepare=False)

    def next_due(
        self, workflows: Sequence[str], now: float, versions: Sequence[str] = ()
    ) -> float | None:
        if not workflows:
            return None
        with self._conn() as conn:
            params = {"wfs": list(workflows), "wvs": list(versions)}
            row = conn.execute(q.NEXT_DUE, params).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @_again_on_conflict
    def set_status(
        self, run_id: str, status: str, now: float, *, expect: Sequence[str] = ()
    ) -> bool:
        with self._conn() as conn, conn.transaction():
            found = conn.execute(q.GET_STATUS_FOR_UPDATE, (run_id,)).fetchone()
            if found is None or (expect and found[0] not in expect):
                return False
            conn.execute(q.SET_STATUS, {"status": status, "now": now, "id": run_id})
            if status == "pending":
                conn.execute(q.NOTIFY, ("durably_work", run_id))
            return True

    # -- signals, events, cancellation -----------------------------------------
    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        return self._read_runs(q.GET_RUNS, run_ids)

    def ended_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        return self._read_runs(q.ENDED_RUNS, run_ids)

    def watch_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        if not run_ids:
            return []
        found: dict[str, RunRecord] = {}
        with self._conn() as conn:
            unsure = []
            for *columns, maybe_quiet in conn.execute(q.WATCH_RUNS, {"ids": text_array(run_ids)}):
                record = RunRecord(*columns)
                found[record.id] = record
                if maybe_quiet:
                    unsure.append(record.id)
            for run_id in unsure:
                # One row each: it waits for a write holding the row (the
                # run's end, maybe) and then sees what it left; not for long,
                # or one row held in a forgotten transaction would stall
                # every waiter of this process (they share this thread).
                row = None
                try:
                    with conn.transaction():
                        conn.execute(q.WATCH_LOCK_WAIT)
                        row = conn.execute(q.WATCH_RUN, (run_id,)).fetchone()
                except psycopg.errors.LockNotAvailable:
                    pass  # read as it is: its waiter's periodic re-read finds its end
                if row is None:  # ended, announced already, or held too long
                    row = conn.execute(q.GET_RUN, (run_id,)).fetchone()
                if row is not None:
                    found[run_id] = RunRecord(*row)
        return [found[run_id] for run_id in run_ids if run_id in found]

    def _read_runs(self, sql: str, run_ids: Sequence[str]) -> list[RunRecord]:
        if not run_ids:
            return []
        with self._conn() as conn:
            rows = conn.execute(sql, (text_array(run_ids),)).fetchall()
        return [RunRecord(*r) for r in rows]

    @_again_on_conflict
    def send_signal(self, run_id: str, topic: str, payload: str, now: float) -> None:
        with self._conn() as conn, conn.transaction():
            row = conn.execute(q.RUN_STATUS_FOR_UPDATE, (run_id,)).fetchone()
            check_open(row, run_id)
            conn.execute(q.INSERT_SIGNAL, (run_id, topic, payload, now))
            conn.execute(q.WAKE_SUSPENDED, (now, run_id))
            conn.execute(q.NOTIFY, (CHANNEL_SIGNAL, run_id))
            if row is not None and row[0] == "pending":
                # A claim meanwhile skipped the row locked above (SKIP LOCKED):
                # claims look again once this commits, not at the next poll.
                conn.execute(q.NOTIFY, (CHANNEL_WORK, run_id))

    def pending_signals(self, run_ids: Sequence[str]) -> list[Signal]:
        if not run_ids:
            return []
        with self._conn() as conn:
            params = (text_array(run_ids),)
            rows = conn.execute(q.PENDING_SIGNALS, params, prepare=False).fetchall()
        return [Signal(*r) for r in rows]

    def get_event(self, run_id: str, key: str) -> str | None:
        with self._conn() as conn:
            row = conn.execute(q.GET_EVENT, (run_id, key)).fetchone()
            if row is not None:
                return str(row[0])
            if conn.execute(q.RUN_STATUS, (run_id,)).fetchone() is None:
                raise RunNotFound(f"no run with id {run_id!r}")
        return None

    @_again_on_conflict
    def request_cancel(self, run_id: str, now: float, reason: str) -> str:
        params = {"id": run_id, "now": now, "reason": reason, "error": cancelled_error(reason)}
        with self._conn() as conn, conn.transaction():
            if conn.execute(q.RUN_STATUS_FOR_UPDATE, (run_id,)).fetchone() is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            tree = conn.execute(q.CANCEL_PENDING_TREE, params, prepare=False).fetchall()
            ended = [r[0] for r in tree]
            tree = conn.execute(q.MARK_CANCEL_TREE, params, prepare=False).fetchall()
            marked = [r[0] for r in tree]
            asleep = [r[0] for r in tree if r[1] == "suspended"]
            if ended:
                conn.execute(q.WAKE_PARENTS, (now, ended), prepare=False)
            notes = [(CHANNEL_DONE, p) for p in done_payloads(ended)]
            notes += [(CHANNEL_CANCEL, i) for i in marked]
            # A suspended run marked is due now (to run its compensation).
            notes += [(CHANNEL_WORK, i) for i in asleep]
            if notes:
                with conn.cursor() as cur:
                    cur.executemany(q.NOTIFY, notes)
            row = conn.execute(q.RUN_STATUS, (run_id,)).fetchone()
        return str(row[0]) if row else "cancelled"

    def cancel_requests(self, run_ids: Sequence[str]) -> dict[str, str]:
        if not run_ids:
            return {}
        with self._conn() as conn:
            params = (text_array(run_ids),)
            rows = conn.execute(q.CANCEL_REQUESTS, params, prepare=False).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    # -- wake-ups --------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)

    def _listen_loop(self, stop: threading.Event, dispatch: Listener) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}")  # type: ignore[arg-type]
                    delay = 0.1
                    # Anything may have happened while we were not listening.
                    dispatch("", "")
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if note.channel == CHANNEL_DONE:
                                for run_id in done_ids(note.payload):
                                    dispatch(CHANNEL_DONE, run_id)
                            else:
                                dispatch(note.channel, note.payload)
            except psycopg.Error as exc:
                if stop.is_set():
                    return
                log.debug("LISTEN connection lost (%s); reconnecting", exc)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)


def _run_row(run: NewRun) -> tuple[Any, ...]:
    """INSERT_RUN's parameters: a run created claimed by a worker in the
    starting process is quiet (migration 6): that worker answers its waiters
    there."""
    return (*run_row(run), run.owner is not None)


def _entry_params(e: Entry) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "pos": e.position,
        "kind": e.kind,
        "name": e.name,
        "payload": e.payload,
        "loc": e.loc,
        "at": e.at,
    }


def commit_simple_params(worker_id: str, writes: Sequence[RunWrite], now: float) -> dict[str, Any]:
    """``q.COMMIT_SIMPLE``'s parameters: the batch as columns of array literals."""
    updates = [w.update for w in writes]
    entries = [(w.run_id, e, w.epoch) for w in writes for e in w.entries]
    held = [w for w in writes if w.update is None]
    return {
        "me": worker_id,
        "now": now,
        "ids": text_array([w.run_id for w in writes]),
        "held": text_array([w.run_id for w in held]),
        "held_epochs": int_array([w.epoch for w in held]),
        "epochs": int_array([w.epoch for w in writes]),
        "changes": bool_array([u is not None for u in updates]),
        "statuses": text_array([u.status if u else None for u in updates]),
        "results": text_array([u.result if u else None for u in updates]),
        "errors": text_array([u.error if u else None for u in updates]),
        "wakes": float_array([u.wake_at if u else None for u in updates]),
        "releases": bool_array([bool(u and u.release) for u in updates]),
        "versions": text_array([u.version if u else None for u in updates]),
        "pins": bool_array([bool(u and u.pin) for u in updates]),
        "e_run": text_array([run_id for run_id, _, _ in entries]),
        "e_seq": int_array([e.seq for _, e, _ in entries]),
        "e_pos": int_array([e.position for _, e, _ in entries]),
        "e_kind": text_array([e.kind for _, e, _ in entries]),
        "e_name": text_array([e.name for _, e, _ in entries]),
        "e_payload": text_array([e.payload for _, e, _ in entries]),
        "e_loc": text_array([e.loc for _, e, _ in entries]),
        "e_at": float_array([e.at for _, e, _ in entries]),
        "e_epoch": int_array([epoch for _, _, epoch in entries]),
    }


def _simple(write: RunWrite) -> bool:
    """Whether ``write`` fits the one-statement commit."""
    u = write.update
    return (
        write.create is None
        and not write.consumed
        and not write.events
        and not write.children
        and (u is None or not (u.release and u.status == "suspended"))
    )

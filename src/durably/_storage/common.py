"""Pieces both backends share: migration files and the listener thread."""

from __future__ import annotations

import importlib.resources
import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._engine.journal import Entry
from .._errors import DatabaseError, RunFinished, RunNotFound
from .base import TERMINAL, Listener, NewRun, RunFilter, RunRecord, RunUpdate, RunWrite

log = logging.getLogger("durably.storage")

SCHEMA_KEY = "schema_version"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(package: str) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``package``'s ``migrations`` folder, in order."""
    found = []
    folder = importlib.resources.files(package).joinpath("migrations")
    for item in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", item.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), item.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations of {package} are not numbered 1..n: {found}")
    return found


def check_version(current: int, latest: int, where: str) -> None:
    if current > latest:
        raise DatabaseError(
            f"{where} has durably schema version {current}, but this version of durably "
            f"only knows versions up to {latest}. It was upgraded by a newer durably; "
            "upgrade durably here (pip install -U durably) instead of downgrading the "
            "database."
        )


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file (separated by lines holding only ';')."""
    parts = re.split(r"^\s*;\s*$", sql, flags=re.MULTILINE)
    return [p.strip() for p in parts if p.strip() and not _only_comments(p)]


def _only_comments(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.splitlines())


class Listeners:
    """Fan-out of change notifications from one background thread.

    The thread runs ``loop(stop, dispatch)`` only while someone listens, so a
    process that never waits costs the database nothing.
    """

    def __init__(self, name: str, loop: Callable[[threading.Event, Listener], None]) -> None:
        self._name = name
        self._loop = loop
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            if self._closed:  # its storage is closed: no thread (or connection) for it
                raise DatabaseError("storage is closed")
            self._listeners.append(listener)
            # A thread told to stop may still be alive: it will not come back.
            if self._thread is None or not self._thread.is_alive() or self._stop.is_set():
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name=self._name, daemon=True
                )
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
                if not self._listeners:
                    self._stop.set()

        return unsubscribe

    def dispatch(self, channel: str, payload: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(channel, payload)
            except Exception:
                log.exception("durably change listener failed")

    def _run(self, stop: threading.Event) -> None:
        try:
            self._loop(stop, self.dispatch)
        except Exception:
            log.exception("durably change listener thread stopped")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._listeners.clear()
            self._stop.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)


@dataclass
class Partition:
    """A group commit split by whether each run's claim still holds."""

    rejected: set[str] = field(default_factory=set)
    # (run_id, seq, position, kind, name, payload, loc, at, epoch)
    entries: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # UPDATE_RUN parameters
    ended: list[str] = field(default_factory=list)  # runs this commit ends
    consumed: list[tuple[float, int, str]] = field(default_factory=list)  # (now, id, run)
    events: list[tuple[str, str, str, float]] = field(default_factory=list)
    children: list[NewRun] = field(default_factory=list)
    sleepers: list[tuple[str, RunUpdate]] = field(default_factory=list)  # released to wait


def missed_wakeup_sql(update: RunUpdate, mark: str) -> tuple[str, list[Any]]:
    """A query that is non-empty if a released run should be woken at once."""
    params: list[Any] = []
    checks = []
    if update.wake_topics:
        topics = ", ".join([mark] * len(update.wake_topics))
        checks.append(
            "EXISTS (SELECT 1 FROM {signals} s WHERE s.run_id = r.id AND s.consumed_at IS NULL"
            f" AND s.topic IN ({topics}))"
        )
        params.extend(update.wake_topics)
    if update.wake_children:
        children = ", ".join([mark] * len(update.wake_children))
        checks.append(
            f"EXISTS (SELECT 1 FROM {{runs}} c WHERE c.id IN ({children})"
            " AND c.status IN ('completed', 'failed', 'cancelled'))"
        )
        params.extend(update.wake_children)
    if not update.cancel_seen:
        checks.append("r.cancel_requested IS NOT NULL")
    if not checks:
        return "", []
    sql = f"SELECT 1 FROM {{runs}} r WHERE r.id = {mark} AND ({' OR '.join(checks)})"
    return sql, params


def wake_missed(part: Partition, now: float, missed: Callable[[str, RunUpdate], bool]) -> set[str]:
    """Runs going to sleep whose wake-up already happened are woken at once;
    the ids of those woken (workers must be told: they are due now).

    Must run inside the commit's transaction, after signals were consumed and
    before the runs' rows are updated.
    """
    woken = {run_id for run_id, update in part.sleepers if missed(run_id, update)}
    for params in part.updates:
        if params["id"] in woken:
            params["wake_at"] = now
    return woken


def sql_missed(
    mark: str, tables: dict[str, str], query: Callable[[str, list[Any]], Any]
) -> Callable[[str, RunUpdate], bool]:
    """:func:`wake_missed`'s check as one query per sleeping run."""

    def missed(run_id: str, update: RunUpdate) -> bool:
        sql, args = missed_wakeup_sql(update, mark)
        return bool(sql) and query(sql.format(**tables), [run_id, *args]) is not None

    return missed


def lone_create(writes: Sequence[RunWrite]) -> NewRun | None:
    """The run if the batch only creates one run already claimed (a start in
    a worker's own process): backends write that in one statement. None
    otherwise."""
    if len(writes) != 1:
        return None
    w = writes[0]
    run = w.create
    if (
        run is None
        or not run.owner
        or w.entries
        or w.update is not None
        or w.consumed
        or w.events
        or w.children
    ):
        return None
    return run


def lone_append(writes: Sequence[RunWrite]) -> tuple[RunWrite, Entry] | None:
    """The write and its entry if the batch only appends one journal entry to
    one run (a step's result in mid-run): backends write that in one fenced
    statement. None otherwise."""
    if len(writes) != 1:
        return None
    w = writes[0]
    if (
        len(w.entries) != 1
        or w.update is not None
        or w.create is not None
        or w.consumed
        or w.events
        or w.children
    ):
        return None
    return w, w.entries[0]


def partition(writes: Sequence[RunWrite], owned: Mapping[str, int], now: float) -> Partition:
    """Keep the writes whose run is still owned at the epoch they were made in."""
    part = Partition()
    for w in writes:
        if owned.get(w.run_id) != w.epoch:
            part.rejected.add(w.run_id)
            continue
        part.consumed.extend((now, signal_id, w.run_id) for signal_id in w.consumed)
        part.events.extend((w.run_id, key, value, now) for key, value in w.events)
        part.children.extend(w.children)
        part.entries.extend(
            (w.run_id, e.seq, e.position, e.kind, e.name, e.payload, e.loc, e.at, w.epoch)
            for e in w.entries
        )
        u = w.update
        if u is not None and u.release and u.status == "suspended":
            part.sleepers.append((w.run_id, u))
        if u is not None:
            part.updates.append(
                {
                    "id": w.run_id,
                    "status": u.status,
                    "result": u.result,
                    "error": u.error,
                    "wake_at": u.wake_at,
                    "release": u.release,
                    "version": u.version,
                    "now": now,
                    # Decided here, not by an IN list in the statement: on
                    # SQLite that list beside the durably_run_ended trigger
                    # made each row's update about four times as slow.
                    "finished": now if u.status in TERMINAL else None,
                    "pin": u.pin,
                }
            )
            if u.status in TERMINAL:
                part.ended.append(w.run_id)
    return part


def filter_sql(where: RunFilter, mark: str) -> tuple[str, list[Any]]:
    """``WHERE ... ORDER BY ... LIMIT`` for listing runs; ``mark`` is ``?`` or ``%s``."""
    clauses: list[str] = []
    params: list[Any] = []
    if where.status:
        clauses.append(f"status = {mark}")
        params.append(where.status)
    if where.workflow:
        clauses.append(f"workflow = {mark}")
        params.append(where.workflow)
    sql = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    params.append(where.limit)
    return sql + f" ORDER BY created_at DESC LIMIT {mark}", params


def cancelled_error(reason: str) -> str:
    """The stored error of a run cancelled before it started."""
    return json.dumps({"type": "WorkflowCancelled", "message": reason, "traceback": ""})


def created_record(run: NewRun) -> RunRecord:
    """The row an insert of ``run`` leaves: what a start returns without reading."""
    claimed = run.owner is not None
    return RunRecord(
        id=run.id,
        workflow=run.workflow,
        version=run.version,
        status="running" if claimed else "pending",
        args=run.args,
        result=None,
        error=None,
        owner=run.owner,
        epoch=1 if claimed else 0,
        lease_until=run.lease_until,
        wake_at=None,
        created_at=run.created_at,
        updated_at=run.created_at,
        started_at=run.created_at if claimed else None,
        finished_at=None,
        parent_id=run.parent_id,
        deadline=run.deadline,
        priority=run.priority,
    )


def run_row(run: NewRun) -> tuple[Any, ...]:
    """Parameters of a backend's INSERT_RUN, in column order."""
    r = created_record(run)
    return (
        r.id,
        r.workflow,
        r.version,
        r.status,
        r.args,
        r.created_at,
        r.updated_at,
        r.parent_id,
        r.deadline,
        r.priority,
        r.epoch,
        r.owner,
        r.lease_until,
        r.started_at,
    )


def start_answers(
    runs: Sequence[NewRun],
    created: set[str],
    read: Callable[[list[str]], list[RunRecord]],
) -> list[tuple[RunRecord, bool]]:
    """What ``create_runs`` answers: each run's row, and whether this call
    created it. The rows it created are known; only the ids that existed
    already are read (through ``read``)."""
    # An id given twice in one batch is read: which start's row went in is
    # the database's choice.
    counts = Counter(run.id for run in runs)
    records = {
        run.id: created_record(run) for run in runs if run.id in created and counts[run.id] == 1
    }
    others = [run_id for run_id in counts if run_id not in records]
    if others:
        records.update((record.id, record) for record in read(others))
    seen: set[str] = set()
    out: list[tuple[RunRecord, bool]] = []
    for run in runs:
        out.append((records[run.id], run.id in created and run.id not in seen))
        seen.add(run.id)
    return out


def check_open(row: Any, run_id: str) -> None:
    """Refuse signals to a run that does not exist or already ended."""
    if row is None:
        raise RunNotFound(f"no run with id {run_id!r}")
    if row[0] in TERMINAL:
        raise RunFinished(f"run {run_id!r} is {row[0]}; it cannot receive signals any more")


def check_consumed(taken: int, part: Partition) -> None:
    """Abort the commit if a signal it hands to a run was already taken."""
    if taken != len(part.consumed):
        raise DatabaseError(
            f"{len(part.consumed) - taken} signal(s) of this commit were already consumed; "
            "the commit is rolled back and the run replays"
        )

"""An in-memory storage: the same semantics as SQLite and PostgreSQL, no file.

Made for simulation and fast tests: everything lives in this process, one
lock serialises every operation (like SQLite's single writer), and listeners
are called synchronously with the channel a PostgreSQL NOTIFY would use. It
deliberately shares the commit rules (fencing, partitioning, missed wake-ups)
with the real backends through ``durably._storage.common``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._engine.journal import Entry
from .._errors import DatabaseError, RunNotFound
from .._storage.base import (
    CHANNEL_CANCEL,
    CHANNEL_DONE,
    CHANNEL_EVENT,
    CHANNEL_SIGNAL,
    CHANNEL_WORK,
    TERMINAL,
    Listener,
    NewRun,
    RunFilter,
    RunRecord,
    RunUpdate,
    RunWrite,
    Signal,
    Storage,
)
from .._storage.common import (
    cancelled_error,
    check_open,
    created_record,
    partition,
    wake_missed,
)


@dataclasses.dataclass
class _Signal:
    id: int
    run_id: str
    topic: str
    payload: str
    consumed: bool = False


class MemoryStorage(Storage):
    backend = "memory"

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.RLock()
        self._runs: dict[str, RunRecord] = {}
        self._journal: dict[str, list[Entry]] = {}
        self._signals: list[_Signal] = []
        self._events: dict[tuple[str, str], str] = {}
        self._listeners: list[Listener] = []
        self.commits = 0  # how many commits succeeded (for tests)
        self.on_commit: Callable[[Sequence[RunWrite], float], None] | None = None

    # -- plumbing ------------------------------------------------------------
    def migrate(self) -> None:
        return None

    def close(self) -> None:
        return None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, notes: list[tuple[str, str]]) -> None:
        listeners = list(self._listeners)
        for channel, payload in notes:
            for listener in listeners:
                listener(channel, payload)

    @staticmethod
    def _copy(record: RunRecord) -> RunRecord:
        return dataclasses.replace(record)

    # -- runs ------------------------------------------------------------------
    def _insert(self, run: NewRun) -> bool:
        if run.id in self._runs:
            return False
        self._runs[run.id] = created_record(run)
        return True

    def create_runs(self, runs: Sequence[NewRun]) -> list[tuple[RunRecord, bool]]:
        with self._lock:
            out = []
            for run in runs:
                created = self._insert(run)
                out.append((self._copy(self._runs[run.id]), created))
        self._notify([(CHANNEL_WORK, r.workflow) for r, new in out if new and r.owner is None])
        return out

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._lock:
            record = self._runs.get(run_id)
            return self._copy(record) if record else None

    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        with self._lock:
            return [self._copy(self._runs[i]) for i in run_ids if i in self._runs]

    def list_runs(self, where: RunFilter) -> list[RunRecord]:
        with self._lock:
            runs = [
                r
                for r in self._runs.values()
                if (not where.status or r.status == where.status)
                and (not where.workflow or r.workflow == where.workflow)
            ]
            runs.sort(key=lambda r: r.created_at, reverse=True)
            return [self._copy(r) for r in runs[: where.limit]]

    def load_journal(self, run_id: str) -> list[Entry]:
        with self._lock:
            return [dataclasses.replace(e) for e in self._journal.get(run_id, [])]

    # -- workers -----------------------------------------------------------------
    def _runnable(self, record: RunRecord, workflows: set[str], versions: set[str]) -> bool:
        if record.workflow not in workflows:
            return False
        return not record.pinned or f"{record.workflow}@{record.version}" in versions

    def claim(
        self,
        worker_id: str,
        workflows: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        versions: Sequence[str] = (),
    ) -> list[RunRecord]:
        names, pins = set(workflows), set(versions)
        with self._lock:
            runs = [r for r in self._runs.values() if self._runnable(r, names, pins)]
            fresh = sorted((r for r in runs if r.status == "pending"), key=lambda r: r.created_at)
            due = sorted(
                (
                    r
                    for r in runs
                    if r.status == "suspended"
                    and r.wake_at is not None
                    and r.wake_at <= now
                    and (r.owner is None or (r.lease_until or 0) < now)
                ),
                key=lambda r: r.wake_at or 0,
            )
            lapsed = sorted(
                (
                    r
                    for r in runs
                    if r.status in ("running", "suspended")
                    and r.lease_until is not None
                    and r.lease_until < now
                ),
                key=lambda r: r.lease_until or 0,
            )
            chosen = (fresh[:limit] + due[:limit] + lapsed[:limit])[:limit]
            for record in chosen:
                record.owner = worker_id
                record.epoch += 1
                record.lease_until = now + lease_seconds
                record.status = "running"
                record.wake_at = None
                record.started_at = record.started_at or now
                record.updated_at = now
            return [self._copy(r) for r in chosen]

    def commit(self, worker_id: str, writes: Sequence[RunWrite], now: float) -> set[str]:
        with self._lock:
            if self.on_commit is not None:
                self.on_commit(writes, now)  # may raise: nothing is written then
            for write in writes:
                if write.create is not None:
                    self._insert(write.create)
            owned = {
                w.run_id: self._runs[w.run_id].epoch
                for w in writes
                if w.run_id in self._runs and self._runs[w.run_id].owner == worker_id
            }
            part = partition(writes, owned, now)
            for row in part.entries:
                run_id, seq, position, kind, name, payload, loc, at, epoch = row
                journal = self._journal.setdefault(run_id, [])
                if any(e.seq == seq for e in journal):
                    raise DatabaseError(f"journal entry {run_id}/{seq} exists")
                journal.append(Entry(position, kind, name, payload, loc, at, seq, epoch))
            by_id = {s.id: s for s in self._signals}
            for _, signal_id, run_id in part.consumed:
                signal = by_id.get(signal_id)
                if signal is None or signal.consumed or signal.run_id != run_id:
                    raise DatabaseError(f"signal {signal_id} was already consumed")
                signal.consumed = True
            for run_id, key, value, _ in part.events:
                self._events[(run_id, key)] = value
            created = [c for c in part.children if self._insert(c)]
            wake_missed(part, now, self._missed)
            for params in part.updates:
                self._apply(params)
            self._wake_parents(part.ended, now)
            self.commits += 1
            notes = [(CHANNEL_DONE, run_id) for run_id in part.ended]
            notes += [(CHANNEL_EVENT, run_id) for run_id in {e[0] for e in part.events}]
            notes += [(CHANNEL_WORK, c.workflow) for c in created]
            notes += [
                (CHANNEL_WORK, p["id"])
                for p in part.updates
                if p["release"] and p["status"] == "running"
            ]
        self._notify(notes)
        return part.rejected

    def _missed(self, run_id: str, update: RunUpdate) -> bool:
        if any(
            s.run_id == run_id and not s.consumed and s.topic in update.wake_topics
            for s in self._signals
        ):
            return True
        if any(c in self._runs and self._runs[c].status in TERMINAL for c in update.wake_children):
            return True
        record = self._runs[run_id]
        return not update.cancel_seen and record.cancel_requested is not None

    def _apply(self, params: dict[str, Any]) -> None:
        record = self._runs[params["id"]]
        status = params["status"] or record.status
        record.status = status
        if params["result"] is not None:
            record.result = params["result"]
        if params["error"] is not None:
            record.error = params["error"]
        record.wake_at = params["wake_at"]
        if params["release"]:
            record.owner = None
            record.lease_until = 0.0 if status == "running" else None
        if params["finished"] is not None:
            record.finished_at = params["finished"]
        if params["version"] is not None:
            record.version = params["version"]
        if params["pin"]:
            record.pinned = True
        record.updated_at = params["now"]

    def _wake_parents(self, ended: Sequence[str], now: float) -> None:
        for run_id in ended:
            parent_id = self._runs[run_id].parent_id
            parent = self._runs.get(parent_id) if parent_id else None
            if parent is not None and parent.status == "suspended":
                parent.wake_at = now

    def renew(
        self, worker_id: str, run_ids: Sequence[str], now: float, lease_seconds: float
    ) -> dict[str, int]:
        with self._lock:
            renewed = {}
            for run_id in run_ids:
                record = self._runs.get(run_id)
                if (
                    record is not None
                    and record.owner == worker_id
                    and record.status in ("running", "suspended")
                ):
                    record.lease_until = now + lease_seconds
                    renewed[run_id] = record.epoch
            return renewed

    def release(
        self, worker_id: str, run_ids: Sequence[str], now: float, *, epoch: int | None = None
    ) -> None:
        with self._lock:
            notes = []
            for run_id in run_ids:
                record = self._runs.get(run_id)
                if (
                    record is not None
                    and record.owner == worker_id
                    and (epoch is None or record.epoch == epoch)
                ):
                    record.owner = None
                    record.lease_until = 0.0 if record.status == "running" else None
                    record.updated_at = now
                    if record.status == "running":
                        notes.append((CHANNEL_WORK, record.workflow))
        self._notify(notes)

    def next_due(
        self, workflows: Sequence[str], now: float, versions: Sequence[str] = ()
    ) -> float | None:
        names, pins = set(workflows), set(versions)
        with self._lock:
            candidates = [
                t
                for r in self._runs.values()
                if self._runnable(r, names, pins) and r.status in ("suspended", "running")
                for t in (r.wake_at if r.status == "suspended" else None, r.lease_until)
            ]
        times = [t for t in candidates if t is not None]
        return min(times) if times else None

    def set_status(
        self, run_id: str, status: str, now: float, *, expect: Sequence[str] = ()
    ) -> bool:
        with self._lock:
            record = self._runs.get(run_id)
            if record is None or (expect and record.status not in expect):
                return False
            record.status = status
            record.owner = None
            record.lease_until = None
            record.wake_at = None
            if status == "pending":
                record.error = None
                record.finished_at = None
            record.updated_at = now
        if status == "pending":
            self._notify([(CHANNEL_WORK, record.workflow)])
        return True

    # -- signals, events, cancellation ----------------------------------------------
    def send_signal(self, run_id: str, topic: str, payload: str, now: float) -> None:
        with self._lock:
            record = self._runs.get(run_id)
            check_open((record.status,) if record else None, run_id)
            assert record is not None
            self._signals.append(_Signal(len(self._signals) + 1, run_id, topic, payload))
            if record.status == "suspended":
                record.wake_at = now
        self._notify([(CHANNEL_SIGNAL, run_id)])

    def pending_signals(self, run_ids: Sequence[str]) -> list[Signal]:
        wanted = set(run_ids)
        with self._lock:
            return [
                Signal(s.id, s.run_id, s.topic, s.payload)
                for s in self._signals
                if s.run_id in wanted and not s.consumed
            ]

    def get_event(self, run_id: str, key: str) -> str | None:
        with self._lock:
            value = self._events.get((run_id, key))
            if value is None and run_id not in self._runs:
                raise RunNotFound(f"no run with id {run_id!r}")
            return value

    def request_cancel(self, run_id: str, now: float, reason: str) -> str:
        with self._lock:
            if run_id not in self._runs:
                raise RunNotFound(f"no run with id {run_id!r}")
            tree, frontier = [run_id], [run_id]
            while frontier:
                children = [r.id for r in self._runs.values() if r.parent_id in frontier]
                frontier = [c for c in children if c not in tree]
                tree += frontier
            ended, marked = [], []
            for member in tree:
                record = self._runs[member]
                if record.status == "pending":
                    record.status = "cancelled"
                    record.finished_at = now
                    record.error = cancelled_error(reason)
                    ended.append(member)
                elif record.status in ("running", "suspended"):
                    marked.append(member)
                    if record.status == "suspended":
                        record.wake_at = now
                else:
                    continue
                record.cancel_requested = record.cancel_requested or now
                record.cancel_reason = record.cancel_reason or reason
                record.updated_at = now
            self._wake_parents(ended, now)
            status = self._runs[run_id].status
        notes = [(CHANNEL_DONE, i) for i in ended] + [(CHANNEL_CANCEL, i) for i in marked]
        self._notify(notes)
        return status

    def cancel_requests(self, run_ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            return {
                r.id: r.cancel_reason or "cancelled"
                for r in (self._runs.get(i) for i in run_ids)
                if r is not None and r.cancel_requested is not None and r.status not in TERMINAL
            }

    # -- for tests -----------------------------------------------------------------
    def dump(self) -> str:
        """Every run and journal entry, as stable text (to compare two simulations)."""
        with self._lock:
            lines = []
            for run_id in sorted(self._runs):
                r = self._runs[run_id]
                lines.append(json.dumps([r.id, r.status, r.result, r.error is not None]))
                for e in self._journal.get(run_id, []):
                    lines.append(json.dumps([e.seq, e.position, e.kind, e.name, e.payload]))
            return "\n".join(lines)

"""The storage interface every backend implements, and the records it moves.

Storage is synchronous and thread-safe: the worker calls it from its own
threads (the group committer, the claimer), clients call it from any thread,
and the async API wraps it (a backend may also offer a :class:`LoopWriter`
for a lone run's writes from the event loop). All times are epoch seconds
supplied by the caller, so a virtual clock can drive the engine in tests.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._engine.journal import Entry

TERMINAL = frozenset({"completed", "failed", "cancelled"})
STATUSES = ("pending", "running", "suspended", "completed", "failed", "cancelled")

# Notification channels (PostgreSQL LISTEN/NOTIFY; in-process elsewhere).
CHANNEL_WORK = "durably_work"  # something may be claimable: a workflow name or a run id (unread)
CHANNEL_DONE = "durably_done"  # payload: run id that reached a terminal status
# (PostgreSQL packs a commit's ended runs into one notice on the wire and its
# listener hands them on one by one: postgres/notices.py)
CHANNEL_SIGNAL = "durably_signal"  # payload: run id that was sent a signal
CHANNEL_CANCEL = "durably_cancel"  # payload: run id whose cancellation was requested
CHANNEL_EVENT = "durably_event"  # payload: run id that published an event
CHANNELS = (CHANNEL_WORK, CHANNEL_DONE, CHANNEL_SIGNAL, CHANNEL_CANCEL, CHANNEL_EVENT)

# A write the server rolled back on a conflict (WriteConflict: a deadlock, a
# lock not granted in time) is sent again this many times in all, with a
# pause of CONFLICT_PAUSE before the second try and a longer one before each next.
CONFLICT_TRIES = 4
CONFLICT_PAUSE = 0.01


@dataclass(slots=True)
class RunRecord:
    id: str
    workflow: str
    version: str
    status: str
    args: str
    result: str | None
    error: str | None
    owner: str | None
    epoch: int
    lease_until: float | None
    wake_at: float | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    parent_id: str | None = None
    deadline: float | None = None
    priority: int = 0
    cancel_requested: float | None = None
    cancel_reason: str | None = None
    pinned: bool = False  # diverged under newer code: only its own version may run it


RUN_COLUMNS = (
    "id, workflow, version, status, args, result, error, owner, epoch, lease_until, "
    "wake_at, created_at, updated_at, started_at, finished_at, parent_id, deadline, "
    "priority, cancel_requested, cancel_reason, pinned"
)


@dataclass(slots=True)
class NewRun:
    id: str
    workflow: str
    version: str
    args: str
    created_at: float
    parent_id: str | None = None
    deadline: float | None = None
    priority: int = 0
    # Created already claimed (a worker in the starting process takes it at
    # once): status running, epoch 1, this owner and lease.
    owner: str | None = None
    lease_until: float | None = None


@dataclass(slots=True)
class RunUpdate:
    """Changes to a run's row written together with its journal entries."""

    status: str | None = None
    result: str | None = None
    error: str | None = None
    wake_at: float | None = None
    release: bool = False  # give up ownership (suspended out of memory, or ended)
    version: str | None = None
    # When a run leaves memory to wait, whatever would wake it may already
    # have happened concurrently; the commit checks these in its transaction
    # and wakes the run at once if so (so no wake-up is lost).
    wake_topics: tuple[str, ...] = ()  # a signal on one of these is unconsumed
    wake_children: tuple[str, ...] = ()  # one of these child runs ended
    cancel_seen: bool = False  # the driver already knows of a cancellation request
    pin: bool = False  # pin the run to the version it has (newer code diverged)


@dataclass(slots=True)
class RunWrite:
    """One run's share of a group commit, fenced by its claim ``epoch``.

    ``consumed`` are ids of signals this write hands to the run (marked
    consumed in the same transaction as the entries that record them),
    ``events`` are ``(key, value JSON)`` pairs to publish, ``children`` are
    child runs to create.
    """

    run_id: str
    epoch: int
    entries: list[Entry] = field(default_factory=list)
    update: RunUpdate | None = None
    consumed: list[int] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)
    children: list[NewRun] = field(default_factory=list)
    create: NewRun | None = None  # the run itself, created claimed by this writer


@dataclass(slots=True)
class Signal:
    id: int
    run_id: str
    topic: str
    payload: str


@dataclass(slots=True)
class RunFilter:
    status: str | None = None
    workflow: str | None = None
    limit: int = 100


Listener = Callable[[str, str], None]


class LoopWriter(Protocol):
    """Sends writes from one event loop without blocking it, one statement
    at a time: a lone run's write, or a batch of runs' writes."""

    def batchable(self, write: RunWrite) -> bool:
        """Whether ``write`` can go in a batch :meth:`prepare` takes."""

    def prepare(self, worker_id: str, writes: Sequence[RunWrite], now: float) -> Any:
        """What :meth:`send` sends to make ``writes`` durable; None if they
        cannot go this way now (not a shape it handles, or not ready): the
        caller then commits the usual way. Called only while nothing it
        prepared is in flight."""

    async def send(self, prepared: Any, *, spin: bool = True) -> set[str]:
        """As :meth:`Storage.commit`: the ids whose claim was lost.
        ``DatabaseUnavailable`` with ``reached=False`` means nothing was sent.
        ``spin``: the loop has nothing else to do meanwhile (a lone run)."""

    async def close(self) -> None: ...


class Storage(abc.ABC):
    """A durably database. See the module docstring for the threading rules."""

    url: str
    backend: str

    @abc.abstractmethod
    def migrate(self) -> None:
        """Check the schema and bring it up to date (idempotent)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- runs ------------------------------------------------------------------
    def create_run(self, run: NewRun) -> tuple[RunRecord, bool]:
        """Insert ``run`` unless its id exists; returns the row and if it was new."""
        return self.create_runs([run])[0]

    @abc.abstractmethod
    def create_runs(self, runs: Sequence[NewRun]) -> list[tuple[RunRecord, bool]]:
        """Insert runs whose ids do not exist yet, in one transaction; for each,
        the row and whether it was new (a start is idempotent by id)."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRecord | None: ...

    @abc.abstractmethod
    def list_runs(self, where: RunFilter) -> list[RunRecord]: ...

    @abc.abstractmethod
    def load_journal(self, run_id: str) -> list[Entry]:
        """The run's entries in ``seq`` order (one query)."""

    # -- workers ----------------------------------------------------------------
    @abc.abstractmethod
    def claim(
        self,
        worker_id: str,
        workflows: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        versions: Sequence[str] = (),
    ) -> list[RunRecord]:
        """Take up to ``limit`` runnable runs: new, due, or with a lapsed lease.

        Runs pinned to a version are taken only if ``"workflow@version"`` is in
        ``versions``.
        """

    @abc.abstractmethod
    def commit(self, worker_id: str, writes: Sequence[RunWrite], now: float) -> set[str]:
        """Write a batch in one transaction; returns ids whose claim was lost."""

    commits_on_loop = False  # whether commit_nowait can ever commit

    def commit_nowait(
        self, worker_id: str, writes: Sequence[RunWrite], now: float
    ) -> set[str] | None:
        """:meth:`commit`, if it can be done without waiting on anything but the
        disk; None (nothing written) if it would have to wait, e.g. for another
        process's write lock. Called on a worker's event loop, for a lone run's
        write and for group commits (see the committer); a backend whose commit
        is a network round trip keeps this default and is committed from a
        thread or through its :meth:`loop_writer`."""
        return None

    def loop_writer(self) -> LoopWriter | None:
        """Something that sends a lone run's writes from the event loop without
        blocking it (an async connection), or None: the committer's way around
        its thread where :meth:`commit_nowait` declines (see the committer)."""
        return None

    @abc.abstractmethod
    def renew(
        self, worker_id: str, run_ids: Sequence[str], now: float, lease_seconds: float
    ) -> dict[str, int]:
        """Extend the leases of these runs where ``worker_id`` still owns them;
        returns the claim epoch of each (the others were taken over).

        Only runs a worker actually drives are renewed: one it dropped (its
        driver failed) lapses and is taken over. A run this worker claimed
        again since its driver's claim shows a newer epoch: one more means
        nobody held it in between; more than that, another worker did, and
        may have journaled what the driver does not know.
        """

    @abc.abstractmethod
    def release(
        self, worker_id: str, run_ids: Sequence[str], now: float, *, epoch: int | None = None
    ) -> None:
        """Give runs back (worker shutting down) so others claim them at once;
        with ``epoch``, only under that claim (a later claim is kept)."""

    @abc.abstractmethod
    def next_due(
        self, workflows: Sequence[str], now: float, versions: Sequence[str] = ()
    ) -> float | None:
        """Earliest time a run of ``workflows`` becomes claimable (or None)."""

    @abc.abstractmethod
    def set_status(
        self, run_id: str, status: str, now: float, *, expect: Sequence[str] = ()
    ) -> bool:
        """Operator change of a run's status (``durably retry``); True if done."""

    # -- signals, events, cancellation -------------------------------------------
    @abc.abstractmethod
    def get_runs(self, run_ids: Sequence[str]) -> list[RunRecord]: ...

    def watch_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """:meth:`get_runs`, by a reader that will wait for their ends: a run
        whose end would not be announced (see PostgreSQL's migration 6)
        announces it from now on. Runs ended before are read as they ended."""
        return self.get_runs(run_ids)

    def ended_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """The runs among ``run_ids`` that have ended (what result waiters
        re-read on every change: only the ended rows come back)."""
        return [r for r in self.get_runs(run_ids) if r.status in TERMINAL]

    def ended_since(self, position: int | None) -> tuple[list[str], int] | None:
        """The ids of runs that ended after ``position`` (from an earlier call;
        None asks only for the current position) and the position to pass
        next, in commit order. None if this backend keeps no such log or no
        longer holds everything after ``position``: then a reader re-reads
        every run it waits for."""
        return None

    @abc.abstractmethod
    def send_signal(self, run_id: str, topic: str, payload: str, now: float) -> None:
        """Queue a signal; wakes a suspended run. Raises RunNotFound / RunFinished."""

    @abc.abstractmethod
    def pending_signals(self, run_ids: Sequence[str]) -> list[Signal]:
        """Unconsumed signals of these runs, oldest first."""

    @abc.abstractmethod
    def get_event(self, run_id: str, key: str) -> str | None:
        """Latest value (JSON) of an event, None if unset. Raises RunNotFound."""

    @abc.abstractmethod
    def request_cancel(self, run_id: str, now: float, reason: str) -> str:
        """Ask a run and all its descendants to cancel; returns the run's status.

        Runs that never started are cancelled at once; others are marked and
        woken so their worker raises ``CancelledError`` in the code.
        """

    @abc.abstractmethod
    def cancel_requests(self, run_ids: Sequence[str]) -> dict[str, str]:
        """Of these runs, those asked to cancel, with the reason."""

    # -- wake-ups ---------------------------------------------------------------
    @abc.abstractmethod
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(channel, payload)`` on changes; returns unsubscribe.

        Listeners run on a background thread. A backend without real
        notifications calls them with channel ``""`` when anything changed.
        """

"""Waking up callers when a run may have changed, without busy polling.

Sources: the storage's listener (PostgreSQL NOTIFY, SQLite commit detection)
and the in-process hub (a worker in this process finished a run, or this
process started one).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ._errors import TRANSIENT, DatabaseError, DatabaseUnavailable

Listener = Callable[[str, str], None]


class Hub:
    """In-process publish/subscribe; listeners are called synchronously."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def publish(self, channel: str, payload: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(channel, payload)


class ChangeWaiter:
    """Wait until a notification that may concern ``run_id`` arrives."""

    def __init__(
        self,
        sources: list[Callable[[Listener], Callable[[], None]]],
        accept: Callable[[str, str], bool],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._accept = accept
        self._loop = loop
        self._event = threading.Event()
        self._aevent = asyncio.Event() if loop is not None else None
        self._unsubscribe = [subscribe(self._on_change) for subscribe in sources]

    def _on_change(self, channel: str, payload: str) -> None:
        if not self._accept(channel, payload):
            return
        self._event.set()
        if self._loop is not None and self._aevent is not None:
            try:
                self._loop.call_soon_threadsafe(self._aevent.set)
            except RuntimeError:
                pass

    def wait_sync(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    async def wait(self, timeout: float) -> None:
        assert self._aevent is not None
        try:
            await asyncio.wait_for(self._aevent.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._aevent.clear()
        self._event.clear()

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()


Waiting = Future[Any] | asyncio.Future[Any]


def _settle_soon(
    future: asyncio.Future[Any], value: Any, error: BaseException | None = None
) -> None:
    """Settle ``future`` from any thread (directly on its own loop's)."""

    def settle() -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    loop = future.get_loop()
    if asyncio._get_running_loop() is loop:
        settle()
        return
    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # that loop closed: nobody waits any more
        pass


class RunWatcher:
    """Waits for many runs to end with one query per change, not one per waiter.

    ``watch`` hands out a future per waiter; a single thread reads for all of
    them. A run's first read (does it exist, has it ended already?) is
    batched with every other waiter's that arrived meanwhile. After that,
    only ended rows are read: the runs a notification names (PostgreSQL's
    ``NOTIFY`` carries the run id), or every watched run when a change could
    concern any of them (SQLite's commit detection, a reconnect, and at
    least every ``recheck`` seconds however busy it is). A worker in this
    process hands over the final row directly (``resolve``): no read at
    all. A first read that fails for any reason but an outage fails its
    waiters; an outage is waited out.

    Runs nobody waits for yet but that ``soon`` says will be (a handle to
    them is held in this process) are read as their ends are announced, in
    the same batches, and their rows go to ``keep``: a caller awaiting
    thousands of handles one by one then reads nothing at all, instead of
    one round trip each. Whenever the watcher starts following ends (its
    first pass; on SQLite, after a spell with nobody waiting), the ones
    ``held`` lists that ended before are read once, in one batch.
    """

    def __init__(
        self,
        fetch: Callable[[list[str]], list[Any]],
        fetch_ended: Callable[[list[str]], list[Any]],
        missing: Callable[[str], BaseException],
        sources: list[Callable[[Listener], Callable[[], None]]],
        terminal: Callable[[Any], bool],
        recheck: float,
        ended_since: Callable[[int | None], tuple[list[str], int] | None] = lambda _: None,
        soon: Callable[[str], bool] = lambda _: False,
        keep: Callable[..., None] = lambda *_, **__: None,
        held: Callable[[], list[str]] = list,
    ) -> None:
        self._soon = soon
        self._held = held
        self._keep = keep
        self._fetch = fetch
        self._ended_since = ended_since
        self._fetch_ended = fetch_ended
        self._missing = missing
        self._sources = sources
        self._terminal = terminal
        self._recheck = recheck
        self._lock = threading.Lock()
        self._futures: dict[str, list[Waiting]] = {}
        self._local: set[str] = set()  # runs whose worker here hands the row over
        self._new: set[str] = set()  # not read yet since they were watched
        self._named: set[str] = set()  # a notification said these ended
        self._ahead: set[str] = set()  # ended, unwatched, but ``soon`` wants them
        self._all = False  # a change may concern any watched run
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, run_id: str, *, check: bool = True) -> Future[Any]:
        """A future of the run's final row (it fails with the ``missing``
        error if there is no such run); ``check=False`` when a worker in this
        process drives it and will hand the row over (no read needed)."""
        future: Future[Any] = Future()
        self._add(run_id, future, check)
        return future

    def watch_on(
        self, loop: asyncio.AbstractEventLoop, run_id: str, *, check: bool = True
    ) -> asyncio.Future[Any]:
        """:meth:`watch` as a future of ``loop``: a worker on that loop settles
        it directly, without a hop through the loop's self-pipe."""
        future = loop.create_future()
        self._add(run_id, future, check)
        return future

    def _add(self, run_id: str, future: Waiting, check: bool) -> None:
        with self._lock:
            self._futures.setdefault(run_id, []).append(future)
            if check:
                self._new.add(run_id)
            else:
                self._local.add(run_id)
            closed = self._closed
            if self._thread is None and not closed:
                self._thread = threading.Thread(
                    target=self._run, name="durably-results", daemon=True
                )
                self._thread.start()
        if closed:  # it raced the app's close(): nobody would ever answer it
            self._settle(run_id, None, functools.partial(_closed_error, run_id))
            return
        if check:
            self._event.set()

    def forget(self, run_id: str, future: Waiting) -> None:
        with self._lock:
            waiting = self._futures.get(run_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._futures.pop(run_id, None)
                self._local.discard(run_id)

    def resolve(self, record: Any) -> None:
        """The final row of a run: to its waiters, and kept for a handle held
        here (awaited again, or awaited by its other waiters later, it reads
        nothing; and the announcement of this end, which comes after, is not
        read ahead for it)."""
        answered = self._settle(record.id, record, None)
        if not self._closed:
            try:
                self._keep(record, answered=answered)
            except Exception:  # noqa: BLE001 - see _soon_among
                pass

    def left(self, run_id: str, *, maybe_ended: bool = True) -> None:
        """A worker here let the run go without ending it (it suspended,
        lost its claim, or handed it back): nobody here will hand its end
        over. Its waiters read it as other runs' do (another worker may end
        it, or has already). If it ``maybe_ended`` (not a committed
        suspension), a handle held here reads ahead, in case its end was
        announced while that worker still held it."""
        with self._lock:
            waited = run_id in self._local
            if waited:
                self._local.discard(run_id)
                self._new.add(run_id)
        if not waited and maybe_ended:
            waited = self._ahead_if_soon(run_id)
        if waited:
            self._event.set()

    def _settle(self, run_id: str, record: Any, error: Callable[[], BaseException] | None) -> bool:
        """Answer the run's waiters; False if there were none."""
        with self._lock:
            waiting = self._futures.pop(run_id, [])
            self._local.discard(run_id)
        for future in waiting:  # an exception each: tracebacks must not pile up
            if isinstance(future, asyncio.Future):
                _settle_soon(future, record, error() if error else None)
            elif not future.done():
                if error is not None:
                    future.set_exception(error())
                else:
                    future.set_result(record)
        return bool(waiting)

    def _fail_all(self, error: Callable[[str], BaseException]) -> None:
        """Every waiter gets ``error(run_id)`` raised (each its own)."""
        with self._lock:
            waiting = list(self._futures)
        for run_id in waiting:
            self._settle(run_id, None, functools.partial(error, run_id))

    def close(self) -> None:
        """Stop; whoever still waits is told (else a wait without a timeout
        would never end)."""
        with self._lock:
            self._closed = True
        self._event.set()
        self._fail_all(_closed_error)

    def _on_change(self, channel: str, payload: str) -> None:
        if channel == "":
            with self._lock:
                self._all = True
            self._event.set()
        elif channel == "durably_done":
            with self._lock:  # a worker here hands its own runs over: no read
                if payload in self._futures:
                    wanted = payload not in self._local
                    if wanted:
                        self._named.add(payload)
                else:
                    wanted = False
            if not wanted:
                wanted = self._ahead_if_soon(payload)
            if wanted:
                self._event.set()

    def _subscribe(self) -> list[Callable[[], None]] | None:
        """Listen to every source; while the database cannot be opened (an
        outage at a process's first wait), keep trying. None once closed."""
        while True:
            unsubscribe: list[Callable[[], None]] = []
            try:
                for subscribe in self._sources:
                    unsubscribe.append(subscribe(self._on_change))
                return unsubscribe
            except DatabaseUnavailable:  # an outage: wait it out
                for stop in unsubscribe:
                    stop()
            except Exception as exc:  # noqa: BLE001 - it would fail every time
                # (a file that is not durably's, a bad URL): every waiter hears
                # why, and the next wait tries again.
                for stop in unsubscribe:
                    stop()
                with self._lock:
                    self._thread = None

                def copy(_: str, failure: Exception = exc) -> BaseException:
                    return _copy_error(failure)

                self._fail_all(copy)
                return None
            with self._lock:
                if self._closed:
                    return None
            self._event.wait(min(self._recheck, 1.0))

    def _run(self) -> None:
        unsubscribe = self._subscribe()
        if unsubscribe is None:
            return
        last_full = time.monotonic()
        position: int | None = None  # how far the ended log was read (SQLite)
        following = False  # every end since reaches this watcher (by name or the log)
        changed = False  # a change came while nobody waited
        try:
            while True:
                self._event.wait(self._recheck)
                self._event.clear()
                # A full re-read at least every recheck, even while named
                # notifications keep coming: a run whose end went unnoticed
                # (its local worker dropped it, a notification was lost) is
                # found then.
                due = time.monotonic() - last_full >= self._recheck
                with self._lock:
                    if self._closed:
                        return
                    watched = set(self._futures)
                    local = self._local & watched
                    new, self._new = self._new & watched, set()
                    named, self._named = self._named & watched, set()
                    ahead, self._ahead = self._ahead - watched, set()
                    everything, self._all = self._all or due, False
                if not watched:
                    # The log is read when someone waits again, from where it
                    # was left: the ends meanwhile are in it.
                    changed = changed or everything
                    if ahead:
                        self._read_ahead(ahead)
                    continue
                everything, changed = everything or changed, False
                if not following:
                    following = True
                    ahead |= self._held_now() - watched
                if position is None:
                    # Taken before the first reads: whatever ends after them is
                    # in the log. Runs watched before may have ended unlogged-for:
                    # this pass re-reads them all.
                    position = self._log_position()
                    everything = everything or (position is not None and watched != new)
                elif everything and not due:
                    # A change that could concern any run: the log says which
                    # ended. Read before the first reads, which see later ends.
                    ended, position = self._read_log(position)
                    if ended is not None:
                        named |= ended & (watched - local)  # local ones are handed over
                        ahead |= self._soon_among(ended - watched)
                        everything = False
                    else:
                        following = False  # ends were missed: look at the held handles again
                try:
                    self._first_read(new)
                except TRANSIENT:  # an outage, a lock conflict: try again later
                    with self._lock:
                        self._new |= new
                except Exception as exc:  # noqa: BLE001 - it would fail every time
                    for run_id in new:
                        self._settle(run_id, None, functools.partial(_copy_error, exc))
                others = (watched - new) if everything else (named - new)
                others |= ahead  # their failure to read is nobody's loss
                try:
                    for record in self._fetch_ended(sorted(others)) if others else []:
                        self.resolve(record)
                except Exception:  # noqa: BLE001 - unreachable for now: try again later
                    with self._lock:
                        self._named |= named
                        self._all = self._all or everything
                else:
                    if everything:
                        last_full = time.monotonic()
        finally:
            for stop in unsubscribe:
                stop()

    def _read_ahead(self, ahead: set[str]) -> None:
        """Read ended runs nobody waits for yet; a failure only means their
        waiters, if any come, read them themselves."""
        try:
            records = self._fetch_ended(sorted(ahead))
        except Exception:  # noqa: BLE001 - nothing depends on it
            return
        for record in records:
            self.resolve(record)

    def _ahead_if_soon(self, run_id: str) -> bool:
        """Read the run ahead (with the next batch) if a handle held here wants it."""
        if not self._soon_among({run_id}):
            return False
        with self._lock:
            self._ahead.add(run_id)
        return True

    # Reading ahead is only an optimisation: whatever fails in the app's
    # callbacks must never stop the thread that answers the waiters.
    def _soon_among(self, run_ids: set[str]) -> set[str]:
        try:
            return {run_id for run_id in run_ids if self._soon(run_id)}
        except Exception:  # noqa: BLE001
            return set()

    def _held_now(self) -> set[str]:
        try:
            return set(self._held())
        except Exception:  # noqa: BLE001
            return set()

    def _log_position(self) -> int | None:
        """Where the storage's log of ended runs ends now; None without one."""
        try:
            found = self._ended_since(None)
        except Exception:  # noqa: BLE001 - then every change re-reads every run
            return None
        return None if found is None else found[1]

    def _read_log(self, position: int) -> tuple[set[str] | None, int | None]:
        """The runs that ended after ``position`` and the position to read
        from next. None for the runs if the log cannot say (unreadable now:
        read from the same position next time; or it dropped ends this
        reader had not read: read from where it ends now): every watched run
        is re-read instead, after that position was taken."""
        try:
            found = self._ended_since(position)
        except Exception:  # noqa: BLE001 - the full re-read finds them
            return None, position
        if found is None:
            return None, self._log_position()
        return set(found[0]), found[1]

    def _first_read(self, new: set[str]) -> None:
        """Whether newly watched runs exist, and which have ended already."""
        if not new:
            return
        records = self._fetch(sorted(new))
        for record in records:
            if self._terminal(record):
                self.resolve(record)
        for run_id in new - {record.id for record in records}:
            self._settle(run_id, None, functools.partial(self._missing, run_id))


def _copy_error(exc: Exception) -> BaseException:
    """A fresh exception like ``exc`` (each waiter raises its own)."""
    copy = type(exc).__new__(type(exc))
    copy.__dict__.update(exc.__dict__)
    copy.args = exc.args
    return copy


def _closed_error(run_id: str) -> DatabaseError:
    return DatabaseError(
        f"the app was closed while waiting for run {run_id!r}; ask for its result "
        "again (the app reopens its database)"
    )

"""Group commit: many runs' journal writes in one transaction.

Drivers hand their writes to the committer. While a transaction is in
flight, new writes queue up; the next transaction takes all of them. Under
load that amortises one fsync (SQLite) or one round trip plus WAL flush
(PostgreSQL) over every run that wrote in the meantime, without ever holding
a write back on purpose. A run only waits for its own write, so the
write-ahead rule holds per run: its next step starts after its entries are
durable.

A worker driving a single run has nothing to group: there the hand-off to
the thread and back (two thread wake-ups, about a fifth of a short run's
time) is all the thread adds. So when the worker says it is alone and no
write is in flight, the write skips the thread where the backend allows:
SQLite (a local file) commits it on the event loop itself unless another
connection holds the lock; PostgreSQL sends it on an async connection, so the
loop never blocks on the network. Anything declined goes to the thread.

A busy worker's group commits skip the thread too. Writes queue on the
loop, and a callback scheduled for the next pass of the loop takes all of
them as one batch (the *loop's batches*). A batch on the thread waited for
the GIL at each of its hand-offs while the loop ran steps (5 ms each,
Python's switch interval): commits took several times as long as the
database needed, and every run in the batch waited that long.

- PostgreSQL sends each batch as one statement on the async connection;
  writes queue while a batch is in flight, and the next takes all of them.
- SQLite commits each batch on the loop itself: the loop pauses for the
  commit (a few milliseconds for a hundred writes on a local SSD, fsync
  included), as it would have waited for the GIL anyway.

What the loop cannot take (another process holds SQLite's lock, the
connection is not ready, a write of another shape, nothing sent before an
outage, one bad write in a batch) goes to the thread, which rides outages
out and tries a failing batch a write at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import DatabaseUnavailable, WriteConflict
from .._faults import fault
from .._storage.base import CONFLICT_PAUSE, CONFLICT_TRIES, RunWrite, Storage
from .outage import Outage

log = logging.getLogger("durably.worker")

# How long writes wait for an unreachable database before their runs are dropped.
OUTAGE_PATIENCE = 300.0


class CommitFailed(Exception):
    """A run's write failed, or its fate is unknown (the connection was lost
    after it was sent): either way its driver stops and the run is replayed,
    which reads whatever did get written. ``outage`` tells the two apart: a
    write that fails on its own error will fail again after the replay."""

    def __init__(self, message: str, *, outage: bool = False) -> None:
        super().__init__(message)
        self.outage = outage


class Committer:
    def __init__(
        self,
        storage: Storage,
        worker_id: str,
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        outage: Outage | None = None,
        alone: Callable[[str], bool] = lambda run_id: False,
    ) -> None:
        self._storage = storage
        self._outage = outage or Outage()
        self._alone = alone
        self._writer = storage.loop_writer()
        self._in_flight = 0  # writes sent, not yet answered (loop thread only)
        # Writes waiting for the loop's connection, and whether a statement
        # is in flight on it (a batch's, or a lone run's).
        self._loop_queue: deque[tuple[RunWrite, asyncio.Future[bool]]] = deque()
        self._loop_busy = False
        self._flush_soon: asyncio.Handle | None = None
        self._worker_id = worker_id
        self._clock = clock
        self._loop = loop
        self._queue: deque[tuple[RunWrite, asyncio.Future[bool]]] = deque()
        self._event = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="durably-commit", daemon=True)
        self.batches = 0
        self.writes = 0
        self._thread.start()

    def submit(self, write: RunWrite) -> Awaitable[bool]:
        """Queue ``write``; awaiting the result says True (durable) or False
        (lease lost). The caller awaits it at once: a lone run's write is sent
        by that await itself, in the caller's task, with no hand-off at all."""
        if self._stopped:  # nothing is written after the worker stopped
            return self._refused()
        lone = not self._in_flight and self._alone(write.run_id)
        if lone and self._storage.commits_on_loop:
            committed = self._commit_lone_here(write)
            if committed is not None:
                return committed
        elif lone:
            prepared = self._writer and self._writer.prepare(
                self._worker_id, [write], self._clock()
            )
            if prepared is not None:
                self._in_flight += 1
                return self._send_from_loop(write, prepared)
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._in_flight += 1
        if lone:  # declined (another connection holds SQLite's lock, say): the thread waits
            self._to_thread(write, fut)
        elif self._storage.commits_on_loop or (
            self._writer is not None and self._writer.batchable(write)
        ):
            self._loop_queue.append((write, fut))
            # Soon, not now: the writes of the runs resumed in this pass of
            # the loop join the same batch.
            if not self._loop_busy and self._flush_soon is None:
                self._flush_soon = self._loop.call_soon(self._flush_loop)
        else:
            self._to_thread(write, fut)
        return fut

    def _flush_loop(self) -> None:
        """Commit the queued writes as one batch from the loop (or, if that
        cannot take them now, hand them to the thread)."""
        self._flush_soon = None
        if self._loop_busy or not self._loop_queue:
            return
        if self._stopped:  # queued as the worker stopped: refused, as on the thread
            queued = list(self._loop_queue)
            self._loop_queue.clear()
            self._to_thread_all(queued)
            return
        batch = _take_batch(self._loop_queue)
        writes = [w for w, _ in batch]
        if self._storage.commits_on_loop:
            result = self._commit_here(writes)
            self._loop_free()
            self._answer_batch(batch, result)
            return
        assert self._writer is not None
        try:
            prepared = self._writer.prepare(self._worker_id, writes, self._clock())
        except Exception:  # a write it cannot encode: the thread reports it
            log.debug("batch of %d writes not prepared on the loop", len(batch), exc_info=True)
            prepared = None
        if prepared is None:
            self._to_thread_all(batch)
            return
        self._loop_busy = True
        self._loop.create_task(self._send_batch(batch, prepared))

    def _answer_batch(
        self,
        batch: list[tuple[RunWrite, asyncio.Future[bool]]],
        result: set[str] | CommitFailed | None,
    ) -> None:
        if result is None:  # nothing written: the thread takes them
            self._to_thread_all(batch)
            return
        self._in_flight -= len(batch)
        self._count_here(result, len(batch))
        _resolve(batch, result)

    async def _send_batch(
        self, batch: list[tuple[RunWrite, asyncio.Future[bool]]], prepared: Any
    ) -> None:
        try:
            result = await self._send_on_loop(prepared, [w for w, _ in batch], spin=False)
        except BaseException as exc:  # cancelled (the loop is closing): nobody waits
            self._in_flight -= len(batch)
            _resolve(batch, CommitFailed(f"commit interrupted: {exc!r}", outage=True))
            raise
        self._answer_batch(batch, result)

    async def _send_on_loop(
        self, prepared: Any, writes: list[RunWrite], *, spin: bool
    ) -> set[str] | CommitFailed | None:
        """Send ``prepared`` on the loop's connection, which is then free again;
        what to answer its writes (see :meth:`_failed_here`)."""
        assert self._writer is not None
        try:
            fault("commit.before")
            return await self._writer.send(prepared, spin=spin)
        except Exception as exc:  # noqa: BLE001 - mapped as the thread maps it
            return self._failed_here(exc, writes)
        finally:
            self._loop_free()

    def _commit_here(self, writes: list[RunWrite]) -> set[str] | CommitFailed | None:
        """Commit ``writes`` on the loop if that needs no waiting (a local
        file); what to answer them (see :meth:`_failed_here`)."""
        try:
            fault("commit.before")
            lost = self._storage.commit_nowait(self._worker_id, writes, self._clock())
        except Exception as exc:  # noqa: BLE001 - mapped as the thread maps it
            return self._failed_here(exc, writes)
        return lost  # (None: it would have to wait for another connection's lock)

    def _failed_here(self, exc: Exception, writes: list[RunWrite]) -> CommitFailed | None:
        """What writes made from the loop answer when that raised ``exc``; None
        if nothing was written and the thread is to take them (with its
        patience, and a write at a time if one of a batch fails on its own
        error)."""
        if isinstance(exc, WriteConflict):  # rolled back, nothing written
            return None
        if isinstance(exc, DatabaseUnavailable):
            if not exc.reached:  # nothing was sent
                return None
            # Whether it committed is unknown: the runs are dropped and replayed.
            self._outage.failed(f"commit of {_count(writes)}", exc)
            return CommitFailed(str(exc), outage=True)
        if len(writes) > 1:  # one bad write must not sink the others
            return None
        log.warning("commit of run %s failed: %s", writes[0].run_id, exc)
        return CommitFailed(str(exc))

    def _loop_free(self) -> None:
        """Nothing in flight on the loop's connection: what queued meanwhile goes next."""
        self._loop_busy = False
        if self._loop_queue and self._flush_soon is None:
            self._flush_soon = self._loop.call_soon(self._flush_loop)

    def _to_thread_all(self, batch: list[tuple[RunWrite, asyncio.Future[bool]]]) -> None:
        # (A batch that fails there on a write's own error is tried a write at a time.)
        for write, fut in batch:
            self._to_thread(write, fut)

    def _to_thread(self, write: RunWrite, fut: asyncio.Future[bool]) -> None:
        if self._stopped:  # the thread takes nothing more: the write is not made
            self._in_flight -= 1
            if not fut.done():  # (cancelled by its caller meanwhile)
                fut.set_exception(_stopping())
            return
        self._queue.append((write, fut))
        # Set only if not set already (setting takes a lock and wakes): the
        # thread clears the event before it drains the queue, so a write
        # appended before this check is drained even when it skips the set.
        if not self._event.is_set():
            self._event.set()

    def _refused(self) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = self._loop.create_future()
        fut.set_exception(_stopping())
        return fut

    def _commit_lone_here(self, write: RunWrite) -> asyncio.Future[bool] | None:
        """A lone run's write committed on the loop, answered in the future
        returned; None if nothing was written (the thread takes it)."""
        result = self._commit_here([write])
        if result is None:
            return None
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._count_here(result)
        _resolve([(write, fut)], result)
        return fut

    async def _send_from_loop(self, write: RunWrite, prepared: Any) -> bool:
        self._loop_busy = True
        try:
            result = await self._send_on_loop(prepared, [write], spin=True)
        except BaseException:  # the caller was cancelled mid-send: it hears nothing more
            self._in_flight -= 1
            raise
        if result is None:
            return await self._on_thread(write)
        self._in_flight -= 1
        self._count_here(result)
        if isinstance(result, BaseException):
            raise result
        return write.run_id not in result

    async def _on_thread(self, write: RunWrite) -> bool:
        """A write the loop did not make durable, committed by the thread instead."""
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._to_thread(write, fut)
        return await fut

    def _count_here(self, result: set[str] | BaseException, writes: int = 1) -> None:
        if not isinstance(result, BaseException):
            fault("commit.after")
            self._outage.recovered()
        self.batches += 1
        self.writes += writes

    async def close_writer(self) -> None:
        """Close the event loop's own connection, if the backend opened one."""
        if self._writer is not None:
            await self._writer.close()

    def stop(self) -> None:
        self._stopped = True
        self._event.set()
        self._thread.join(timeout=10)
        try:  # what reached the queue as the thread stopped: answered, not left waiting
            self._loop.call_soon_threadsafe(self._refuse_queued)
        except RuntimeError:  # loop closed: nobody waits
            pass

    def _refuse_queued(self) -> None:
        while self._queue:
            _, fut = self._queue.popleft()
            self._in_flight -= 1
            if not fut.done():
                fut.set_exception(_stopping())

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._event.wait()
            self._event.clear()
            if not queue:
                if self._stopped:
                    return
                continue
            batch = _take_batch(queue)
            if queue:
                self._event.set()
            self._commit(batch)

    def _commit(self, batch: list[tuple[RunWrite, asyncio.Future[bool]]]) -> None:
        result: set[str] | BaseException
        try:
            result = self._commit_riding_out_outages(batch)
        except DatabaseUnavailable as exc:
            self._outage.failed(f"commit of {len(batch)} writes", exc)
            result = CommitFailed(str(exc), outage=True)
        except WriteConflict as exc:
            # Conflicting again and again (a lock held for long, a hot row):
            # nothing was written, and it is not these writes' own fault; their
            # runs are replayed as after an outage, with no strike against them.
            log.warning("commit of %d writes kept conflicting: %s", len(batch), exc)
            result = CommitFailed(str(exc), outage=True)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting drivers
            if len(batch) > 1:
                # One bad write must not sink the others: try each on its own
                # (a database that is down fails them all quickly anyway).
                for single in batch:
                    self._commit([single])
                return
            log.warning("commit of run %s failed: %s", batch[0][0].run_id, exc)
            result = CommitFailed(str(exc))
        self.batches += 1
        self.writes += len(batch)
        try:
            self._loop.call_soon_threadsafe(self._answer, batch, result)
        except RuntimeError:  # loop closed: the worker is gone
            pass

    def _answer(self, batch: list[tuple[RunWrite, asyncio.Future[bool]]], result: Any) -> None:
        self._in_flight -= len(batch)
        _resolve(batch, result)

    def _commit_riding_out_outages(
        self, batch: list[tuple[RunWrite, asyncio.Future[bool]]]
    ) -> set[str]:
        """Commit; while the database cannot even be reached, wait for it.

        Only a failure that certainly sent nothing is retried: a connection
        lost mid-transaction leaves it unknown whether the commit happened,
        and those runs are dropped and replayed instead.
        """
        delay = 0.05
        give_up = time.monotonic() + OUTAGE_PATIENCE
        conflicts = 0
        while True:
            try:
                fault("commit.before")
                result = self._storage.commit(
                    self._worker_id, [write for write, _ in batch], self._clock()
                )
                fault("commit.after")
            except WriteConflict:
                # Rolled back on another transaction's locks (a deadlock, say):
                # nothing was written; the same commit again very likely goes.
                conflicts += 1
                if conflicts >= CONFLICT_TRIES or self._stopped:
                    raise
                time.sleep(CONFLICT_PAUSE * conflicts)
                continue
            except DatabaseUnavailable as exc:
                if exc.reached or self._stopped or time.monotonic() > give_up:
                    raise
                self._outage.failed("commit", exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._outage.recovered()
            return result


class InlineCommitter:
    """Group commit on the event loop itself, for single-threaded simulation.

    Writes submitted during one pass of the loop are committed together in
    the next. A crashed simulation worker sets ``dead``: nothing it submitted
    after that is written or answered.
    """

    def __init__(
        self,
        storage: Storage,
        worker_id: str,
        clock: Callable[[], float],
        loop: asyncio.AbstractEventLoop,
        outage: Outage | None = None,
    ) -> None:
        self._storage = storage
        self._worker_id = worker_id
        self._clock = clock
        self._loop = loop
        self._queue: list[tuple[RunWrite, asyncio.Future[bool]]] = []
        self._scheduled = False
        self.dead = False
        self.hold_until = 0.0  # a simulated pause: nothing is written before then
        self.batches = 0
        self.writes = 0

    def submit(self, write: RunWrite) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = self._loop.create_future()
        self._queue.append((write, fut))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        if self._loop.time() < self.hold_until:
            self._loop.call_at(self.hold_until, self._flush)
            return
        self._scheduled = False
        batch, self._queue = self._queue, []
        if self.dead or not batch:
            return
        result: set[str] | BaseException
        try:
            result = self._storage.commit(self._worker_id, [w for w, _ in batch], self._clock())
        except DatabaseUnavailable as exc:
            result = CommitFailed(str(exc), outage=True)
        except Exception as exc:  # noqa: BLE001 - handed to the waiting drivers
            result = CommitFailed(str(exc))
        if self.dead:  # the worker "crashed" during this commit
            return
        self.batches += 1
        self.writes += len(batch)
        _resolve(batch, result)

    def stop(self) -> None:
        self.dead = True


def _take_batch(
    queue: deque[tuple[RunWrite, asyncio.Future[bool]]],
) -> list[tuple[RunWrite, asyncio.Future[bool]]]:
    """The queue's first writes, up to a second write of one run (left for the
    next batch). A batch answers by run id: a superseded driver's last write,
    fenced out, would be told it was kept if a new driver's write of the run
    were kept."""
    batch = []
    ids = set()
    while queue and queue[0][0].run_id not in ids:
        ids.add(queue[0][0].run_id)
        batch.append(queue.popleft())
    return batch


def _stopping() -> CommitFailed:
    return CommitFailed("the worker is stopping", outage=True)


def _count(writes: list[RunWrite]) -> str:
    return "1 write" if len(writes) == 1 else f"{len(writes)} writes"


def _resolve(batch: list[tuple[RunWrite, asyncio.Future[bool]]], result: Any) -> None:
    for write, fut in batch:
        if fut.done():
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(write.run_id not in result)

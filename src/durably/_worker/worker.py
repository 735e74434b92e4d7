"""The worker: claims runnable runs, renews their leases, drives them.

One worker lives on one asyncio loop. It claims runs in batches up to its
concurrency, renews the leases of everything it holds with one statement per
renewal period, and sleeps until something could be claimable: a
notification (PostgreSQL NOTIFY, a SQLite commit seen through
``data_version``, or a start in this process), the next due timer or lapsing
lease, or the polling fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .._faults import fault
from .._storage.base import (
    CHANNEL_CANCEL,
    CHANNEL_DONE,
    CHANNEL_EVENT,
    CHANNEL_SIGNAL,
    CHANNEL_WORK,
    NewRun,
    RunRecord,
    RunWrite,
    Signal,
    Storage,
)
from .committer import CommitFailed, Committer, InlineCommitter
from .driver import UNWRITABLE_AFTER, RunDriver, WorkflowSpec
from .outage import Outage

log = logging.getLogger("durably.worker")
T = TypeVar("T")

CLAIM_BATCH = 256
_ALL = ("signals", "children", "cancel")
_WATCH = {
    "": _ALL,  # a backend that cannot say what changed
    CHANNEL_SIGNAL: ("signals",),
    CHANNEL_DONE: ("children",),
    CHANNEL_CANCEL: ("cancel",),
}
MIN_CLAIM_GAP = 0.005  # seconds between claims triggered by notifications


def _fresh_record(run: NewRun, owner: str, now: float, lease_until: float) -> RunRecord:
    """The row of ``run`` as its creation, claimed by ``owner``, writes it."""
    return RunRecord(
        id=run.id,
        workflow=run.workflow,
        version=run.version,
        status="running",
        args=run.args,
        result=None,
        error=None,
        owner=owner,
        epoch=1,
        lease_until=lease_until,
        wake_at=None,
        created_at=run.created_at,
        updated_at=now,
        started_at=now,
        finished_at=None,
        parent_id=run.parent_id,
        deadline=run.deadline,
        priority=run.priority,
    )


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        *,
        storage: Storage,
        workflows: Mapping[str, WorkflowSpec],
        concurrency: int = 100,
        lease_seconds: float = 30.0,
        suspend_after: float = 1.0,
        poll_interval: float = 5.0,
        payload_limit: int,
        clock: Callable[[], float] = time.time,
        publish: Callable[[str, str], None] | None = None,
        subscribe_local: Callable[[Callable[[str, str], None]], Callable[[], None]] | None = None,
        inline: bool = False,
        on_ended: Callable[[RunRecord], None] | None = None,
        on_left: Callable[[str, bool], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.id = new_worker_id()
        self.storage = storage
        self.workflows = dict(workflows)
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.suspend_after = suspend_after
        self.poll_interval = poll_interval
        self.payload_limit = payload_limit
        self.clock = clock
        self._publish = publish
        self._on_ended = on_ended
        self._on_left = on_left
        self._reserved = 0  # slots promised to runs being started in this process
        self._creating = 0  # local starts whose creation is in flight
        self._created_all = asyncio.Event()  # set whenever none is
        # Runs claimed again while their old driver finishes: each holds a slot
        # until its new driver starts, and is handed back if the worker stops.
        self._respawning: set[str] = set()
        self._starved = False  # the last claim took as many runs as there was room
        self._last_claim = -math.inf  # event-loop time the last claim was sent
        self._waiting_until: float | None = None  # clock() the claim loop looks again
        self.inline = inline  # simulation: storage calls and commits on the loop thread
        self._watching: set[str] = set()
        self._subscribe_local = subscribe_local
        self.drivers: dict[str, RunDriver] = {}
        # Consecutive writes of a run that failed on their own error (not an outage).
        self.write_failures: dict[str, int] = {}
        self.waiting_parents: set[str] = set()  # runs here that wait on a child
        self.outage = Outage()
        self._claiming: asyncio.Future[list[RunRecord]] | None = None
        self._claim_began = 0.0  # clock() when it was sent: its leases run from then
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._started = False
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self.claimed_total = 0

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            raise RuntimeError("worker already started")
        self._started = True
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self.io_threads = ThreadPoolExecutor(4, thread_name_prefix="durably-io")
        self.step_threads = ThreadPoolExecutor(
            max(8, min(self.concurrency, 64)), thread_name_prefix="durably-step"
        )
        self.workflow_threads = ThreadPoolExecutor(
            self.concurrency, thread_name_prefix="durably-workflow"
        )
        await self.io(self.storage.migrate)
        self.committer: Committer | InlineCommitter
        if self.inline:
            self.committer = InlineCommitter(
                self.storage, self.id, self.clock, self.loop, self.outage
            )
        else:
            self.committer = Committer(
                self.storage, self.id, self.clock, self.loop, self.outage, alone=self._alone
            )
        self._unsubscribe.append(self.storage.subscribe(self._notified))
        if self._subscribe_local is not None:
            self._unsubscribe.append(self._subscribe_local(self._notified))
        self._watch = asyncio.Event()
        self._holding = asyncio.Event()  # set while this worker drives runs
        self._tasks = [
            self.loop.create_task(self._claim_loop(), name="durably-claim"),
            self.loop.create_task(self._renew_loop(), name="durably-renew"),
            self.loop.create_task(self._watch_loop(), name="durably-watch"),
        ]
        log.info(
            "worker %s started: workflows %s, concurrency %d, database %s",
            self.id,
            sorted(self.workflows),
            self.concurrency,
            self.storage.backend,
        )

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Stop claiming, let executing steps finish (up to ``drain_timeout``
        seconds) and hand every run back so other workers take it at once.

        A caller that stops waiting (cancelled, a timeout) leaves the stop
        going on; a later call waits for that same stop.
        """
        if self._stop_task is None:
            self._stop_task = self.loop.create_task(self._stop(drain_timeout))
        await asyncio.shield(self._stop_task)

    async def _stop(self, drain_timeout: float) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        # A local start's run is held here once created: drain it too. Not
        # for longer than the drain (in an outage a creation can wait for
        # the database until the committer is stopped, below).
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._creations_answered(), drain_timeout)
        if self._claiming is not None:  # a claim committed while we stopped: drive it
            try:
                for record in await self._claiming:
                    self._spawn(record, self._claim_began)
            except Exception:  # noqa: BLE001 - nothing was claimed then
                pass
        held = set(self.drivers) | self._respawning
        for driver in list(self.drivers.values()):
            driver.drain()
        pending = {d.task: d for d in self.drivers.values() if d.task is not None}
        if pending:
            _, still = await asyncio.wait(list(pending), timeout=drain_timeout)
            for task in still:
                # A step is still executing. Async steps are cancelled with the
                # driver; a step on a thread cannot be, so that run's lease is
                # left to lapse rather than handing it to another worker while
                # the thread may still be doing its work here.
                if pending[task].steps_on_threads():
                    held.discard(pending[task].run_id)
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=2.0)
        if held:
            try:
                await self.io(self.storage.release, self.id, sorted(held), self.clock())
            except Exception as exc:  # noqa: BLE001 - their leases lapse instead
                self.outage.failed(f"handing back {len(held)} runs", exc)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if isinstance(self.committer, InlineCommitter):
            self.committer.stop()
        else:
            await self.committer.close_writer()
            await self.loop.run_in_executor(None, self.committer.stop)
        self.io_threads.shutdown(wait=False)
        self.step_threads.shutdown(wait=False)
        self.workflow_threads.shutdown(wait=False)
        log.info("worker %s stopped", self.id)

    async def _creations_answered(self) -> None:
        while self._creating:
            self._created_all.clear()
            await self._created_all.wait()

    # -- helpers for drivers ---------------------------------------------------
    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return fn(*args)
        return await self.loop.run_in_executor(self.io_threads, fn, *args)

    def write_failed(self, run_id: str) -> bool:
        """Count a write of ``run_id`` that failed on its own error; True once
        that has happened often enough in a row that replaying it again is
        pointless (its driver then fails the run)."""
        count = self.write_failures.get(run_id, 0) + 1
        self.write_failures[run_id] = count
        if count < UNWRITABLE_AFTER:
            return False
        del self.write_failures[run_id]
        return True

    def driver_done(self, driver: RunDriver, *, release: bool = False) -> None:
        """A driver ended; ``release`` hands its run back (it failed unexpectedly)."""
        if self.drivers.get(driver.run_id) is driver:
            del self.drivers[driver.run_id]
        if not driver.ended_here and self._on_left is not None:
            # Its end will not be handed over from here. Unless the driver
            # committed a suspension (or hand-back), the run may have ended
            # meanwhile: its claim was lost, or a write's fate is unknown.
            self._on_left(driver.run_id, not driver.finished)
        if not release and self.write_failures:
            self.write_failures.pop(driver.run_id, None)  # ended or handed on: a fresh count
        if release and not self._stopping:
            self.loop.create_task(self._release_quietly(driver.run_id, driver.epoch))
        if self._starved and not self._stopping:
            self._wake.set()  # the last claim filled every slot: there may be more

    async def _release_quietly(self, run_id: str, epoch: int) -> None:
        # If this fails too, the lease lapses: the run is no longer renewed.
        # Only under the driver's own claim: a claim this worker made since
        # (a new driver's) must not be handed back with it.
        try:
            await self.io(
                functools.partial(self.storage.release, epoch=epoch),
                self.id,
                [run_id],
                self.clock(),
            )
        except Exception as exc:  # noqa: BLE001
            self.outage.failed(f"handing back run {run_id}", exc)

    def run_ended(self, run_id: str, final: RunRecord | None = None) -> None:
        if final is not None and self._on_ended is not None:
            self._on_ended(final)
        # Told once the waiters handed the row above had their turn.
        self.loop.call_soon(self._announce_end, run_id)

    def _announce_end(self, run_id: str) -> None:
        if self._publish is not None:
            self._publish(CHANNEL_DONE, run_id)
        if self.waiting_parents:  # its parent may be in this worker's memory
            self.watch("children")

    def published_events(self, run_id: str) -> None:
        if self._publish is not None:
            self._publish(CHANNEL_EVENT, run_id)

    def request_cancel(self, run_id: str, reason: str) -> None:
        """Cancel a run and its descendants (e.g. its deadline passed)."""

        async def cancel() -> None:
            try:
                await self.io(self.storage.request_cancel, run_id, self.clock(), reason)
            except Exception as exc:  # noqa: BLE001 - its own driver cancels it anyway
                log.warning("could not cancel the children of run %s: %s", run_id, exc)
            if self._publish is not None:
                self._publish(CHANNEL_CANCEL, run_id)

        self.loop.create_task(cancel())

    def wake(self) -> None:
        """Look for work now (thread-safe)."""
        self._on_loop(self._wake.set)

    def due(self, at: float) -> None:
        """A run here was just put to sleep until ``at`` (loop thread): look
        for work by then. Nothing else would say so on PostgreSQL, and the
        claim loop may be waiting out a whole poll."""
        if self._waiting_until is None or at < self._waiting_until:
            self._wake.set()

    def _on_loop(self, callback: Callable[[], None]) -> None:
        # From the loop's own thread (the in-process hub) a plain call_soon
        # spares the self-pipe write that call_soon_threadsafe costs.
        if threading.get_ident() == self._loop_thread:
            self.loop.call_soon(callback)
            return
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop closed: the worker is gone
            pass

    def watch(self, what: str) -> None:
        """Re-read signals / children / cancellations for runs in memory (loop thread)."""
        self._watching.add(what)
        self._watch.set()

    def _notified(self, channel: str, payload: str) -> None:
        if channel in ("", CHANNEL_WORK):
            self.wake()
        what = _WATCH.get(channel)
        if what == ("children",) and not self._parents_waiting():
            return  # a run ended, but no run here waits on a child
        if what:
            self._on_loop(functools.partial(self._watch_many, what))

    def _parents_waiting(self) -> bool:
        return bool(self.waiting_parents)

    def _watch_many(self, what: tuple[str, ...]) -> None:
        for item in what:
            self.watch(item)

    # -- loops -----------------------------------------------------------------
    async def _claim_loop(self) -> None:
        names = sorted(self.workflows)
        versions = [f"{name}@{self.workflows[name].version}" for name in names]
        backoff = 0.1
        while not self._stopping:
            try:
                self._wake.clear()
                room = self.concurrency - self._occupied()
                want = min(room, CLAIM_BATCH)
                claimed: list[RunRecord] = []
                if want > 0:
                    self._claim_began = claim_began = self.clock()
                    self._last_claim = self.loop.time()
                    # Hold the slots while the claim is out, or a local start
                    # meanwhile could take one and overfill the worker.
                    self._reserved += want
                    # Shielded: if we are stopped meanwhile, stop() drives (and
                    # hands back) what the claim took instead of orphaning it.
                    self._claiming = asyncio.ensure_future(
                        self.io(
                            self.storage.claim,
                            self.id,
                            names,
                            want,
                            self.clock(),
                            self.lease_seconds,
                            versions,
                        )
                    )
                    try:
                        claimed = await asyncio.shield(self._claiming)
                    finally:
                        self._reserved -= want
                    self._claiming = None
                    if claimed:
                        fault("claim.after")
                    for record in claimed:
                        # A first claim (epoch 1) of a run nobody started: no
                        # journal yet, so there is nothing to read back.
                        self._spawn(record, claim_began, fresh=record.epoch == 1)
                backoff = 0.1
                self.outage.recovered()
                # No room, or every slot filled: a run ending should look again.
                self._starved = len(claimed) == want
                if claimed and len(claimed) == want:
                    continue  # there may be more
                timeout = self.poll_interval
                if room > len(claimed):
                    due = await self.io(self.storage.next_due, names, self.clock(), versions)
                    if due is not None:
                        timeout = min(timeout, max(due - self.clock(), 0.05))
                self._waiting_until = self.clock() + timeout
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                finally:
                    self._waiting_until = None
                # A burst of notifications (a client starting thousands of
                # runs) gathers into one claim per gap; a lone start, coming
                # after a quiet spell, is claimed at once.
                gap = self._last_claim + MIN_CLAIM_GAP - self.loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - database trouble: back off, retry
                self._claiming = None  # failed: no answer is coming
                self.outage.failed("claiming runs", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def claim_in_flight(self) -> bool:
        return self._claiming is not None

    async def claim_answered(self) -> None:
        """Until the claim in flight, if any, has been answered and its runs
        handed to drivers (its task resumes first: it awaited first)."""
        claiming = self._claiming
        if claiming is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(claiming)
            await asyncio.sleep(0)

    def has_room(self) -> bool:
        return not self._stopping and self._occupied() < self.concurrency

    def _occupied(self) -> int:
        return len(self.drivers) + self._reserved + len(self._respawning)

    def _alone(self, run_id: str) -> bool:
        """Whether no run but ``run_id`` is in progress here (the committer's cue
        that there is nothing to group its write with)."""
        if len(self.drivers) > 2:  # this run's driver, and one that just finished
            return False
        return all(d.finished or d.run_id == run_id for d in self.drivers.values())

    def may_have_room(self) -> bool:
        """Room now, or perhaps once the claim in flight (which holds the free
        slots) returns: worth trying :meth:`start_local`."""
        return self.has_room() or (self._claiming is not None and not self._stopping)

    async def start_local(self, run: NewRun, *, new_id: bool = False) -> bool:
        """Create ``run`` already claimed by this worker and drive it at once.

        False if it cannot (no room, or the id exists): the caller then starts
        it the ordinary way, which also finds an existing run by its id.
        ``new_id``: the id was generated just now, so no run can hold it.
        """
        if run.workflow not in self.workflows:
            return False
        if self._claiming is not None:
            # A claim in flight holds every free slot until it returns: wait
            # for it (about one query) rather than take the slow path.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._claiming)
        if not self.has_room():
            return False
        self._reserved += 1
        now = self.clock()
        record = _fresh_record(run, self.id, now, now + self.lease_seconds)
        # A generated id cannot exist: the run's code runs up to its first
        # durable operation while the insert is in flight, and goes on once
        # it committed. An id given by the caller may name a run that
        # exists, whose code must not run here at all.
        early = self._early_driver(record, now) if new_id else None
        created = False
        self._creating += 1
        try:
            run.owner = self.id
            run.lease_until = record.lease_until
            try:
                created = await self.committer.submit(RunWrite(run.id, 1, create=run))
            except CommitFailed:
                return False
            finally:
                # Unclaimed again: if this failed, the caller starts ``run``
                # the ordinary way (not held by a worker that is not driving it).
                run.owner = run.lease_until = None
        finally:
            self._reserved -= 1
            self._creating -= 1
            if not self._creating:
                self._created_all.set()
            if early is not None and not created:
                early.creation_known(False)  # it stops, having written nothing
        if not created:
            return False
        if early is not None and early.waiting_for_creation() and run.id not in self.drivers:
            self._hold(early)
            early.creation_known(True)
        else:  # (its task was cancelled meanwhile, say: a new driver takes the run)
            if early is not None:
                early.creation_known(False)
            self._spawn(record, now, fresh=True)
        return True

    def _early_driver(self, record: RunRecord, claimed_at: float) -> RunDriver:
        """A fresh run's driver, started before its creation committed; held
        (in ``drivers``) only once it did."""
        driver = self._new_driver(record, claimed_at, fresh=True)
        driver.created = self.loop.create_future()
        self._start_driver(driver)
        return driver

    def lease_fresh(self, driver: RunDriver) -> bool:
        """Whether ``driver``'s lease certainly still holds by this worker's clock.

        Renewals keep it well inside the lease; a lease this old means this
        worker stood still (a freeze, a partition) and another may have taken
        the run over: the driver must check before starting anything new.
        """
        return self.clock() < driver.claimed_at + self.lease_seconds * 0.8

    def _spawn(
        self, record: RunRecord, claimed_at: float | None = None, *, fresh: bool = False
    ) -> None:
        spec = self.workflows.get(record.workflow)
        if spec is None:
            return
        began = claimed_at if claimed_at is not None else self.clock()
        running = self.drivers.get(record.id)
        if running is not None:
            if record.epoch <= running.epoch:
                return  # an answer older than the claim the driver holds: nothing new
            going = running.releasing or running.doomed
            if record.epoch == running.epoch + 1 and not going:
                # We re-claimed a run we still drive (its lease lapsed while
                # our renewals failed or we stood still), and nobody held it
                # in between (each claim adds one to the epoch): the journal
                # is what the driver holds in memory.
                running.adopt(record.epoch, began)
                return
            # A new driver drives it under this claim once the old one is
            # done: the old one is handing the run back (a signal or a child's
            # end made it due as it went to sleep) or giving it up (adopted,
            # the claim would go with it, and the run would wait a lease for
            # a worker to take it up again); or another worker held the run
            # meanwhile and may have journaled more than the old one knows.
            if not going:
                running.lost()
            assert running.task is not None
            running.superseded = True
            self._respawning.add(record.id)
            running.task.add_done_callback(lambda _: self._respawn(record, began))
            return
        driver = self._new_driver(record, began, fresh=fresh)
        self._hold(driver)
        self._start_driver(driver)

    def _new_driver(self, record: RunRecord, claimed_at: float, *, fresh: bool) -> RunDriver:
        driver = RunDriver(self, record, self.workflows[record.workflow], fresh=fresh)
        driver.claimed_at = claimed_at
        return driver

    def _hold(self, driver: RunDriver) -> None:
        self.claimed_total += 1
        self.drivers[driver.run_id] = driver
        self._holding.set()

    def _start_driver(self, driver: RunDriver) -> None:
        # In a context of its own: a run started from inside a step must not
        # inherit that step's context (its step key, its lease confirmation).
        driver.task = contextvars.Context().run(
            self.loop.create_task, driver.run(), name=f"durably-run-{driver.run_id}"
        )

    def _respawn(self, record: RunRecord, claimed_at: float) -> None:
        if self._stopping:
            return  # left in _respawning: stop() hands it back
        self._respawning.discard(record.id)
        self._spawn(record, claimed_at)

    async def _watch_loop(self) -> None:
        """Hand new signals, ended children and cancellations to runs in memory."""
        while not self._stopping:
            try:
                await asyncio.wait_for(self._watch.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                self._watching.update(_ALL)
            self._watch.clear()
            what, self._watching = self._watching, set()
            try:
                await self._refresh(what)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - next notification or poll retries
                self.outage.failed("checking signals, children and cancellations", exc)
            await asyncio.sleep(MIN_CLAIM_GAP)

    async def _refresh(self, what: set[str]) -> None:
        drivers = [d for d in self.drivers.values() if not d.finished]
        if not drivers:
            return
        if "signals" in what:
            waiting = {d.run_id: d for d in drivers if d.wants_signals}
            if waiting:
                found = await self.io(self.storage.pending_signals, list(waiting))
                by_run: dict[str, list[Signal]] = {}
                for signal in found:
                    by_run.setdefault(signal.run_id, []).append(signal)
                for run_id, signals in by_run.items():
                    waiting[run_id].offer_signals(signals)
        if "children" in what:
            parents = {child: d for d in drivers for child in d.child_ids}
            if parents:
                for record in await self.io(self.storage.get_runs, list(parents)):
                    parents[record.id].offer_child(record)
        if "cancel" in what:
            live = {d.run_id: d for d in drivers if not d.cancelling}
            if live:
                requests = await self.io(self.storage.cancel_requests, list(live))
                for run_id, reason in requests.items():
                    live[run_id].cancel(reason)

    async def _renew_loop(self) -> None:
        period = max(self.lease_seconds / 3.0, 0.05)
        while not self._stopping:
            if not self.drivers:
                self._holding.clear()
                await self._holding.wait()  # idle: no timer ticking at all
            await asyncio.sleep(period)
            if not self.drivers:
                continue
            try:
                fault("renew.before")
                epochs = {run_id: driver.epoch for run_id, driver in self.drivers.items()}
                held = list(epochs)
                began = self.clock()
                owned = await self.io(self.storage.renew, self.id, held, began, self.lease_seconds)
                for run_id in held:
                    driver = self.drivers.get(run_id)
                    if driver is None or driver.doomed or driver.epoch != epochs[run_id]:
                        continue  # gone or going, or it adopted a newer claim meanwhile
                    # Counted under the claim the driver holds. A claim this
                    # worker made since is left to its answer (which adopts it
                    # or replaces the driver); further on, another worker held
                    # the run and may have run its steps.
                    epoch = owned.get(run_id)
                    if epoch == driver.epoch:
                        driver.adopt(epoch, began)
                    elif epoch == driver.epoch + 1:
                        continue
                    elif driver.claimed_at < began:  # not a run claimed meanwhile
                        driver.lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - commits are fenced anyway
                self.outage.failed("renewing leases", exc)

"""Drives one claimed run: replay, then live execution, then release.

The driver owns the run while it is in this worker's memory. It loads the
journal once, lets the engine replay it, and from then on loops: hand the
engine the completions that arrived (one at a time, settling in between),
write everything the engine produced in one group-committed write, and only
then start the steps, timers, waits and children it asked for (write-ahead).
When the code only waits (on timers further away than the grace period, or
on signals and children for longer than it), the run is written as
suspended, released, and dropped from memory.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .._engine.instance import (
    ChildCall,
    Forget,
    Instance,
    Outcome,
    RunInfo,
    StepCall,
    TimerCall,
    WaitCall,
)
from .._engine.journal import CANCEL_POSITION, Entry, History, Kind
from .._errors import DatabaseUnavailable, describe_exception
from .._faults import fault
from .._storage.base import TERMINAL, NewRun, RunRecord, RunUpdate, RunWrite, Signal
from . import steps
from .committer import CommitFailed

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("durably.worker")

DEADLINE_REASON = "its deadline passed"
# Renewals a driver makes to confirm a stale lease before a step; if each
# takes most of a lease, the worker cannot hold the run and drops it.
CONFIRM_TRIES = 3


class WorkflowSpec(Protocol):
    """What the worker needs of a registered workflow."""

    name: str
    version: str

    def instantiate(
        self, info: RunInfo, args_text: str, loop: asyncio.AbstractEventLoop, executor: Any
    ) -> Instance: ...


# How far up its parents a run looks for a child id that would wait on itself.
MAX_ANCESTRY = 1000

# Failed writes of one run, each on its own error (not an outage), before the
# run is failed instead of replayed once more.
UNWRITABLE_AFTER = 3


class _NotCreated(Exception):
    """The run this driver started early was not created (see Worker.start_local)."""


class LeaseLost(Exception):
    """Another worker took the run over; this driver must stop touching it."""


@dataclass
class _Timer:
    fire_at: float
    name: str
    handle: asyncio.TimerHandle


@dataclass
class _Batch:
    """What one write of this run carries."""

    entries: list[Entry] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)


class RunDriver:
    def __init__(
        self, worker: Worker, record: RunRecord, spec: WorkflowSpec, *, fresh: bool = False
    ) -> None:
        self.worker = worker
        self.fresh = fresh  # created just now by this worker: its journal is empty
        self.record = record
        self.spec = spec
        self.run_id = record.id
        self.epoch = record.epoch
        self.instance: Instance | None = None
        self.draining = False
        self.finished = False
        self.ended_here = False  # it ended the run and handed the final row over
        self.releasing = False  # its write in flight hands the run back (suspends it)
        # Claimed again meanwhile, for a new driver: never hand the run back.
        self.superseded = False
        self.doomed = False  # its claim is gone: it is stopping, never to write again
        self.task: asyncio.Task[None] | None = None
        # Set for a run started before its creation committed: whether it
        # did (until then the driver does nothing durable).
        self.created: asyncio.Future[bool] | None = None
        self._loop = worker.loop
        self._clock: Callable[[], float] = worker.clock
        self._events: list[tuple[str, Any]] = []
        self._waiter: asyncio.Future[None] | None = None  # set while _run waits for events
        self._seq = 0
        self._active: dict[int, asyncio.Task[None]] = {}
        self._cancelled_steps: set[int] = set()  # step tasks this driver cancelled
        self._executing: dict[int, StepCall] = {}  # what each active task runs
        self._timers: dict[int, _Timer] = {}
        self._retries: dict[int, tuple[StepCall, asyncio.TimerHandle]] = {}
        self._waits: dict[int, WaitCall] = {}  # signal waits by position
        self._wait_timers: dict[int, asyncio.TimerHandle] = {}
        self._taken: set[int] = set()  # signal ids on their way to a wait
        self._promised: dict[int, int] = {}  # wait position -> signal id on its way
        self._consumed: set[int] = set()  # signal ids this run took (never offer again)
        self._children: dict[str, tuple[int, str]] = {}  # child id -> (position, workflow)
        # This run's ancestors' ids, read when a child id names a run it did
        # not start (else its parent's is all it knows).
        self._ancestors: set[str] = {record.parent_id} if record.parent_id else set()
        self._hold: asyncio.TimerHandle | None = None
        self._hold_expired = False
        self._deadline: asyncio.TimerHandle | None = None
        self.claimed_at = 0.0  # clock() when its lease last began (claim or renewal)
        self._status = "running"  # as last written (a claim sets running)
        self._wake_at: float | None = None

    # -- what the worker asks and tells ----------------------------------------
    @property
    def wants_signals(self) -> bool:
        return bool(self._waits)

    @property
    def child_ids(self) -> list[str]:
        return list(self._children)

    @property
    def cancelling(self) -> bool:
        return self.instance is not None and self.instance.cancel_reason is not None

    def drain(self) -> None:
        """Stop after what is executing now has been journaled."""
        self.draining = True
        self._post("drain", None)

    def offer_signals(self, signals: list[Signal]) -> None:
        """Hand unconsumed signals (oldest first) to waits on their topic."""
        for signal in signals:
            if signal.id in self._taken or signal.id in self._consumed:
                continue  # on its way to a wait, or taken already (a stale read)
            positions = [
                p
                for p, w in self._waits.items()
                if w.topic == signal.topic and p not in self._promised
            ]
            if positions:
                position = min(positions)
                self._promised[position] = signal.id
                self._taken.add(signal.id)
                self._post("signal", (position, signal))

    def offer_child(self, record: RunRecord) -> None:
        known = self._children.get(record.id)
        if known is None:
            return
        if record.workflow != known[1] or record.id == self.run_id or record.id in self._ancestors:
            # The id was taken by a run of another workflow, or is this run's
            # own or an ancestor's: waiting for it would never end.
            self._post("child_done", record)
        elif record.status in TERMINAL:
            self._post("child_done", record)

    def lost(self) -> None:
        """Its claim is gone (a renewal found the run owned by another worker,
        or by this one under a newer claim): the driver stops."""
        self.doomed = True
        self._post("lease_lost", None)

    def cancel(self, reason: str) -> None:
        self._post("cancel", reason)

    def steps_on_threads(self) -> bool:
        """Whether a step executing now runs on a thread (cannot be cancelled)."""
        return any(
            not steps.is_async_callable(self._executing[p].fn)
            for p in self._active
            if p in self._executing
        )

    def waiting_for_creation(self) -> bool:
        """Whether this early driver waits to hear if its run was created."""
        task, created = self.task, self.created
        return task is not None and not task.done() and created is not None and not created.done()

    def creation_known(self, created: bool) -> None:
        if self.created is not None and not self.created.done():  # else its task was cancelled
            self.created.set_result(created)

    def _held(self) -> bool:
        created = self.created
        return created is None or (created.done() and not created.cancelled() and created.result())

    def adopt(self, epoch: int, claimed_at: float) -> None:
        """Hold the run under ``epoch`` since ``claimed_at``: its own claim,
        renewed, or the next (this worker claimed it again with nobody in
        between, so the journal is what this driver holds in memory)."""
        if epoch >= self.epoch and not (self.doomed or self.releasing):
            self.epoch = epoch
            self.claimed_at = max(self.claimed_at, claimed_at)

    async def run(self) -> None:
        failed = False
        try:
            await self._run()
        except _NotCreated:
            pass
        except LeaseLost:
            log.info(
                "run %s: no longer held under claim %d (its lease lapsed and it was "
                "claimed again, by this worker or another); dropped here",
                self.run_id,
                self.epoch,
            )
        except asyncio.CancelledError:
            pass
        except DatabaseUnavailable as exc:
            failed = True  # said once for the whole outage, not once per run
            self.worker.outage.failed(f"run {self.run_id}", exc)
        except CommitFailed as exc:
            # The committer already said why (an outage, or this write's own
            # error): saying "unreachable" here misnamed a bad write.
            failed = True
            if not exc.outage and self.worker.write_failed(self.run_id):
                failed = not await self._fail_unwritable(exc)
        except Exception as exc:  # keep the worker alive
            failed = True
            log.warning("run %s: driver stopped: %s", self.run_id, exc, exc_info=True)
        finally:
            if self.ended_here:
                # Its waiters' turn first (they were handed the final row):
                # the rest is bookkeeping.
                self._loop.call_soon(self._cleanup)
            else:
                self._cleanup()
            # A run dropped on an error (a failed commit, an unreachable
            # database) is handed back so it is replayed, here or elsewhere;
            # not if a new claim of this worker's holds it (that would hand
            # back the new driver's claim, and another worker could run it too).
            if self._held():  # else not created: nothing to hand back or over
                self.worker.driver_done(self, release=failed and not self.superseded)

    # -- main loop -------------------------------------------------------------
    async def _run(self) -> None:
        entries = (
            []
            if self.fresh
            else await self.worker.io(self.worker.storage.load_journal, self.run_id)
        )
        fault("replay.before")
        history = History(entries)
        self._seq = history.next_seq
        info = RunInfo(
            workflow=self.record.workflow,
            run_id=self.run_id,
            history=history,
            clock=self._clock,
            payload_limit=self.worker.payload_limit,
        )
        failed: Outcome | None = None
        try:
            self.instance = self.spec.instantiate(
                info, self.record.args, self._loop, self.worker.workflow_threads
            )
            await self.instance.start()
            fault("replay.after")
        except Exception as exc:  # noqa: BLE001 - e.g. arguments that no longer decode
            failed = Outcome("failed", error=describe_exception(exc))
        if self.created is not None and not await self.created:
            raise _NotCreated()
        if failed is not None:
            await self._write(RunWrite(self.run_id, self.epoch, [], _ended(failed)))
            self._hand_over(failed)
            return
        assert self.instance is not None
        replayed = self.instance.outcome
        if replayed is not None and replayed.diverged and self.record.version != self.spec.version:
            await self._pin()
            return
        if self.record.cancel_requested is not None:
            # Armed now, delivered after the first flush: a step the replay
            # found unfinished is executing again by then, and must finish first.
            reason = self.record.cancel_reason or "cancelled"
            self.instance.request_cancel(reason)
            self.cancel(reason)
        self._watch_deadline()
        version = self.spec.version if self.spec.version != self.record.version else None
        await self._flush(_Batch(), version=version)
        while not self.finished:
            if not self._events:
                # A bare future: an asyncio.Event's wait and set cost more here.
                self._waiter = self._loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            events, self._events = self._events, []
            batch = _Batch()
            for kind, payload in events:
                await self._handle(kind, payload, batch)
            await self._maybe_deliver_cancel(batch)
            await self._flush(batch)

    async def _handle(self, kind: str, payload: Any, batch: _Batch) -> None:
        instance = self.instance
        assert instance is not None
        if kind == "complete":
            await self._complete(payload, batch)
        elif kind == "signal":
            position, signal = payload
            self._taken.discard(signal.id)
            self._promised.pop(position, None)
            if self._waits.pop(position, None) is None or not instance.wants(position):
                return
            self._drop_wait_timer(position)
            fault("signal.deliver", signal.topic)
            entry = Entry(position, Kind.SIGNAL, signal.topic, signal.payload, None, self._clock())
            if await self._complete(entry, batch):
                self._consumed.add(signal.id)
                batch.consumed.append(signal.id)
        elif kind == "wait_timeout":
            wait = self._waits.get(payload)
            self._wait_timers.pop(payload, None)
            if wait is not None and wait.deadline is not None:
                if wait.deadline > self._clock():  # the wall clock moved back: never early
                    self._arm_wait(wait)
                    return
                del self._waits[payload]
                entry = Entry(payload, Kind.WAIT_TIMEOUT, wait.topic, None, None, self._clock())
                await self._complete(entry, batch)
        elif kind == "child_done":
            record: RunRecord = payload
            known = self._children.pop(record.id, None)
            if not self._children:
                self.worker.waiting_parents.discard(self.run_id)
            if known is not None:
                position, name = known
                fault("child.done", name)
                payload = _child_payload(record, name, self.run_id, self._ancestors)
                entry = Entry(position, Kind.CHILD_DONE, name, payload, None, self._clock())
                await self._complete(entry, batch)
        elif kind == "attempt":
            entry, retry = payload
            self._active.pop(entry.position, None)
            if instance.done or not instance.wants(entry.position):
                return
            self._stamp(entry)
            batch.entries.append(entry)
            instance.commands.append(retry)  # started (or waited for) after the write
        elif kind == "retry_due":
            call: StepCall = payload
            if self._retries.pop(call.position, None) is not None and not self.draining:
                self._execute(call)
        elif kind == "fired":
            timer = self._timers.get(payload)
            if timer is None:
                return
            if timer.fire_at > self._clock():  # the wall clock moved back: never early
                self._arm(payload, timer.fire_at, timer.name)
                return
            fault("timer.fire", timer.name)
            entry = Entry(payload, Kind.FIRED, timer.name, None, None, self._clock())
            await self._complete(entry, batch)
        elif kind == "cancel":
            if not instance.done:
                instance.request_cancel(payload)
        elif kind == "lease_lost":
            raise LeaseLost()
        elif kind == "hold_expired":
            self._hold = None
            self._hold_expired = True

    async def _complete(self, entry: Entry, batch: _Batch) -> bool:
        """Journal and hand back one completion; False if the code no longer wants it."""
        instance = self.instance
        assert instance is not None
        self._active.pop(entry.position, None)
        self._timers.pop(entry.position, None)
        if instance.done or not instance.wants(entry.position):
            return False
        self._stamp(entry)
        batch.entries.append(entry)
        self._release_hold()
        instance.deliver(entry)
        await instance.settle()
        return True

    async def _maybe_deliver_cancel(self, batch: _Batch) -> None:
        """Cancel while the code waits (no step executing); else it is raised at the
        code's next operation."""
        instance = self.instance
        assert instance is not None
        if (
            instance.cancel_reason is None
            or instance.cancel_delivered
            or instance.done
            or self._active
        ):
            return
        fault("cancel.deliver")
        payload = json.dumps({"reason": instance.cancel_reason})
        entry = Entry(CANCEL_POSITION, Kind.CANCEL, "cancel", payload, None, self._clock())
        self._stamp(entry)
        batch.entries.append(entry)
        self._release_hold()
        instance.deliver_cancel(entry)
        await instance.settle()

    async def _flush(self, batch: _Batch, *, version: str | None = None) -> None:
        instance = self.instance
        assert instance is not None
        new_entries, commands = instance.drain()
        for entry in new_entries:
            self._stamp(entry)
        batch.entries.extend(new_entries)
        # The common flush (a step's result, the next step called) has one
        # plain step call: the generic sorting below is skipped for it.
        plain = len(commands) == 1 and type(commands[0]) is StepCall
        if not plain:
            forgotten = {c.position for c in commands if isinstance(c, Forget)}
            for position in forgotten:
                self._forget(position)
            commands = [
                c for c in commands if not isinstance(c, Forget) and c.position not in forgotten
            ]
        update = self._next_update(instance, commands)
        if version is not None:
            update = update or RunUpdate(status=self._status, wake_at=self._wake_at)
            update.version = version
        children = (
            []
            if plain
            else [self._new_child(c) for c in commands if isinstance(c, ChildCall) and c.spec]
        )
        events = [(e.name, e.payload or "null") for e in batch.entries if e.kind == Kind.EVENT]
        self.releasing = update is not None and update.release
        if batch.entries or update is not None:
            write = RunWrite(
                self.run_id,
                self.epoch,
                batch.entries,
                update,
                consumed=batch.consumed,
                events=events,
                children=children,
            )
            await self._write(write)
        if events:
            self.worker.published_events(self.run_id)
        if instance.done:
            self.finished = True
            assert instance.outcome is not None
            self._hand_over(instance.outcome)
            return
        if update is not None and update.release:
            self.finished = True  # suspended out of memory (or handed back)
            if update.status == "suspended" and update.wake_at is not None:
                self.worker.due(update.wake_at)
            return
        if self.draining:
            return  # what the code asks for now is asked again after a replay
        waits = False
        started: list[str] = []  # children
        for command in commands:
            self._start(command)
            if isinstance(command, WaitCall):
                waits = True
            elif isinstance(command, ChildCall):
                started.append(command.child_id)
        if waits or started:
            await self._look_for_wakeups(waits, started)

    async def _look_for_wakeups(self, waits: bool, children: list[str]) -> None:
        """A signal or a child's end may predate the wait: look once, right away."""
        storage = self.worker.storage
        if waits:
            self.offer_signals(await self.worker.io(storage.pending_signals, [self.run_id]))
        if children:
            records = await self.worker.io(storage.watch_runs, children)
            if any(r.parent_id != self.run_id and r.status not in TERMINAL for r in records):
                # A child id naming a run this one did not start: if that is an
                # ancestor, the two would wait for each other forever.
                self._ancestors = await self.worker.io(self._read_ancestors)
            for record in records:
                self.offer_child(record)

    async def _fail_unwritable(self, exc: CommitFailed) -> bool:
        """This run's writes failed on their own error, again and again: each
        replay would run the same steps again and fail the same way. It ends
        failed, saying why (False if even that cannot be written)."""
        error = describe_exception(exc)
        error["type"] = "DatabaseError"
        error["message"] = (
            f"durably could not journal this run's progress ({UNWRITABLE_AFTER} "
            f"times in a row, its steps run again each time): {exc}"
        )
        outcome = Outcome("failed", error=error)
        try:
            await self._write(RunWrite(self.run_id, self.epoch, [], _ended(outcome)))
        except Exception:  # noqa: BLE001 - then it is handed back, as before
            return False
        log.error("run %s failed: %s", self.run_id, error["message"])
        self._hand_over(outcome)
        return True

    def _read_ancestors(self) -> set[str]:
        found: set[str] = set()
        parent = self.record.parent_id
        while parent is not None and parent not in found and len(found) < MAX_ANCESTRY:
            found.add(parent)
            record = self.worker.storage.get_run(parent)
            parent = record.parent_id if record is not None else None
        return found

    async def _pin(self) -> None:
        """Newer code diverged from a run started on an older version: leave it
        to workers that still have that version (semantic 8), never fail it."""
        log.warning(
            "run %s started on version %s of %r, which this worker's version %s does not "
            "replay cleanly; it stays pinned to %s: %s",
            self.run_id,
            self.record.version,
            self.record.workflow,
            self.spec.version,
            self.record.version,
            (self.instance.outcome.error or {}).get("message", "")
            if self.instance and self.instance.outcome
            else "",
        )
        self.finished = True
        update = RunUpdate(status="running", release=True, pin=True)
        await self._write(RunWrite(self.run_id, self.epoch, [], update))

    def _hand_over(self, outcome: Outcome) -> None:
        """The run ended, durably: its final row to whoever waits here."""
        self.worker.run_ended(self.run_id, self._final(outcome))
        self.ended_here = True

    def _final(self, outcome: Outcome) -> RunRecord:
        """The run's row as the write that ended it left it."""
        ended = _ended(outcome)
        now = self._clock()
        return dataclasses.replace(
            self.record,
            status=outcome.status,
            result=ended.result,
            error=ended.error,
            owner=None,
            lease_until=None,
            wake_at=None,
            finished_at=now,
            updated_at=now,
            epoch=self.epoch,
        )

    def _start(self, command: Any) -> None:
        if isinstance(command, StepCall):
            self._start_step(command)
        elif isinstance(command, TimerCall):
            self._arm(command.position, command.fire_at, command.name)
        elif isinstance(command, WaitCall):
            self._waits[command.position] = command
            self._arm_wait(command)
            self.worker.watch("signals")
        elif isinstance(command, ChildCall):
            self._children[command.child_id] = (command.position, command.workflow)
            self.worker.waiting_parents.add(self.run_id)
            self.worker.watch("children")

    def _new_child(self, call: ChildCall) -> NewRun:
        assert call.spec is not None
        return NewRun(
            id=call.child_id,
            workflow=call.spec.workflow,
            version=call.spec.version,
            args=call.spec.args,
            created_at=self._clock(),
            parent_id=self.run_id,
            deadline=call.spec.deadline,
        )

    def _next_update(self, instance: Instance, commands: list[Any]) -> RunUpdate | None:
        """The row change that goes with this write, or None if nothing changes."""
        if instance.outcome is None and self._stuck(commands):
            instance.fail_stuck()
        if instance.outcome is not None:
            return _ended(instance.outcome)
        now = self._clock()
        grace = self.worker.suspend_after
        if (
            self._status == "running"
            and self._wake_at is None
            and not self.draining
            and (
                self._active
                or any(type(c) is StepCall and c.not_before - now <= grace for c in commands)
            )
        ):
            return None  # busy, as written already: the common case, decided early
        starting = [c for c in commands if isinstance(c, StepCall)]
        runs_soon = [c for c in starting if c.not_before - now <= grace]
        times = [t.fire_at for t in self._timers.values()]
        times += [c.fire_at for c in commands if isinstance(c, TimerCall)]
        waits = list(self._waits.values()) + [c for c in commands if isinstance(c, WaitCall)]
        times += [w.deadline for w in waits if w.deadline is not None]
        later = [call.not_before for call, _ in self._retries.values()]
        later += [c.not_before for c in starting if c.not_before - now > grace]
        if self.record.deadline is not None:
            times.append(self.record.deadline)
        holds = bool(waits or self._children or any(isinstance(c, ChildCall) for c in commands))
        busy = bool(self._active or runs_soon) or any(t - now <= grace for t in later)
        busy = busy or (instance.cancel_reason is not None and not instance.cancel_delivered)
        if self.draining and not self._active:
            status = "suspended" if not busy else "running"
            wake = min(times + later, default=None) if status == "suspended" else None
            release = True
        elif busy:
            status, wake, release = "running", None, False
        else:
            wake = min(times + later, default=None)
            status = "suspended"
            release = wake is None or wake - now > grace
            if release and holds and not self._hold_expired:
                release = False  # a signal or a child may end soon: keep it a moment
                if self._hold is None:
                    self._hold = self._loop.call_later(grace, self._post, "hold_expired", None)
        if status == self._status and wake == self._wake_at and not release:
            return None
        update = RunUpdate(status=status, wake_at=wake, release=release)
        if release and status == "suspended":
            update.wake_topics = tuple(sorted({w.topic for w in waits}))
            update.wake_children = tuple(self._children) + tuple(
                c.child_id for c in commands if isinstance(c, ChildCall)
            )
            update.cancel_seen = instance.cancel_reason is not None
        return update

    def _stuck(self, commands: list[Any]) -> bool:
        """The code waits, but on nothing durable: nothing could ever wake it."""
        instance = self.instance
        assert instance is not None
        return not (
            commands
            or self._active
            or self._timers
            or self._retries
            or self._waits
            or self._children
            or instance.cancel_reason is not None
            or self.draining
        )

    async def _write(self, write: RunWrite) -> None:
        accepted = await self.worker.committer.submit(write)
        if not accepted:
            self.doomed = True
            raise LeaseLost()
        if self.worker.write_failures:
            self.worker.write_failures.pop(self.run_id, None)
        if write.update is not None:
            if write.update.status is not None:
                self._status = write.update.status
            self._wake_at = write.update.wake_at

    # -- steps, timers, deadlines ------------------------------------------------
    def _start_step(self, call: StepCall) -> None:
        delay = call.not_before - self._clock()
        if delay > 0:
            handle = self._loop.call_later(delay, self._post, "retry_due", call)
            self._retries[call.position] = (call, handle)
        else:
            self._execute(call)

    def _execute(self, call: StepCall) -> None:
        self._executing[call.position] = call
        self._active[call.position] = self._loop.create_task(self._attempt(call))

    async def _still_ours(self) -> bool:
        """Before an effect: if our lease may have lapsed, renew it or give up."""
        for _ in range(CONFIRM_TRIES):
            if self.doomed:
                return False
            if self._lease_fresh():
                return True
            held = self.epoch
            try:
                now, owned = await self.worker.io(self._renew)
            except Exception as exc:  # noqa: BLE001 - cannot confirm: do not risk it
                self.worker.outage.failed(f"confirming the lease of run {self.run_id}", exc)
                return False
            epoch = owned.get(self.run_id)
            if self.epoch != held:
                continue  # a claim's answer came meanwhile: look again
            if epoch == self.epoch:
                self.adopt(epoch, now)
            elif epoch == self.epoch + 1 and self.worker.claim_in_flight():
                # This worker's claim, on its way: its answer adopts it here
                # (nobody held the run in between) or replaces this driver.
                await self.worker.claim_answered()
            else:
                # Further on, another worker held the run meanwhile and may
                # have run this very step; or the claim's answer was lost.
                return False
            # Checked again: the process may have stood still after the renewal
            # landed for longer than the lease it bought.
        return False  # renewals slower than a lease: this worker cannot hold it

    def _renew(self) -> tuple[float, dict[str, int]]:
        now = self._clock()  # in the io thread: a wait for a free thread buys no lease
        return now, self.worker.storage.renew(
            self.worker.id, [self.run_id], now, self.worker.lease_seconds
        )

    def _lease_fresh(self) -> bool:
        # A clock comparison: safe from a step thread, whose context it marks.
        if self.doomed or not self.worker.lease_fresh(self):
            return False
        steps.lease_confirmed(self._clock())
        return True

    async def _run_while_ours(self, call: StepCall) -> tuple[Entry, StepCall | None] | None:
        """One attempt, begun only while the lease certainly holds; None if it was lost."""
        assert self.instance is not None
        while self._lease_fresh() or await self._still_ours():
            try:
                return await steps.execute(
                    call,
                    self.instance.step_key(call.position),
                    self.worker.step_threads,
                    self._loop,
                    self._clock,
                    self.worker.payload_limit,
                    guard=self._lease_fresh,
                )
            except steps.LeaseStale:
                continue  # it waited for a thread past the lease: confirm the lease first
        # Another worker took the run over while this one stood still: it
        # must not run a step the other may already have run and recorded.
        self._active.pop(call.position, None)
        self.lost()
        return None

    async def _attempt(self, call: StepCall) -> None:
        try:
            outcome = await self._run_while_ours(call)
        except Exception as exc:
            # Never a silent end of this task: the run would wait for the step
            # forever. The step fails, with the error, and the code decides.
            log.warning("run %s: step %r: %s", self.run_id, call.name, exc, exc_info=True)
            outcome = steps.failure_entry(call, exc, self._clock()), None
        except asyncio.CancelledError as exc:
            if call.position in self._cancelled_steps or self.finished:
                raise  # we cancelled it
            # The step's own code raised CancelledError (e.g. an inner task of
            # it was cancelled): that is a failed attempt like any other error.
            error = exc.__class__("the step raised CancelledError")
            outcome = steps.failure_entry(call, error, self._clock()), None
            if call.retry.retries(call.attempt, exc):
                outcome = steps.retry_entries(call, error, self._clock())
        if outcome is None:
            return
        entry, retry = outcome
        if retry is None:
            self._post("complete", entry)
        else:
            self._post("attempt", (entry, retry))

    def _arm(self, position: int, fire_at: float, name: str) -> None:
        delay = max(0.0, fire_at - self._clock())
        handle = self._loop.call_later(delay, self._post, "fired", position)
        self._timers[position] = _Timer(fire_at, name, handle)

    def _arm_wait(self, wait: WaitCall) -> None:
        if wait.deadline is not None:
            delay = max(0.0, wait.deadline - self._clock())
            self._wait_timers[wait.position] = self._loop.call_later(
                delay, self._post, "wait_timeout", wait.position
            )

    def _watch_deadline(self) -> None:
        deadline = self.record.deadline
        if deadline is None:
            return
        delay = deadline - self._clock()
        if delay <= 0:
            self._deadline_passed()
        else:
            self._deadline = self._loop.call_later(delay, self._deadline_passed)

    def _deadline_passed(self) -> None:
        if self.record.deadline is not None and self.record.deadline > self._clock():
            self._watch_deadline()  # the wall clock moved back: never early
            return
        if self.instance is not None and self.instance.cancel_reason is None:
            self.instance.request_cancel(DEADLINE_REASON)
            self._post("cancel", DEADLINE_REASON)
            # Descendants are cancelled with it.
            self.worker.request_cancel(self.run_id, DEADLINE_REASON)

    def _forget(self, position: int) -> None:
        timer = self._timers.pop(position, None)
        if timer is not None:
            timer.handle.cancel()
        self._waits.pop(position, None)
        self._drop_wait_timer(position)
        retry = self._retries.pop(position, None)
        if retry is not None:
            retry[1].cancel()
        task = self._active.pop(position, None)
        if task is not None:
            self._cancelled_steps.add(position)
            task.cancel()
        for child_id, (child_position, _) in list(self._children.items()):
            if child_position == position:
                del self._children[child_id]

    def _drop_wait_timer(self, position: int) -> None:
        handle = self._wait_timers.pop(position, None)
        if handle is not None:
            handle.cancel()

    def _release_hold(self) -> None:
        self._hold_expired = False
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None

    # -- plumbing --------------------------------------------------------------
    def _post(self, kind: str, payload: Any) -> None:
        self._events.append((kind, payload))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _stamp(self, entry: Entry) -> None:
        entry.seq = self._seq
        entry.epoch = self.epoch
        self._seq += 1

    def _cleanup(self) -> None:
        handles = [t.handle for t in self._timers.values()]
        handles += [h for _, h in self._retries.values()]
        handles += list(self._wait_timers.values())
        handles += [h for h in (self._hold, self._deadline) if h is not None]
        for handle in handles:
            handle.cancel()
        self._cancelled_steps.update(self._active)
        for task in self._active.values():
            task.cancel()
        self._timers.clear()
        self._retries.clear()
        self._wait_timers.clear()
        self._active.clear()
        self._waits.clear()
        self._children.clear()
        if self._held():  # else another driver may hold the id
            self.worker.waiting_parents.discard(self.run_id)
        if self.instance is not None:
            self.instance.abandon()  # also cancels tasks a finished workflow left behind


def _ended(outcome: Outcome) -> RunUpdate:
    error = json.dumps(outcome.error) if outcome.error is not None else None
    return RunUpdate(status=outcome.status, result=outcome.result, error=error, release=True)


def _child_payload(record: RunRecord, workflow: str, run_id: str, ancestors: set[str]) -> str:
    info: dict[str, Any] = {"id": record.id, "status": record.status}
    refused = None  # why this run cannot be the child asked for
    if record.id == run_id or record.id in ancestors:
        whose = "this run's own id" if record.id == run_id else "the id of an ancestor of this run"
        refused = f"child id {record.id!r} is {whose}: waiting for it would never end"
    elif record.workflow != workflow:
        refused = (
            f"child id {record.id!r} already belongs to a run of workflow "
            f"{record.workflow!r}, not {workflow!r}"
        )
    if refused is not None:
        info["status"] = "failed"
        info["error"] = {"type": "ConfigurationError", "message": f"{refused}; choose another id"}
    elif record.status == "completed":
        info["result"] = record.result
    else:
        info["error"] = json.loads(record.error or "{}")
    return json.dumps(info)

"""Drives one claimed run: replay, then live execution, then release.

The driver owns the run while it is in this worker's memory. It loads the
journal once, lets the engine replay it, and from then on loops: hand the
engine the completions that arrived (one at a time, settling in between),
write everything the engine produced in one group-committed write, and only
then start the steps and timers it asked for (write-ahead). When the code
only waits on timers further away than the grace period, the run is written
as suspended, released, and dropped from memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .._engine.instance import (
    CancelTimer,
    Instance,
    Outcome,
    RunInfo,
    StepCall,
    TimerCall,
)
from .._engine.journal import Entry, History, Kind
from .._errors import describe_exception
from .._storage.base import RunRecord, RunUpdate, RunWrite
from . import steps

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("durably.worker")


class WorkflowSpec(Protocol):
    """What the worker needs of a registered workflow."""

    name: str
    version: str

    def instantiate(
        self, info: RunInfo, args_text: str, loop: asyncio.AbstractEventLoop, executor: Any
    ) -> Instance: ...


class LeaseLost(Exception):
    """Another worker took the run over; this driver must stop touching it."""


@dataclass
class _Timer:
    fire_at: float
    name: str
    handle: asyncio.TimerHandle


class RunDriver:
    def __init__(self, worker: Worker, record: RunRecord, spec: WorkflowSpec) -> None:
        self.worker = worker
        self.record = record
        self.spec = spec
        self.run_id = record.id
        self.epoch = record.epoch
        self.instance: Instance | None = None
        self.draining = False
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        self._loop = worker.loop
        self._clock: Callable[[], float] = worker.clock
        self._events: list[tuple[str, Any]] = []
        self._wake = asyncio.Event()
        self._seq = 0
        self._active: dict[int, asyncio.Task[None]] = {}
        self._timers: dict[int, _Timer] = {}
        self._retries: dict[int, tuple[StepCall, asyncio.TimerHandle]] = {}
        self._status = "running"  # as last written (a claim sets running)
        self._wake_at: float | None = None

    # -- public ----------------------------------------------------------------
    def drain(self) -> None:
        """Stop after what is executing now has been journaled."""
        self.draining = True
        self._post("drain", None)

    async def run(self) -> None:
        try:
            await self._run()
        except LeaseLost:
            log.info("run %s: taken over by another worker; dropped here", self.run_id)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.warning("run %s: driver stopped: %s", self.run_id, exc, exc_info=True)
        finally:
            self._cleanup()
            self.worker.driver_done(self)

    # -- main loop -------------------------------------------------------------
    async def _run(self) -> None:
        entries = await self.worker.io(self.worker.storage.load_journal, self.run_id)
        history = History(entries)
        self._seq = history.next_seq
        info = RunInfo(
            workflow=self.record.workflow,
            run_id=self.run_id,
            history=history,
            clock=self._clock,
            payload_limit=self.worker.payload_limit,
        )
        try:
            self.instance = self.spec.instantiate(
                info, self.record.args, self._loop, self.worker.workflow_threads
            )
            await self.instance.start()
        except Exception as exc:  # noqa: BLE001 - e.g. arguments that no longer decode
            await self._write([], _ended(Outcome("failed", error=describe_exception(exc))))
            self.worker.run_ended(self.run_id)
            return
        version = self.spec.version if self.spec.version != self.record.version else None
        await self._flush([], version=version)
        while not self.finished:
            await self._wake.wait()
            self._wake.clear()
            events, self._events = self._events, []
            batch: list[Entry] = []
            for kind, payload in events:
                await self._handle(kind, payload, batch)
            await self._flush(batch)

    async def _handle(self, kind: str, payload: Any, batch: list[Entry]) -> None:
        instance = self.instance
        assert instance is not None
        if kind == "complete":
            entry: Entry = payload
            self._active.pop(entry.position, None)
            self._timers.pop(entry.position, None)
            if instance.done or not instance.wants(entry.position):
                return
            self._stamp(entry)
            batch.append(entry)
            instance.deliver(entry)
            await instance.settle()
        elif kind == "attempt":
            entry, retry = payload
            self._active.pop(entry.position, None)
            if instance.done:
                return
            self._stamp(entry)
            batch.append(entry)
            instance.commands.append(retry)  # started (or waited for) after the write
        elif kind == "retry_due":
            call: StepCall = payload
            if self._retries.pop(call.position, None) is not None and not self.draining:
                self._execute(call)
        elif kind == "fired":
            position = payload
            timer = self._timers.get(position)
            if timer is None:
                return
            early = timer.fire_at - self._clock()
            if early > 0:  # the wall clock moved back: never fire early
                self._arm(position, timer.fire_at, timer.name)
                return
            await self._handle(
                "complete",
                Entry(position, Kind.FIRED, timer.name, None, None, self._clock()),
                batch,
            )

    async def _flush(self, batch: list[Entry], *, version: str | None = None) -> None:
        instance = self.instance
        assert instance is not None
        new_entries, commands = instance.drain()
        for entry in new_entries:
            self._stamp(entry)
        batch.extend(new_entries)
        cancelled = {c.position for c in commands if isinstance(c, CancelTimer)}
        for position in cancelled:
            timer = self._timers.pop(position, None)
            if timer is not None:
                timer.handle.cancel()
        commands = [
            c
            for c in commands
            if not isinstance(c, CancelTimer)
            and not (isinstance(c, TimerCall) and c.position in cancelled)
        ]
        update = self._next_update(instance, commands)
        if version is not None:
            update = update or RunUpdate(status=self._status, wake_at=self._wake_at)
            update.version = version
        if batch or update is not None:
            await self._write(batch, update)
        if instance.done:
            self.finished = True
            self.worker.run_ended(self.run_id)
            return
        if update is not None and update.release:
            self.finished = True  # suspended out of memory (or handed back)
            return
        if self.draining:
            return  # what the code asks for now is asked again after a replay
        for command in commands:
            if isinstance(command, StepCall):
                self._start_step(command)
            elif isinstance(command, TimerCall):
                self._arm(command.position, command.fire_at, command.name)

    def _next_update(self, instance: Instance, commands: list[Any]) -> RunUpdate | None:
        """The row change that goes with this write, or None if nothing changes."""
        if instance.outcome is not None:
            return _ended(instance.outcome)
        now = self._clock()
        grace = self.worker.suspend_after
        starting = [c for c in commands if isinstance(c, StepCall)]
        runs_soon = [c for c in starting if c.not_before - now <= grace]
        waits = [t.fire_at for t in self._timers.values()]
        waits += [c.fire_at for c in commands if isinstance(c, TimerCall)]
        later = [call.not_before for call, _ in self._retries.values()]
        later += [c.not_before for c in starting if c.not_before - now > grace]
        busy = bool(self._active or runs_soon) or any(t - now <= grace for t in later)
        if self.draining and not self._active:
            status = "suspended" if (waits or later) and not busy else "running"
            wake = min(waits + later, default=None) if status == "suspended" else None
            return RunUpdate(status=status, wake_at=wake, release=True)
        if busy:
            status, wake, release = "running", None, False
        else:
            wake = min(waits + later, default=None)
            status = "suspended"
            release = wake is None or wake - now > grace
        if status == self._status and wake == self._wake_at and not release:
            return None
        return RunUpdate(status=status, wake_at=wake, release=release)

    async def _write(self, batch: list[Entry], update: RunUpdate | None) -> None:
        write = RunWrite(self.run_id, self.epoch, batch, update)
        accepted = await self.worker.committer.submit(write)
        if not accepted:
            raise LeaseLost()
        if update is not None:
            if update.status is not None:
                self._status = update.status
            self._wake_at = update.wake_at

    # -- steps and timers ----------------------------------------------------
    def _start_step(self, call: StepCall) -> None:
        delay = call.not_before - self._clock()
        if delay > 0:
            handle = self._loop.call_later(delay, self._post, "retry_due", call)
            self._retries[call.position] = (call, handle)
        else:
            self._execute(call)

    def _execute(self, call: StepCall) -> None:
        self._active[call.position] = self._loop.create_task(self._attempt(call))

    async def _attempt(self, call: StepCall) -> None:
        assert self.instance is not None
        entry, retry = await steps.execute(
            call,
            self.instance.step_key(call.position),
            self.worker.step_threads,
            self._loop,
            self._clock,
            self.worker.payload_limit,
        )
        if retry is None:
            self._post("complete", entry)
        else:
            self._post("attempt", (entry, retry))

    def _arm(self, position: int, fire_at: float, name: str) -> None:
        delay = max(0.0, fire_at - self._clock())
        handle = self._loop.call_later(delay, self._post, "fired", position)
        self._timers[position] = _Timer(fire_at, name, handle)

    # -- plumbing --------------------------------------------------------------
    def _post(self, kind: str, payload: Any) -> None:
        self._events.append((kind, payload))
        self._wake.set()

    def _stamp(self, entry: Entry) -> None:
        entry.seq = self._seq
        entry.epoch = self.epoch
        self._seq += 1

    def _cleanup(self) -> None:
        for timer in self._timers.values():
            timer.handle.cancel()
        for _, handle in self._retries.values():
            handle.cancel()
        for task in self._active.values():
            task.cancel()
        self._timers.clear()
        self._retries.clear()
        self._active.clear()
        if self.instance is not None:
            self.instance.abandon()  # also cancels tasks a finished workflow left behind


def _ended(outcome: Outcome) -> RunUpdate:
    error = json.dumps(outcome.error) if outcome.error is not None else None
    return RunUpdate(status=outcome.status, result=outcome.result, error=error, release=True)

"""What every running workflow instance shares: positions, matching, outcomes.

An instance executes one run's workflow code. Each durable operation the code
calls gets the next position; if the journal already holds that position the
operation is answered from it (after checking it is the same operation),
otherwise the instance emits a *command* for the driver (start a step, arm a
timer) and new journal *entries* (a value of ``ctx.now()``, a timer's due
time). The driver writes the entries, runs the commands and hands back
completions. The instance never touches storage.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _serde
from .._errors import (
    ChildFailed,
    DurablyError,
    NonDeterminismError,
    PayloadError,
    StepFailed,
    WaitTimeout,
    describe_exception,
)
from .._retry import Retry
from .journal import COMPLETIONS, Entry, History, Kind, mismatch

current_instance: contextvars.ContextVar[Instance | None] = contextvars.ContextVar(
    "durably_instance", default=None
)
current_step_key: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "durably_step_key", default=None
)


class Abandoned(BaseException):
    """Raised in workflow code that this worker stopped executing.

    The run was suspended out of memory, lost its lease, or diverged. A
    BaseException so that ``except Exception`` in user code lets it through;
    ``finally`` blocks still run, but any durable operation they call raises
    this again instead of doing anything.
    """


@dataclass(slots=True)
class StepCall:
    """Command: execute a step (attempt ``attempt``, not before ``not_before``)."""

    position: int
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    retry: Retry
    timeout: float | None
    loc: str | None
    attempt: int = 1
    not_before: float = 0.0


@dataclass(slots=True)
class TimerCall:
    """Command: fire the timer at ``position`` at ``fire_at`` (epoch seconds)."""

    position: int
    name: str
    fire_at: float


@dataclass(slots=True)
class WaitCall:
    """Command: hand the next signal on ``topic`` to this wait (until ``deadline``)."""

    position: int
    topic: str
    deadline: float | None


@dataclass(slots=True)
class ChildSpec:
    """What it takes to create a child run."""

    workflow: str
    version: str
    args: str
    deadline: float | None = None


@dataclass(slots=True)
class ChildCall:
    """Command: create the child run (unless ``spec`` is None) and await its end."""

    position: int
    child_id: str
    workflow: str
    spec: ChildSpec | None


@dataclass(slots=True)
class Forget:
    """Command: the code stopped waiting on the operation at ``position``."""

    position: int


Command = StepCall | TimerCall | WaitCall | ChildCall | Forget


@dataclass(slots=True)
class Outcome:
    """How the code ended: ``completed`` (result JSON) or ``failed`` (error)."""

    status: str
    result: str | None = None
    error: dict[str, str] | None = None
    diverged: bool = False


@dataclass
class RunInfo:
    """What an instance needs to know about its run."""

    workflow: str
    run_id: str
    history: History
    clock: Callable[[], float]
    payload_limit: int = _serde.DEFAULT_MAX_PAYLOAD_BYTES
    result_type: Any = Any
    meta: dict[str, Any] = field(default_factory=dict)


class Instance:
    """Base of the async and the thread-backed instance."""

    is_async = True

    def __init__(self, info: RunInfo) -> None:
        self.info = info
        self.workflow = info.workflow
        self.run_id = info.run_id
        self.history = info.history
        self.clock = info.clock
        self.outcome: Outcome | None = None
        self.abandoned = False
        self.new_entries: list[Entry] = []
        self.commands: list[Command] = []
        self._next_position = 0
        self._result_types: dict[int, Any] = {}
        self.child_ids: set[str] = set()  # of the children this run started
        self._names: dict[int, str] = {}
        self.cancel_reason: str | None = None  # cancellation asked for
        self.cancel_delivered = False  # CancelledError raised in the code

    # -- driver side -------------------------------------------------------
    async def start(self) -> None:
        raise NotImplementedError

    def deliver(self, entry: Entry) -> None:
        raise NotImplementedError

    def wants(self, position: int) -> bool:
        """Whether the code still waits on the operation at ``position``."""
        raise NotImplementedError

    async def settle(self) -> None:
        raise NotImplementedError

    def abandon(self) -> None:
        raise NotImplementedError

    def drain(self) -> tuple[list[Entry], list[Command]]:
        entries, commands = self.new_entries, self.commands
        self.new_entries, self.commands = [], []
        return entries, commands

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def step_key(self, position: int) -> str:
        return f"{self.run_id}:{position}"

    # -- matching ------------------------------------------------------------
    def _issue(
        self,
        op: str,
        name: str,
        loc: str | None,
        aliases: Sequence[str] = (),
        *,
        cancellable: bool = True,
    ) -> tuple[int, list[Entry]]:
        if self.abandoned or (self.outcome is not None and self.outcome.diverged):
            raise Abandoned()
        position = self._next_position
        self._next_position += 1
        recorded = self.history.at(position)
        if recorded:
            first = recorded[0]
            if first.kind == Kind.CANCEL_AT:
                self._raise_cancel(json.loads(first.payload or "{}").get("reason"))
            if first.op != op or (first.name != name and first.name not in aliases):
                self._diverge(position, first, (op, name, loc))
        elif cancellable and self.cancel_reason is not None and not self.cancel_delivered:
            # Cancellation asked for while a step ran: raise it at this, the
            # next operation, and journal where so a replay raises it here too.
            payload = json.dumps({"reason": self.cancel_reason})
            self.new_entries.append(
                Entry(position, Kind.CANCEL_AT, "cancel", payload, loc, self.clock())
            )
            self._raise_cancel(self.cancel_reason)
        self._names[position] = name
        return position, recorded

    def _raise_cancel(self, reason: str | None) -> None:
        self.cancel_delivered = True
        self.cancel_reason = reason or self.cancel_reason or "cancelled"
        raise asyncio.CancelledError(self.cancel_reason)

    # -- cancellation ----------------------------------------------------------
    def request_cancel(self, reason: str) -> None:
        """Arm cancellation: raised at the next operation, or delivered by the driver."""
        if self.cancel_reason is None:
            self.cancel_reason = reason

    def deliver_cancel(self, entry: Entry) -> None:
        """Raise ``CancelledError`` where the code waits now (a ``cancel`` entry)."""
        raise NotImplementedError

    def _cancel_entry_reason(self, entry: Entry) -> str:
        reason = json.loads(entry.payload or "{}").get("reason") or "cancelled"
        self.cancel_delivered = True
        self.cancel_reason = str(reason)
        return self.cancel_reason

    def _end_cancelled(self, result: str | None = None) -> None:
        if self.outcome is None:
            self.outcome = Outcome(
                "cancelled",
                result=result,
                error={
                    "type": "WorkflowCancelled",
                    "message": self.cancel_reason or "cancelled",
                    "traceback": "",
                },
            )

    def _diverge(
        self,
        position: int,
        recorded: Entry | None,
        requested: tuple[str, str, str | None] | None,
    ) -> None:
        err = mismatch(
            workflow=self.workflow,
            run_id=self.run_id,
            position=position,
            recorded=recorded,
            requested=requested,
        )
        self._set_divergence(err)
        raise Abandoned()

    def _set_divergence(self, err: NonDeterminismError) -> None:
        if self.outcome is None or not self.outcome.diverged:
            self.outcome = Outcome(
                "failed",
                error={"type": "NonDeterminismError", "message": str(err), "traceback": ""},
                diverged=True,
            )

    def check_leftovers(self) -> None:
        """After a replay: journal entries the code never asked for diverge."""
        if self.outcome is not None and (self.outcome.diverged or self.outcome.status == "failed"):
            # Failing while replaying leaves the rest of the journal unused;
            # the error that failed it says more than "diverged" would.
            return
        leftover = self.history.pending[0] if self.history.pending else None
        if leftover is None and self.outcome is not None:
            beyond = [p for p in self.history.by_position if p >= self._next_position]
            if beyond:
                leftover = self.history.at(min(beyond))[0]
        if leftover is not None:
            self._set_divergence(
                mismatch(
                    workflow=self.workflow,
                    run_id=self.run_id,
                    position=leftover.position,
                    recorded=leftover,
                    requested=None,
                )
            )

    # -- operations shared by both flavours ---------------------------------
    def step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry,
        timeout: float | None,
        aliases: Sequence[str],
        loc: str | None,
    ) -> Any:
        """Issue a step: an awaitable in async code, the value in sync code."""
        return self._pending(
            *self._begin_step(name, fn, args, kwargs, retry, timeout, aliases, loc)
        )

    def sleep(self, name: str, fire_at: float, loc: str | None) -> Any:
        """Issue a timer firing at ``fire_at`` (epoch seconds)."""
        return self._pending(*self._begin_timer(name, fire_at, loc))

    def wait_for(self, topic: str, deadline: float | None, loc: str | None) -> Any:
        """Issue a wait for the next signal on ``topic`` (until ``deadline``)."""
        position, recorded = self._issue("signal", topic, loc)
        done = None
        if recorded:
            deadline = json.loads(recorded[0].payload or "{}").get("deadline")
            done = next((e for e in recorded if e.kind in COMPLETIONS), None)
        else:
            payload = json.dumps({"deadline": deadline})
            self.new_entries.append(Entry(position, Kind.WAIT, topic, payload, loc, self.clock()))
        if done is None:
            self.commands.append(WaitCall(position, topic, deadline))
        return self._pending(position, done)

    def set_event(self, key: str, value: str, loc: str | None) -> None:
        """Publish ``value`` (JSON) under ``key``; journaled once."""
        position, recorded = self._issue("event", key, loc, cancellable=False)
        if not recorded:
            self.new_entries.append(Entry(position, Kind.EVENT, key, value, loc, self.clock()))

    def begin_child(
        self,
        spec: ChildSpec,
        child_id: str | None,
        result_type: Any,
        loc: str | None,
    ) -> tuple[int, str, Entry | None]:
        """Issue a child run; returns position, child id and recorded end (if any)."""
        position, recorded = self._issue("child", spec.workflow, loc)
        self._result_types[position] = result_type
        done = None
        if recorded:
            child_id = str(json.loads(recorded[0].payload or "{}").get("id"))
            done = next((e for e in recorded if e.kind in COMPLETIONS), None)
            if done is None:
                self.commands.append(ChildCall(position, child_id, spec.workflow, None))
        else:
            child_id = child_id or f"{self.run_id}/{position}"
            payload = json.dumps({"id": child_id})
            self.new_entries.append(
                Entry(position, Kind.CHILD, spec.workflow, payload, loc, self.clock())
            )
            self.commands.append(ChildCall(position, child_id, spec.workflow, spec))
        self.child_ids.add(child_id)
        return position, child_id, done

    def _pending(self, position: int, recorded: Entry | None) -> Any:
        """What the code gets for an issued operation (see the subclasses)."""
        raise NotImplementedError

    def deferred(self, position: int, recorded: Entry | None) -> Callable[[], Any]:
        """Like ``_pending`` but collected later (``ctx.start_child``)."""
        raise NotImplementedError

    def record_value(self, op: str, kind: str, make: Callable[[], Any], loc: str | None) -> Any:
        """``ctx.now()``, ``ctx.random()``, ``ctx.uuid4()``: journal a value once."""
        position, recorded = self._issue(op, op, loc, cancellable=False)
        if recorded:
            return json.loads(recorded[0].payload or "null")
        value = make()
        self.new_entries.append(Entry(position, kind, op, json.dumps(value), loc, self.clock()))
        return value

    def _begin_step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry,
        timeout: float | None,
        aliases: Sequence[str],
        loc: str | None,
    ) -> tuple[int, Entry | None]:
        """Issue a step; returns its position and its recorded completion, if any."""
        position, recorded = self._issue("step", name, loc, aliases)
        self._result_types[position] = _serde.return_type(fn)
        done = None
        attempts = 0
        not_before = 0.0
        for entry in recorded:
            if entry.kind in COMPLETIONS:
                done = entry
            elif entry.kind == Kind.ATTEMPT:
                attempts += 1
                not_before = float(json.loads(entry.payload or "{}").get("next_at", 0.0))
        if done is None:
            self.commands.append(
                StepCall(
                    position,
                    name,
                    fn,
                    args,
                    kwargs,
                    retry,
                    timeout,
                    loc,
                    attempt=attempts + 1,
                    not_before=not_before,
                )
            )
        return position, done

    def _begin_timer(self, name: str, fire_at: float, loc: str | None) -> tuple[int, Entry | None]:
        """Issue a timer; returns its position and its recorded firing, if any."""
        position, recorded = self._issue("timer", name, loc)
        fired = None
        if recorded:
            fire_at = float(json.loads(recorded[0].payload or "{}").get("fire_at", fire_at))
            fired = next((e for e in recorded if e.kind == Kind.FIRED), None)
        else:
            self.new_entries.append(
                Entry(
                    position, Kind.TIMER, name, json.dumps({"fire_at": fire_at}), loc, self.clock()
                )
            )
        if fired is None:
            self.commands.append(TimerCall(position, name, fire_at))
        return position, fired

    def completion_value(self, entry: Entry) -> tuple[Any, BaseException | None]:
        """The value (or error) a completion entry hands back to the code."""
        if entry.kind == Kind.STEP:
            tp = self._result_types.get(entry.position, Any)
            try:
                return _serde.decode(entry.payload, tp), None
            except Exception as exc:  # noqa: BLE001 - reported to the workflow code
                return None, PayloadError(
                    f"the journaled result of step {entry.name!r} (position "
                    f"{entry.position}) no longer decodes as {tp!r}: {exc}"
                )
        if entry.kind == Kind.STEP_FAILED:
            return None, step_failed(entry)
        if entry.kind == Kind.SIGNAL:
            return json.loads(entry.payload or "null"), None
        if entry.kind == Kind.WAIT_TIMEOUT:
            return None, WaitTimeout(
                f"no signal {entry.name!r} arrived before the wait's timeout (run {self.run_id!r})"
            )
        if entry.kind == Kind.CHILD_DONE:
            return self._child_outcome(entry)
        return None, None

    def _child_outcome(self, entry: Entry) -> tuple[Any, BaseException | None]:
        info = json.loads(entry.payload or "{}")
        if info.get("status") == "completed":
            tp = self._result_types.get(entry.position, Any)
            try:
                return _serde.decode(info.get("result"), tp), None
            except Exception as exc:  # noqa: BLE001 - reported to the workflow code
                return None, PayloadError(
                    f"the result of child workflow {entry.name!r} no longer decodes as "
                    f"{tp!r}: {exc}"
                )
        error = info.get("error") or {}
        error_type = error.get("type", "Error")
        message = error.get("message", "")
        verb = "was cancelled" if info.get("status") == "cancelled" else "failed"
        return None, ChildFailed(
            f"child workflow {entry.name!r} run {info.get('id')!r} {verb}: {error_type}: {message}",
            error_type=error_type,
            message=message,
            traceback=error.get("traceback", ""),
        )

    # -- ending ----------------------------------------------------------------
    def _finish(self, result: Any) -> None:
        if self.outcome is not None:
            return
        try:
            text = _serde.encode(
                result,
                what=f"the result of workflow {self.workflow!r}",
                limit=self.info.payload_limit,
            )
        except PayloadError as exc:
            self._fail(exc)
            return
        if self.cancel_delivered:
            self._end_cancelled(text)  # it returned after compensating: still cancelled
        else:
            self.outcome = Outcome("completed", result=text)

    def fail_stuck(self) -> None:
        """The code settled waiting on nothing durable; no event can wake it."""
        self._fail(
            DurablyError(
                f"workflow {self.workflow!r} run {self.run_id!r} waits on something that is "
                "not a durable operation (an asyncio.Event or Future nothing durable will "
                "complete), so it could never resume; wait with ctx.wait_for, ctx.sleep, "
                "steps or children instead"
            )
        )

    def _fail(self, exc: BaseException) -> None:
        if self.outcome is None:
            self.outcome = Outcome("failed", error=describe_exception(exc))


def step_failed(entry: Entry) -> StepFailed:
    info = json.loads(entry.payload or "{}")
    error_type = info.get("type", "Exception")
    message = info.get("message", "")
    attempts = int(info.get("attempts", 0))
    plural = "s" if attempts != 1 else ""
    return StepFailed(
        f"step {entry.name!r} failed after {attempts} attempt{plural}: {error_type}: {message}",
        error_type=error_type,
        message=message,
        traceback=info.get("traceback", ""),
        step=entry.name,
        attempts=attempts,
    )


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_short_names: dict[str, str | None] = {}


def _short(filename: str) -> str | None:
    """Display name of a source file, or None for files inside durably itself."""
    try:
        return _short_names[filename]
    except KeyError:
        pass
    short: str | None
    if filename.startswith(_PACKAGE_DIR) or filename.startswith("<frozen"):
        short = None
    elif os.sep + "asyncio" + os.sep in filename and "site-packages" not in filename:
        short = None  # asyncio.sleep / wait_for calling the loop: blame the caller
    else:
        try:
            rel = os.path.relpath(filename)
        except ValueError:
            rel = filename
        short = filename if rel.startswith("..") else rel
    _short_names[filename] = short
    return short


def caller_location() -> str | None:
    """``file:line`` of the user code that called into durably."""
    frame = sys._getframe(1)
    known = _short_names
    while frame is not None:
        filename = frame.f_code.co_filename
        short = known[filename] if filename in known else _short(filename)
        if short is not None:
            return f"{short}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return None

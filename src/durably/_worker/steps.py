"""Executing one attempt of a step and turning its outcome into an entry."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import json
import sys
import types
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .. import _serde
from .._engine.instance import StepCall, current_step_key
from .._engine.journal import Entry, Kind
from .._errors import PayloadError, StepTimeout, describe_exception
from .._faults import fault

# A step's commonest results, which inspect.isawaitable() need not look at.
_NOT_AWAITABLE = frozenset({int, str, float, bool, type(None), list, dict, tuple})


def is_async_callable(fn: Any) -> bool:
    if type(fn) is types.FunctionType and fn.__code__.co_flags & inspect.CO_COROUTINE:
        return True  # an async def (the common step): what inspect finds, sooner
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - async callable objects
    )


_confirmed: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "durably_lease_confirmed", default=None
)


def lease_confirmed(at: float) -> None:
    """Note, in the current context, when the run's lease was last known to hold."""
    _confirmed.set(at)


def lease_confirmed_at() -> float | None:
    """When (worker clock) the lease was last confirmed before this step attempt began.

    Not public: the chaos runner reads it to tell a zombie that started a step
    without checking (a bug) from one frozen between its check and the step's
    first line (the window every lease leaves; docs/guarantees.md).
    """
    return _confirmed.get()


class LeaseStale(Exception):
    """The run's lease went stale while a sync step waited for a thread: the
    step did not run; confirm the lease before trying again."""


def _guarded(guard: Callable[[], bool], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Checked in the step's own thread, right before the effect: a job can wait
    # in the pool's queue (busy threads, a frozen process) long after the
    # driver checked the lease, and another worker may have taken over since.
    if not guard():
        raise LeaseStale()
    return fn(*args, **kwargs)


async def run_attempt(
    call: StepCall,
    key: str,
    executor: Executor,
    loop: asyncio.AbstractEventLoop,
    guard: Callable[[], bool] | None = None,
) -> Any:
    """Run ``call.fn`` once (with its timeout) and return its raw result.

    ``guard`` (a sync step only) is checked in the step's thread just before
    it runs, and again before a coroutine it returned is awaited; if False,
    :class:`LeaseStale` is raised and nothing (more) ran.
    """
    current_step_key.set(key)
    if call.timeout is None:
        return await _call(call, executor, loop, guard)
    if sys.version_info >= (3, 11):
        # In this task: the step's first line runs right after the lease
        # check, where wait_for would start it in a task of its own, a loop
        # iteration later.
        limit = asyncio.timeout(call.timeout)
        try:
            async with limit:
                return await _call(call, executor, loop, guard)
        except TimeoutError:
            if not limit.expired():
                raise  # the step's own TimeoutError (a socket's, say): its error
            raise _timed_out(call) from None
    try:
        return await asyncio.wait_for(_call(call, executor, loop, guard), call.timeout)
    except asyncio.TimeoutError:
        raise _timed_out(call) from None


async def _call(
    call: StepCall,
    executor: Executor,
    loop: asyncio.AbstractEventLoop,
    guard: Callable[[], bool] | None,
) -> Any:
    fn, args, kwargs = call.fn, call.args, call.kwargs
    if is_async_callable(fn):
        result = await fn(*args, **kwargs)
    else:
        ctx = contextvars.copy_context()
        if guard is not None:
            bound = functools.partial(ctx.run, _guarded, guard, fn, *args, **kwargs)
        else:
            bound = functools.partial(ctx.run, fn, *args, **kwargs)
        result = await loop.run_in_executor(executor, bound)
        if inspect.isawaitable(result) and guard is not None and not guard():
            if inspect.iscoroutine(result):
                result.close()
            raise LeaseStale()  # the thread hop took past the lease
    if type(result) not in _NOT_AWAITABLE and inspect.isawaitable(result):
        # a def wrapping an async call: finish it here
        result = await result
    return result


def _timed_out(call: StepCall) -> StepTimeout:
    return StepTimeout(
        f"step {call.name!r} attempt {call.attempt} ran past its {call.timeout}s timeout"
    )


def success_entry(call: StepCall, result: Any, now: float, limit: int) -> Entry:
    payload = _serde.encode(result, what=f"the result of step {call.name!r}", limit=limit)
    return Entry(call.position, Kind.STEP, call.name, payload, call.loc, now)


def failure_entry(call: StepCall, error: BaseException, now: float) -> Entry:
    info: dict[str, Any] = describe_exception(error)
    info["attempts"] = call.attempt
    return Entry(call.position, Kind.STEP_FAILED, call.name, json.dumps(info), call.loc, now)


def attempt_entry(call: StepCall, error: BaseException, now: float, next_at: float) -> Entry:
    info: dict[str, Any] = describe_exception(error)
    info["attempt"] = call.attempt
    info["next_at"] = next_at
    return Entry(call.position, Kind.ATTEMPT, call.name, json.dumps(info), call.loc, now)


async def execute(
    call: StepCall,
    key: str,
    executor: Executor,
    loop: asyncio.AbstractEventLoop,
    clock: Callable[[], float],
    limit: int,
    guard: Callable[[], bool] | None = None,
) -> tuple[Entry, StepCall | None]:
    """One attempt. Returns the entry to journal and, if retrying, the next call."""
    try:
        fault("step.before", call.name)
        try:
            result = await run_attempt(call, key, executor, loop, guard)
        finally:
            fault("step.after_effect", call.name)
        return success_entry(call, result, clock(), limit), None
    except PayloadError as exc:
        return failure_entry(call, exc, clock()), None
    except (asyncio.CancelledError, LeaseStale):
        raise  # the caller tells its own cancellation from the step's
    except BaseException as exc:  # noqa: BLE001 - a step's error is data, even SystemExit
        if not call.retry.retries(call.attempt, exc):
            return failure_entry(call, exc, clock()), None
        return retry_entries(call, exc, clock())


def retry_entries(call: StepCall, error: BaseException, now: float) -> tuple[Entry, StepCall]:
    """The ``attempt`` entry of a failed attempt, and the call of the next one."""
    next_at = now + call.retry.delay(call.attempt)
    retry = StepCall(
        call.position,
        call.name,
        call.fn,
        call.args,
        call.kwargs,
        call.retry,
        call.timeout,
        call.loc,
        attempt=call.attempt + 1,
        not_before=next_at,
    )
    return attempt_entry(call, error, now, next_at), retry

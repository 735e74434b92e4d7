"""Async workflows: a private event loop per run that only runs when driven.

The workflow coroutine and every task it creates (``asyncio.gather``,
``asyncio.wait``) live on a :class:`WorkflowLoop`. The driver runs that loop
until nothing is ready (the code *settled*: every branch waits on a durable
operation), then hands back one completion at a time, settling in between.
Because a replay hands back the journal's completions in the order they were
written, with the same settling, the code sees exactly the interleaving it
saw live. Timers set through asyncio (``asyncio.sleep``, ``wait_for``,
``asyncio.timeout``) become durable timers.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from .._errors import DurablyError
from .instance import (
    Abandoned,
    Forget,
    Instance,
    RunInfo,
    caller_location,
    current_instance,
)
from .journal import Entry, Kind

log = logging.getLogger("durably.workflow")

_get_running_loop = asyncio.events._get_running_loop
_set_running_loop = asyncio.events._set_running_loop


class WorkflowIOError(DurablyError):
    """Workflow code tried to do I/O or block; that belongs in a step."""


def _no_io(what: str) -> Callable[..., Any]:
    def refuse(self: WorkflowLoop, *args: Any, **kwargs: Any) -> Any:
        raise WorkflowIOError(
            f"workflow code cannot call loop.{what}(): workflow code must be "
            "deterministic orchestration. Move I/O and blocking work into a step "
            "(@app.step or ctx.run)."
        )

    return refuse


class WorkflowLoop(asyncio.AbstractEventLoop):
    """The event loop of one run's workflow code (see module docstring)."""

    def __init__(self, instance: AsyncInstance) -> None:
        # Weak: the instance owns its loop, and a run's objects that refer to
        # each other only through weak links are freed as soon as the run is
        # dropped, not by the cyclic garbage collector (about 27 objects a run).
        self._owner = weakref.ref(instance)
        # For what asyncio reports after the run was dropped (a task of its
        # code that ignored its cancellation, freed by the collector).
        self._names = (instance.workflow, instance.run_id)
        self._ready: deque[asyncio.Handle] = deque()
        self._running = False
        self.tasks: list[asyncio.Task[Any]] = []

    @property
    def _instance(self) -> AsyncInstance:
        instance = self._owner()
        if instance is None:  # something of a dropped run's workflow kept and used
            raise DurablyError("this workflow loop's run is no longer driven here")
        return instance

    def run_ready(self) -> None:
        previous = _get_running_loop()
        _set_running_loop(self)
        self._running = True
        try:
            ready = self._ready
            while ready:
                handle = ready.popleft()
                if not handle._cancelled:
                    try:
                        handle._run()
                    except (SystemExit, KeyboardInterrupt) as exc:
                        # asyncio re-raises these out of a task; in workflow
                        # code they fail the run, never the worker.
                        self._instance.fail_from_loop(exc)
        finally:
            self._running = False
            _set_running_loop(previous)

    # -- what asyncio's futures, tasks, gather, wait and timeout use ---------
    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        return self._instance.loop_timer(when, callback, args, context)

    def call_later(  # type: ignore[override]
        self, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        return self.call_at(self.time() + delay, callback, *args, context=context)

    def time(self) -> float:
        return self._instance.clock()

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self, coro: Any, *, name: str | None = None, context: Any = None
    ) -> asyncio.Task[Any]:
        if context is None:
            task = asyncio.Task(coro, loop=self, name=name)
        else:
            task = asyncio.Task(coro, loop=self, name=name, context=context)  # type: ignore[call-arg]
        # Kept here: asyncio.all_tasks() would scan every task of the process.
        self.tasks.append(task)
        return task

    def get_task_factory(self) -> None:  # type: ignore[override]
        return None

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return self._running

    def is_closed(self) -> bool:
        return False

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        instance = self._owner()
        if instance is not None:  # a dropped run has no timer left to forget
            instance.cancel_loop_timer(handle)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, (Abandoned, asyncio.CancelledError)):
            return
        log.warning(
            "workflow %s run %s: %s",
            *self._names,
            context.get("message", "unhandled error in workflow code"),
            exc_info=exc if isinstance(exc, BaseException) else None,
        )

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.call_exception_handler(context)

    call_soon_threadsafe = _no_io("call_soon_threadsafe")  # type: ignore[assignment]
    run_in_executor = _no_io("run_in_executor")  # type: ignore[assignment]
    getaddrinfo = _no_io("getaddrinfo")
    create_connection = _no_io("create_connection")
    create_server = _no_io("create_server")
    subprocess_exec = _no_io("subprocess_exec")
    subprocess_shell = _no_io("subprocess_shell")
    sock_connect = _no_io("sock_connect")
    sock_recv = _no_io("sock_recv")
    sock_sendall = _no_io("sock_sendall")
    add_reader = _no_io("add_reader")  # type: ignore[assignment]
    add_writer = _no_io("add_writer")  # type: ignore[assignment]
    run_until_complete = _no_io("run_until_complete")
    run_forever = _no_io("run_forever")


async def _result_of(fut: asyncio.Future[Any]) -> Any:
    return await fut


def _settle_future(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class AsyncInstance(Instance):
    """An ``async def`` workflow executing on its own :class:`WorkflowLoop`."""

    is_async = True

    def __init__(self, info: RunInfo, body: Callable[[], Awaitable[Any]]) -> None:
        super().__init__(info)
        self._body: Callable[[], Awaitable[Any]] | None = body
        self._loop = WorkflowLoop(self)  # type: ignore[abstract]
        self._waiting: dict[int, Callable[[Any, BaseException | None], None]] = {}
        self._loop_timers: dict[int, int] = {}
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        self._task = self._loop.create_task(self._main())
        self._loop.run_ready()
        pending = self.history.pending
        while pending and self.outcome is None:
            if pending[0].kind == Kind.CANCEL:
                self.deliver_cancel(pending.popleft())
            elif pending[0].position in self._waiting:
                self._resolve(pending.popleft())
            else:
                break
            self._loop.run_ready()
        self.check_leftovers()
        if self.outcome is not None and self.outcome.diverged:
            self.abandon()

    def wants(self, position: int) -> bool:
        return position in self._waiting

    def deliver(self, entry: Entry) -> None:
        self._resolve(entry)

    async def settle(self) -> None:
        self._loop.run_ready()

    def _resolve(self, entry: Entry) -> None:
        waiter = self._waiting.pop(entry.position, None)
        if waiter is not None:
            value, exc = self.completion_value(entry)
            waiter(value, exc)

    def deliver_cancel(self, entry: Entry) -> None:
        reason = self._cancel_entry_reason(entry)
        if self._task is not None and not self._task.done():
            self._task.cancel(reason)

    async def _main(self) -> None:
        current_instance.set(self)
        # Called once: kept, it would hold the run's Context, which holds this.
        body, self._body = self._body, None
        assert body is not None
        try:
            result = await body()
        except Abandoned:
            return
        except asyncio.CancelledError:
            if self.cancel_delivered:
                self._end_cancelled()
            elif not self.abandoned:
                self._fail(DurablyError("the workflow's task was cancelled"))
        except RuntimeError as exc:
            if "attached to a different loop" in str(exc):
                self._fail(
                    WorkflowIOError(
                        "workflow code awaited something that is not a durable "
                        f"operation ({exc}). Workflow code may only await durably "
                        "operations (steps, ctx.sleep, ...) and asyncio primitives; "
                        "move I/O into a step."
                    )
                )
            else:
                self._fail(exc)
        except Exception as exc:  # noqa: BLE001 - the run fails with it
            self._fail(exc)
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co fail the run too
            self._fail(exc)
        else:
            if not self.abandoned:
                self._finish(result)
        finally:
            self._task = None  # the task holds a context that holds this

    def fail_from_loop(self, exc: BaseException) -> None:
        if not self.abandoned:
            self._fail(exc)

    # -- operations ----------------------------------------------------------
    def _future(self, position: int) -> asyncio.Future[Any]:
        # A recorded completion is handed back in journal order by start().
        fut = self._loop.create_future()
        self._waiting[position] = partial(_settle_future, fut)
        fut.add_done_callback(partial(self._forget_if_cancelled, position))
        return fut

    def _pending(self, position: int, recorded: Entry | None) -> Coroutine[Any, Any, Any]:
        # The operation is issued now (its position is fixed at call time); what
        # the code gets is a coroutine, like any async function's call, so it
        # works with await, gather, create_task and TaskGroup alike.
        return _result_of(self._future(position))

    def deferred(self, position: int, recorded: Entry | None) -> Callable[[], Any]:
        fut = self._future(position)
        return lambda: fut

    def _forget_if_cancelled(self, position: int, fut: asyncio.Future[Any]) -> None:
        # The code gave up on this operation (asyncio.wait_for, a cancelled
        # task): stop waiting for it, so e.g. no signal is consumed for it.
        if fut.cancelled() and self._waiting.pop(position, None) is not None:
            self.commands.append(Forget(position))

    def loop_timer(
        self, when: float, callback: Callable[..., Any], args: tuple[Any, ...], context: Any
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, args, self._loop, context)
        position, _ = self._begin_timer("asyncio-timer", when, caller_location())
        self._loop_timers[id(handle)] = position

        def fire(value: Any, exc: BaseException | None) -> None:
            self._loop_timers.pop(id(handle), None)
            if exc is None and not handle.cancelled():
                self._loop._ready.append(handle)

        self._waiting[position] = fire
        return handle

    def cancel_loop_timer(self, handle: asyncio.TimerHandle) -> None:
        position = self._loop_timers.pop(id(handle), None)
        if position is not None and self._waiting.pop(position, None) is not None:
            self.commands.append(Forget(position))

    def abandon(self) -> None:
        if self.abandoned:
            return
        self.abandoned = True
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for waiter in waiting:
            waiter(None, Abandoned())
        self._loop.run_ready()
        for task in self._loop.tasks:
            if not task.done():
                task.cancel()
        self._loop.run_ready()
        self._loop.tasks.clear()
        self._loop_timers.clear()

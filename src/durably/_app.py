"""``App``: registry of workflows and steps, client API, worker entry points."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import inspect
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from . import _config, _serde
from ._batching import Batcher, BatcherClosed
from ._checks import RUN_ID_LIMIT, check_count, check_name, step_options, to_seconds
from ._engine.instance import current_instance
from ._errors import (
    TRANSIENT,
    ConfigurationError,
    DatabaseError,
    PayloadError,
    RunNotFound,
    UnknownWorkflowError,
    WaitTimeout,
)
from ._gc import tune_for_worker
from ._handle import WorkflowHandle
from ._handles import Handles
from ._ids import new_run_id
from ._loops import run_loop
from ._registry import StepDef, WorkflowDef, make_step, source_version
from ._retry import Retry
from ._storage import open_storage
from ._storage.base import (
    CHANNEL_CANCEL,
    CHANNEL_DONE,
    CHANNEL_EVENT,
    CHANNEL_SIGNAL,
    CHANNEL_WORK,
    TERMINAL,
    NewRun,
    RunFilter,
    RunRecord,
    Storage,
)
from ._waiting import ChangeWaiter, Hub, RunWatcher
from ._worker.worker import Worker

log = logging.getLogger("durably")
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
P = ParamSpec("P")

# Waiters re-read the run at least this often even if no notification came.
_RESULT_POLL = 2.0


class App:
    """A durably application: workflows, steps, a database and workers.

    ``database`` is a URL (``sqlite:///file.db`` or
    ``postgresql://user@host/db``); without it ``DURABLY_DATABASE_URL`` is
    used, else ``sqlite:///durably.db``. ``lease_seconds`` (or
    ``DURABLY_LEASE_SECONDS``) sets how soon a dead worker's runs are taken
    over. ``suspend_after`` is the grace period (seconds) a waiting run stays
    in memory before it is suspended out of it.
    """

    def __init__(
        self,
        name: str = "durably",
        database: str | None = None,
        *,
        lease_seconds: float | None = None,
        max_payload_bytes: int = _serde.DEFAULT_MAX_PAYLOAD_BYTES,
        suspend_after: float = 1.0,
        poll_interval: float = 5.0,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError("App(name): name must be a non-empty string")
        self.name = name
        self.database_url = _config.database_url(database)
        self.lease_seconds = _config.lease_seconds(lease_seconds)
        self.suspend_after = to_seconds(suspend_after, "App(suspend_after=...)")
        self.poll_interval = to_seconds(poll_interval, "App(poll_interval=...)", positive=True)
        # 0: no limit
        self.max_payload_bytes = check_count(max_payload_bytes, "App(max_payload_bytes=...)", 0)
        self.clock: Callable[[], float] = time.time
        self._workflows: dict[str, WorkflowDef] = {}
        self._steps: dict[str, StepDef] = {}
        self._storage: Storage | None = None
        self._storage_lock = threading.Lock()
        self._hub = Hub()
        self._inline = False  # set by durably.testing's simulator
        self._recheck = _RESULT_POLL  # seconds between re-reads while waiting
        self._starts: Batcher[NewRun, tuple[RunRecord, bool]] | None = None
        self._watcher: RunWatcher | None = None
        self._handles = Handles(self)  # given out here; they get their runs' ends
        self._workers: list[Worker] = []  # running in this process
        self._stopping_workers = 0  # left the list, still handing runs back

    def __repr__(self) -> str:
        return f"App({self.name!r}, database={self.database_url!r})"

    async def _off_loop(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking storage call without blocking the caller's event loop.

        In simulation (``inline``) everything runs on the loop thread instead.
        """
        if self._inline:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    # -- registration ----------------------------------------------------------
    @overload
    def workflow(self, fn: F) -> F: ...

    @overload
    def workflow(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        version: str | None = None,
        deadline: float | dt.timedelta | None = None,
    ) -> Callable[[F], F]: ...

    def workflow(
        self,
        fn: Any = None,
        *,
        name: str | None = None,
        version: str | None = None,
        deadline: float | dt.timedelta | None = None,
    ) -> Any:
        """Register a workflow: ``def`` or ``async def``, taking ``ctx`` first.

        ``deadline`` (seconds or a timedelta) cancels each run that long after
        it was started, unless ``app.start(..., deadline=...)`` says otherwise.
        """
        default_deadline = (
            to_seconds(deadline, "@app.workflow(deadline=...)") if deadline is not None else None
        )
        if name is not None:
            check_name(name, "@app.workflow(name=...)")

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError(f"@app.workflow needs a function, got {fn!r}")
            wf_name = name or fn.__name__
            existing = self._workflows.get(wf_name)
            if existing is not None and existing.fn is not fn:
                if _same_function(existing.fn, fn):  # a module imported twice
                    return fn
                raise ConfigurationError(
                    f"two workflows are named {wf_name!r}; pass name=... to one of them"
                )
            definition = WorkflowDef(
                fn=fn,
                name=wf_name,
                version=str(version) if version is not None else source_version(fn),
                is_async=inspect.iscoroutinefunction(fn),
                deadline=default_deadline,
                resolve=self._definition,
            )
            self._workflows[wf_name] = definition
            fn.__durably_workflow__ = definition  # type: ignore[attr-defined]
            return fn

        return register(fn) if fn is not None else register

    @overload
    def step(self, fn: F) -> F: ...

    @overload
    def step(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | None = None,
        aliases: tuple[str, ...] = (),
    ) -> Callable[[F], F]: ...

    def step(
        self,
        fn: Any = None,
        *,
        name: str | None = None,
        retry: Retry | None = None,
        timeout: float | dt.timedelta | None = None,
        aliases: tuple[str, ...] = (),
    ) -> Any:
        """Register a step: its result is journaled once per run and position."""
        policy, seconds, names = step_options("@app.step", retry, timeout, name, aliases)

        def register(fn: F) -> F:
            if not callable(fn):
                raise ConfigurationError(f"@app.step needs a function, got {fn!r}")
            definition = StepDef(
                fn=fn,
                name=name or fn.__name__,
                retry=policy,
                timeout=seconds,
                aliases=names,
                is_async=inspect.iscoroutinefunction(fn),
            )
            self._steps[definition.name] = definition
            return make_step(definition)  # type: ignore[return-value]

        return register(fn) if fn is not None else register

    @property
    def workflows(self) -> dict[str, WorkflowDef]:
        return dict(self._workflows)

    # -- storage -----------------------------------------------------------------
    @property
    def storage(self) -> Storage:
        """The opened (and migrated) database of this app."""
        storage = self._storage  # read once: close() may clear it meanwhile
        if storage is None:
            with self._storage_lock:
                storage = self._storage
                if storage is None:
                    storage = open_storage(self.database_url)
                    try:
                        storage.migrate()
                    except BaseException:
                        storage.close()
                        raise
                    self._storage = storage
        return storage

    def use_database(self, url: str) -> None:
        """Point this app at another database (closes the current connections)."""
        self.close(then_use=_config.database_url(url))

    def close(self, *, then_use: str | None = None) -> None:
        """Close database connections (a new call reopens them)."""
        if self._workers or self._stopping_workers:
            raise ConfigurationError(
                f"app {self.name!r} has a worker running in this process; stop it "
                "(leave `async with app.worker()`) before closing the app or "
                "switching its database"
            )
        with self._storage_lock:
            starts, self._starts = self._starts, None
        if starts is not None:
            starts.close()  # starts made before this call land where they were made
        with self._storage_lock:
            # The URL changes with the swap: a call racing this one reopens
            # the new database, never the old one.
            if then_use is not None:
                self.database_url = then_use
            storage, self._storage = self._storage, None
            watcher, self._watcher = self._watcher, None
            self._handles.reset()
        if watcher is not None:
            watcher.close()
        if storage is not None:
            storage.close()

    def _start_batcher(self) -> Batcher[NewRun, tuple[RunRecord, bool]]:
        with self._storage_lock:
            if self._starts is None or self._starts.closed:
                self._starts = Batcher(self._create_runs, "durably-starts")
            return self._starts

    def _submit_start(self, run: NewRun) -> concurrent.futures.Future[tuple[RunRecord, bool]]:
        try:
            return self._start_batcher().submit(run)
        except BatcherClosed:  # it raced close(): the app reopens, as for any call after
            return self._start_batcher().submit(run)

    def _submit_start_async(self, run: NewRun) -> asyncio.Future[tuple[RunRecord, bool]]:
        try:
            return self._start_batcher().submit_async(run)
        except BatcherClosed:  # as in _submit_start
            return self._start_batcher().submit_async(run)

    def _create_runs(self, runs: Sequence[NewRun]) -> list[tuple[RunRecord, bool]]:
        return self.storage.create_runs(runs)

    def _results(self) -> RunWatcher:
        with self._storage_lock:
            if self._watcher is None:
                self._watcher = RunWatcher(
                    self._fetch_runs,
                    self._fetch_ended_runs,
                    self._not_found,
                    [self._subscribe_storage, self._hub.subscribe],
                    lambda record: record.status in TERMINAL,
                    self._recheck,
                    self._ended_since,
                    self._handles.awaited_soon,
                    functools.partial(self._handles.keep, generation=self._handles.generation),
                    self._handles.held,
                )
            return self._watcher

    def _fetch_runs(self, run_ids: list[str]) -> list[RunRecord]:
        return self.storage.watch_runs(run_ids)

    def _fetch_ended_runs(self, run_ids: list[str]) -> list[RunRecord]:
        return self.storage.ended_runs(run_ids)

    def _ended_since(self, position: int | None) -> tuple[list[str], int] | None:
        return self.storage.ended_since(position)

    def _subscribe_storage(self, listener: Callable[[str, str], None]) -> Callable[[], None]:
        return self.storage.subscribe(listener)

    def _run_ended(self, record: RunRecord) -> None:
        """A worker in this process ended a run: hand the row to its waiters."""
        watcher = self._watcher
        if watcher is not None:
            watcher.resolve(record)
        else:
            self._handles.keep(record)

    def _run_left(self, run_id: str, maybe_ended: bool) -> None:
        """A worker in this process let a run go without ending it."""
        watcher = self._watcher
        if watcher is not None:
            watcher.left(run_id, maybe_ended=maybe_ended)

    # -- starting runs -----------------------------------------------------------
    def _definition(self, workflow: Any) -> WorkflowDef:
        if isinstance(workflow, str):
            definition = self._workflows.get(workflow)
        else:
            definition = getattr(workflow, "__durably_workflow__", None)
            if definition is not None and self._workflows.get(definition.name) is not definition:
                definition = None
        if definition is None:
            known = ", ".join(sorted(self._workflows)) or "none"
            what = (
                workflow if isinstance(workflow, str) else getattr(workflow, "__name__", workflow)
            )
            raise UnknownWorkflowError(
                f"{what!r} is not a workflow of app {self.name!r} (its workflows: {known}); "
                "decorate it with @app.workflow"
            )
        return definition

    def _new_run(
        self,
        workflow: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        run_id: str | None,
        deadline: float | dt.timedelta | None = None,
    ) -> NewRun:
        running = current_instance.get()
        if running is not None:
            raise ConfigurationError(
                f"app.start() was called from the code of workflow {running.workflow!r} "
                f"(run {running.run_id!r}), where it would not be journaled; use "
                "ctx.child(...) or ctx.start_child(...) there (a step may call app.start)"
            )
        definition = self._definition(workflow)
        seconds = (
            to_seconds(deadline, "start(..., deadline=...)")
            if deadline is not None
            else definition.deadline
        )
        if run_id is None:
            run_id = new_run_id()
        else:
            check_name(run_id, "run id", RUN_ID_LIMIT, PayloadError)
        args_text = definition.encode_args(args, kwargs, self.max_payload_bytes)
        now = self.clock()
        return NewRun(
            id=run_id,
            workflow=definition.name,
            version=definition.version,
            args=args_text,
            created_at=now,
            deadline=now + seconds if seconds is not None else None,
        )

    def _create(self, run: NewRun) -> WorkflowHandle:
        if self._inline:
            record, created = self.storage.create_run(run)
        else:  # concurrent starts share transactions
            record, created = self._submit_start(run).result()
        return self._created(run, record, created)

    def _created(self, run: NewRun, record: RunRecord, created: bool) -> WorkflowHandle:
        if record.workflow != run.workflow:
            raise ConfigurationError(
                f"run id {run.id!r} already belongs to a run of workflow {record.workflow!r}, "
                f"not {run.workflow!r}; choose another id"
            )
        if created:
            self._hub.publish(CHANNEL_WORK, run.workflow)
        handle = self._handles.handle(run.id)
        if record.status in TERMINAL:  # an id started before, ended already
            self._handles.keep(record)
        return handle

    async def start(
        self,
        workflow: Any,
        *args: Any,
        id: str | None = None,
        deadline: float | dt.timedelta | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Start ``workflow(*args, **kwargs)`` as a run (idempotent by ``id``).

        Starting an id that exists returns a handle to the existing run; the
        workflow never runs twice for one id. ``deadline`` cancels the run
        that long after it starts (overrides the workflow's default).
        """
        run = self._new_run(workflow, args, kwargs, id, deadline)
        if self._inline:
            return self._create(run)
        local = self._local_worker()
        if local is not None and await local.start_local(run, new_id=id is None):
            # Created already claimed by the worker in this process: no claim,
            # no journal read, no wake-up notification needed.
            return self._handles.handle(run.id)
        record, created = await self._submit_start_async(run)
        return self._created(run, record, created)

    def _local_worker(self) -> Worker | None:
        loop = asyncio.get_running_loop()
        here = [worker for worker in self._workers if worker.loop is loop]
        # One with room now first; else one whose claim in flight may leave some.
        for worker in here:
            if worker.has_room():
                return worker
        for worker in here:
            if worker.may_have_room():
                return worker
        return None

    def start_sync(
        self,
        workflow: Any,
        *args: Any,
        id: str | None = None,
        deadline: float | dt.timedelta | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle:
        """Blocking twin of :meth:`start`."""
        return self._create(self._new_run(workflow, args, kwargs, id, deadline))

    # -- signals, events, cancellation ---------------------------------------------
    def signal_sync(self, run_id: str, topic: str, payload: Any = None) -> None:
        """Blocking twin of :meth:`signal`."""
        check_name(topic, "signal topic")
        text = _serde.encode(
            payload, what=f"the payload of signal {topic!r}", limit=self.max_payload_bytes
        )
        self.storage.send_signal(run_id, topic, text, self.clock())
        self._hub.publish(CHANNEL_SIGNAL, run_id)

    async def signal(self, run_id: str, topic: str, payload: Any = None) -> None:
        """Send ``payload`` to run ``run_id`` on ``topic`` (for ``ctx.wait_for``).

        Signals are kept in order until a wait takes them, even before the
        run started. Raises :class:`RunNotFound` for an unknown run and
        :class:`RunFinished` for one that already ended.
        """
        await self._off_loop(self.signal_sync, run_id, topic, payload)

    def _event(self, run_id: str, key: str) -> tuple[bool, Any]:
        value = self.storage.get_event(run_id, key)
        if value is not None:
            return True, value
        found = self.storage.watch_runs([run_id])  # its end wakes this waiter
        if not found or found[0].status not in TERMINAL:
            return False, None
        record = found[0]
        # An ended run sets nothing more, and everything it set was written by
        # the time it ended: one more look, then waiting would be forever.
        value = self.storage.get_event(run_id, key)
        if value is None:
            raise WaitTimeout(
                f"run {run_id!r} ended ({record.status}) without setting event {key!r}"
            )
        return True, value

    def get_event_sync(
        self, run_id: str, key: str, timeout: float | dt.timedelta | None = None
    ) -> Any:
        """Blocking twin of :meth:`get_event`."""
        limit = None if timeout is None else to_seconds(timeout, "get_event(timeout=...)")
        waiter = self._event_waiter(run_id, None)
        value = _until_sync(functools.partial(self._event, run_id, key), waiter, limit)
        if value is None:
            raise WaitTimeout(f"run {run_id!r} set no event {key!r} within {limit}s")
        return _serde.decode(value)

    async def get_event(
        self, run_id: str, key: str, timeout: float | dt.timedelta | None = None
    ) -> Any:
        """The latest value run ``run_id`` set with ``ctx.set_event(key, ...)``.

        Waits until one is set; raises :class:`WaitTimeout` (a
        ``TimeoutError``) after ``timeout`` (seconds or timedelta).
        """
        limit = None if timeout is None else to_seconds(timeout, "get_event(timeout=...)")
        waiter = self._event_waiter(run_id, asyncio.get_running_loop())
        value = await _until(
            functools.partial(self._off_loop, self._event, run_id, key),
            waiter,
            limit,
            self._recheck,
        )
        if value is None:
            raise WaitTimeout(f"run {run_id!r} set no event {key!r} within {limit}s")
        return _serde.decode(value)

    def _event_waiter(self, run_id: str, loop: asyncio.AbstractEventLoop | None) -> ChangeWaiter:
        def accept(channel: str, payload: str) -> bool:
            # An end wakes it too: an ended run sets nothing more.
            return channel == "" or (channel in (CHANNEL_EVENT, CHANNEL_DONE) and payload == run_id)

        return ChangeWaiter([self.storage.subscribe, self._hub.subscribe], accept, loop)

    def cancel_sync(self, run_id: str, reason: str = "cancelled") -> str:
        """Blocking twin of :meth:`cancel`."""
        status = self.storage.request_cancel(run_id, self.clock(), reason)
        self._hub.publish(CHANNEL_CANCEL, run_id)
        if status == "cancelled":
            self._hub.publish(CHANNEL_DONE, run_id)
        return status

    async def cancel(self, run_id: str, reason: str = "cancelled") -> str:
        """Cancel a run and all its children; returns its status right after.

        ``asyncio.CancelledError`` is raised in the run where it waits (or at
        its next durable operation, after an executing step finishes). A run
        that never started is cancelled at once; an ended run is left as is.
        """
        return await self._off_loop(self.cancel_sync, run_id, reason)

    def get_handle(self, run_id: str) -> WorkflowHandle:
        """A handle to an existing run (checked when used).

        While a handle to the run is held in this process, that same handle
        is returned: a run that ends before it is awaited hands it its
        result, so awaiting it reads nothing.
        """
        return self._handles.handle(run_id)

    async def list_runs(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        return await self._off_loop(
            self.list_runs_sync, status=status, workflow=workflow, limit=limit
        )

    def list_runs_sync(
        self, *, status: str | None = None, workflow: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        return self.storage.list_runs(RunFilter(status=status, workflow=workflow, limit=limit))

    # -- waiting for runs --------------------------------------------------------
    def _record(self, run_id: str) -> RunRecord:
        record = self.storage.get_run(run_id)
        if record is None:
            raise self._not_found(run_id)
        return record

    def _not_found(self, run_id: str) -> RunNotFound:
        return RunNotFound(f"no run with id {run_id!r} in {self.database_url}")

    async def _arecord(self, run_id: str) -> RunRecord:
        return await self._off_loop(self._record, run_id)

    def _waiter(self, run_id: str, loop: asyncio.AbstractEventLoop | None) -> ChangeWaiter:
        storage = self.storage

        def accept(channel: str, payload: str) -> bool:
            return channel == "" or (channel == CHANNEL_DONE and payload == run_id)

        return ChangeWaiter([storage.subscribe, self._hub.subscribe], accept, loop)

    def _terminal(self, run_id: str) -> tuple[bool, RunRecord]:
        record = self._record(run_id)
        return record.status in TERMINAL, record

    async def _await_terminal(self, run_id: str, timeout: float | None) -> RunRecord | None:
        if self._inline:  # simulation: everything on the loop thread
            waiter = self._waiter(run_id, asyncio.get_running_loop())
            return await _until(
                functools.partial(self._off_loop, self._terminal, run_id),
                waiter,
                timeout,
                self._recheck,
            )
        # Both on this loop's thread, so a worker here cannot end the run in between.
        # Unless a worker here hands the result over, the watcher's first read
        # (batched with every other waiter's) says whether it exists or ended.
        loop = asyncio.get_running_loop()
        local = self._held_here(run_id, loop)
        watched = self._results().watch_on(loop, run_id, check=not local)
        # Timed out by a timer on the future itself: wait_for() would wrap it
        # in a coroutine of its own, and its waiter would wake this task one
        # loop turn after the run's end was handed over.
        timer = None if timeout is None else loop.call_later(timeout, _time_out, watched)
        try:
            return await watched  # type: ignore[no-any-return]
        except asyncio.TimeoutError:
            self._results().forget(run_id, watched)
            return await self._off_loop(self._record, run_id)
        except BaseException:  # cancelled
            self._results().forget(run_id, watched)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _await_terminal_sync(self, run_id: str, timeout: float | None) -> RunRecord | None:
        watched = self._results().watch(run_id)
        try:
            return watched.result(timeout)  # type: ignore[no-any-return]
        except concurrent.futures.TimeoutError:
            self._results().forget(run_id, watched)
            return self._record(run_id)

    def _held_here(self, run_id: str, loop: asyncio.AbstractEventLoop | None = None) -> bool:
        """Whether a worker of this process drives the run (on ``loop``, if
        given: only there does it end the run and tell the watcher before a
        waiter on that loop can look, with no await in between)."""
        return any(
            run_id in worker.drivers and (loop is None or worker.loop is loop)
            for worker in self._workers
        )

    # -- workers -------------------------------------------------------------------
    def _make_worker(self, concurrency: int, *, inline: bool = False) -> Worker:
        check_count(concurrency, "worker concurrency", 1)
        if not self._workflows:
            raise ConfigurationError(
                f"app {self.name!r} has no workflows: register some with @app.workflow "
                "before starting a worker"
            )
        return Worker(
            storage=self.storage,
            workflows=self._workflows,
            concurrency=concurrency,
            lease_seconds=self.lease_seconds,
            suspend_after=self.suspend_after,
            poll_interval=self.poll_interval,
            payload_limit=self.max_payload_bytes,
            clock=self.clock,
            publish=self._hub.publish,
            subscribe_local=self._hub.subscribe,
            inline=inline,
            on_ended=self._run_ended,
            on_left=self._run_left,
        )

    @contextlib.asynccontextmanager
    async def worker(self, concurrency: int = 100) -> AsyncIterator[Worker]:
        """Run a worker on the current event loop for the duration of the block."""
        worker = self._make_worker(concurrency)
        await worker.start()
        self._workers.append(worker)
        try:
            yield worker
        finally:
            self._workers.remove(worker)
            self._stopping_workers += 1  # close() must still wait for it
            try:
                await worker.stop()
            finally:
                self._stopping_workers -= 1

    def run_worker(self, concurrency: int = 100, loop: str = "auto") -> None:
        """Run a worker until SIGINT or SIGTERM (blocking).

        ``loop`` picks the event loop: ``"uvloop"`` (``pip install
        'durably[fast]'``; about a sixth less CPU per run), ``"asyncio"``, or
        ``"auto"``: uvloop where it is installed, else asyncio. The process
        is then a worker: its garbage collector runs less often (see
        ``durably/_gc.py``).
        """
        tune_for_worker()
        run_loop(loop, self._serve(concurrency))

    async def _serve(self, concurrency: int) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        async with self.worker(concurrency):
            await stop.wait()


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and code_a.co_filename == code_b.co_filename
        and code_a.co_firstlineno == code_b.co_firstlineno
    )


def _time_out(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(asyncio.TimeoutError())


async def _until(
    fetch: Callable[[], Awaitable[tuple[bool, T]]],
    waiter: ChangeWaiter,
    timeout: float | None,
    recheck: float = _RESULT_POLL,
) -> T | None:
    """Re-check ``fetch`` until it is ready, waking on changes and riding out
    database outages; on timeout return its last value (or raise the outage)."""
    deadline = None if timeout is None else _now() + timeout
    value: T | None = None
    try:
        while True:
            error: DatabaseError | None = None
            try:
                ready, value = await fetch()
            except TRANSIENT as exc:
                ready, error = False, exc
            if ready:
                return value
            remaining = recheck if deadline is None else deadline - _now()
            if remaining <= 0:
                if error is not None:
                    raise error
                return value
            await waiter.wait(min(remaining, recheck))
    finally:
        waiter.close()


def _until_sync(
    fetch: Callable[[], tuple[bool, T]],
    waiter: ChangeWaiter,
    timeout: float | None,
    recheck: float = _RESULT_POLL,
) -> T | None:
    """Blocking twin of :func:`_until`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    value: T | None = None
    try:
        while True:
            error: DatabaseError | None = None
            try:
                ready, value = fetch()
            except TRANSIENT as exc:
                ready, error = False, exc
            if ready:
                return value
            remaining = recheck if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                if error is not None:
                    raise error
                return value
            waiter.wait_sync(min(remaining, recheck))
    finally:
        waiter.close()


def _now() -> float:
    """The running loop's clock (virtual in simulation), for async timeouts."""
    return asyncio.get_running_loop().time()

"""``Context``: what workflow code uses to do anything durable."""

from __future__ import annotations

import datetime as dt
import random as _random
import uuid as _uuid
from collections.abc import Callable
from typing import Any

from . import _serde
from ._checks import RUN_ID_LIMIT, check_name, step_options, to_seconds
from ._engine.instance import ChildSpec, Instance, caller_location, current_step_key
from ._engine.journal import Kind
from ._errors import ConfigurationError, DurablyError, PayloadError
from ._retry import Retry


class ChildHandle:
    """A child run started with ``ctx.start_child``: await it (async) or call
    ``result()`` (sync) for its result."""

    __slots__ = ("_collect", "id", "workflow")

    def __init__(self, child_id: str, workflow: str, collect: Callable[[], Any]) -> None:
        self.id = child_id
        self.workflow = workflow
        self._collect = collect

    def __repr__(self) -> str:
        return f"ChildHandle({self.id!r}, workflow={self.workflow!r})"

    def __await__(self) -> Any:
        return self._collect().__await__()

    def result(self) -> Any:
        """The child's result (sync workflows; blocks until the child ends)."""
        return self._collect()


class Context:
    """Handed to every workflow as its first argument.

    In an ``async def`` workflow, ``run`` and ``sleep`` return awaitables; in
    a ``def`` workflow they block and return the value. Every method here is
    journaled: on replay it returns what it returned the first time.
    """

    __slots__ = ("_instance", "_resolve")

    def __init__(self, instance: Instance, resolve: Callable[[Any], Any] | None = None) -> None:
        self._instance = instance
        self._resolve = resolve

    def _not_in_step(self, what: str) -> None:
        key = current_step_key.get()
        if key is not None:
            raise ConfigurationError(
                f"{what}() was called from inside a step (step key {key!r}): a step's "
                "code is not journaled, so it cannot do durable operations. Call it "
                "from the workflow, or call the other step's function directly"
            )

    @property
    def run_id(self) -> str:
        """The id of this run (the workflow id it was started with)."""
        return self._instance.run_id

    workflow_id = run_id

    @property
    def workflow(self) -> str:
        """The registered name of the workflow."""
        return self._instance.workflow

    @property
    def is_replaying(self) -> bool:
        """True while the code is being re-run from the journal."""
        return bool(self._instance.history.pending)

    def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        retry: Retry | None = None,
        timeout: float | dt.timedelta | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a step named ``name``.

        Its result is journaled; on replay it is returned without calling
        ``fn`` again. ``retry`` and ``timeout`` are reserved keywords (not
        passed to ``fn``); wrap ``fn`` in a lambda to pass those names.
        """
        self._not_in_step("ctx.run")
        check_name(name, "ctx.run(name, fn, ...): name")
        if not callable(fn):
            raise ConfigurationError(f"ctx.run({name!r}, fn): fn must be callable, got {fn!r}")
        policy, seconds, _ = step_options(f"ctx.run({name!r}, ...)", retry, timeout)
        return self._instance.step(name, fn, args, kwargs, policy, seconds, (), caller_location())

    def sleep(
        self, name: str | float | dt.timedelta, duration: float | dt.timedelta | None = None
    ) -> Any:
        """Sleep durably: ``ctx.sleep("cooldown", timedelta(minutes=15))``.

        The run is suspended (no memory, no thread) and wakes on any worker.
        """
        self._not_in_step("ctx.sleep")
        if duration is None and not isinstance(name, str):
            label, duration = "sleep", name
        elif isinstance(name, str) and duration is not None:
            label = name
        else:
            raise ConfigurationError("use ctx.sleep(name, duration)")
        seconds = to_seconds(duration, f"ctx.sleep({label!r}, ...) duration")
        instance = self._instance
        return instance.sleep(label, instance.clock() + seconds, caller_location())

    def sleep_until(self, name: str, when: dt.datetime) -> Any:
        """Sleep durably until ``when`` (an aware datetime)."""
        self._not_in_step("ctx.sleep_until")
        if not isinstance(when, dt.datetime) or when.tzinfo is None:
            raise ConfigurationError(
                f"ctx.sleep_until({name!r}, when): when must be a timezone-aware datetime"
            )
        return self._instance.sleep(name, when.timestamp(), caller_location())

    def wait_for(self, topic: str, timeout: float | dt.timedelta | None = None) -> Any:
        """Wait for the next signal sent to this run on ``topic`` and return its payload.

        Signals sent earlier (even before the run started) are kept in order;
        each is handed to exactly one wait. Raises :class:`WaitTimeout` (a
        ``TimeoutError``) when ``timeout`` passes first; without a timeout it
        waits forever, suspended.
        """
        self._not_in_step("ctx.wait_for")
        check_name(topic, "ctx.wait_for(topic): topic")
        instance = self._instance
        deadline = None
        if timeout is not None:
            deadline = instance.clock() + to_seconds(timeout, f"ctx.wait_for({topic!r}) timeout")
        return instance.wait_for(topic, deadline, caller_location())

    def set_event(self, key: str, value: Any) -> None:
        """Publish ``value`` under ``key``; ``app.get_event(run_id, key)`` reads the latest."""
        self._not_in_step("ctx.set_event")
        check_name(key, "ctx.set_event(key, value): key")
        text = _serde.encode(value, what=f"event {key!r}", limit=self._instance.info.payload_limit)
        self._instance.set_event(key, text, caller_location())

    def child(self, workflow: Any, *args: Any, id: str | None = None, **kwargs: Any) -> Any:
        """Run ``workflow`` as a child run and return its result (await it in async code).

        A child's failure or cancellation raises :class:`ChildFailed` here.
        Its id defaults to ``"<this run's id>/<position>"``, so a replay finds
        the same child instead of starting a twin.
        """
        return self.start_child(workflow, *args, id=id, **kwargs)._collect()

    def start_child(
        self, workflow: Any, *args: Any, id: str | None = None, **kwargs: Any
    ) -> ChildHandle:
        """Start a child run now and collect its result later (fan out with gather)."""
        self._not_in_step("ctx.start_child")
        if self._resolve is None:
            raise ConfigurationError("this context cannot start child workflows")
        definition = self._resolve(workflow)
        if id is not None:
            check_name(id, "ctx.start_child(..., id=): id", RUN_ID_LIMIT, PayloadError)
            if id in self._instance.child_ids:
                raise ConfigurationError(
                    f"child id {id!r} is already used by another child of this run; "
                    "each child needs an id of its own"
                )
        limit = self._instance.info.payload_limit
        spec = ChildSpec(
            workflow=definition.name,
            version=definition.version,
            args=definition.encode_args(args, kwargs, limit),
            deadline=(
                self._instance.clock() + definition.deadline
                if definition.deadline is not None
                else None
            ),
        )
        instance = self._instance
        position, child_id, done = instance.begin_child(
            spec, id, definition.result_type, caller_location()
        )
        return ChildHandle(child_id, definition.name, instance.deferred(position, done))

    def now(self) -> dt.datetime:
        """The current time (UTC, timezone-aware), journaled."""
        self._not_in_step("ctx.now")
        stamp = self._instance.record_value(
            "now", Kind.NOW, self._instance.clock, caller_location()
        )
        return dt.datetime.fromtimestamp(stamp, tz=dt.timezone.utc)

    def random(self) -> float:
        """A random float in [0, 1), journaled."""
        self._not_in_step("ctx.random")
        return float(
            self._instance.record_value("random", Kind.RANDOM, _random.random, caller_location())
        )

    def uuid4(self) -> _uuid.UUID:
        """A random UUID, journaled."""
        self._not_in_step("ctx.uuid4")
        text = self._instance.record_value(
            "uuid", Kind.UUID, lambda: str(_uuid.uuid4()), caller_location()
        )
        return _uuid.UUID(text)

    @property
    def step_key(self) -> str:
        """Idempotency key of the step executing now: ``"<run id>:<position>"``.

        Stable across retries, crashes and replays of that step; pass it to
        external APIs so a re-run step does not repeat its effect.
        """
        return current_step_key_or_raise()


def current_step_key_or_raise() -> str:
    key = current_step_key.get()
    if key is None:
        raise DurablyError(
            "no step is executing here: step_key is only available inside a step "
            "(a function run by ctx.run or decorated with @app.step)"
        )
    return key

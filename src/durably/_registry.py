"""Registered workflows and steps: what the decorators produce."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import sys
import textwrap
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from . import _serde
from ._context import Context
from ._engine.aio import AsyncInstance
from ._engine.instance import Instance, RunInfo, caller_location, current_instance
from ._engine.threaded import SyncInstance
from ._errors import ConfigurationError, DurablyError, PayloadError
from ._retry import DEFAULT_RETRY, Retry


def source_version(fn: Callable[..., Any]) -> str:
    """Default workflow version: a hash of the function's source text."""
    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return "0"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass
class WorkflowDef:
    fn: Callable[..., Any]
    name: str
    version: str
    is_async: bool
    deadline: float | None = None  # seconds from start, or None
    resolve: Callable[[Any], WorkflowDef] | None = None  # the app's lookup, for children
    signature: inspect.Signature = field(init=False)
    params: list[inspect.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        self.signature = inspect.signature(self.fn)
        params = list(self.signature.parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise ConfigurationError(
                f"workflow {self.name!r}: its first parameter must be the context "
                f"(def {self.fn.__name__}(ctx, ...))"
            )
        self.params = params[1:]
        # Positional arguments alone need no Signature.bind (slow) when every
        # parameter takes one: then a count in this range is a valid call.
        plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional: tuple[int, int] | None = None
        if all(p.kind in plain for p in self.params):
            required = sum(p.default is inspect.Parameter.empty for p in self.params)
            self._positional = (required, len(self.params))

    @property
    def result_type(self) -> Any:
        return _serde.return_type(self.fn)

    # -- arguments -------------------------------------------------------------
    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> str:
        arity = self._positional
        try:
            if kwargs or arity is None or not arity[0] <= len(args) <= arity[1]:
                self.signature.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise PayloadError(
                f"workflow {self.name!r} cannot be started with these arguments: {exc}"
            ) from None
        try:
            text = _serde.encode(
                {"args": list(args), "kwargs": kwargs},
                what=f"the arguments of workflow {self.name!r}",
                limit=limit,
            )
        except PayloadError:
            # Name the argument at fault, if one alone is (else the whole is too big).
            for index, value in enumerate(args):
                name = self.params[index].name if index < len(self.params) else f"#{index}"
                what = f"argument {name!r} of workflow {self.name!r}"
                _serde.encode(value, what=what, limit=limit)
            for key, value in kwargs.items():
                what = f"argument {key!r} of workflow {self.name!r}"
                _serde.encode(value, what=what, limit=limit)
            raise
        # Not decoded here as the worker will: that would run the parameter
        # types' own code (a dataclass's __post_init__, validators) in the
        # caller's process, where it may not be able to run.
        return text

    def decode_args(self, text: str) -> tuple[list[Any], dict[str, Any]]:
        raw = _serde.loads(text) or {}
        hints = _serde.param_types(self.fn)
        args: list[Any] = []
        positional = [
            p for p in self.params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        star = next((p for p in self.params if p.kind == p.VAR_POSITIONAL), None)
        for index, value in enumerate(raw.get("args", [])):
            if index < len(positional):
                tp = hints.get(positional[index].name, Any)
            else:
                tp = hints.get(star.name, Any) if star is not None else Any
            args.append(_serde.convert(value, tp))
        by_name = {p.name: p for p in self.params}
        var_kw = next((p for p in self.params if p.kind == p.VAR_KEYWORD), None)
        kwargs = {}
        for key, value in (raw.get("kwargs") or {}).items():
            param = by_name.get(key, var_kw)
            tp = hints.get(param.name, Any) if param is not None else Any
            kwargs[key] = _serde.convert(value, tp)
        return args, kwargs

    # -- execution -------------------------------------------------------------
    def instantiate(
        self,
        info: RunInfo,
        args_text: str,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
    ) -> Instance:
        try:
            args, kwargs = self.decode_args(args_text)
        except Exception as exc:
            raise PayloadError(
                f"the arguments of workflow {self.name!r} do not fit its parameters' "
                f"types: {type(exc).__name__}: {exc}"
            ) from exc
        fn = self.fn
        instance: Instance
        if self.is_async:
            ctx_box: list[Context] = []
            instance = AsyncInstance(info, lambda: fn(ctx_box[0], *args, **kwargs))
            ctx_box.append(Context(instance, self.resolve))
        else:
            holder: list[Context] = []
            instance = SyncInstance(info, lambda: fn(holder[0], *args, **kwargs), executor, loop)
            holder.append(Context(instance, self.resolve))
        return instance


@dataclass
class StepDef:
    fn: Callable[..., Any]
    name: str
    retry: Retry = DEFAULT_RETRY
    timeout: float | None = None
    aliases: tuple[str, ...] = ()
    is_async: bool = False


def make_step(definition: StepDef) -> Callable[..., Any]:
    """The callable a ``@app.step`` decorator returns.

    Outside a workflow it is the plain function. Inside one it issues the
    step at call time (so ``asyncio.gather`` gives stable positions) and
    returns an awaitable in an async workflow or the value in a sync one.
    """
    fn = definition.fn

    def issue(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        instance = current_instance.get()
        if instance is None:
            return fn(*args, **kwargs)
        if definition.is_async and not instance.is_async:
            raise DurablyError(
                f"step {definition.name!r} is async and cannot be called from the sync "
                f"workflow {instance.workflow!r}; use ctx.run({definition.name!r}, "
                f"{fn.__name__}, ...) there, which runs it for you"
            )
        return instance.step(
            definition.name,
            fn,
            args,
            kwargs,
            definition.retry,
            definition.timeout,
            definition.aliases,
            caller_location(),
        )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return issue(args, kwargs)

    if definition.is_async and sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(wrapper)
    wrapper.__durably_step__ = definition  # type: ignore[attr-defined]
    return wrapper

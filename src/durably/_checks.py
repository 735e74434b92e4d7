"""Checks of what users pass in, made where it is passed.

A value found wrong only later, deep in the worker (a step's retry policy
when the step first fails, a name the database cannot store), would leave a
run stuck or re-running; here it is a :class:`ConfigurationError` naming it.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from ._errors import ConfigurationError, DurablyError
from ._retry import DEFAULT_RETRY, Retry
from ._serde import utf8_encodable

RUN_ID_LIMIT = 512  # characters


def check_name(
    value: Any,
    what: str,
    limit: int | None = None,
    error: type[DurablyError] = ConfigurationError,
) -> str:
    """A run id, step name, topic or key: a non-empty string that both
    databases can store (PostgreSQL text holds no NUL; neither backend takes
    a lone surrogate, as ``os.listdir`` returns for undecodable file names)."""
    if not isinstance(value, str) or not value or (limit is not None and len(value) > limit):
        most = f" of at most {limit} characters" if limit is not None else ""
        raise error(f"{what} must be a non-empty string{most}, got {value!r}")
    if "\x00" in value or not utf8_encodable(value):
        raise error(
            f"{what} {value!r} holds a NUL character or a lone surrogate, which the "
            "database cannot store; use printable text"
        )
    return value


def to_seconds(value: float | dt.timedelta, what: str, *, positive: bool = False) -> float:
    """Seconds from a number or a timedelta: finite, >= 0 (> 0 if ``positive``)."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(
            f"{what} must be a timedelta or a number of seconds, not {value!r}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{what} must be a finite number >= 0 ({value!r})")
    if positive and seconds == 0:
        raise ConfigurationError(f"{what} must be > 0 seconds, got {value!r}")
    return seconds


def check_count(value: Any, what: str, minimum: int) -> int:
    """A whole number (not a bool, not a float) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigurationError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return value


def step_options(
    where: str, retry: Any, timeout: Any, name: Any = None, aliases: Any = ()
) -> tuple[Retry, float | None, tuple[str, ...]]:
    """A step's options checked where they are given (``@app.step``, ``ctx.run``):
    a wrong one found only when the step first fails would leave its run stuck."""
    if retry is not None and not isinstance(retry, Retry):
        raise ConfigurationError(
            f"{where}: retry= needs a durably.Retry, e.g. Retry(max_attempts=5), not {retry!r}"
        )
    seconds = None if timeout is None else to_seconds(timeout, f"{where}: timeout=", positive=True)
    if name is not None:
        check_name(name, f"{where}: name=")
    if isinstance(aliases, str):
        aliases = (aliases,)  # a lone name, not its characters
    aliases = tuple(aliases)
    for alias in aliases:
        check_name(alias, f"{where}: each of aliases=")
    return retry or DEFAULT_RETRY, seconds, aliases

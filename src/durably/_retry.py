"""Retry policy of a step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ._errors import ConfigurationError


@dataclass(frozen=True)
class Retry:
    """How often and how fast a failing step is tried again.

    ``max_attempts`` counts every attempt, the first included (1 means no
    retry). The wait before attempt ``n + 1`` is
    ``min(initial * backoff ** (n - 1), max_interval)`` seconds. Exceptions
    that are instances of ``non_retryable`` fail the step at once.
    """

    max_attempts: int = 3
    initial: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.non_retryable, type):  # a single class instead of a tuple
            object.__setattr__(self, "non_retryable", (self.non_retryable,))
        elif not isinstance(self.non_retryable, tuple):
            try:
                object.__setattr__(self, "non_retryable", tuple(self.non_retryable))
            except TypeError:
                raise ConfigurationError(
                    f"Retry(non_retryable={self.non_retryable!r}): give a tuple of "
                    "exception classes"
                ) from None
        if (
            not isinstance(self.max_attempts, int)
            or isinstance(self.max_attempts, bool)
            or self.max_attempts < 1
        ):
            raise ConfigurationError(
                f"Retry(max_attempts={self.max_attempts!r}): must be an int >= 1 "
                "(it counts all attempts; 1 means no retry)"
            )
        for name in ("initial", "backoff", "max_interval"):
            value = getattr(self, name)
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(f"Retry({name}={value!r}): must be a number >= 0")
        if self.backoff < 1:
            raise ConfigurationError(
                f"Retry(backoff={self.backoff!r}): must be >= 1 (1 keeps a fixed wait)"
            )
        bad = [t for t in self.non_retryable if not _is_exception_type(t)]
        if bad:
            raise ConfigurationError(f"Retry(non_retryable=...): {bad!r} are not exception classes")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        attempt = max(int(attempt), 1)
        try:
            wait = self.initial * self.backoff ** (attempt - 1)
        except OverflowError:
            return float(self.max_interval)
        return float(min(wait, self.max_interval))

    def retries(self, attempt: int, error: BaseException) -> bool:
        """Whether a failure of attempt ``attempt`` with ``error`` is tried again."""
        if attempt >= self.max_attempts:
            return False
        return not isinstance(error, self.non_retryable)


def _is_exception_type(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


DEFAULT_RETRY = Retry()
NO_RETRY = Retry(max_attempts=1)

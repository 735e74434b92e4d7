"""Settings that come from arguments, then the environment, then defaults."""

from __future__ import annotations

import math
import os

from ._errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///durably.db"
DEFAULT_LEASE_SECONDS = 30.0
ENV_DATABASE = "DURABLY_DATABASE_URL"
ENV_LEASE = "DURABLY_LEASE_SECONDS"
ENV_SPIN = "DURABLY_SPIN_WAIT_US"
DEFAULT_SPIN_WAIT_US = 500.0
MAX_SPIN_WAIT_US = 10_000.0


def database_url(explicit: str | None = None) -> str:
    url = explicit or os.environ.get(ENV_DATABASE) or DEFAULT_DATABASE_URL
    url = url.strip()
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if "://" not in url:
        raise ConfigurationError(
            f"database URL {url!r} has no scheme: use sqlite:///path/to/file.db or "
            "postgresql://user@host:5432/dbname"
        )
    return url


MIN_LEASE_SECONDS = 0.05


def lease_seconds(explicit: float | None = None) -> float:
    if explicit is not None:
        value: object = explicit
        source = "lease_seconds"
    else:
        raw = os.environ.get(ENV_LEASE)
        if raw is None or not raw.strip():
            return DEFAULT_LEASE_SECONDS
        source = ENV_LEASE
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{ENV_LEASE}={raw!r} is not a number of seconds") from None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{source} must be a positive number of seconds, not {value!r}")
    if value < MIN_LEASE_SECONDS:
        # Renewals and the check before each step could never keep such a
        # lease: every run would stand still, taken over again and again.
        raise ConfigurationError(
            f"{source} must be at least {MIN_LEASE_SECONDS} seconds, not {value!r}"
        )
    return float(value)


def spin_wait() -> float:
    """Seconds a lone run's PostgreSQL write may look for its answer before
    it sleeps until the answer comes (see ``libpq.Spin``); 0 never looks."""
    raw = os.environ.get(ENV_SPIN)
    if raw is None or not raw.strip():
        return DEFAULT_SPIN_WAIT_US / 1e6
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{ENV_SPIN}={raw!r} is not a number of microseconds (0 turns the spin off)"
        ) from None
    if not math.isfinite(value) or not 0 <= value <= MAX_SPIN_WAIT_US:
        raise ConfigurationError(
            f"{ENV_SPIN}={raw!r}: must be between 0 and {MAX_SPIN_WAIT_US:g} microseconds "
            "(0 turns the spin off)"
        )
    return value / 1e6

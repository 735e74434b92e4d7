"""Saying once that the database is unreachable, and once that it is back."""

from __future__ import annotations

import logging
import threading
import time

from .._errors import DatabaseUnavailable, WriteConflict

log = logging.getLogger("durably.worker")


class Outage:
    """Shared by a worker's loops: the first failure is logged, the rest are not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None
        self.failures = 0

    def failed(self, what: str, exc: BaseException) -> None:
        if isinstance(exc, WriteConflict):
            # Rolled back on other transactions' locks, after the store sent
            # it again: the database is fine, a traceback would say no more.
            log.warning(
                "%s failed: %s (rolled back on a conflict with another transaction)", what, exc
            )
            return
        if not isinstance(exc, DatabaseUnavailable):
            # Not an outage (a bad value, a bug): saying "unreachable" would
            # send the reader to the wrong place. Said each time, with why.
            log.warning("%s failed: %s", what, exc, exc_info=exc)
            return
        with self._lock:
            self.failures += 1
            first = self.since is None
            if first:
                self.since = time.monotonic()
        if first:
            log.warning("database unreachable (%s: %s); retrying until it is back", what, exc)
        else:
            log.debug("still unreachable (%s: %s)", what, exc)

    def recovered(self) -> None:
        if self.since is None:
            return  # the common case, after every write: no lock to take
        with self._lock:
            since, self.since = self.since, None
            failures, self.failures = self.failures, 0
        if since is not None:
            log.warning(
                "database reachable again after %.1fs (%d failed operations retried)",
                time.monotonic() - since,
                failures,
            )

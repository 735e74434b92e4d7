"""``WorkflowHandle``: a run seen from outside, from any process."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from . import _serde
from ._checks import to_seconds
from ._errors import ResultTimeout, RunNotFound, WorkflowCancelled, WorkflowFailed
from ._storage.base import TERMINAL, RunRecord

if TYPE_CHECKING:
    from ._app import App


class WorkflowHandle:
    """Refers to one run by id. Cheap to create; holds no connection."""

    def __init__(self, app: App, run_id: str) -> None:
        self._app = app
        self.id = run_id
        # The run's final row once it ended (the app hands it over, tagged
        # with its database's generation): an ended run never changes, except
        # a failed one, whose row is never kept (None: an end was seen, no row kept).
        self._ended: tuple[int, RunRecord | None] | None = None

    @property
    def run_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"

    # -- async -------------------------------------------------------------
    async def status(self) -> str:
        """``pending``, ``running``, ``suspended``, ``completed``, ``failed`` or ``cancelled``."""
        return (await self._app._arecord(self.id)).status

    async def result(self, timeout: float | dt.timedelta | None = None) -> Any:
        """Wait for the run to end and return its result.

        Raises :class:`WorkflowFailed` (carrying the original error's type,
        message and traceback), :class:`WorkflowCancelled`, or
        :class:`ResultTimeout` (a ``TimeoutError``) after ``timeout`` seconds.
        """
        seconds = _seconds(timeout)
        record = self._app._handles.kept_end(self) or await self._app._await_terminal(
            self.id, seconds
        )
        return self._outcome(record, seconds)

    async def cancel(self, reason: str = "cancelled") -> str:
        """Cancel the run and its children (see :meth:`App.cancel`)."""
        return await self._app.cancel(self.id, reason)

    async def signal(self, topic: str, payload: Any = None) -> None:
        """Send the run a signal (see :meth:`App.signal`)."""
        await self._app.signal(self.id, topic, payload)

    # -- blocking twins ----------------------------------------------------
    def cancel_sync(self, reason: str = "cancelled") -> str:
        return self._app.cancel_sync(self.id, reason)

    def signal_sync(self, topic: str, payload: Any = None) -> None:
        self._app.signal_sync(self.id, topic, payload)

    def status_sync(self) -> str:
        return self._app._record(self.id).status

    def result_sync(self, timeout: float | dt.timedelta | None = None) -> Any:
        seconds = _seconds(timeout)
        record = self._app._handles.kept_end(self) or self._app._await_terminal_sync(
            self.id, seconds
        )
        return self._outcome(record, seconds)

    # -- shared ------------------------------------------------------------
    def _outcome(self, record: RunRecord | None, timeout: float | None) -> Any:
        if record is None:
            raise RunNotFound(f"no run with id {self.id!r}")
        if record.status not in TERMINAL:
            raise ResultTimeout(
                f"run {self.id!r} did not finish within {timeout}s (status: {record.status})"
            )
        if record.status == "completed":
            definition = self._app._workflows.get(record.workflow)
            tp = definition.result_type if definition is not None else Any
            return _serde.decode(record.result, tp)
        if record.status == "cancelled":
            stored = json.loads(record.error or "{}").get("message")
            reason = stored or record.cancel_reason or "cancelled"
            raise WorkflowCancelled(
                f"run {self.id!r} of workflow {record.workflow!r} was cancelled ({reason})"
            )
        error = json.loads(record.error or "{}")
        error_type = error.get("type", "Error")
        message = error.get("message", "")
        raise WorkflowFailed(
            f"run {self.id!r} of workflow {record.workflow!r} failed: {error_type}: {message}",
            error_type=error_type,
            message=message,
            traceback=error.get("traceback", ""),
        )


def _seconds(timeout: float | dt.timedelta | None) -> float | None:
    return None if timeout is None else to_seconds(timeout, "result(timeout=...)")

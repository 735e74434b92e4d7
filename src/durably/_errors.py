"""Every error durably raises. All derive from :class:`DurablyError`."""

from __future__ import annotations

import traceback as _tb
from typing import Any


class DurablyError(Exception):
    """Base class of every error raised by durably."""


class ConfigurationError(DurablyError):
    """A setting (database URL, option value) is not usable."""


class DatabaseError(DurablyError):
    """The database cannot be used: foreign, corrupt, newer schema or unreachable."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached (or stays locked) right now; try again later.

    ``reached`` is False when nothing was sent to the database (no connection
    could be had), so the operation certainly did not happen.
    """

    def __init__(self, message: str, *, reached: bool = True) -> None:
        super().__init__(message)
        self.reached = reached


class WriteConflict(DatabaseError):
    """The server rolled a statement back on a conflict with another
    transaction (a deadlock, a serialization failure, a lock it would not
    wait for): nothing of it was written, the connection is fine, and the
    same statement is likely to go through if sent again."""


# Errors after which the same operation, tried again later, may well succeed.
TRANSIENT = (DatabaseUnavailable, WriteConflict)


class PayloadError(DurablyError, TypeError):
    """A value cannot be stored in the journal (not serialisable, or too large)."""


class UnknownWorkflowError(DurablyError, LookupError):
    """A workflow name or run id that nothing knows about."""


class RunNotFound(UnknownWorkflowError):
    """No run exists with the given id."""


class RunFinished(DurablyError):
    """The run already ended; it cannot take signals any more."""


class ResultTimeout(DurablyError, TimeoutError):
    """Waiting for a run's result took longer than allowed."""


class WaitTimeout(DurablyError, TimeoutError):
    """A wait ran out of time: ``ctx.wait_for`` in a run, ``app.get_event`` outside."""


class _RemoteError(DurablyError):
    """An error that happened elsewhere (a step, a run) and was stored.

    Carries the original error's type name, message and traceback as text, so
    it can be rebuilt in any process from the journal.
    """

    def __init__(self, summary: str, *, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(summary)
        self.error_type = error_type
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), str(self), self.__dict__))


def _rebuild(cls: type[_RemoteError], summary: str, state: dict[str, Any]) -> Any:
    obj = cls.__new__(cls)
    Exception.__init__(obj, summary)
    obj.__dict__.update(state)
    return obj


class StepFailed(_RemoteError):
    """A step failed on its last allowed attempt (raised inside the workflow)."""

    def __init__(
        self,
        summary: str,
        *,
        error_type: str,
        message: str,
        traceback: str = "",
        step: str = "",
        attempts: int = 0,
    ) -> None:
        super().__init__(summary, error_type=error_type, message=message, traceback=traceback)
        self.step = step
        self.attempts = attempts


class WorkflowFailed(_RemoteError):
    """The run ended in failure; raised by ``handle.result()``."""


class ChildFailed(_RemoteError):
    """A child workflow failed or was cancelled; raised inside its parent."""


class WorkflowCancelled(DurablyError):
    """The run was cancelled; raised by ``handle.result()``."""


class NonDeterminismError(DurablyError):
    """Replaying a run's journal against the current code diverged."""

    def __init__(
        self,
        message: str,
        *,
        workflow: str = "",
        run_id: str = "",
        position: int = -1,
        recorded: str = "",
        requested: str = "",
    ) -> None:
        super().__init__(message)
        self.workflow = workflow
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.requested = requested


class StepTimeout(DurablyError, TimeoutError):
    """One attempt of a step ran past its ``timeout``."""


def describe_exception(exc: BaseException) -> dict[str, str]:
    """The stored form of an error: type, message and formatted traceback."""
    if isinstance(exc, _RemoteError):
        # Keep the original type so a failure travelling through layers still
        # names what actually went wrong.
        error_type = type(exc).__name__
    else:
        error_type = type(exc).__qualname__
    # An error whose __str__ itself fails must still be stored (or its run
    # would be stuck with an outcome nobody can write): as traceback does.
    try:
        message = str(exc)
    except Exception as inner:  # noqa: BLE001
        message = f"<unprintable {error_type} object: str() raised {type(inner).__name__}>"
    try:
        trace = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:  # noqa: BLE001
        trace = f"{error_type}: {message}\n"
    return {"type": error_type, "message": message, "traceback": trace}

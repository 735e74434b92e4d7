"""durably: durable execution for Python workflows, journaled to SQLite or PostgreSQL."""

from __future__ import annotations

from ._app import App
from ._context import ChildHandle, Context, current_step_key_or_raise
from ._errors import (
    ChildFailed,
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailable,
    DurablyError,
    NonDeterminismError,
    PayloadError,
    ResultTimeout,
    RunFinished,
    RunNotFound,
    StepFailed,
    StepTimeout,
    UnknownWorkflowError,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowFailed,
)
from ._handle import WorkflowHandle
from ._retry import Retry

__version__ = "0.1.0"


def current_step_key() -> str:
    """Idempotency key of the step executing now (``"<run id>:<position>"``).

    Stable across retries, crashes and replays of that step. Raises
    :class:`DurablyError` outside a step.
    """
    return current_step_key_or_raise()


__all__ = [
    "App",
    "ChildFailed",
    "ChildHandle",
    "ConfigurationError",
    "Context",
    "DatabaseError",
    "DatabaseUnavailable",
    "DurablyError",
    "NonDeterminismError",
    "PayloadError",
    "ResultTimeout",
    "Retry",
    "RunFinished",
    "RunNotFound",
    "StepFailed",
    "StepTimeout",
    "UnknownWorkflowError",
    "WaitTimeout",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowHandle",
    "__version__",
    "current_step_key",
]

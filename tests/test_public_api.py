"""The public surface is deliberate: changing it must change this test."""

from __future__ import annotations

import inspect
from pathlib import Path

import durably

EXPECTED = [
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


def test_all_is_locked() -> None:
    assert sorted(durably.__all__) == EXPECTED
    for name in durably.__all__:
        assert hasattr(durably, name), name


def test_public_objects_come_from_private_modules() -> None:
    for name in durably.__all__:
        obj = getattr(durably, name)
        module = getattr(obj, "__module__", "durably")
        assert module == "durably" or module.startswith("durably._"), (name, module)


def test_package_is_typed() -> None:
    assert (Path(inspect.getfile(durably)).parent / "py.typed").exists()


def test_client_awaitables_have_blocking_twins() -> None:
    for cls, names in [
        (durably.App, ["start", "signal", "get_event", "cancel", "list_runs"]),
        (durably.WorkflowHandle, ["result", "status", "cancel", "signal"]),
    ]:
        for name in names:
            assert inspect.iscoroutinefunction(getattr(cls, name)), name
            assert callable(getattr(cls, f"{name}_sync")), name

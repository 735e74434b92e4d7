"""Named fault points: make this process die abruptly at a chosen place.

Crash tests arm a point through the environment, e.g.::

    DURABLY_FAULT=step.after_effect            # the first time any step gets there
    DURABLY_FAULT=step.after_effect@charge:2   # the 2nd time step "charge" gets there
    DURABLY_FAULT=commit.before:3,timer.fire   # whichever comes first

When an armed point is reached its count'th time, the process is killed with
SIGKILL: no ``finally`` blocks, no flushing, no goodbye. Unarmed, a fault point
costs one global lookup.

Points:
    claim.after          runs were claimed, nothing started yet
    replay.before        a claimed run's journal is loaded, not yet replayed
    replay.after         replayed, nothing written or started yet
    step.before          a step is about to run its function
    step.after_effect    a step's function returned (its effect happened) and
                         nothing of it is journaled yet
    commit.before        a commit is about to be written (a group commit, or
                         a lone run's write from the event loop)
    commit.after         a commit is durable; nobody was told yet
    timer.fire           a timer is due, its firing not journaled yet
    signal.deliver       a signal is about to be handed to a wait
    child.done           a child's end is about to be handed to its parent
    cancel.deliver       a cancellation is about to be raised in the code
    renew.before         leases are about to be renewed
"""

from __future__ import annotations

import os
import signal

ENV = "DURABLY_FAULT"

POINTS = frozenset(
    {
        "claim.after",
        "replay.before",
        "replay.after",
        "step.before",
        "step.after_effect",
        "commit.before",
        "commit.after",
        "timer.fire",
        "signal.deliver",
        "child.done",
        "cancel.deliver",
        "renew.before",
    }
)


def _parse(spec: str) -> dict[tuple[str, str], int]:
    armed: dict[tuple[str, str], int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        target, _, count = item.partition(":")
        point, _, detail = target.partition("@")
        if point not in POINTS:
            raise ValueError(
                f"{ENV}: unknown fault point {point!r}; known: {', '.join(sorted(POINTS))}"
            )
        armed[(point, detail)] = int(count) if count else 1
    return armed


_armed = _parse(os.environ.get(ENV, ""))


def arm(spec: str) -> None:
    """Arm fault points in this process (tests; the environment does the same)."""
    global _armed
    _armed = _parse(spec)


def fault(point: str, detail: str = "") -> None:
    """Die here if ``point`` (optionally for ``detail``, e.g. a step name) is armed."""
    if not _armed:
        return
    for key in ((point, detail), (point, "")):
        left = _armed.get(key)
        if left is None:
            continue
        if left <= 1:
            os.kill(os.getpid(), signal.SIGKILL)
        _armed[key] = left - 1
        return

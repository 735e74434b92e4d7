"""Journal entries and the history a replay matches against.

A run's journal is a list of entries ordered by ``seq`` (the order they were
written). Each entry belongs to one durable operation, identified by its
``position``: the order in which the workflow code called its durable
operations. Some entries *complete* an operation (a step's result, a timer
firing); a replay hands those back to the code in ``seq`` order, so the code
sees the same interleaving it saw live.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from .._errors import NonDeterminismError


class Kind:
    """Entry kinds. Stored as text; never rename one."""

    STEP: Final = "step"  # a step's result (completion)
    STEP_FAILED: Final = "step_failed"  # a step's last attempt failed (completion)
    ATTEMPT: Final = "attempt"  # one failed attempt, with the next attempt's time
    TIMER: Final = "timer"  # a timer was set (payload: fire_at)
    FIRED: Final = "fired"  # a timer fired (completion)
    NOW: Final = "now"
    RANDOM: Final = "random"
    UUID: Final = "uuid"
    WAIT: Final = "wait"  # the code waits for a signal (payload: topic deadline)
    SIGNAL: Final = "signal"  # a signal was handed to the wait (completion)
    WAIT_TIMEOUT: Final = "wait_timeout"  # the wait's deadline passed (completion)
    EVENT: Final = "event"  # ctx.set_event (name: key, payload: value)
    CHILD: Final = "child"  # a child run was started (payload: its id)
    CHILD_DONE: Final = "child_done"  # the child ended (completion)
    CANCEL: Final = "cancel"  # cancellation delivered while the code waited (completion)
    CANCEL_AT: Final = "cancel_at"  # cancellation raised at the operation at this position


# Which operation each entry kind belongs to; a replay compares operations.
OP_OF_KIND: Final[dict[str, str]] = {
    Kind.STEP: "step",
    Kind.STEP_FAILED: "step",
    Kind.ATTEMPT: "step",
    Kind.TIMER: "timer",
    Kind.FIRED: "timer",
    Kind.NOW: "now",
    Kind.RANDOM: "random",
    Kind.UUID: "uuid",
    Kind.WAIT: "signal",
    Kind.SIGNAL: "signal",
    Kind.WAIT_TIMEOUT: "signal",
    Kind.EVENT: "event",
    Kind.CHILD: "child",
    Kind.CHILD_DONE: "child",
    Kind.CANCEL: "cancel",
    Kind.CANCEL_AT: "cancel",
}

COMPLETIONS: Final = frozenset(
    {
        Kind.STEP,
        Kind.STEP_FAILED,
        Kind.FIRED,
        Kind.SIGNAL,
        Kind.WAIT_TIMEOUT,
        Kind.CHILD_DONE,
        Kind.CANCEL,
    }
)
CANCEL_POSITION: Final = -1  # where a cancellation delivered while waiting is journaled


@dataclass(slots=True)
class Entry:
    """One journal entry. ``payload`` is JSON text."""

    position: int
    kind: str
    name: str
    payload: str | None = None
    loc: str | None = None
    at: float = 0.0
    seq: int = -1
    epoch: int = 0

    @property
    def op(self) -> str:
        return OP_OF_KIND.get(self.kind, self.kind)


@dataclass
class History:
    """The recorded journal of one run, indexed for replay."""

    entries: Sequence[Entry]
    by_position: dict[int, list[Entry]] = field(init=False)
    pending: deque[Entry] = field(init=False)  # completions not yet handed back

    def __post_init__(self) -> None:
        self.by_position = {}
        ordered = sorted(self.entries, key=lambda e: e.seq)
        for entry in ordered:
            self.by_position.setdefault(entry.position, []).append(entry)
        self.pending = deque(e for e in ordered if e.kind in COMPLETIONS)

    @property
    def next_seq(self) -> int:
        return max((e.seq for e in self.entries), default=-1) + 1

    def at(self, position: int) -> list[Entry]:
        return self.by_position.get(position, [])

    def __len__(self) -> int:
        return len(self.entries)


def describe(op: str, name: str, loc: str | None) -> str:
    where = f" at {loc}" if loc else ""
    if op == "step":
        return f"step {name!r}{where}"
    if op == "timer":
        return f"timer {name!r}{where}"
    if op == "signal":
        return f"ctx.wait_for({name!r}){where}"
    if op == "event":
        return f"ctx.set_event({name!r}){where}"
    if op == "child":
        return f"child workflow {name!r}{where}"
    return f"ctx.{op if op != 'uuid' else 'uuid4'}(){where}"


def mismatch(
    *,
    workflow: str,
    run_id: str,
    position: int,
    recorded: Entry | None,
    requested: tuple[str, str, str | None] | None,
) -> NonDeterminismError:
    """The error for code that no longer matches its run's journal."""
    rec = describe(recorded.op, recorded.name, recorded.loc) if recorded else "nothing"
    req = describe(*requested) if requested else "nothing (it finished or waits elsewhere)"
    message = (
        f"workflow {workflow!r} run {run_id!r} diverged from its journal at position "
        f"{position}: the journal holds {rec}, the code now asks for {req}. "
        "Durable operations must be called in the same order with the same names on "
        "every replay; give the changed workflow a new version "
        "(@app.workflow(version=...)) so runs started on the old code keep it."
    )
    return NonDeterminismError(
        message,
        workflow=workflow,
        run_id=run_id,
        position=position,
        recorded=rec,
        requested=req,
    )

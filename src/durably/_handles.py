"""The handles an app gave out, held weakly: where a run's end waits for its
handle to be awaited.

A run that ends with nobody waiting, but whose handle is held in this
process, gives the handle its final row (from a worker here, or read ahead
by the result watcher in its own batches), so that awaiting the handle reads
nothing. A caller awaiting thousands of handles one by one then costs no
round trip each. Rows are tagged with the generation of the database they
came from (one per open): a handle never answers from a database its app
has since closed or swapped.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import TYPE_CHECKING

from ._handle import WorkflowHandle
from ._storage.base import RunRecord

if TYPE_CHECKING:
    from ._app import App

# At most this many handles' runs are looked up when waiting for results
# begins (the ones that ended before the watcher was listening).
HELD_READ_AHEAD = 10_000
# A kept row drops its arguments above this size: the handle may live long.
KEPT_ARGS = 1024
# The row of a run whose waiters were answered is kept only with a result up
# to this size (awaited again, its handle reads it; the caller has the value).
KEPT_ANSWERED_RESULT = 1024


class Handles:
    def __init__(self, app: App) -> None:
        self._app = app
        self._map: weakref.WeakValueDictionary[str, WorkflowHandle] = weakref.WeakValueDictionary()
        self.generation = 0

    def reset(self) -> None:
        """The app's database closed: rows kept so far no longer answer."""
        self._map = weakref.WeakValueDictionary()
        self.generation += 1

    def handle(self, run_id: str) -> WorkflowHandle:
        """The handle to ``run_id``: one per run while it is held anywhere
        here, so that whichever copy is awaited finds the run's end."""
        handle = self._map.get(run_id)
        if handle is None:
            handle = self._map[run_id] = WorkflowHandle(self._app, run_id)
        return handle

    def kept_end(self, handle: WorkflowHandle) -> RunRecord | None:
        """The final row handed to ``handle``, if it came from the database in use."""
        kept = handle._ended
        return kept[1] if kept is not None and kept[0] == self.generation else None

    def _seen_end(self, handle: WorkflowHandle) -> bool:
        """Whether an end of the run reached this handle from the database in
        use (its row kept or not): there is nothing to read ahead for it."""
        kept = handle._ended
        return kept is not None and kept[0] == self.generation

    def awaited_soon(self, run_id: str) -> bool:
        """Whether a handle held here may soon wait for the run and needs its
        final row read: no end seen yet, and no worker here that will hand it
        over (its end is often announced before that worker has heard its
        commit). Asked from the listener's thread: held here first, as a
        worker here hands the row over before it lets the run go."""
        if self._app._held_here(run_id):
            return False
        handle = self._map.get(run_id)
        return handle is not None and not self._seen_end(handle)

    def held(self) -> list[str]:
        """The runs of the latest handles held here with no end seen yet."""
        # The underlying dict (of weak references), copied in one C call:
        # iterating the mapping could fail as another thread adds a handle.
        # The copy can fail too, if a collection it triggers drops a handle.
        refs: dict[str, weakref.ref[WorkflowHandle]] = self._map.data  # type: ignore[attr-defined]
        for _ in range(3):
            try:
                entries = list(refs.items())
                break
            except RuntimeError:
                continue
        else:
            return []
        held = [
            run_id
            for run_id, ref in entries
            if (handle := ref()) is not None and not self._seen_end(handle)
        ]
        return held[-HELD_READ_AHEAD:]

    def keep(
        self, record: RunRecord, generation: int | None = None, *, answered: bool = False
    ) -> None:
        """A run has ended: give its final row to the handle held here, if
        any. Not a failure: ``durably retry`` can reopen a failed run, and a
        handle awaited after that must see the run as it is then; nor a large
        result its waiters (``answered``) already have. The handle then only
        notes that the end was seen (no read ahead for it; awaited again, it
        reads). ``generation``: of the database the row was read from."""
        if generation not in (None, self.generation):
            return
        handle = self._map.get(record.id)
        if handle is None:
            return
        if record.status == "failed" or (
            answered and len(record.result or "") > KEPT_ANSWERED_RESULT
        ):
            handle._ended = (self.generation, None)
            return
        if len(record.args) > KEPT_ARGS:  # the outcome needs no arguments
            record = dataclasses.replace(record, args="")
        handle._ended = (self.generation, record)

"""Sync (``def``) workflows: the code runs on a worker thread.

Every durable operation either answers at once from the journal or hands a
command to the driver and blocks the thread until the driver delivers the
completion. The driver sees the thread as *settled* whenever it is blocked
(or finished); the two never run at the same time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from .._errors import DurablyError
from .instance import Abandoned, Instance, RunInfo, current_instance
from .journal import Entry, Kind


class _Slot:
    __slots__ = ("error", "event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class SyncInstance(Instance):
    """A ``def`` workflow executing on a thread of ``executor``."""

    is_async = False

    def __init__(
        self,
        info: RunInfo,
        body: Callable[[], Any],
        executor: Executor,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(info)
        self._body: Callable[[], Any] | None = body
        self._executor = executor
        self._loop = loop
        self._slots: dict[int, _Slot] = {}
        self._blocked: asyncio.Future[None] = loop.create_future()
        self._blocked_on: int | None = None
        self._deferred: set[int] = set()  # started children not awaited yet
        self._ready: dict[int, tuple[Any, BaseException | None]] = {}
        self._thread_done = False

    # -- driver side ---------------------------------------------------------
    async def start(self) -> None:
        self._loop.run_in_executor(self._executor, self._thread_main)
        await self._blocked
        pending = self.history.pending
        while pending and pending[0].kind == Kind.CANCEL and not self._thread_done:
            self.deliver_cancel(pending.popleft())
            await self._blocked
        if self.outcome is None or not self.outcome.diverged:
            # The code blocked on a live operation (or finished): whatever the
            # journal still holds was never asked for.
            self.check_leftovers()
        if self.outcome is not None and self.outcome.diverged:
            self.abandon()

    def wants(self, position: int) -> bool:
        return position in self._slots or position in self._deferred

    def deliver(self, entry: Entry) -> None:
        if entry.position in self._deferred:  # started, not awaited yet: keep it
            self._deferred.discard(entry.position)
            self._ready[entry.position] = self.completion_value(entry)
            return
        slot = self._slots.pop(entry.position, None)
        if slot is None:
            return
        slot.value, slot.error = self.completion_value(entry)
        self._wake(slot)

    def deliver_cancel(self, entry: Entry) -> None:
        reason = self._cancel_entry_reason(entry)
        slot = self._slots.pop(self._blocked_on, None) if self._blocked_on is not None else None
        if slot is not None:
            slot.error = asyncio.CancelledError(reason)
            self._wake(slot)

    def _wake(self, slot: _Slot) -> None:
        self._blocked = self._loop.create_future()
        slot.event.set()

    async def settle(self) -> None:
        await self._blocked

    def abandon(self) -> None:
        if self.abandoned:
            return
        self.abandoned = True
        slots = list(self._slots.values())
        self._slots.clear()
        for slot in slots:
            slot.error = Abandoned()
            slot.event.set()

    # -- thread side -----------------------------------------------------------
    def _thread_main(self) -> None:
        token = current_instance.set(self)
        # Called once: kept, it would hold the run's Context, which holds this.
        body, self._body = self._body, None
        assert body is not None
        try:
            result = body()
        except Abandoned:
            pass
        except asyncio.CancelledError:
            if self.cancel_delivered:
                self._end_cancelled()
            else:
                self._fail(DurablyError("the workflow was cancelled"))
        except Exception as exc:  # noqa: BLE001 - the run fails with it
            self._fail(exc)
        except BaseException as exc:  # noqa: BLE001 - SystemExit & co in user code
            self._fail(exc)
        else:
            if not self.abandoned:
                self._finish(result)
        finally:
            current_instance.reset(token)
            self._thread_done = True
            self._signal_blocked()

    def _signal_blocked(self) -> None:
        def mark() -> None:
            if not self._blocked.done():
                self._blocked.set_result(None)

        try:
            self._loop.call_soon_threadsafe(mark)
        except RuntimeError:  # the loop closed under us: nobody waits any more
            pass

    def _take_recorded(self, entry: Entry) -> Any:
        pending = self.history.pending
        if pending and pending[0] is entry:
            pending.popleft()
        else:
            try:
                pending.remove(entry)
            except ValueError:
                pass
        value, error = self.completion_value(entry)
        if error is not None:
            raise error
        return value

    def _wait_live(self, position: int) -> Any:
        ready = self._ready.pop(position, None)
        if ready is not None:
            value, error = ready
        else:
            self._deferred.discard(position)
            slot = self._slots[position] = _Slot()
            if self.abandoned:  # abandon() ran before the slot existed
                raise Abandoned()
            self._blocked_on = position
            self._signal_blocked()
            slot.event.wait()
            self._blocked_on = None
            value, error = slot.value, slot.error
        if error is not None:
            raise error
        return value

    def _pending(self, position: int, recorded: Entry | None) -> Any:
        if recorded is not None:
            return self._take_recorded(recorded)
        return self._wait_live(position)

    def deferred(self, position: int, recorded: Entry | None) -> Callable[[], Any]:
        if recorded is None:
            self._deferred.add(position)
        return lambda: self._pending(position, recorded)

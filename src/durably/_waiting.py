"""Waking up callers when a run may have changed, without busy polling.

Sources: the storage's listener (PostgreSQL NOTIFY, SQLite commit detection)
and the in-process hub (a worker in this process finished a run, or this
process started one).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

Listener = Callable[[str, str], None]


class Hub:
    """In-process publish/subscribe; listeners are called synchronously."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def publish(self, channel: str, payload: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(channel, payload)


class ChangeWaiter:
    """Wait until a notification that may concern ``run_id`` arrives."""

    def __init__(
        self,
        sources: list[Callable[[Listener], Callable[[], None]]],
        accept: Callable[[str, str], bool],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._accept = accept
        self._loop = loop
        self._event = threading.Event()
        self._aevent = asyncio.Event() if loop is not None else None
        self._unsubscribe = [subscribe(self._on_change) for subscribe in sources]

    def _on_change(self, channel: str, payload: str) -> None:
        if not self._accept(channel, payload):
            return
        self._event.set()
        if self._loop is not None and self._aevent is not None:
            try:
                self._loop.call_soon_threadsafe(self._aevent.set)
            except RuntimeError:
                pass

    def wait_sync(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    async def wait(self, timeout: float) -> None:
        assert self._aevent is not None
        try:
            await asyncio.wait_for(self._aevent.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._aevent.clear()
        self._event.clear()

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()

"""One SQLite connection per thread, safe to close from any thread.

A connection is used only under its own lock, so closing the storage from
one thread waits for a query another thread is running on it instead of
freeing the connection under it (a segmentation fault). Closing from inside
a query on the same thread (a signal handler) marks the connection, and the
query closes it when it ends.

A thread's connection is closed when the thread ends (its thread-local
token is freed), so executors and listeners that come and go leave nothing
open. After ``os.fork`` the child abandons the parent's connections without
closing them: closing a copy could checkpoint and remove the WAL the parent
is using; the child opens its own.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ConnectionClosed(Exception):
    """The storage was closed."""


class _Slot:
    __slots__ = ("closed", "conn", "lock", "owner", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()
        self.closed = False
        self.owner: int | None = None  # thread ident while a query runs on it
        self.pid = os.getpid()

    def close(self, *, wait: bool = True) -> None:
        if self.pid != os.getpid():
            return  # the parent's: see the module's docstring
        if self.owner == threading.get_ident():
            self.closed = True  # from inside its own query: closed when that ends
            return
        if not self.lock.acquire(blocking=wait):
            self.closed = True  # in use: its user closes it when done
            return
        try:
            self.closed = True
            with contextlib.suppress(Exception):
                self.conn.close()
        finally:
            self.lock.release()


class _Token:
    """Held in a thread's locals: freed when the thread ends."""

    __slots__ = ("__weakref__", "slot")

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot


class Connections:
    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._all: set[_Slot] = set()
        self._inherited: list[_Slot] = []  # a parent process's: kept, never closed
        self._lock = threading.Lock()
        self.closed = False
        own = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(own))

    def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` on this thread's connection (one statement or transaction);
        on an error, no transaction is left open."""
        slot = self._slot()
        slot.lock.acquire()
        slot.owner = threading.get_ident()
        try:
            if slot.closed:
                raise ConnectionClosed()
            conn = slot.conn
            try:
                return fn(conn)
            except sqlite3.Error:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        finally:
            slot.owner = None
            if slot.closed:  # closed meanwhile, from this thread or while busy
                with contextlib.suppress(Exception):
                    slot.conn.close()
            slot.lock.release()

    def _slot(self) -> _Slot:
        token: _Token | None = getattr(self._local, "token", None)
        if token is not None and not token.slot.closed:
            return token.slot
        if self.closed:
            raise ConnectionClosed()
        slot = _Slot(self._connect())
        with self._lock:
            if self.closed:  # closed while it was connecting
                slot.conn.close()
                raise ConnectionClosed()
            self._all.add(slot)
        token = _Token(slot)
        weakref.finalize(token, self._ended, slot)
        self._local.token = token
        return slot

    def _ended(self, slot: _Slot) -> None:
        """Its thread ended (or this thread's connection was replaced)."""
        self._all.discard(slot)
        slot.close(wait=False)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            slots, self._all = self._all, set()
        for slot in slots:
            slot.close()

    def _forked(self) -> None:
        self._inherited.extend(self._all)
        self._all = set()
        self._lock = threading.Lock()
        self._local = threading.local()


def _after_fork(own: weakref.ref[Connections]) -> None:
    connections = own()
    if connections is not None:
        connections._forked()

"""A lone run's writes, sent from the event loop on an async connection.

The committer thread's group commit is what a busy worker needs; for a
worker driving a single run it only adds two thread wake-ups per write
(about a sixth of a short run's time here). A lone run's writes are each one
statement (see ``PostgresStorage.one_statement``), so the committer sends
them itself on this connection, without blocking the loop: a slow or
unreachable server delays that run only, as it would on the thread.

The statement itself goes through libpq's own calls (see ``libpq.py``).
The connection is opened in the background on first need; until it is up,
and whenever it has sat idle long enough that it might have died unnoticed
(it is pinged in the background then, for at most ``TEND_PATIENCE``), writes
go to the thread as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.pq import TransactionStatus

from ..._errors import DatabaseError, DatabaseUnavailable, WriteConflict
from ..base import RunWrite
from . import libpq
from . import queries as q

if TYPE_CHECKING:
    from .store import BatchStatement, OneStatement, PostgresStorage

log = logging.getLogger("durably.storage")

# Errors of a statement the server rolled back on a conflict with another
# transaction: psycopg counts them among its OperationalErrors, with a lost
# connection, but nothing was written and the connection is fine. Not
# 40003 (statement completion unknown) or 40002 (a constraint).
CONFLICTS = (
    psycopg.errors.TransactionRollback,  # 40000
    psycopg.errors.SerializationFailure,  # 40001
    psycopg.errors.DeadlockDetected,  # 40P01
    psycopg.errors.LockNotAvailable,  # 55P03
)

RECONNECT_GAP = 1.0  # seconds between attempts to open the connection
TEND_PATIENCE = 10.0  # seconds an open or a ping may take before it is given up


class LoopWriter:
    def __init__(self, storage: PostgresStorage, idle_check: float) -> None:
        self._storage = storage
        self._idle_check = idle_check
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._cursor: psycopg.AsyncCursor[Any] | None = None  # reused: a new one costs
        self._reader: libpq.Reader | None = None  # its socket's, kept between statements
        self._spin = libpq.Spin(storage.spin_wait) if storage.spin_wait > 0 else None
        self._prepared: set[bytes] = set()  # what libpq.execute prepared on this connection
        self._utf8 = False  # the connection's client encoding (libpq.py sends UTF-8)
        self._used = 0.0  # monotonic time of its last good answer
        self._tending: asyncio.Task[None] | None = None
        self._tried = -RECONNECT_GAP
        self._closed = False

    def batchable(self, write: RunWrite) -> bool:
        return self._storage.batchable(write)

    def prepare(self, worker_id: str, writes: Sequence[RunWrite], now: float) -> Any:
        """The statement that makes ``writes`` durable, if it is one and the
        connection is ready to send it; else None (and the connection is
        tended to in the background: opened, or pinged after a quiet spell)."""
        if not self._ready():
            return None
        return self._storage.one_statement(worker_id, writes, now)

    def _ready(self) -> bool:
        conn = self._conn
        fresh = time.monotonic() - self._used <= self._idle_check
        # Not idle: a cancelled send that psycopg is still settling; the ping
        # below waits for it (or, past its patience, the connection is dropped).
        if (
            conn is not None
            and not conn.closed
            and not conn.broken
            and fresh
            and conn.pgconn.transaction_status == TransactionStatus.IDLE
        ):
            return self._tending is None
        if self._tending is None and not self._closed:
            now = time.monotonic()
            if conn is None and now - self._tried < RECONNECT_GAP:
                return False
            self._tried = now
            self._tending = asyncio.get_running_loop().create_task(self._tend())
        return False

    async def send(self, single: OneStatement | BatchStatement, *, spin: bool = True) -> set[str]:
        """Send what :meth:`prepare` returned; the ids whose claim was lost.
        ``spin``: look for the answer before sleeping on it (for a lone run's
        write only: the loop has nothing else to do then)."""
        conn, cursor = self._conn, self._cursor
        if conn is None or cursor is None or conn.closed or conn.broken:
            raise DatabaseUnavailable(f"{self._storage.url}: connection closed", reached=False)
        try:
            step = libpq.plan(single.sql) if self._utf8 else None
            params = libpq.values(step, single.params) if step is not None else None
            if step is not None and params is not None:
                rows: list[Any] = libpq.first_column(await self._send_raw(conn, step, params, spin))
            else:
                self._psycopg_next()
                await cursor.execute(single.sql, single.params)
                rows = await cursor.fetchall()
        except CONFLICTS as exc:  # sent by the server: rolled back, nothing written
            if conn.broken:
                await self._drop()
            raise WriteConflict(f"{self._storage.url}: {type(exc).__name__}: {exc}") from exc
        except psycopg.OperationalError as exc:
            # Sent, and the answer lost: whether it committed is unknown.
            await self._drop()
            raise DatabaseUnavailable(self._storage.unreachable(exc)) from None
        except psycopg.Error as exc:
            raise DatabaseError(f"{self._storage.url}: {type(exc).__name__}: {exc}") from exc
        self._used = time.monotonic()
        return single.lost(rows)

    async def _send_raw(
        self,
        conn: psycopg.AsyncConnection[Any],
        step: libpq.Plan,
        params: list[bytes | None],
        spin: bool,
    ) -> list[Any]:
        try:
            if self._reader is None:
                self._reader = libpq.Reader(asyncio.get_running_loop(), conn.pgconn)
            return await libpq.execute(
                conn.pgconn,
                self._prepared,
                step,
                params,
                self._reader,
                self._spin if spin else None,
            )
        except BaseException:
            if conn.pgconn.transaction_status == TransactionStatus.ACTIVE:
                # Interrupted with the statement in flight (its caller was
                # cancelled): as psycopg does, the server is asked to cancel
                # it; the connection, in a state psycopg does not know, is
                # dropped (a new one is opened on a later need).
                await asyncio.shield(self._cancel_and_drop(conn))
            raise

    async def _cancel_and_drop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        try:
            await conn.cancel_safe(timeout=TEND_PATIENCE)
        except Exception as exc:  # noqa: BLE001 - dropped either way
            log.debug("cancelling a statement on %s failed: %s", self._storage.url, exc)
        if self._conn is conn:
            await self._drop()

    async def close(self) -> None:
        self._closed = True
        if self._tending is not None:
            self._tending.cancel()
            with contextlib.suppress(BaseException):
                await self._tending
        await self._drop()

    async def _tend(self) -> None:
        try:
            # Bounded: a half-open connection must not keep this path off for good.
            await asyncio.wait_for(self._open_or_ping(), TEND_PATIENCE)
            self._used = time.monotonic()
        except (psycopg.Error, asyncio.TimeoutError) as exc:
            log.debug("event-loop connection to %s unavailable: %s", self._storage.url, exc)
            await self._drop()
        finally:
            self._tending = None

    def _psycopg_next(self) -> None:
        """psycopg is about to use the connection: its own reader of the
        socket would replace ours, then remove it (see libpq.Reader)."""
        if self._reader is not None:
            self._reader.stop()
            self._reader = None

    async def _open_or_ping(self) -> None:
        self._psycopg_next()
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            self._conn = self._cursor = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            self._prepared = set()
            self._conn = await psycopg.AsyncConnection.connect(
                self._storage.conninfo, autocommit=True, connect_timeout=10
            )
            await self._conn.execute(q.SESSION)
            self._utf8 = self._conn.info.encoding == "utf-8"
            self._cursor = self._conn.cursor()
        else:
            await conn.execute("SELECT 1")

    async def _drop(self) -> None:
        self._psycopg_next()
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

"""A lone run's write sent through libpq's own calls, not psycopg's cursor.

On the event loop a psycopg async cursor spends about 50 µs of CPU per
statement around the round trip (its generators, its wait loop, dumping
named parameters, its prepared-statement bookkeeping), and a lone run sends
four statements, each on the run's critical path. Here a statement is
prepared once per connection under its own name, its parameters are turned
into text by ``values`` and sent with ``PQsendQueryPrepared``, and the answer
is awaited with the loop's own reader callback (one kept per connection,
see :class:`Reader`). Text is sent as UTF-8, so
only a connection whose client encoding is UTF-8 takes this path.

Only statements whose parameters are all plain scalars (text, numbers,
booleans, NULL) take this path; anything else, or a value it cannot send
exactly (a float that is not finite, text with a NUL, which a C string
would cut short), is sent by psycopg as before. Errors are raised as the
psycopg exceptions psycopg itself would raise, so callers handle both paths
alike.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq

_NAMED = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class Plan:
    """A statement in PostgreSQL's ``$n`` form, and where its parameters come from."""

    name: bytes
    sql: bytes
    names: tuple[str, ...] | None  # named parameters in ``$n`` order; None: positional


_plans: dict[str, Plan | None] = {}
_names = itertools.count()  # unique names even if two loops plan at once


def plan(sql: str) -> Plan | None:
    """The plan of ``sql`` (psycopg's ``%(name)s`` or ``%s`` style); None if
    it uses anything else (``%%``, or both styles)."""
    if sql in _plans:
        return _plans[sql]
    found: Plan | None = None
    if "%%" not in sql:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        text = _NAMED.sub(number, sql)
        name = f"durably_lw_{next(_names)}".encode()
        if names and "%s" not in text:
            found = Plan(name, text.encode(), tuple(names))
        elif not names:
            parts = text.split("%s")
            numbered = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], 1))
            found = Plan(name, numbered.encode(), None)
    _plans[sql] = found
    return found


def values(step: Plan, params: Any) -> list[bytes | None] | None:
    """The parameters as text, in ``$n`` order; None if one cannot be sent here
    (then psycopg sends them, and refuses what it must with its own error)."""
    ordered = [params[n] for n in step.names] if step.names is not None else params
    # One loop, no call per value: a lone run sends about fifty of them.
    sent: list[bytes | None] = []
    for value in ordered:
        kind = type(value)
        if kind is str:
            try:
                data: bytes = value.encode("utf-8")
            except UnicodeEncodeError:
                return None
            if b"\x00" in data:  # a C string would end there
                return None
            sent.append(data)
        elif value is None:
            sent.append(None)
        elif kind is int:
            sent.append(int.__repr__(value).encode())
        elif kind is bool:
            sent.append(b"t" if value else b"f")
        elif kind is float and math.isfinite(value):
            sent.append(float.__repr__(value).encode())
        else:
            return None
    return sent


class Spin:
    """How long to look for a statement's answer before sleeping until it comes.

    A lone run's writes follow one another: each waits for the previous
    one's answer. Sleeping on the socket for that answer costs more than the
    sleep: on a virtual machine, a CPU left idle is handed back to the host,
    and waking it again for the answer took about 50 µs here, a fifth of a
    whole statement against a local server (see docs/design.md, "The hot
    path"). So the answer is looked for (a non-blocking read, the CPU given
    up to other threads between looks) for a bounded time first: while
    answers have been coming within ``limit``, for at most three times
    their typical time. A slower server (remote, or loaded) stops the
    looking by itself. The loop runs nothing else meanwhile: at most
    ``limit`` per statement (plus a scheduler slice, if the CPU given up
    went to another busy process or thread).
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.typical = limit / 2  # moving average of answer times, seconds

    def budget(self) -> float:
        """Seconds to look for the next answer (0: sleep on it at once)."""
        if self.typical > self.limit:
            return 0.0
        return min(self.limit, 3 * self.typical)

    def took(self, seconds: float) -> None:
        # Capped: one answer that waited on a lock says little about the
        # next, and would turn the looking off for dozens of statements.
        seconds = min(seconds, 2 * self.limit)
        self.typical += (seconds - self.typical) / 8


# Lets the step threads and the server's own process (on a one-CPU machine)
# run between looks; a bare sleep(0) releases the GIL too, where there is none.
_give_way: Callable[[], None] = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


async def execute(
    pgconn: pq.abc.PGconn,
    prepared: set[bytes],
    step: Plan,
    params: list[bytes | None],
    reader: Reader,
    spin: Spin | None = None,
) -> list[pq.abc.PGresult]:
    """Run ``step`` with ``params`` (preparing it first on this connection if
    needed); the results it returned (see :func:`first_column`). ``reader``
    is the connection's socket reader; ``spin``, if given, how long to look
    for the answer before sleeping on it."""
    loop = asyncio.get_running_loop()
    readable = reader.readable
    if step.name not in prepared:
        pgconn.send_prepare(step.name, step.sql)
        await _results(pgconn, loop, readable)
        prepared.add(step.name)
    pgconn.send_query_prepared(step.name, params)
    if spin is None:
        return await _results(pgconn, loop, readable)
    sent = time.perf_counter()
    budget = spin.budget()
    if budget and not pgconn.flush():  # all of it sent: the answer can come
        until = sent + budget
        pgconn.consume_input()
        while pgconn.is_busy() and time.perf_counter() < until:
            _give_way()
            pgconn.consume_input()
    results = await _results(pgconn, loop, readable)
    spin.took(time.perf_counter() - sent)
    return results


def first_column(results: list[pq.abc.PGresult]) -> list[tuple[str | None]]:
    """Each row's first value, as text."""
    return [
        (None if (value := result.get_value(row, 0)) is None else value.decode(),)
        for result in results
        for row in range(result.ntuples)
    ]


async def _results(
    pgconn: pq.abc.PGconn,
    loop: asyncio.AbstractEventLoop,
    readable: Callable[[], Awaitable[None]],
) -> list[pq.abc.PGresult]:
    """Every result of what was sent, up to the end of the exchange; raises
    on any error among them. An autocommitted statement can hand back its
    rows and then fail at its commit (a deferred constraint, a serialization
    failure): psycopg raises then, and so must this."""
    fd = pgconn.socket
    while pgconn.flush():
        await _ready(loop.add_writer, loop.remove_writer, fd, loop)
    results: list[pq.abc.PGresult] = []
    while True:
        # get_result() on a busy connection would wait on the socket, blocking
        # the loop (and, in psycopg's C build, the whole process).
        pgconn.consume_input()
        while pgconn.is_busy():
            await readable()
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        results.append(result)
    for result in results:
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise errors.error_from_result(result, encoding="utf-8")
    if not results:
        raise psycopg.OperationalError("the server sent no result")
    return results


class Reader:
    """The event loop's reader of one connection's socket, added once and
    kept: adding and removing it around every wait costs more than the rest
    of the exchange's Python (uvloop makes and frees a poll handle and calls
    epoll_ctl twice each time).

    Whoever lets psycopg use the connection calls :meth:`stop` first:
    psycopg adds and removes its own reader on the same socket, which would
    replace this one and then remove it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, pgconn: pq.abc.PGconn) -> None:
        self._loop = loop
        self._pgconn = pgconn
        self._fd = pgconn.socket
        self._waiter: asyncio.Future[None] | None = None
        self._added = False
        self._stopped = False

    async def readable(self) -> None:
        if self._stopped:  # the connection was handed over or dropped: not watched again
            raise psycopg.OperationalError("the connection was let go while a statement waited")
        waiter = self._loop.create_future()
        self._waiter = waiter
        try:
            if not self._added:
                self._loop.add_reader(self._fd, self._ready)
                self._added = True
            await waiter
        finally:
            self._waiter = None

    def _ready(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
            return
        # Readable with nobody waiting: asyncio's loop looks at the socket
        # again before the woken task has read it, so this is often called
        # once more after its answer was taken; else a notice came, or the
        # server closed the connection. Whatever is there is taken into
        # libpq's buffer, or the loop would call this on every turn; if the
        # connection is gone, watching stops (the next statement fails).
        try:
            self._pgconn.consume_input()
        except Exception:  # noqa: BLE001 - psycopg's error for a lost connection
            self.stop()

    def stop(self) -> None:
        self._stopped = True
        if self._added:
            self._added = False
            self._loop.remove_reader(self._fd)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # Whoever waits looks once more, then fails its statement
            # (see readable) instead of waiting for good.
            waiter.set_result(None)


async def _ready(add: Any, remove: Any, fd: int, loop: asyncio.AbstractEventLoop) -> None:
    waiter = loop.create_future()
    add(fd, _wake, waiter)
    try:
        await waiter
    finally:
        remove(fd)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)

"""A lone run's writes sent through libpq's own calls (``postgres/libpq.py``).

What is sent must arrive exactly as psycopg would have sent it, what cannot
be sent exactly must be left to psycopg, and errors must be psycopg's own.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import psycopg
import pytest

import durably
from conftest import eventually
from durably._storage.postgres import libpq


def test_named_parameters_are_numbered_once_each_in_order_of_first_use() -> None:
    step = libpq.plan("SELECT %(b)s::int, %(a)s::text, %(b)s::int -- plan test 1")
    assert step is not None
    assert step.sql == b"SELECT $1::int, $2::text, $1::int -- plan test 1"
    assert step.names == ("b", "a")
    assert libpq.plan("SELECT %(b)s::int, %(a)s::text, %(b)s::int -- plan test 1") is step
    assert libpq.values(step, {"a": "x", "b": 7, "unused": [1]}) == [b"7", b"x"]


def test_positional_parameters_are_numbered_in_order() -> None:
    step = libpq.plan("VALUES (%s::text, %s::float8, %s::bool) -- plan test 2")
    assert step is not None
    assert step.sql == b"VALUES ($1::text, $2::float8, $3::bool) -- plan test 2"
    assert step.names is None
    assert libpq.values(step, ("é", 0.1, True)) == ["é".encode(), b"0.1", b"t"]


def test_statements_it_cannot_number_are_left_to_psycopg() -> None:
    assert libpq.plan("SELECT '100%%' -- plan test 3") is None
    assert libpq.plan("SELECT %s, %(a)s -- plan test 4") is None


@pytest.mark.parametrize(
    "value",
    [
        "a\x00b",  # a C string would end at the NUL
        "\udcff",  # a lone surrogate is not UTF-8
        math.inf,
        math.nan,
        [1, 2],
        b"bytes",
        1.5j,
    ],
    ids=["nul", "surrogate", "inf", "nan", "list", "bytes", "complex"],
)
def test_values_it_cannot_send_exactly_are_left_to_psycopg(value: Any) -> None:
    step = libpq.plan("SELECT %s -- plan test 5")
    assert step is not None
    assert libpq.values(step, (value,)) is None


def test_floats_are_sent_in_a_form_that_reads_back_exactly() -> None:
    step = libpq.plan("SELECT %s::float8 -- plan test 6")
    assert step is not None
    for value in (0.1 + 0.2, 1_700_000_000.123456, 5e-324, sys.float_info.max, -0.0, 3.0):
        (text,) = libpq.values(step, (value,)) or [None]
        assert text is not None and float(text) == value and str(value) in text.decode()


@pytest.fixture
async def conn(postgres_server: Any) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    connection = await psycopg.AsyncConnection.connect(postgres_server.url, autocommit=True)
    await connection.execute(
        "CREATE TEMP TABLE libpq_test (k text PRIMARY KEY, f float8, b bool, i bigint, n text)"
    )
    yield connection
    await connection.close()


INSERT = (
    "INSERT INTO libpq_test (k, f, b, i, n) VALUES "
    "(%(k)s, %(f)s::float8, %(b)s::bool, %(i)s::bigint, %(n)s) RETURNING k"
)


async def _insert(conn: psycopg.AsyncConnection[Any], prepared: set[bytes], **row: Any) -> int:
    step = libpq.plan(INSERT)
    assert step is not None
    params = libpq.values(step, row)
    assert params is not None
    return await _execute(conn, prepared, step, params)


async def _execute(
    conn: psycopg.AsyncConnection[Any],
    prepared: set[bytes],
    step: libpq.Plan,
    params: list[bytes | None],
) -> int:
    """One statement with a reader of its own, stopped after it: psycopg
    uses the same connection between these statements."""
    reader = libpq.Reader(asyncio.get_running_loop(), conn.pgconn)
    try:
        results = await libpq.execute(conn.pgconn, prepared, step, params, reader)
        return sum(result.ntuples for result in results)
    finally:
        reader.stop()


async def test_what_it_sends_reads_back_as_psycopg_would_have_sent_it(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    prepared: set[bytes] = set()
    rows = [
        {"k": "ünïcødé ✓ 🎉", "f": 1_700_000_000.123456, "b": True, "i": 2**62, "n": None},
        {"k": "quote ' and \\ backslash", "f": 0.1 + 0.2, "b": False, "i": -1, "n": "x"},
    ]
    for row in rows:
        assert await _insert(conn, prepared, **row) == 1
    cursor = await conn.execute("SELECT k, f, b, i, n FROM libpq_test ORDER BY i")
    stored = await cursor.fetchall()
    assert stored == [tuple(row.values()) for row in sorted(rows, key=lambda r: r["i"])]
    # Prepared once on this connection, then only executed.
    assert len(prepared) == 1
    names = await (await conn.execute("SELECT name FROM pg_prepared_statements")).fetchall()
    assert [name for (name,) in names if name.startswith("durably_lw_")] == [
        next(iter(prepared)).decode()
    ]


async def test_errors_are_psycopgs_own_and_the_connection_stays_usable(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    prepared: set[bytes] = set()
    assert await _insert(conn, prepared, k="same", f=1.0, b=True, i=1, n=None) == 1
    with pytest.raises(psycopg.errors.UniqueViolation, match="libpq_test_pkey"):
        await _insert(conn, prepared, k="same", f=2.0, b=True, i=2, n=None)
    assert await _insert(conn, prepared, k="other", f=3.0, b=False, i=3, n=None) == 1
    count = await (await conn.execute("SELECT count(*) FROM libpq_test")).fetchone()
    assert count == (2,)


async def test_a_failure_at_commit_after_the_rows_is_raised_not_taken_as_kept(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """An autocommitted statement hands back its rows, then fails at its
    commit (here a deferred constraint; a serialization failure does the
    same): taking the rows as "kept" would report a write that never
    committed as durable."""
    await conn.execute(
        "CREATE TEMP TABLE libpq_deferred (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)"
    )
    await conn.execute("INSERT INTO libpq_deferred VALUES (1)")
    step = libpq.plan("INSERT INTO libpq_deferred VALUES (%s::int) RETURNING k -- deferred")
    assert step is not None
    with pytest.raises(psycopg.errors.UniqueViolation):
        await _execute(conn, set(), step, [b"1"])
    count = await (await conn.execute("SELECT count(*) FROM libpq_deferred")).fetchone()
    assert count == (1,)
    assert await _execute(conn, {step.name}, step, [b"2"]) == 1  # still usable


async def test_a_lone_run_on_a_connection_that_is_not_utf8_keeps_its_text(
    postgres_server: Any,
) -> None:
    """libpq.py sends text as UTF-8: on a connection with another client
    encoding its writes go through psycopg, which encodes for it."""
    name = postgres_server.create()
    url = postgres_server.url.rpartition("/")[0] + f"/{name}?client_encoding=latin1"
    app = durably.App("test", url, lease_seconds=2.0)

    @app.step()
    async def greet(who: str) -> str:
        return f"café, {who}"

    @app.workflow()
    async def hello(ctx: durably.Context, who: str) -> str:
        return await greet(await greet(who))

    try:
        async with app.worker() as worker:
            for i in range(3):  # the loop's connection is up after the first
                handle = await app.start(hello, "zoë", id=f"crème-{i}")
                assert await handle.result(timeout=20) == "café, café, zoë"
            assert worker.committer._writer._utf8 is False  # type: ignore[union-attr]
        with psycopg.connect(postgres_server.url.rpartition("/")[0] + f"/{name}") as check:
            rows = check.execute("SELECT id, result FROM durably.runs ORDER BY id").fetchall()
        assert rows == [(f"crème-{i}", '"café, café, zoë"') for i in range(3)]
    finally:
        app.close()
        postgres_server.drop(name)


async def test_a_kept_reader_serves_every_statement_and_stops_when_nobody_waits(
    conn: psycopg.AsyncConnection[Any], postgres_server: Any
) -> None:
    reader = libpq.Reader(asyncio.get_running_loop(), conn.pgconn)
    step = libpq.plan(INSERT)
    assert step is not None
    prepared: set[bytes] = set()
    for i in range(5):
        params = libpq.values(step, {"k": f"k{i}", "f": 1.0, "b": True, "i": i, "n": None})
        assert params is not None
        assert await _rows(libpq.execute(conn.pgconn, prepared, step, params, reader)) == 1
        await asyncio.sleep(0.01)  # loop turns with nobody waiting
    # One that certainly waits (on a loaded machine an answer can be there
    # before the first look, and then no reader is needed at all).
    slow = libpq.plan("SELECT pg_sleep(0.05)")
    assert slow is not None
    assert await _rows(libpq.execute(conn.pgconn, prepared, slow, [], reader)) == 1
    await asyncio.sleep(0.01)
    assert reader._added  # kept after the statement
    # The server ends the session while nobody waits: the socket stays
    # readable, and a reader left in place would be called on every turn.
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.pgconn.backend_pid,))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not reader._added:
            break
    assert not reader._added


def test_a_spin_looks_while_answers_come_quickly_and_stops_when_they_do_not() -> None:
    spin = libpq.Spin(0.0005)
    assert spin.budget() == 0.0005  # at first: up to the limit
    for _ in range(50):
        spin.took(0.0001)
    assert spin.budget() == pytest.approx(0.0003, rel=0.05)  # three times the typical
    spin.took(0.5)  # one answer that waited on a lock
    assert spin.budget() > 0  # counted as twice the limit: the looking goes on
    for _ in range(50):
        spin.took(0.002)  # a slow server: the looks found nothing
    assert spin.budget() == 0.0
    for _ in range(50):
        spin.took(0.0002)  # it is quick again (answers slept on)
    assert 0 < spin.budget() <= 0.0005


async def _ticking_while(work: Any) -> tuple[Any, int]:
    """``work``'s result, and how many times a 1 ms ticker ran meanwhile."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0)
    try:
        return await work, ticks
    finally:
        ticking.cancel()


async def test_a_spun_statement_answers_as_a_slept_one_and_sleeps_past_its_budget(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    reader = libpq.Reader(asyncio.get_running_loop(), conn.pgconn)
    slept = _count_sleeps(reader)
    spin = libpq.Spin(0.05)  # (a loaded machine's answers still come within it)
    prepared: set[bytes] = set()
    step = libpq.plan(INSERT)
    assert step is not None
    try:
        for i in range(20):
            params = libpq.values(step, {"k": f"s{i}", "f": 0.5, "b": False, "i": i, "n": "x"})
            assert params is not None
            assert (
                await _rows(libpq.execute(conn.pgconn, prepared, step, params, reader, spin)) == 1
            )
        assert spin.budget() > 0  # a local server answers within the limit
        # Found by looking: all but the first (slept on while being
        # prepared), unless the machine is loaded.
        assert len(slept) <= 5
        # A statement that takes 0.3 s: looked for three times the typical
        # answer's time at most, then slept on, so the loop runs other tasks.
        slow = libpq.plan("SELECT pg_sleep(0.3)")
        assert slow is not None
        rows, ticks = await _ticking_while(
            libpq.execute(conn.pgconn, prepared, slow, [], reader, spin)
        )
        # about 250 ticks (a spin held to the end: none)
        assert len(libpq.first_column(rows)) == 1 and ticks >= 20
    finally:
        reader.stop()
    cur = await conn.execute("SELECT count(*), sum(i) FROM libpq_test WHERE k LIKE 's%'")
    assert await cur.fetchone() == (20, sum(range(20)))


async def _rows(sent: Awaitable[list[Any]]) -> int:
    """How many rows a statement sent by ``libpq.execute`` returned."""
    return len(libpq.first_column(await sent))


def _count_sleeps(reader: libpq.Reader) -> list[float]:
    """When ``reader`` began each of its waits (answers slept on)."""
    slept: list[float] = []
    readable = reader.readable

    async def counted() -> None:
        slept.append(time.monotonic())
        await readable()

    reader.readable = counted  # type: ignore[method-assign]
    return slept


async def test_a_connection_lost_while_its_answer_is_looked_for_raises_psycopgs_error(
    conn: psycopg.AsyncConnection[Any], postgres_server: Any
) -> None:
    reader = libpq.Reader(asyncio.get_running_loop(), conn.pgconn)
    slept = _count_sleeps(reader)
    spin = libpq.Spin(5.0)  # looks for the whole statement
    slow = libpq.plan("SELECT pg_sleep(%s::float8)")
    assert slow is not None
    prepared: set[bytes] = set()
    assert await _rows(libpq.execute(conn.pgconn, prepared, slow, [b"0"], reader, spin)) == 1
    pid = conn.pgconn.backend_pid
    killed: list[float] = []

    def kill() -> None:
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            killed.append(time.monotonic())
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    killer = threading.Timer(0.2, kill)
    slept.clear()
    killer.start()
    try:
        with pytest.raises(psycopg.OperationalError):
            await libpq.execute(conn.pgconn, prepared, slow, [b"3"], reader, spin)
    finally:
        killer.join()
        reader.stop()
    assert all(t > killed[0] for t in slept)  # looked for, not slept on, until the loss


async def test_a_statement_whose_connection_is_closed_while_it_waits_fails_at_once(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    # The loop writer closes its connection (a worker stopping) while a
    # statement waits for its answer: the statement fails, it does not wait
    # for good.
    reader = libpq.Reader(asyncio.get_running_loop(), conn.pgconn)
    slow = libpq.plan("SELECT pg_sleep(%s::float8)")
    assert slow is not None
    waiting = asyncio.get_running_loop().create_task(
        libpq.execute(conn.pgconn, set(), slow, [b"5"], reader)
    )
    await eventually(lambda: reader._waiter is not None)
    reader.stop()
    await conn.close()
    with pytest.raises(psycopg.OperationalError):
        await asyncio.wait_for(waiting, 2)


async def test_the_loop_writer_keeps_working_after_psycopg_used_its_connection(
    pg: tuple[str, Any],
) -> None:
    """psycopg adds and removes its own reader of the socket (a ping after a
    quiet spell, a statement libpq.py cannot send): the loop writer's kept
    reader must step aside, or its next statement would wait forever."""
    app = durably.App("test", pg[0])

    @app.step()
    async def bump(x: int) -> int:
        return x + 1

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        return await bump(await bump(x))

    @app.workflow()
    async def fan(ctx: durably.Context, x: int) -> int:
        # Both results in one write: two entries, sent by psycopg (arrays).
        a, b = await asyncio.gather(bump(x), bump(x + 1))
        return await bump(a + b)

    try:
        async with app.worker() as worker:
            writer: Any = worker.committer._writer
            for i in range(3):  # the connection is opened, then statements go raw
                assert await (await app.start(flow, i)).result(timeout=20) == i + 2
            assert writer._reader is not None
            writer._used = 0.0  # as after a quiet spell: the next write pings first
            assert await (await app.start(flow, 10)).result(timeout=20) == 12
            await eventually(lambda: writer._tending is None)
            for i in range(3):
                assert await (await app.start(flow, 20 + i)).result(timeout=20) == 22 + i
            assert writer._reader is not None  # raw statements again
            stepped_aside = writer._psycopg_next
            sent_by_psycopg = []

            def psycopg_next() -> None:
                sent_by_psycopg.append(writer._reader is not None)
                stepped_aside()

            writer._psycopg_next = psycopg_next
            for i in range(3):
                assert await (await app.start(fan, i)).result(timeout=20) == 2 * i + 4
                assert await (await app.start(flow, i)).result(timeout=20) == i + 2
            assert True in sent_by_psycopg  # a kept reader stepped aside for psycopg
    finally:
        app.close()

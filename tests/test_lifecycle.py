"""Closing an app, switching its database and outages at a process's first
wait, while other calls are in flight. Found by a review of shutdown paths;
each test failed (hung, or used the wrong database) on the code before."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import durably
from outage_proxy import OutageProxy


def _doubler(app: durably.App) -> Callable[..., object]:
    @app.workflow()
    def double(ctx: durably.Context, x: int) -> int:
        return x * 2

    return double


def _result_in_thread(app: durably.App, run_id: str) -> tuple[threading.Thread, list[object]]:
    """``result_sync()`` without a timeout in a thread; what it returned or raised."""
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(app.get_handle(run_id).result_sync())
        except BaseException as exc:  # noqa: BLE001 - what it said is the point
            outcome.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, outcome


async def test_a_wait_for_a_result_ends_when_the_app_is_closed(
    make_app: Callable[..., durably.App],
) -> None:
    """``result()`` without a timeout, waiting while the app was closed (a
    shutdown, ``use_database``), waited forever: nobody was left to answer."""
    app = make_app()
    double = _doubler(app)
    handle = await app.start(double, 21, id="never-run")  # no worker: it stays pending
    waiting = asyncio.ensure_future(handle.result())
    thread, blocked = _result_in_thread(app, "never-run")
    await asyncio.sleep(0.3)
    app.close()
    with pytest.raises(durably.DurablyError, match="closed while waiting for run 'never-run'"):
        await asyncio.wait_for(waiting, 10)
    thread.join(10)
    assert len(blocked) == 1 and isinstance(blocked[0], durably.DurablyError), blocked
    async with app.worker():  # and the app works again afterwards
        assert await app.get_handle("never-run").result(timeout=10) == 42


async def test_closing_an_app_with_a_worker_running_is_refused(
    make_app: Callable[..., durably.App],
) -> None:
    """The worker kept the closed storage: on SQLite every operation then
    failed, on PostgreSQL the worker waited out a 300 s 'outage'."""
    app = make_app()
    double = _doubler(app)
    async with app.worker():
        with pytest.raises(durably.ConfigurationError, match="worker running"):
            app.close()
        with pytest.raises(durably.ConfigurationError, match="worker running"):
            app.use_database("sqlite:///elsewhere.db")
        assert await (await app.start(double, 2)).result(timeout=10) == 4


def test_use_database_while_other_threads_start_runs(tmp_path: Path) -> None:
    """A start batched while ``use_database`` ran reopened the old database,
    and the app kept using it for good."""
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    app = durably.App("switch", f"sqlite:///{first}")
    double = _doubler(app)
    stop = threading.Event()
    errors: list[BaseException] = []

    def start_many() -> None:
        while not stop.is_set():
            try:
                app.start_sync(double, 1)
            except durably.DurablyError:
                pass  # a start caught by the close itself may fail: clearly
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=start_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        app.use_database(f"sqlite:///{second}")
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    try:
        assert not errors, errors
        assert str(second) in app.storage.url
        after = app.start_sync(double, 5, id="after-the-switch")
        assert after.id == "after-the-switch"
        other = durably.App("switch", f"sqlite:///{first}")
        try:
            assert other.storage.get_run("after-the-switch") is None
        finally:
            other.close()
    finally:
        app.close()


@pytest.mark.timeout(120)
async def test_a_first_wait_during_an_outage_is_answered_once_it_ends(
    pg: tuple[str, OutageProxy],
) -> None:
    """The thread that follows results died when the database could not be
    opened at a process's first wait, and was never started again: that wait
    and every later one in the process hung."""
    url, proxy = pg
    server = durably.App("first-wait", url)
    client = durably.App("first-wait", proxy.url(url.rpartition("/")[2]))
    double = _doubler(server)
    _doubler(client)
    try:
        handle = await server.start(double, 21, id="waited")
        proxy.cut()
        waiting = asyncio.ensure_future(client.get_handle("waited").result())
        await asyncio.sleep(1.0)
        proxy.restore()
        async with server.worker():
            assert await asyncio.wait_for(waiting, 30) == 42
        assert await client.get_handle(handle.id).result(timeout=10) == 42
    finally:
        client.close()
        server.close()


def test_a_wait_on_a_database_that_cannot_be_used_says_why(tmp_path: Path) -> None:
    """A wait without a timeout on a database durably cannot use (a file that
    is not durably's) waited forever, saying nothing: only an outage is worth
    waiting out."""
    import sqlite3

    foreign = tmp_path / "theirs.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    app = durably.App("foreign", f"sqlite:///{foreign}")
    thread, outcome = _result_in_thread(app, "r1")
    thread.join(10)
    try:
        assert not thread.is_alive(), "still waiting"
        assert isinstance(outcome[0], durably.DatabaseError), outcome
        assert "did not create" in str(outcome[0])
    finally:
        app.close()


async def test_closing_while_a_worker_stops_is_refused(
    make_app: Callable[..., durably.App],
) -> None:
    """A worker leaves the app's list of running workers before it has
    handed its runs back; a close() in that window closed its connections
    under it."""
    app = make_app()

    @app.step()
    def slow() -> int:
        time.sleep(1.0)
        return 1

    @app.workflow()
    def waits_for_slow(ctx: durably.Context) -> int:
        return int(slow())

    said: list[BaseException | None] = []

    def try_close() -> None:
        try:
            app.close()
            said.append(None)
        except BaseException as exc:  # noqa: BLE001 - what it said is the point
            said.append(exc)

    async with app.worker():
        await app.start(waits_for_slow)
        await asyncio.sleep(0.3)  # the step is running: stopping waits for it
        closer = threading.Timer(0.2, try_close)
        closer.start()
    closer.join()
    assert isinstance(said[0], durably.ConfigurationError), said


async def test_a_start_that_races_close_reopens_the_app(
    make_app: Callable[..., durably.App],
) -> None:
    """A start that took the start batcher just before close() closed it got
    a raw RuntimeError; like any call after close(), it reopens the app."""
    app = make_app()
    double = _doubler(app)
    app._start_batcher().close()  # what close() does to it, the app not knowing yet
    handle = await app.start(double, 4, id="after-race")
    assert handle.id == "after-race"
    assert app.start_sync(double, 5, id="after-race-sync").id == "after-race-sync"

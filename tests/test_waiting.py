"""Waiting for results: many waiters share their reads of the database."""

from __future__ import annotations

import asyncio
import collections
import gc
import time
import weakref
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import durably
from conftest import eventually, wait_until
from durably._storage.base import Storage
from durably._waiting import RunWatcher


def count_reads(app: durably.App) -> dict[str, list[int]]:
    """Per storage read method of ``app``: the number of ids of each call."""
    storage: Any = app.storage
    calls: dict[str, list[int]] = collections.defaultdict(list)
    names = {"get_run": "get_run", "get_runs": "get_runs", "ended_runs": "ended_runs"}
    if type(storage).watch_runs is not Storage.watch_runs:
        # A waiter's first read, counted as the read it is (the base class's
        # calls get_runs, counted already).
        names["watch_runs"] = "get_runs"
    for name, key in names.items():
        real = getattr(storage, name)

        def counted(*args: Any, _real: Any = real, _key: str = key) -> Any:
            ids = args[0]
            calls[_key].append(1 if isinstance(ids, str) else len(ids))
            return _real(*args)

        setattr(storage, name, counted)
    return calls


def add_flow(app: durably.App) -> Any:
    @app.step()
    async def double(x: int) -> int:
        await asyncio.sleep(0.01)
        return x * 2

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        return int(await double(x))

    return flow


def worker_and_client(make_app: Callable[..., durably.App]) -> tuple[durably.App, durably.App, Any]:
    """Two apps on one database, as two processes: one to run workers, one
    client with no worker (its results come from the database); ``flow`` as
    the client knows it."""
    workers, client = make_app(), make_app()
    add_flow(workers)
    return workers, client, add_flow(client)


async def test_many_waiters_share_their_reads(
    make_app: Callable[..., durably.App], backend: str
) -> None:
    # The client has no worker: every result comes from the database. Each
    # run's first read is batched with the other waiters'; after that only
    # ended rows are read, and on PostgreSQL only the runs a NOTIFY names.
    workers, client, flow = worker_and_client(make_app)
    reads = count_reads(client)
    n = 200
    async with workers.worker(concurrency=50):
        handles = [await client.start(flow, i) for i in range(n)]
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert results == [2 * i for i in range(n)]
    assert reads["get_run"] == []  # no read per waiter
    # Each run's first read at most once (none for a run whose end was read
    # ahead, as its handle is held here), in shared batches.
    assert sum(reads["get_runs"]) <= n
    assert len(reads["get_runs"]) < n / 4
    # Ended rows read by name, about once each: PostgreSQL's NOTIFY names
    # them, SQLite's log of ended runs lists them (a full re-read at most
    # when the listener (re)connects or the fallback re-check runs).
    assert sum(reads["ended_runs"]) <= 3 * n


async def test_an_end_without_a_journal_entry_reaches_an_outside_waiter_at_once(
    make_app: Callable[..., durably.App],
) -> None:
    # Runs cancelled before any worker took them end without a step or a
    # journal entry. A client with no worker of its own hears of each end at
    # the next change (SQLite: from its log of ended runs; PostgreSQL: from
    # the NOTIFY), not at the periodic re-read, here set 30 s apart; and it
    # reads only the rows that ended.
    client, other = make_app(), make_app()
    flow = add_flow(client)
    client._recheck = 30.0  # type: ignore[attr-defined]
    reads = count_reads(client)
    handles = [await client.start(flow, i) for i in range(40)]
    waiting = asyncio.gather(*(h.result(timeout=20) for h in handles[:10]), return_exceptions=True)
    await asyncio.sleep(0.3)  # the waiters' first reads are done
    began = time.monotonic()
    for handle in handles[:10]:
        await other.cancel(handle.id)
        await asyncio.sleep(0.05)  # ten separate changes
    outcomes = await waiting
    assert time.monotonic() - began < 5
    assert all(isinstance(o, durably.WorkflowCancelled) for o in outcomes), outcomes
    # Once, as waiting began, a look at the runs of the thirty handles held
    # and not awaited (had any ended already?); after that, only the runs
    # that ended are read, never the thirty still pending.
    calls = reads["ended_runs"]
    catch_up = max(calls)
    assert catch_up <= 40 and sum(calls) - catch_up <= 2 * 10, calls


def test_sqlite_keeps_a_log_of_every_way_a_run_ends(tmp_path: Any) -> None:
    storage: Any = durably.App("log", f"sqlite:///{tmp_path / 'log.db'}").storage
    storage.migrate()
    assert storage.ended_since(None) == ([], 0)
    import sqlite3

    conn = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    now = time.time()
    rows = [(f"r{i}", "wf", "1", "pending", "[]", now, now) for i in range(10_010)]
    conn.executemany(
        "INSERT INTO durably_runs (id, workflow, version, status, args, created_at,"
        " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("UPDATE durably_runs SET status = 'completed' WHERE id IN ('r0', 'r1')")
    conn.execute("UPDATE durably_runs SET status = 'running' WHERE id = 'r2'")  # not an end
    storage.request_cancel("r3", now, "no longer needed")  # a pending run, no worker
    assert storage.ended_since(0) == (["r0", "r1", "r3"], 3)
    conn.execute("UPDATE durably_runs SET status = 'completed' WHERE id = 'r1'")  # no change
    conn.execute("UPDATE durably_runs SET status = 'running' WHERE id = 'r0'")  # a retry...
    conn.execute("UPDATE durably_runs SET status = 'failed' WHERE id = 'r0'")  # ...ends again
    assert storage.ended_since(3) == (["r0"], 4)
    assert storage.ended_since(4) == ([], 4)
    assert storage.ended_since(99) is None  # a position past the log: another log
    # Only the last 10,000 ends are kept: a reader further behind is told so.
    conn.execute("UPDATE durably_runs SET status = 'completed' WHERE status = 'pending'")
    assert storage.ended_since(4) is None
    ended, position = storage.ended_since(position=10_005)
    assert position == 4 + 10_006 and len(ended) == 5
    assert conn.execute("SELECT count(*) FROM durably_ended").fetchone()[0] == 10_000
    conn.close()
    storage.close()


async def test_waiting_on_unknown_runs_fails_them_and_not_the_others(
    make_app: Callable[..., durably.App],
) -> None:
    workers, client, flow = worker_and_client(make_app)
    async with workers.worker():
        real = [await client.start(flow, i) for i in range(3)]
        ghosts = [client.get_handle(f"ghost-{i}") for i in range(3)]
        outcomes = await asyncio.gather(
            *(h.result(timeout=30) for h in real + ghosts), return_exceptions=True
        )
        assert outcomes[:3] == [0, 2, 4]
        for outcome in outcomes[3:]:
            assert isinstance(outcome, durably.RunNotFound)
            assert "no run with id 'ghost-" in str(outcome)
        with pytest.raises(durably.RunNotFound, match="ghost-sync"):
            await asyncio.to_thread(client.get_handle("ghost-sync").result_sync, 30)


# -- handles awaited after their runs ended ------------------------------------------


def add_slow_last(app: durably.App, last: int) -> Any:
    """A workflow whose run for ``last`` takes clearly longer than the others."""

    @app.step()
    async def triple(x: int) -> int:
        await asyncio.sleep(0.5 if x == last else 0.01)
        return x * 3

    @app.workflow()
    async def slow_last(ctx: durably.Context, x: int) -> int:
        return int(await triple(x))

    return slow_last


def total(reads: dict[str, list[int]]) -> int:
    return sum(len(calls) for calls in reads.values())


async def test_handles_awaited_one_by_one_read_nothing_for_runs_that_ended_meanwhile(
    make_app: Callable[..., durably.App],
) -> None:
    # The client awaits the slowest run first, and only then do the workers
    # start: every other run ends while it waits, announced by a NOTIFY
    # (PostgreSQL) or in SQLite's log of ended runs. As the client holds
    # their handles, their rows are read then, with the waiters', so that
    # awaiting each afterwards reads nothing (it used to be one read, one
    # round trip, per handle).
    n = 60
    workers, client = make_app(), make_app()
    add_slow_last(workers, n - 1)
    flow = add_slow_last(client, n - 1)
    handles = [await client.start(flow, i) for i in range(n)]
    reads = count_reads(client)
    slowest = asyncio.ensure_future(handles[-1].result(timeout=60))
    await eventually(lambda: reads["get_runs"])  # the watcher has begun
    async with workers.worker(concurrency=n):
        assert await slowest == 3 * (n - 1)
    for reads_of_one in reads.values():
        reads_of_one.clear()
    results = [await h.result(timeout=60) for h in handles[:-1]]
    assert results == [3 * i for i in range(n - 1)]
    assert total(reads) == 0, dict(reads)


async def test_a_local_worker_hands_ended_runs_to_the_handles_held_here(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    flow = add_flow(app)
    reads = count_reads(app)
    async with app.worker(concurrency=20):
        handles = [await app.start(flow, i) for i in range(20)]
        await eventually(lambda: not app._workers[0].drivers)  # all ended, none awaited
        results = [await h.result(timeout=30) for h in handles]
        assert [h.result_sync(timeout=30) for h in handles] == results
    assert results == [2 * i for i in range(20)]
    assert total(reads) == 0, dict(reads)


async def test_runs_started_and_awaited_one_at_a_time_by_a_local_worker_read_nothing(
    make_app: Callable[..., durably.App],
) -> None:
    # The benchmark's latency loop. Each run's end is announced too (NOTIFY,
    # SQLite's log), often before the worker here has heard its own commit;
    # its handle is still held, but the worker hands the row over: that
    # announcement must not make the watcher read the row as well (it did,
    # a round trip and a thread's wake-up per run, on the run's critical path).
    app = make_app()
    app._recheck = 30.0  # type: ignore[attr-defined]  # no periodic re-read meanwhile
    flow = add_flow(app)
    handles = []
    async with app.worker(concurrency=4):
        for i in range(3):  # the watcher begins following ends
            handles.append(await app.start(flow, i))
            await handles[-1].result(timeout=30)
        reads = count_reads(app)
        for i in range(3, 40):
            handles.append(await app.start(flow, i))
            assert await handles[-1].result(timeout=30) == 2 * i
        await asyncio.sleep(0.3)  # the last announcements have come
    assert total(reads) == 0, dict(reads)
    assert [h.result_sync(timeout=30) for h in handles] == [2 * i for i in range(40)]


async def test_a_large_result_its_waiter_had_is_not_kept_for_its_handle(
    make_app: Callable[..., durably.App],
) -> None:
    # A handle awaited once keeps no copy of a large result the caller has
    # already: awaited again, it reads the row. Its end's announcement is
    # still not read ahead.
    app = make_app()
    app._recheck = 30.0  # type: ignore[attr-defined]
    flow = add_flow(app)

    @app.workflow()
    async def big(ctx: durably.Context, i: int) -> str:
        return str(i) * 3000

    handles = []
    async with app.worker(concurrency=4):
        for i in range(3):  # the watcher begins following ends (its steps take 10 ms)
            assert await (await app.start(flow, i)).result(timeout=30) == 2 * i
        handles.append(await app.start(big, 0))
        await handles[0].result(timeout=30)
        reads = count_reads(app)
        for i in range(1, 8):
            handles.append(await app.start(big, i))
            assert await handles[-1].result(timeout=30) == str(i) * 3000
        await asyncio.sleep(0.3)  # the last announcements have come
        assert total(reads) == 0, dict(reads)
        assert await handles[3].result(timeout=30) == "3" * 3000
    assert reads["get_runs"] == [1], dict(reads)  # read again: no copy was kept


async def test_a_waiter_hears_of_a_run_its_local_worker_let_go_and_another_ended(
    make_app: Callable[..., durably.App],
) -> None:
    # A waiter on a run that a worker here drives reads nothing: that worker
    # hands the end over. If the worker lets the run go without ending it
    # (here it suspends, waiting for a signal) and another process ends it,
    # the waiter must hear of that end when it is announced, not at the
    # periodic re-read (30 s apart here; it used to wait for it).
    app, other = make_app(suspend_after=0.0), make_app()
    app._recheck = 30.0  # type: ignore[attr-defined]
    gate = asyncio.Event()

    def add(target: durably.App) -> Any:
        @target.step()
        async def held() -> int:
            await gate.wait()
            return 1

        @target.workflow()
        async def approval(ctx: durably.Context) -> str:
            await held()
            return f"approved by {await ctx.wait_for('go')}"

        return approval

    approval = add(app)
    add(other)
    async with app.worker():
        handle = await app.start(approval, id="left-1")
        waiting = asyncio.ensure_future(handle.result(timeout=60))
        await eventually(lambda: "left-1" in app._results()._local)  # type: ignore[attr-defined]
        gate.set()  # the run goes on, then suspends: this worker lets it go
        await eventually(lambda: app.storage.get_run("left-1").status == "suspended")
    assert not waiting.done()
    async with other.worker():
        await other.signal("left-1", "go", "ada")
        # Within seconds, not at the re-read (a wait that times out reads the row once).
        assert await asyncio.wait_for(waiting, 15) == "approved by ada"


async def test_starting_an_id_that_already_ended_reads_nothing_more(
    make_app: Callable[..., durably.App],
) -> None:
    workers, client, flow = worker_and_client(make_app)
    async with workers.worker():
        first = await client.start(flow, 4, id="once")
        assert await first.result(timeout=30) == 8
    reads = count_reads(client)
    again = await client.start(flow, 5, id="once")
    assert await again.result(timeout=30) == 8  # the first run's result, as started
    assert total(reads) == 0, dict(reads)


async def test_a_failed_run_is_never_answered_from_memory_as_it_can_be_retried(
    make_app: Callable[..., durably.App],
) -> None:
    # `durably retry` reopens a failed run: a handle held all along must
    # then wait for the run's new end, not repeat the failure it saw before.
    app = make_app(poll_interval=0.2)
    broken = [True]  # the bug, fixed before the retry

    @app.step()
    async def check(x: int) -> int:
        return x

    @app.workflow()
    async def fragile(ctx: durably.Context, x: int) -> int:
        value = int(await check(x))
        if broken[0]:
            raise ValueError("not yet")
        return value

    async with app.worker():
        handle = await app.start(fragile, 7)
        # It fails with nobody waiting: its worker here offers the row to the handle.
        while await handle.status() != "failed":
            await asyncio.sleep(0.02)
        broken[0] = False
        assert app.storage.set_status(handle.id, "pending", time.time(), expect=("failed",))
        assert await handle.result(timeout=30) == 7


async def test_a_handle_never_answers_from_a_database_the_app_has_left(
    make_app: Callable[..., durably.App], tmp_path: Any
) -> None:
    app = make_app()
    flow = add_flow(app)
    async with app.worker():
        handle = await app.start(flow, 1, id="same-id")
        await eventually(lambda: not app._workers[0].drivers)  # ended, handed to the handle
    app.use_database(f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(durably.RunNotFound):
        await handle.result(timeout=5)  # asks the database in use, where it is not
    async with app.worker():
        assert await (await app.start(flow, 5, id="same-id")).result(timeout=30) == 10
    assert await handle.result(timeout=5) == 10  # the run of that id there


def test_one_handle_per_run_while_held(make_app: Callable[..., durably.App]) -> None:
    # A short-lived handle to a run never takes its end away from a held one.
    app = make_app()
    flow = add_flow(app)
    held = app.start_sync(flow, 1)
    assert app.get_handle(held.id) is held


def test_an_app_keeps_no_handle_alive(make_app: Callable[..., durably.App]) -> None:
    app = make_app()
    flow = add_flow(app)
    handle = app.start_sync(flow, 1)
    ref = weakref.ref(handle)
    del handle
    gc.collect()
    assert ref() is None


# -- the watcher on its own, fed by plain functions ---------------------------------


class Row:
    def __init__(self, run_id: str, status: str) -> None:
        self.id, self.status = run_id, status


def watcher_over(
    rows: dict[str, str], fail: list[BaseException], recheck: float = 0.3
) -> tuple[RunWatcher, list[Callable[[str, str], None]]]:
    """A watcher reading ``rows`` (id -> status); raises ``fail[0]`` while set."""
    listeners: list[Callable[[str, str], None]] = []

    def fetch(ids: list[str]) -> list[Row]:
        if fail:
            raise fail[0]
        return [Row(i, rows[i]) for i in ids if i in rows]

    def fetch_ended(ids: list[str]) -> list[Row]:
        return [r for r in fetch(ids) if r.status == "completed"]

    def subscribe(listener: Callable[[str, str], None]) -> Callable[[], None]:
        listeners.append(listener)
        return lambda: None

    watcher = RunWatcher(
        fetch,
        fetch_ended,
        lambda run_id: durably.RunNotFound(run_id),
        [subscribe],
        lambda row: row.status == "completed",
        recheck,
    )
    return watcher, listeners


def logged_watcher(
    rows: dict[str, str],
    on_first_read: Callable[[str], None] = lambda run_id: None,
    *,
    logged: bool = True,
    **ahead: Any,
) -> tuple[RunWatcher, list[Callable[[str, str], None]], list[str]]:
    """A watcher over ``rows`` with a log of ended runs (as SQLite keeps;
    without one if not ``logged``, as PostgreSQL, whose NOTIFY names runs)
    and a full re-check too far off (30 s) to hide a missed end. ``ahead``:
    the read-ahead callbacks (``soon``, ``keep``, ``held``)."""
    listeners: list[Callable[[str, str], None]] = []
    log: list[str] = []

    def fetch(ids: list[str]) -> list[Row]:
        found = [Row(i, rows[i]) for i in ids if i in rows]
        for run_id in ids:
            on_first_read(run_id)
        return found

    def ended_since(position: int | None) -> tuple[list[str], int] | None:
        if not logged:
            return None
        return ([], len(log)) if position is None else (log[position:], len(log))

    def subscribe(listener: Callable[[str, str], None]) -> Callable[[], None]:
        listeners.append(listener)
        return lambda: None

    watcher = RunWatcher(
        fetch,
        lambda ids: [Row(i, rows[i]) for i in ids if rows.get(i) == "completed"],
        lambda run_id: durably.RunNotFound(run_id),
        [subscribe],
        lambda row: row.status == "completed",
        30.0,
        ended_since,
        **ahead,
    )
    return watcher, listeners, log


def changed(listeners: list[Callable[[str, str], None]]) -> None:
    for listener in listeners:
        listener("", "")  # SQLite's commit detection: a commit, naming no run


def test_an_end_committed_just_after_a_first_read_is_found_in_the_log() -> None:
    rows = {"a": "running", "r": "running"}
    ending: list[str] = []  # runs another process ends right after their first read

    def end_after_read(run_id: str) -> None:
        if run_id in ending and rows[run_id] == "running":
            rows[run_id] = "completed"
            log.append(run_id)
            changed(listeners)

    watcher, listeners, log = logged_watcher(rows, end_after_read)
    watcher.watch("a")
    time.sleep(0.2)  # a pass took the log's position
    ending.append("r")
    with watcher._lock:
        watcher._all = True  # a change, seen in the same pass as the new waiter
    waiting = watcher.watch("r")
    assert waiting.result(timeout=3).status == "completed"  # not after the 30 s re-check
    watcher.close()


def test_a_local_run_that_ended_before_the_log_was_read_is_found_at_the_next_change() -> None:
    # Its worker here was to hand the row over but dropped the run, and
    # another worker ended it before this watcher first looked at the log.
    rows = {"local": "completed"}
    watcher, listeners, log = logged_watcher(rows)
    log.append("local")
    waiting = watcher.watch("local", check=False)
    time.sleep(0.2)
    changed(listeners)
    assert waiting.result(timeout=3).status == "completed"
    watcher.close()


def test_a_run_whose_end_went_unnoticed_is_found_however_busy_notifications_are() -> None:
    # A run a worker of this process was driving (so its NOTIFY is ignored)
    # ends elsewhere; other runs keep ending and naming themselves. The
    # periodic full re-read still finds it.
    rows = {"local": "running", "other": "running"}
    watcher, listeners = watcher_over(rows, [])
    local = watcher.watch("local", check=False)
    watcher.watch("other")
    rows["local"] = "completed"
    deadline = time.monotonic() + 3
    while not local.done() and time.monotonic() < deadline:
        for listener in listeners:
            listener("durably_done", "other")  # busy: a named change every 50 ms
        time.sleep(0.05)
    watcher.close()
    assert local.done() and local.result().status == "completed"


def test_a_first_read_that_would_always_fail_fails_its_waiters_and_outages_are_waited_out() -> None:
    rows = {"a": "completed"}
    fail: list[BaseException] = [durably.DatabaseError("not a durably database")]
    watcher, _ = watcher_over(rows, fail)
    broken = [watcher.watch("a"), watcher.watch("a")]
    for future in broken:
        with pytest.raises(durably.DatabaseError, match="not a durably database"):
            future.result(timeout=5)
    assert broken[0].exception() is not broken[1].exception()  # one each
    fail[:] = [durably.DatabaseUnavailable("down", reached=False)]
    waiting = watcher.watch("a")
    time.sleep(0.5)
    assert not waiting.done()  # an outage: waited out, not raised
    fail.clear()
    assert waiting.result(timeout=5).status == "completed"
    watcher.close()


class Held:
    """The app's side of reading ahead: handles held for some runs."""

    def __init__(self, *run_ids: str) -> None:
        self.run_ids = list(run_ids)
        self.kept: dict[str, Row] = {}
        self.looked_up = 0  # calls of held()

    def soon(self, run_id: str) -> bool:
        return run_id in self.run_ids and run_id not in self.kept

    def keep(self, row: Row, answered: bool = False) -> None:
        self.kept[row.id] = row

    def held(self) -> list[str]:
        self.looked_up += 1
        return [run_id for run_id in self.run_ids if run_id not in self.kept]

    def callbacks(self) -> dict[str, Any]:
        return {"soon": self.soon, "keep": self.keep, "held": self.held}


def test_a_held_run_named_by_a_notification_is_read_and_kept_waiter_or_not() -> None:
    rows = {"w": "running", "h1": "running", "h2": "running", "other": "running"}
    app = Held("h1", "h2")
    watcher, listeners, _ = logged_watcher(rows, logged=False, **app.callbacks())
    waiting = watcher.watch("w")
    for run_id in ("h1", "other"):
        rows[run_id] = "completed"
        for listener in listeners:
            listener("durably_done", run_id)  # as PostgreSQL's NOTIFY names it
    wait_until(lambda: "h1" in app.kept, 5)
    rows["w"] = "completed"
    for listener in listeners:
        listener("durably_done", "w")
    assert waiting.result(timeout=5).status == "completed"
    assert app.kept["w"].status == "completed"  # its waiter had it; offered to its handle too
    rows["h2"] = "completed"  # nobody waits any more: still read
    for listener in listeners:
        listener("durably_done", "h2")
    wait_until(lambda: "h2" in app.kept, 5)
    assert set(app.kept) == {"h1", "h2", "w"}  # never "other", held by nobody here
    watcher.close()


def test_the_app_failing_to_say_what_it_holds_never_stops_the_watcher() -> None:
    rows = {"a": "running", "b": "running", "x": "completed"}

    def broken(*args: Any) -> Any:
        raise RuntimeError("dictionary changed size during iteration")

    watcher, listeners, _ = logged_watcher(
        rows, logged=False, soon=broken, held=broken, keep=broken
    )
    waiting = watcher.watch("a")
    for listener in listeners:
        listener("durably_done", "x")  # nobody waits for it: the app is asked
    rows["a"] = "completed"
    for listener in listeners:
        listener("durably_done", "a")
    assert waiting.result(timeout=5).status == "completed"
    rows["b"] = "completed"
    assert watcher.watch("b").result(timeout=5).status == "completed"  # alive
    watcher.close()


def test_after_a_spell_with_nobody_waiting_the_log_is_read_on_from_where_it_was() -> None:
    # SQLite: ends while nobody waited are found in the log when someone
    # waits again, not by looking up every held handle's run once more.
    rows = {"a": "running", "b": "running", "h": "running"}
    app = Held("h")
    watcher, listeners, log = logged_watcher(rows, **app.callbacks())
    first = watcher.watch("a")
    rows["a"] = "completed"
    log.append("a")
    changed(listeners)
    assert first.result(timeout=5).status == "completed"
    rows["h"] = "completed"  # nobody waits now
    log.append("h")
    changed(listeners)
    time.sleep(0.2)  # a pass or more with nobody waiting
    assert "h" not in app.kept
    second = watcher.watch("b")
    wait_until(lambda: "h" in app.kept, 5)
    assert app.looked_up == 1  # once, when the watcher began
    assert not second.done()
    watcher.close()


def add_held_flow(app: durably.App, release: asyncio.Event) -> Any:
    """A workflow whose one step returns 1 once ``release`` is set."""

    @app.step()
    async def held() -> int:
        await release.wait()
        return 1

    @app.workflow()
    async def slow(ctx: durably.Context) -> int:
        return int(await held())

    return slow


def spy_on_watch(app: durably.App) -> asyncio.Event:
    """Set once ``app`` has read runs it will wait for (``watch_runs``)."""
    storage: Any = app.storage
    real, looked = storage.watch_runs, asyncio.Event()

    def watch(run_ids: Any) -> Any:
        found = real(run_ids)
        looked.set()  # only read on the loop's thread, after the waiter looked
        return found

    storage.watch_runs = watch
    return looked


async def answered_soon(waiting: asyncio.Future[Any], what: str) -> Any:
    done, _ = await asyncio.wait({waiting}, timeout=5)
    waiting.cancel()
    assert waiting in done, f"{what} was not told of the end"
    return waiting.result()


# A run started where a worker runs is driven there and its waiters there are
# answered by that worker; on PostgreSQL its end is then announced to nobody
# else (no NOTIFY), unless someone elsewhere asked to hear of it when first
# reading it. In these tests the other app (another process) neither re-reads
# nor polls for 30 s: only the announcement can reach it in time.


@pytest.mark.parametrize("waits_for", ["result", "event"])
async def test_a_waiter_elsewhere_hears_of_the_end_of_a_run_a_local_worker_started(
    make_app: Callable[..., durably.App], waits_for: str
) -> None:
    # An event waiter too: the run ends without setting the event.
    app, elsewhere = make_app(), make_app()
    elsewhere._recheck = 30.0  # type: ignore[attr-defined]
    release = asyncio.Event()
    slow = add_held_flow(app, release)
    looked = spy_on_watch(elsewhere)
    async with app.worker():
        handle = await app.start(slow)
        if waits_for == "result":
            waiting = asyncio.ensure_future(elsewhere.get_handle(handle.id).result())
        else:
            waiting = asyncio.ensure_future(elsewhere.get_event(handle.id, "never"))
        await eventually(looked.is_set)  # its first read, before the end
        release.set()
        assert await handle.result(timeout=10) == 1
        if waits_for == "result":
            assert await answered_soon(waiting, "the waiter elsewhere") == 1
        else:
            with pytest.raises(durably.WaitTimeout, match=r"ended \(completed\) without"):
                await answered_soon(waiting, "the event waiter elsewhere")


async def test_a_parent_elsewhere_hears_that_a_run_a_local_worker_started_ended(
    make_app: Callable[..., durably.App],
) -> None:
    # A parent held in its worker's memory waits on a child id naming such a run.
    app = make_app()
    elsewhere = make_app(suspend_after=30, poll_interval=30)
    release = asyncio.Event()
    slow, slow_there = add_held_flow(app, release), add_held_flow(elsewhere, release)

    @elsewhere.workflow()
    async def parent(ctx: durably.Context, child_id: str) -> int:
        return int(await ctx.child(slow_there, id=child_id)) + 1

    looked = spy_on_watch(elsewhere)
    async with app.worker(), elsewhere.worker():
        child = await app.start(slow)
        waiting = await elsewhere.start(parent, child.id)
        await eventually(looked.is_set)  # the parent looked at its child
        release.set()
        assert await child.result(timeout=10) == 1
        assert await waiting.result(timeout=5) == 2


@pytest.mark.parametrize("waits_for", ["result", "event"])
async def test_a_lock_conflict_while_waiting_is_looked_at_again_not_raised(
    pg: tuple[str, Any], waits_for: str
) -> None:
    # A waiter's read rolled back on a lock it would not wait for (here the
    # tables it reads, held under a lock_timeout) wrote nothing and is no
    # answer: the waiter looks again later, as after an outage.
    url, _ = pg
    app = durably.App("test", url)
    app._recheck = 0.2  # type: ignore[attr-defined]

    @app.workflow()
    async def quick(ctx: durably.Context) -> int:
        ctx.set_event("stage", "done")
        return 7

    try:
        async with app.worker():
            handle = await app.start(quick)
            assert await handle.result(timeout=10) == 7
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"ALTER DATABASE {admin.info.dbname} SET lock_timeout = '50ms'")
        app.close()  # reopened, with the setting, on its next use
        with psycopg.connect(url) as locker:
            locker.execute("LOCK TABLE durably.runs, durably.events IN ACCESS EXCLUSIVE MODE")
            if waits_for == "result":
                waiting = asyncio.ensure_future(app.get_handle(handle.id).result(timeout=20))
            else:
                waiting = asyncio.ensure_future(app.get_event(handle.id, "stage", timeout=20))
            await asyncio.sleep(0.5)  # its reads meet the lock meanwhile
            assert not waiting.done()
        expected = 7 if waits_for == "result" else "done"
        assert await asyncio.wait_for(waiting, 20) == expected
    finally:
        app.close()

"""Quiet ends (PostgreSQL's migration 6): a run created claimed by a worker
in the starting process ends without a NOTIFY unless someone elsewhere
watches it; watching it (``watch_runs``) makes its end announced, even in a
race with the end itself."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

import durably
from durably._storage.base import RunUpdate, RunWrite, Storage
from durably._storage.postgres.notices import done_ids

from .test_postgres_notices import done_heard
from .test_storage import LEASE, T0, entry, new_run

DONE = RunUpdate(status="completed", result='"done"', release=True)


def test_watch_runs_reads_runs_as_get_runs_does(storage: Storage) -> None:
    storage.create_runs([new_run("plain"), new_run("mine", owner="w1", lease_until=T0 + LEASE)])
    watched = storage.watch_runs(["mine", "missing", "plain"])
    assert [r.id for r in watched] == ["mine", "plain"]
    assert watched == [storage.get_run("mine"), storage.get_run("plain")]


def _ends_heard(url: str, action: Any) -> list[str]:
    """The run ids whose end was announced while ``action`` ran."""
    return [i for payload in done_heard(url, action) for i in done_ids(payload)]


def test_only_runs_someone_watches_announce_their_end(pg_storage: tuple[Storage, str]) -> None:
    storage, url = pg_storage
    mine = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs(
        [
            new_run("client"),  # started by a client: its waiter is elsewhere
            new_run("alone", **mine),
            new_run("two-entries", **mine),
            new_run("batched-1", **mine),
            new_run("batched-2", **mine),
            new_run("watched", **mine),
        ]
    )
    client = storage.claim("w1", ["wf"], 10, T0, LEASE)[0]
    assert [r.status for r in storage.watch_runs(["watched"])] == ["running"]

    def end_all() -> None:
        # Each shape of final write: one entry, two entries, a batch of runs.
        batches = [
            [RunWrite("client", client.epoch, [entry(0)], DONE)],
            [RunWrite("alone", 1, [entry(0)], DONE)],
            [RunWrite("two-entries", 1, [entry(0), entry(1)], DONE)],
            [RunWrite("batched-1", 1, [entry(0)], DONE), RunWrite("batched-2", 1, [], DONE)],
            [RunWrite("watched", 1, [entry(0)], DONE)],
        ]
        for writes in batches:
            assert storage.commit("w1", writes, T0) == set()

    assert sorted(_ends_heard(url, end_all)) == ["client", "watched"]
    ended = storage.get_runs(["client", "alone", "two-entries", "batched-1", "batched-2"])
    assert {r.status for r in ended} == {"completed"} and len(ended) == 5


def test_a_watch_waits_for_a_rows_lock_holding_no_other(
    pg_storage: tuple[Storage, str],
) -> None:
    # A group commit locks its runs' rows in its own order: a watch of many
    # runs waiting for one of them while holding another could deadlock it.
    storage, url = pg_storage
    mine = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs([new_run(run_id, **mine) for run_id in ("a", "m", "z")])
    writer = psycopg.connect(url)  # a write in flight holds m's row
    seen: list[Any] = []
    watcher = threading.Thread(target=lambda: seen.extend(storage.watch_runs(["z", "m", "a"])))
    try:
        writer.execute("SELECT 1 FROM durably.runs WHERE id = 'm' FOR NO KEY UPDATE")
        watcher.start()
        watcher.join(0.5)
        assert watcher.is_alive()  # it waits for m ...
        with psycopg.connect(url, autocommit=True) as other:  # ... holding no other row
            other.execute("SET lock_timeout = '1s'")
            locked = other.execute(
                "SELECT id, quiet FROM durably.runs WHERE id IN ('a', 'z') FOR UPDATE"
            ).fetchall()
        assert sorted(locked) == [("a", False), ("z", False)]
        writer.execute("UPDATE durably.runs SET status = 'completed', owner = NULL WHERE id = 'm'")
        writer.commit()
    finally:
        writer.close()  # a failed assertion must not leave the watcher blocked
        watcher.join(10)
    assert [(r.id, r.status) for r in seen] == [
        ("z", "running"),
        ("m", "completed"),
        ("a", "running"),
    ]


async def test_a_run_started_beside_a_worker_is_quiet_and_a_clients_is_not(
    pg: tuple[str, Any],
) -> None:
    app = durably.App("test", pg[0])

    @app.workflow()
    async def flow(ctx: durably.Context, x: int) -> int:
        return x

    try:
        client = await app.start(flow, 1)  # no worker here yet
        async with app.worker():
            for i in range(3):  # the loop's own connection is up after the first
                handle = await app.start(flow, i, id=f"beside-{i}")
                assert await handle.result(timeout=20) == i
            assert await client.result(timeout=20) == 1
        with psycopg.connect(pg[0]) as check:
            quiet = dict(check.execute("SELECT id, quiet FROM durably.runs").fetchall())
        assert quiet == {client.id: False, "beside-0": True, "beside-1": True, "beside-2": True}
    finally:
        app.close()


def test_a_watch_racing_the_end_reads_the_ended_row(pg_storage: tuple[Storage, str]) -> None:
    # The end holds the row's lock: the watch's update waits for it, then
    # skips the row (it has ended), and the statement's other half reads it
    # as of before. The watch must read it again, not wait for an end that
    # was never announced.
    storage, url = pg_storage
    storage.create_runs([new_run("r", owner="w1", lease_until=T0 + LEASE)])
    finisher = psycopg.connect(url)  # its transaction stays open until commit()
    seen: list[Any] = []
    watcher = threading.Thread(target=lambda: seen.extend(storage.watch_runs(["r"])))
    try:
        finisher.execute(
            "UPDATE durably.runs SET status = 'completed', result = '1', owner = NULL"
            " WHERE id = 'r'"
        )
        watcher.start()
        watcher.join(0.5)
        assert watcher.is_alive() and seen == []  # held back by the end's lock
        finisher.commit()
    finally:
        finisher.close()
        watcher.join(10)
    assert [(r.id, r.status, r.result) for r in seen] == [("r", "completed", "1")]


def test_a_watch_before_the_end_makes_it_announced(pg_storage: tuple[Storage, str]) -> None:
    # The watch's update holds the lock first: the end, waiting for it, sees
    # the run watched and announces it.
    storage, url = pg_storage
    storage.create_runs([new_run("r", owner="w1", lease_until=T0 + LEASE)])
    watcher = psycopg.connect(url)
    watcher.execute("UPDATE durably.runs SET quiet = false WHERE id = 'r'")
    outcome: list[set[str]] = []

    def end() -> None:
        ender = threading.Thread(
            target=lambda: outcome.append(
                storage.commit("w1", [RunWrite("r", 1, [entry(0)], DONE)], T0)
            )
        )
        ender.start()
        ender.join(0.5)
        assert ender.is_alive()  # held back by the watch's lock
        watcher.commit()
        ender.join(10)

    assert _ends_heard(url, end) == ["r"]
    watcher.close()
    assert outcome == [set()]


def test_a_retried_run_announces_its_next_end(pg_storage: tuple[Storage, str]) -> None:
    # `durably retry` hands a failed run to whichever worker claims it next,
    # here or elsewhere: its waiters may be anywhere.
    storage, url = pg_storage
    storage.create_runs([new_run("r", owner="w1", lease_until=T0 + LEASE)])
    failed = RunUpdate(status="failed", error='{"type": "E"}', release=True)
    assert storage.commit("w1", [RunWrite("r", 1, [entry(0)], failed)], T0) == set()
    assert storage.set_status("r", "pending", T0 + 1, expect=("failed",))
    run = storage.claim("w2", ["wf"], 10, T0 + 2, LEASE)[0]

    def end() -> None:
        assert storage.commit("w2", [RunWrite("r", run.epoch, [entry(1)], DONE)], T0 + 3) == set()

    assert _ends_heard(url, end) == ["r"]


def test_a_watch_does_not_wait_long_for_a_row_held_in_a_forgotten_transaction(
    pg_storage: tuple[Storage, str],
) -> None:
    # Every waiter of a process shares the thread that watches: a row held
    # for minutes must not stall them all. It is read as it is; its waiter's
    # periodic re-read finds its end.
    storage, url = pg_storage
    mine = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs([new_run(run_id, **mine) for run_id in ("a", "m")])
    holder = psycopg.connect(url)
    seen: list[Any] = []
    watcher = threading.Thread(target=lambda: seen.extend(storage.watch_runs(["a", "m"])))
    try:
        holder.execute("SELECT 1 FROM durably.runs WHERE id = 'm' FOR NO KEY UPDATE")
        watcher.start()
        watcher.join(5)
        assert not watcher.is_alive()
    finally:
        holder.close()
        watcher.join(10)
    assert [(r.id, r.status) for r in seen] == [("a", "running"), ("m", "running")]
    with psycopg.connect(url) as check:
        quiet = dict(check.execute("SELECT id, quiet FROM durably.runs").fetchall())
    assert quiet == {"a": False, "m": True}

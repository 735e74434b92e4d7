"""The storage interface, on a real SQLite file and a real PostgreSQL database.

Time is a parameter of every call (``now``), so leases and timers are driven
here by explicit numbers, never by sleeping.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from durably._engine.journal import Entry
from durably._errors import DatabaseError
from durably._storage import open_storage
from durably._storage.base import NewRun, RunFilter, RunUpdate, RunWrite, Storage

T0 = 1_700_000_000.0
LEASE = 10.0


def new_run(
    run_id: str,
    workflow: str = "wf",
    created_at: float = T0,
    args: str = '["a", 1]',
    **extra: Any,
) -> NewRun:
    return NewRun(
        id=run_id, workflow=workflow, version="v1", args=args, created_at=created_at, **extra
    )


def entry(seq: int, position: int | None = None, epoch: int = 1, **kw: Any) -> Entry:
    fields: dict[str, Any] = {
        "position": seq if position is None else position,
        "kind": "step",
        "name": f"step-{seq}",
        "payload": json.dumps({"seq": seq}),
        "loc": f"app.py:{10 + seq}",
        "at": T0 + seq,
        "seq": seq,
        "epoch": epoch,
    }
    fields.update(kw)
    return Entry(**fields)


def claim_one(store: Storage, worker: str, now: float, workflows: tuple[str, ...] = ("wf",)):
    runs = store.claim(worker, list(workflows), 10, now, LEASE)
    assert len(runs) == 1, runs
    return runs[0]


# -- create_run / get_run / list_runs ---------------------------------------------------------


def test_create_run_is_idempotent_by_id(storage: Storage, other: Storage) -> None:
    first, created = storage.create_run(
        new_run("order-1", parent_id="parent-0", deadline=T0 + 99, priority=3)
    )
    assert created is True
    assert (first.id, first.workflow, first.version, first.args) == (
        "order-1",
        "wf",
        "v1",
        '["a", 1]',
    )
    assert first.status == "pending"
    assert (first.owner, first.epoch, first.lease_until, first.wake_at) == (None, 0, None, None)
    assert (first.created_at, first.updated_at) == (T0, T0)
    assert (first.started_at, first.finished_at, first.result, first.error) == (
        None,
        None,
        None,
        None,
    )
    assert (first.parent_id, first.deadline, first.priority) == ("parent-0", T0 + 99, 3)

    # Starting the same id again (from any connection) returns the original row.
    for store in (storage, other):
        again, created = store.create_run(
            new_run("order-1", workflow="other", created_at=T0 + 50, args='["b"]')
        )
        assert created is False
        assert again == first
    assert storage.get_run("order-1") == first
    assert [r.id for r in storage.list_runs(RunFilter(limit=10))] == ["order-1"]


def test_create_run_of_a_claimed_run_returns_its_current_state(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    claimed = claim_one(storage, "w1", T0 + 1)
    again, created = storage.create_run(new_run("r"))
    assert created is False
    assert again == claimed
    assert again.status == "running" and again.epoch == 1


def test_a_batch_of_starts_answers_each_with_the_row_in_the_database(
    storage: Storage, other: Storage
) -> None:
    """A batch returns the rows it created without reading them back: each
    answer must still be exactly the stored row, including a claimed start's,
    an id started twice in the batch, and an id that existed already."""
    other.create_run(new_run("old", args='["before"]'))
    batch = [
        new_run("a", parent_id="p", deadline=T0 + 9, priority=2),
        new_run("mine", owner="w1", lease_until=T0 + LEASE),
        new_run("a", args='["second"]', created_at=T0 + 5),
        new_run("old", args='["after"]'),
        new_run("b", workflow="wf2", created_at=T0 + 1),
    ]
    answers = storage.create_runs(batch)
    assert [(record.id, created) for record, created in answers] == [
        ("a", True),
        ("mine", True),
        ("a", False),
        ("old", False),
        ("b", True),
    ]
    for record, _ in answers:
        assert record == other.get_run(record.id)
    assert answers[2][0].args == '["a", 1]' and answers[3][0].args == '["before"]'
    assert answers[1][0].status == "running" and answers[1][0].epoch == 1


def test_concurrent_create_of_one_id_creates_it_once(database_url: str) -> None:
    n = 6
    stores = [open_storage(database_url) for _ in range(n)]
    for s in stores:
        s.migrate()
    barrier = threading.Barrier(n, timeout=10)
    results: list[tuple[bool, str]] = []
    errors: list[BaseException] = []

    def create(store: Storage, i: int) -> None:
        try:
            barrier.wait()
            record, created = store.create_run(new_run("same", args=f"[{i}]"))
            results.append((created, record.args))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s, i)) for i, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert sorted(c for c, _ in results) == [False] * (n - 1) + [True]
        winner = next(args for c, args in results if c)
        assert {args for _, args in results} == {winner}
    finally:
        for s in stores:
            s.close()


def test_get_run_and_journal_of_unknown_id(storage: Storage) -> None:
    assert storage.get_run("missing") is None
    assert storage.load_journal("missing") == []


def test_list_runs_filters_and_orders(storage: Storage) -> None:
    storage.create_run(new_run("a1", "a", T0 + 1))
    storage.create_run(new_run("b1", "b", T0 + 2))
    storage.create_run(new_run("a2", "a", T0 + 3))
    storage.claim("w", ["b"], 10, T0 + 4, LEASE)
    assert [r.id for r in storage.list_runs(RunFilter())] == ["a2", "b1", "a1"]
    assert [r.id for r in storage.list_runs(RunFilter(workflow="a"))] == ["a2", "a1"]
    assert [r.id for r in storage.list_runs(RunFilter(status="running"))] == ["b1"]
    assert [r.id for r in storage.list_runs(RunFilter(status="pending", workflow="b"))] == []
    assert [r.id for r in storage.list_runs(RunFilter(limit=1))] == ["a2"]


# -- claim -------------------------------------------------------------------------------


def test_claim_takes_pending_runs_of_requested_workflows_only(storage: Storage) -> None:
    storage.create_run(new_run("a-1", "a"))
    storage.create_run(new_run("b-1", "b"))
    storage.create_run(new_run("c-1", "c"))
    now = T0 + 5

    assert storage.claim("w1", [], 10, now, LEASE) == []
    assert storage.claim("w1", ["zzz"], 10, now, LEASE) == []
    claimed = storage.claim("w1", ["a", "c"], 10, now, LEASE)
    assert sorted(r.id for r in claimed) == ["a-1", "c-1"]
    for r in claimed:
        assert r.status == "running"
        assert r.owner == "w1"
        assert r.epoch == 1
        assert r.lease_until == pytest.approx(now + LEASE)
        assert r.started_at == now and r.updated_at == now
        assert storage.get_run(r.id) == r

    b = storage.get_run("b-1")
    assert b is not None and b.status == "pending" and b.owner is None and b.epoch == 0
    # Nothing more for anyone: a and c are held, b is not asked for.
    assert storage.claim("w2", ["a", "c"], 10, now + 1, LEASE) == []
    assert [r.id for r in storage.claim("w2", ["b"], 10, now + 1, LEASE)] == ["b-1"]


def test_claim_respects_limit_oldest_first(storage: Storage) -> None:
    for i in range(5):
        storage.create_run(new_run(f"r{i}", created_at=T0 + (5 - i)))  # r4 oldest
    assert storage.claim("w", ["wf"], 0, T0 + 10, LEASE) == []
    first = storage.claim("w", ["wf"], 2, T0 + 10, LEASE)
    assert sorted(r.id for r in first) == ["r3", "r4"]
    rest = storage.claim("w", ["wf"], 10, T0 + 10, LEASE)
    assert sorted(r.id for r in rest) == ["r0", "r1", "r2"]


def test_a_claim_takes_the_oldest_across_the_workflows_it_serves(storage: Storage) -> None:
    # Each workflow's runs are walked on their own (their index leads with
    # the workflow); the claim still takes the oldest overall, not the oldest
    # of each: interleaved ages, two workflows served, one not.
    for i, wf in enumerate(["a", "b", "x", "a", "b", "x", "a", "b"]):
        storage.create_run(new_run(f"{wf}{i}", wf, created_at=T0 + i))
    first = storage.claim("w", ["a", "b"], 3, T0 + 10, LEASE)
    assert sorted(r.id for r in first) == ["a0", "a3", "b1"]
    rest = storage.claim("w", ["b", "a"], 10, T0 + 10, LEASE)
    assert sorted(r.id for r in rest) == ["a6", "b4", "b7"]
    assert sorted(r.id for r in storage.claim("w", ["x"], 10, T0 + 10, LEASE)) == ["x2", "x5"]


def test_a_workflow_named_twice_is_claimed_once(storage: Storage) -> None:
    for i in range(6):
        storage.create_run(new_run(f"c{i}", "c", created_at=T0 + i))
    first = storage.claim("w", ["c", "c"], 4, T0 + 10, LEASE)
    assert sorted(r.id for r in first) == ["c0", "c1", "c2", "c3"]
    assert storage.next_due(["c", "c"], T0 + 10) == pytest.approx(T0 + 10 + LEASE)


def test_valid_lease_blocks_other_workers_until_it_lapses(storage: Storage, other: Storage) -> None:
    storage.create_run(new_run("r"))
    mine = claim_one(storage, "w1", T0)
    assert mine.lease_until == pytest.approx(T0 + LEASE)

    assert other.claim("w2", ["wf"], 10, T0 + 1, LEASE) == []
    assert other.claim("w2", ["wf"], 10, T0 + LEASE - 0.001, LEASE) == []
    assert other.claim("w2", ["wf"], 10, T0 + LEASE, LEASE) == []  # not yet past it

    later = T0 + LEASE + 0.5
    theirs = claim_one(other, "w2", later)
    assert theirs.id == "r"
    assert theirs.owner == "w2"
    assert theirs.epoch == 2
    assert theirs.lease_until == pytest.approx(later + LEASE)
    assert theirs.started_at == T0  # first start is kept
    assert storage.claim("w1", ["wf"], 10, later + 1, LEASE) == []


def test_concurrent_claims_never_hand_out_a_run_twice(database_url: str) -> None:
    n_workers, n_runs = 4, 120
    stores = [open_storage(database_url) for _ in range(n_workers)]
    for s in stores:
        s.migrate()
    for i in range(n_runs):
        stores[0].create_run(new_run(f"r{i:03}", created_at=T0 + i))
    barrier = threading.Barrier(n_workers, timeout=10)
    got: dict[str, list[str]] = {f"w{i}": [] for i in range(n_workers)}
    errors: list[BaseException] = []

    def work(store: Storage, me: str) -> None:
        try:
            barrier.wait()
            while True:
                runs = store.claim(me, ["wf"], 7, T0 + 1000, 60.0)
                if not runs:
                    return
                got[me].extend(r.id for r in runs)
                assert all(r.owner == me and r.epoch == 1 for r in runs)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        everything = [rid for ids in got.values() for rid in ids]
        assert len(everything) == len(set(everything)) == n_runs
        for me, ids in got.items():
            for rid in ids[:5]:
                record = stores[0].get_run(rid)
                assert record is not None and record.owner == me
    finally:
        for s in stores:
            s.close()


# -- commit and fencing --------------------------------------------------------------------


def test_commit_writes_entries_and_update(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w1", T0)
    rejected = storage.commit(
        "w1",
        [RunWrite("r", run.epoch, [entry(0), entry(1)], RunUpdate(status="running"))],
        T0 + 1,
    )
    assert rejected == set()
    assert [e.seq for e in storage.load_journal("r")] == [0, 1]
    record = storage.get_run("r")
    assert record is not None
    assert record.status == "running" and record.owner == "w1" and record.epoch == 1
    assert record.updated_at == T0 + 1
    assert record.lease_until == pytest.approx(T0 + LEASE)  # unchanged by commit

    rejected = storage.commit(
        "w1",
        [
            RunWrite(
                "r",
                run.epoch,
                [entry(2)],
                RunUpdate(status="completed", result='"done"', release=True),
            )
        ],
        T0 + 2,
    )
    assert rejected == set()
    record = storage.get_run("r")
    assert record is not None
    assert record.status == "completed"
    assert record.result == '"done"'
    assert record.finished_at == T0 + 2
    assert record.owner is None
    assert [e.seq for e in storage.load_journal("r")] == [0, 1, 2]
    # A finished run is never claimed again, however late.
    assert storage.claim("w2", ["wf"], 10, T0 + 10_000, LEASE) == []
    assert storage.next_due(["wf"], T0 + 10_000) is None


def test_commit_records_failure_and_new_version(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w1", T0)
    error = json.dumps({"type": "ValueError", "message": "bad", "traceback": "..."})
    update = RunUpdate(status="failed", error=error, release=True, version="v2")
    assert storage.commit("w1", [RunWrite("r", run.epoch, [], update)], T0 + 3) == set()
    record = storage.get_run("r")
    assert record is not None
    assert (record.status, record.error, record.version) == ("failed", error, "v2")
    assert record.finished_at == T0 + 3
    assert record.result is None


def test_commit_nowait_writes_like_commit_or_declines_without_writing(
    storage: Storage, backend: str, database_url: str
) -> None:
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w1", T0)
    write = RunWrite("r", run.epoch, [entry(0)], RunUpdate(status="running"))
    if backend != "sqlite":
        # A network round trip is never made on the event loop: always declined.
        assert storage.commit_nowait("w1", [write], T0 + 1) is None
        assert storage.load_journal("r") == []
        return
    assert storage.commit_nowait("w1", [write], T0 + 1) == set()
    assert [e.seq for e in storage.load_journal("r")] == [0]
    assert storage.commit_nowait("w2", [RunWrite("r", run.epoch, [entry(1)])], T0 + 1) == {"r"}
    # Another process holds the write lock: declined at once, nothing written.
    holder = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    began = time.monotonic()
    assert storage.commit_nowait("w1", [RunWrite("r", run.epoch, [entry(1)])], T0 + 2) is None
    assert time.monotonic() - began < 1.0
    holder.execute("COMMIT")
    holder.close()
    assert [e.seq for e in storage.load_journal("r")] == [0]


def test_a_sqlite_claim_that_finds_nothing_does_not_wait_for_the_write_lock(
    tmp_path: Path,
) -> None:
    # Every commit wakes the claim loop; most of those claims find nothing, and
    # they must not queue for SQLite's one write lock to learn that.
    storage = open_storage(f"sqlite:///{tmp_path / 'd.db'}")
    storage.migrate()
    holder = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    began = time.monotonic()
    assert storage.claim("w1", ["wf"], 10, T0, LEASE) == []
    assert time.monotonic() - began < 1.0
    holder.execute("COMMIT")
    holder.close()
    storage.create_run(new_run("r"))
    assert [r.id for r in storage.claim("w1", ["wf"], 10, T0, LEASE)] == ["r"]
    storage.close()


def test_commit_of_nothing_is_a_no_op(storage: Storage) -> None:
    assert storage.commit("w1", [], T0) == set()


def test_fencing_rejects_the_worker_whose_lease_was_taken_over(
    storage: Storage, other: Storage
) -> None:
    storage.create_run(new_run("r"))
    a = claim_one(storage, "A", T0)
    assert storage.commit("A", [RunWrite("r", a.epoch, [entry(0, epoch=a.epoch)])], T0 + 1) == set()

    # A stalls; its lease lapses and B takes the run over.
    b = claim_one(other, "B", T0 + LEASE + 1)
    assert b.epoch == a.epoch + 1

    late = RunWrite(
        "r",
        a.epoch,
        [entry(1, epoch=a.epoch), entry(2, epoch=a.epoch)],
        RunUpdate(status="completed", result='"from A"', release=True),
    )
    assert storage.commit("A", [late], T0 + LEASE + 2) == {"r"}
    # Right epoch but wrong owner, or right owner but stale epoch: rejected too.
    assert storage.commit("A", [RunWrite("r", b.epoch, [entry(1)])], T0 + LEASE + 2) == {"r"}
    assert other.commit("B", [RunWrite("r", a.epoch, [entry(1)])], T0 + LEASE + 2) == {"r"}

    # A wrote nothing.
    assert [(e.seq, e.epoch) for e in storage.load_journal("r")] == [(0, a.epoch)]
    record = storage.get_run("r")
    assert record is not None
    assert (record.status, record.owner, record.epoch, record.result) == (
        "running",
        "B",
        b.epoch,
        None,
    )

    # B carries on from the journal A left.
    good = RunWrite(
        "r",
        b.epoch,
        [entry(1, epoch=b.epoch)],
        RunUpdate(status="completed", result='"from B"', release=True),
    )
    assert other.commit("B", [good], T0 + LEASE + 3) == set()
    assert [(e.seq, e.epoch) for e in storage.load_journal("r")] == [(0, a.epoch), (1, b.epoch)]
    record = storage.get_run("r")
    assert record is not None and record.result == '"from B"' and record.status == "completed"


def test_a_step_append_racing_a_takeover_waits_for_it_and_is_rejected(
    storage: Storage, database_url: str, backend: str
) -> None:
    # A mid-run step result changes nothing on the run's row, so on PostgreSQL
    # it only share-locks the row: it must still wait for a takeover in flight
    # and then see its new epoch, never slip its entry in under the old claim.
    storage.create_run(new_run("r"))
    a = claim_one(storage, "A", T0)
    takeover = "UPDATE {runs} SET owner = 'B', epoch = epoch + 1 WHERE id = 'r'"
    if backend == "sqlite":
        raw: Any = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute(takeover.format(runs="durably_runs"))
    else:
        import psycopg

        raw = psycopg.connect(database_url)  # a transaction stays open until commit()
        raw.execute(takeover.format(runs="durably.runs"))
    outcome: list[set[str]] = []
    append = RunWrite("r", a.epoch, [entry(0, epoch=a.epoch)])
    writer = threading.Thread(target=lambda: outcome.append(storage.commit("A", [append], T0 + 1)))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and outcome == []  # held back by the takeover's lock
    raw.commit() if backend == "postgres" else raw.execute("COMMIT")
    writer.join(10)
    raw.close()
    assert outcome == [{"r"}]
    assert storage.load_journal("r") == []


def test_group_commit_rejects_only_the_lost_runs(storage: Storage, other: Storage) -> None:
    storage.create_run(new_run("kept", created_at=T0))
    storage.create_run(new_run("lost", created_at=T0 + 0.5))
    runs = {r.id: r for r in storage.claim("A", ["wf"], 10, T0 + 1, LEASE)}
    assert set(runs) == {"kept", "lost"}
    storage.renew("A", ["kept", "lost"], T0 + 5, LEASE)  # kept alive ...
    # ... but "lost" is given away by an operator reset and re-claimed by B.
    assert other.set_status("lost", "pending", T0 + 6)
    assert claim_one(other, "B", T0 + 6).id == "lost"

    writes = [
        RunWrite("kept", runs["kept"].epoch, [entry(0)], RunUpdate(status="running")),
        RunWrite("lost", runs["lost"].epoch, [entry(0)], RunUpdate(status="completed")),
    ]
    assert storage.commit("A", writes, T0 + 7) == {"lost"}
    assert [e.seq for e in storage.load_journal("kept")] == [0]
    assert storage.load_journal("lost") == []
    lost = storage.get_run("lost")
    assert lost is not None and lost.status == "running" and lost.owner == "B"


def test_group_commit_of_step_results_rejects_only_the_lost_runs(
    storage: Storage, other: Storage
) -> None:
    # Appends that change no row (the share-locked path) in one batch with a
    # run that ends: each is fenced on its own.
    for i, run_id in enumerate(["kept", "lost", "ends"]):
        storage.create_run(new_run(run_id, created_at=T0 + i / 10))
    runs = {r.id: r for r in storage.claim("A", ["wf"], 10, T0 + 1, LEASE)}
    assert other.set_status("lost", "pending", T0 + 2)
    assert claim_one(other, "B", T0 + 2).id == "lost"
    writes = [
        RunWrite("kept", runs["kept"].epoch, [entry(0)]),
        RunWrite("lost", runs["lost"].epoch, [entry(0)]),
        RunWrite("ends", runs["ends"].epoch, [entry(0)], RunUpdate(status="completed")),
    ]
    assert storage.commit("A", writes, T0 + 3) == {"lost"}
    assert [e.seq for e in storage.load_journal("kept")] == [0]
    assert storage.load_journal("lost") == []
    ended = storage.get_run("ends")
    assert ended is not None and ended.status == "completed"
    kept = storage.get_run("kept")
    assert kept is not None and (kept.status, kept.owner) == ("running", "A")


def test_commit_for_a_run_never_claimed_is_rejected(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    assert storage.commit("w1", [RunWrite("r", 0, [entry(0)])], T0) == {"r"}
    assert storage.commit("w1", [RunWrite("ghost", 1, [entry(0)])], T0) == {"ghost"}
    assert storage.load_journal("r") == []
    assert storage.load_journal("ghost") == []


# -- suspended runs -----------------------------------------------------------------------


def test_suspended_run_is_claimable_only_once_due(storage: Storage, other: Storage) -> None:
    storage.create_run(new_run("sleeper"))
    run = claim_one(storage, "w1", T0)
    timer = entry(0, kind="timer", name="nap", payload=json.dumps(T0 + 100))
    suspend = RunUpdate(status="suspended", wake_at=T0 + 100, release=True)
    assert storage.commit("w1", [RunWrite("sleeper", run.epoch, [timer], suspend)], T0 + 1) == set()

    record = storage.get_run("sleeper")
    assert record is not None
    assert (record.status, record.owner, record.wake_at) == ("suspended", None, T0 + 100)
    assert record.lease_until is None

    assert other.claim("w2", ["wf"], 10, T0 + 50, LEASE) == []
    assert other.claim("w2", ["wf"], 10, T0 + 99.999, LEASE) == []
    woken = claim_one(other, "w2", T0 + 100)  # wake_at <= now
    assert woken.status == "running"
    assert woken.owner == "w2"
    assert woken.epoch == run.epoch + 1
    assert woken.wake_at is None
    assert woken.lease_until == pytest.approx(T0 + 100 + LEASE)


def test_suspended_run_without_timer_is_never_claimed(storage: Storage) -> None:
    storage.create_run(new_run("waiter"))
    run = claim_one(storage, "w1", T0)
    suspend = RunUpdate(status="suspended", wake_at=None, release=True)
    assert storage.commit("w1", [RunWrite("waiter", run.epoch, [], suspend)], T0) == set()
    assert storage.claim("w2", ["wf"], 10, T0 + 10**7, LEASE) == []
    assert storage.next_due(["wf"], T0) is None


def test_suspended_run_still_held_waits_for_its_lease(storage: Storage, other: Storage) -> None:
    """In the grace period the suspending worker keeps it; others wait for the lease."""
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w1", T0)
    suspend = RunUpdate(status="suspended", wake_at=T0 + 2, release=False)
    assert storage.commit("w1", [RunWrite("r", run.epoch, [], suspend)], T0 + 1) == set()
    record = storage.get_run("r")
    assert record is not None and record.owner == "w1" and record.status == "suspended"

    assert other.claim("w2", ["wf"], 10, T0 + 3, LEASE) == []  # due, but held
    assert storage.renew("w1", ["r"], T0 + 8, LEASE) == {"r": run.epoch}  # suspended ones too
    assert other.claim("w2", ["wf"], 10, T0 + LEASE + 1, LEASE) == []
    taken = claim_one(other, "w2", T0 + 8 + LEASE + 1)
    assert taken.owner == "w2" and taken.epoch == run.epoch + 1


# -- renew / release -----------------------------------------------------------------------


def test_renew_extends_only_the_runs_named(storage: Storage) -> None:
    storage.create_run(new_run("x1", "a", T0))
    storage.create_run(new_run("x2", "a", T0 + 0.1))
    assert len(storage.claim("w1", ["a"], 10, T0, LEASE)) == 2
    assert list(storage.renew("w1", ["x1"], T0 + 5, LEASE)) == ["x1"]  # x2: its driver is gone
    x1, x2 = storage.get_run("x1"), storage.get_run("x2")
    assert x1 is not None and x1.lease_until == pytest.approx(T0 + 5 + LEASE)
    assert x2 is not None and x2.lease_until == pytest.approx(T0 + LEASE)


def test_renew_says_under_which_claim_each_run_is_held(storage: Storage, other: Storage) -> None:
    # A driver holding the first claim learns that the run is this worker's
    # under a claim two further on: another worker held it in between.
    storage.create_run(new_run("r", created_at=T0))
    first = claim_one(storage, "w1", T0)
    assert claim_one(other, "w2", T0 + LEASE + 1).epoch == first.epoch + 1  # it lapsed
    again = claim_one(storage, "w1", T0 + 2 * LEASE + 2)  # and lapsed again: w1's once more
    assert again.epoch == first.epoch + 2
    now = T0 + 2 * LEASE + 3
    assert storage.renew("w1", ["r"], now, LEASE) == {"r": first.epoch + 2}
    record = storage.get_run("r")  # extended all the same: w1 holds it
    assert record is not None and record.lease_until == pytest.approx(now + LEASE)
    assert storage.renew("w2", ["r"], now, LEASE) == {}


def test_renew_extends_only_the_workers_own_leases(storage: Storage, other: Storage) -> None:
    storage.create_run(new_run("a1", "a", T0))
    storage.create_run(new_run("a2", "a", T0 + 0.1))
    storage.create_run(new_run("b1", "b", T0 + 0.2))
    storage.create_run(new_run("done", "a", T0 + 0.3))
    mine = storage.claim("w1", ["a"], 10, T0, LEASE)
    assert len(mine) == 3
    finished = next(r for r in mine if r.id == "done")
    finish = RunUpdate(status="completed", result="1", release=True)
    storage.commit("w1", [RunWrite("done", finished.epoch, [], finish)], T0)
    theirs = claim_one(other, "w2", T0, ("b",))

    held = ["a1", "a2", "done", "b1"]  # "done" ended; "b1" belongs to w2
    assert sorted(storage.renew("w1", held, T0 + 8, LEASE)) == ["a1", "a2"]
    assert storage.renew("nobody", held, T0 + 8, LEASE) == {}
    for rid in ("a1", "a2"):
        record = storage.get_run(rid)
        assert record is not None and record.lease_until == pytest.approx(T0 + 8 + LEASE)
        assert record.owner == "w1"
    b1 = storage.get_run("b1")
    assert b1 is not None and b1.lease_until == theirs.lease_until
    done = storage.get_run("done")
    assert done is not None and done.owner is None and done.status == "completed"

    # Past the old lease but within the renewed one: still held.
    assert other.claim("w3", ["a"], 10, T0 + LEASE + 1, LEASE) == []
    assert len(other.claim("w3", ["a"], 10, T0 + 8 + LEASE + 1, LEASE)) == 2


def test_release_makes_a_running_run_claimable_at_once(storage: Storage, other: Storage) -> None:
    storage.create_run(new_run("r1", created_at=T0))
    storage.create_run(new_run("r2", created_at=T0 + 1))
    held = {r.id: r for r in storage.claim("w1", ["wf"], 10, T0, 3600.0)}
    assert set(held) == {"r1", "r2"}

    other.release("w2", ["r2"], T0 + 1)  # not w2's to release: no effect
    storage.release("w1", ["r1"], T0 + 1)
    r1 = storage.get_run("r1")
    assert r1 is not None and r1.owner is None and r1.status == "running"
    r2 = storage.get_run("r2")
    assert r2 is not None and r2.owner == "w1"

    taken = claim_one(other, "w2", T0 + 1)  # long before w1's lease would end
    assert taken.id == "r1" and taken.epoch == held["r1"].epoch + 1
    # w1 no longer owns r1: its commit is fenced off.
    assert storage.commit("w1", [RunWrite("r1", held["r1"].epoch, [entry(0)])], T0 + 2) == {"r1"}
    assert storage.load_journal("r1") == []
    storage.release("w1", [], T0 + 2)  # nothing to do


def test_release_keeps_a_suspended_run_asleep(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w1", T0)
    suspend = RunUpdate(status="suspended", wake_at=T0 + 60, release=False)
    storage.commit("w1", [RunWrite("r", run.epoch, [], suspend)], T0)
    storage.release("w1", ["r"], T0 + 1)
    record = storage.get_run("r")
    assert record is not None and record.owner is None and record.status == "suspended"
    assert storage.claim("w2", ["wf"], 10, T0 + 2, LEASE) == []
    assert claim_one(storage, "w2", T0 + 60).id == "r"


def test_a_release_under_an_old_claim_keeps_the_workers_newer_claim(storage: Storage) -> None:
    """A driver that failed hands its run back under its own claim's epoch:
    if the same worker has claimed the run again since (for a new driver),
    that newer claim must stay, or another worker could run it too."""
    storage.create_run(new_run("r"))
    first = claim_one(storage, "w1", T0, ("wf",))
    storage.commit(
        "w1", [RunWrite("r", first.epoch, [], RunUpdate(status="running", release=True))], T0
    )
    again = claim_one(storage, "w1", T0 + 1, ("wf",))
    assert again.epoch == first.epoch + 1
    storage.release("w1", ["r"], T0 + 2, epoch=first.epoch)  # the old driver's hand-back
    kept = storage.get_run("r")
    assert kept is not None and kept.owner == "w1" and kept.epoch == again.epoch
    storage.release("w1", ["r"], T0 + 3, epoch=again.epoch)
    released = storage.get_run("r")
    assert released is not None and released.owner is None


# -- next_due ---------------------------------------------------------------------------------


def test_next_due_is_the_earliest_wake_or_lease_time(storage: Storage) -> None:
    assert storage.next_due(["wf"], T0) is None
    assert storage.next_due([], T0) is None

    def suspend(run_id: str, workflow: str, wake_at: float) -> None:
        storage.create_run(new_run(run_id, workflow))
        run = claim_one(storage, "w", T0, (workflow,))
        update = RunUpdate(status="suspended", wake_at=wake_at, release=True)
        assert storage.commit("w", [RunWrite(run_id, run.epoch, [], update)], T0) == set()

    def suspend_without_timer(run_id: str) -> None:  # waits for a signal or a child
        storage.create_run(new_run(run_id, "wf"))
        run = claim_one(storage, "w", T0, ("wf",))
        update = RunUpdate(status="suspended", wake_at=None, release=True)
        assert storage.commit("w", [RunWrite(run_id, run.epoch, [], update)], T0) == set()

    suspend_without_timer("waiting")
    assert storage.next_due(["wf"], T0) is None
    suspend("late", "wf", T0 + 500)
    assert storage.next_due(["wf"], T0) == pytest.approx(T0 + 500)
    suspend("soon", "wf", T0 + 200)
    suspend("other-wf", "other", T0 + 5)
    assert storage.next_due(["wf"], T0) == pytest.approx(T0 + 200)
    assert storage.next_due(["wf", "other"], T0) == pytest.approx(T0 + 5)
    assert storage.next_due(["nothing"], T0) is None

    storage.create_run(new_run("busy", "wf"))
    busy = claim_one(storage, "w", T0 + 40, ("wf",))
    assert busy.lease_until == pytest.approx(T0 + 40 + LEASE)
    assert storage.next_due(["wf"], T0) == pytest.approx(T0 + 40 + LEASE)
    storage.release("w", ["busy"], T0 + 41)
    due = storage.next_due(["wf"], T0 + 41)
    assert due is not None and due <= T0 + 41  # claimable now


# -- load_journal ------------------------------------------------------------------------------


def test_load_journal_returns_every_field_in_seq_order(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    storage.create_run(new_run("neighbour"))
    runs = {r.id: r for r in storage.claim("w", ["wf"], 10, T0, LEASE)}
    epoch = runs["r"].epoch
    written = [
        Entry(0, "step", "load-order", '{"total": 12}', "shop.py:10", T0 + 0.25, 0, epoch),
        Entry(2, "timer", "cooldown", json.dumps(T0 + 900), "shop.py:12", T0 + 0.5, 1, epoch),
        Entry(1, "step", "charge", '"rcpt-✓"', "shop.py:11", T0 + 0.75, 2, epoch),
        Entry(3, "now", "now", None, None, T0 + 1.0, 3, epoch),
        Entry(1, "attempt", "charge", '{"error": "x"}', "shop.py:11", T0 + 1.5, 4, epoch),
    ]
    # Written out of seq order and across two commits.
    storage.commit("w", [RunWrite("r", epoch, [written[2], written[0]])], T0 + 1)
    storage.commit(
        "w",
        [
            RunWrite("r", epoch, [written[4], written[1], written[3]]),
            RunWrite("neighbour", runs["neighbour"].epoch, [entry(0, name="n")]),
        ],
        T0 + 2,
    )
    loaded = storage.load_journal("r")
    assert loaded == written
    assert [e.seq for e in loaded] == [0, 1, 2, 3, 4]
    assert isinstance(loaded[0].at, float) and isinstance(loaded[0].seq, int)
    assert [e.name for e in storage.load_journal("neighbour")] == ["n"]


def test_large_payloads_and_many_entries_round_trip(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w", T0)
    big = json.dumps({"blob": "x" * 200_000})
    entries = [entry(i, epoch=run.epoch) for i in range(1200)]
    entries[7] = entry(7, epoch=run.epoch, payload=big)
    assert storage.commit("w", [RunWrite("r", run.epoch, entries)], T0) == set()
    loaded = storage.load_journal("r")
    assert len(loaded) == 1200
    assert loaded[7].payload == big
    assert loaded == entries


# -- operator status changes -----------------------------------------------------------------


def test_set_status_respects_expectations(storage: Storage) -> None:
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w", T0)
    failed = RunUpdate(status="failed", error='{"type": "X"}', release=True)
    storage.commit("w", [RunWrite("r", run.epoch, [entry(0)], failed)], T0 + 1)

    assert storage.set_status("missing", "pending", T0 + 2) is False
    assert storage.set_status("r", "pending", T0 + 2, expect=("completed",)) is False
    record = storage.get_run("r")
    assert record is not None and record.status == "failed"

    assert storage.set_status("r", "pending", T0 + 3, expect=("failed", "cancelled")) is True
    record = storage.get_run("r")
    assert record is not None
    assert (record.status, record.error, record.finished_at, record.owner) == (
        "pending",
        None,
        None,
        None,
    )
    assert [e.seq for e in storage.load_journal("r")] == [0]  # history is kept
    again = claim_one(storage, "w2", T0 + 4)
    assert again.epoch == run.epoch + 1


# -- change notifications ------------------------------------------------------------------------


def test_subscribers_hear_about_changes_from_other_connections(
    storage: Storage, other: Storage, backend: str
) -> None:
    heard: list[tuple[str, str]] = []
    event = threading.Event()

    def listener(channel: str, payload: str) -> None:
        heard.append((channel, payload))
        event.set()

    def wanted() -> bool:
        if backend == "postgres":
            return ("durably_work", "notify-wf") in heard
        return bool(heard)

    unsubscribe = storage.subscribe(listener)
    try:
        deadline = time.monotonic() + 8
        i = 0
        while not wanted() and time.monotonic() < deadline:
            other.create_run(new_run(f"n{i}", "notify-wf"))
            i += 1
            event.wait(0.3)
            event.clear()
        assert wanted(), heard
    finally:
        unsubscribe()


def test_a_run_going_to_sleep_after_its_wake_up_is_due_at_once_and_announced(
    storage: Storage, backend: str
) -> None:
    """A signal that arrived while the run was still running: the commit that
    puts it to sleep finds it, makes the run due now, and (PostgreSQL, where
    nothing else would wake a worker's claims before its poll) notifies."""
    storage.create_run(new_run("r"))
    run = claim_one(storage, "w1", T0)
    storage.send_signal("r", "ping", '"hi"', T0 + 1)  # running: nothing to wake yet
    heard: list[tuple[str, str]] = []
    event = threading.Event()

    def listener(channel: str, payload: str) -> None:
        heard.append((channel, payload))
        event.set()

    unsubscribe = storage.subscribe(listener)
    try:
        time.sleep(0.3)  # the listener is listening
        heard.clear()
        sleep = RunUpdate(status="suspended", wake_at=T0 + 600, release=True)
        sleep.wake_topics = ("ping",)
        assert storage.commit("w1", [RunWrite("r", run.epoch, [], sleep)], T0 + 2) == set()
        record = storage.get_run("r")
        assert record is not None and record.status == "suspended" and record.wake_at == T0 + 2
        wanted = ("durably_work", "r") if backend == "postgres" else ("", "")
        deadline = time.monotonic() + 5
        while wanted not in heard and time.monotonic() < deadline:
            event.wait(0.2)
            event.clear()
        assert wanted in heard, heard
    finally:
        unsubscribe()


# -- SQLite under contention from several processes ----------------------------------------------

HAMMER = r"""
import json, pathlib, sys, time
from durably._engine.journal import Entry
from durably._storage import open_storage
from durably._storage.base import NewRun, RunUpdate, RunWrite

url, me, duration = sys.argv[1], sys.argv[2], float(sys.argv[3])
ready, n = pathlib.Path(sys.argv[4]), int(sys.argv[5])
store = open_storage(url)
(ready / me).touch()  # start together, once every process has imported durably
give_up = time.monotonic() + 20
while len(list(ready.iterdir())) < n:
    if time.monotonic() > give_up:
        sys.exit("the other processes never started")
    time.sleep(0.005)
store.migrate()  # all at once, on a fresh file
claimed, rejected, created, i = [], [], 0, 0
end = time.monotonic() + duration
while time.monotonic() < end:
    now = time.time()
    for k in range(3):
        created += store.create_run(NewRun(f"{me}-{i}-{k}", "wf", "v1", "[]", now))[1]
    store.create_run(NewRun(f"shared-{i}", "wf", "v1", "[]", now))  # everyone races on it
    runs = store.claim(me, ["wf"], 4, now, 600.0)
    writes = [
        RunWrite(r.id, r.epoch,
                 [Entry(0, "step", "s", json.dumps(me), None, now, 0, r.epoch),
                  Entry(1, "step", "t", None, None, now, 1, r.epoch)],
                 RunUpdate(status="completed", result=json.dumps(me), release=True))
        for r in runs
    ]
    rejected += sorted(store.commit(me, writes, now))
    claimed += [r.id for r in runs]
    store.renew(me, [r.id for r in runs], now, 600.0)
    store.get_run(f"shared-{i}")
    i += 1
store.close()
print(json.dumps({"claimed": claimed, "rejected": rejected, "created": created, "rounds": i}))
"""


def test_sqlite_survives_many_processes_hammering_one_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    n, duration = 4, 3.0
    ready = tmp_path / "ready"
    ready.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, url, f"p{i}", str(duration), str(ready), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outputs: list[tuple[str, str]] = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=40))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    reports = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err.lower() and "Traceback" not in err, err
        reports.append(json.loads(out.strip().splitlines()[-1]))

    # They really overlapped (one may be starved for a while, but all took part).
    assert all(r["rounds"] >= 1 for r in reports), reports
    assert sum(r["rounds"] for r in reports) > 20, reports
    assert all(r["rejected"] == [] for r in reports)
    claimed = [rid for r in reports for rid in r["claimed"]]
    assert len(claimed) == len(set(claimed)), "a run was handed to two workers"

    store = open_storage(url)
    store.migrate()
    try:
        every = store.list_runs(RunFilter(limit=1_000_000))
        shared = {r.id for r in every if r.id.startswith("shared-")}
        assert len(every) == sum(r["created"] for r in reports) + len(shared)
        assert len(shared) == max(r["rounds"] for r in reports)
        by_id = {r.id: r for r in every}
        for rid in claimed:
            record = by_id[rid]
            assert record.status == "completed" and record.epoch == 1, record
        for rid in claimed[:: max(1, len(claimed) // 200)]:
            journal = store.load_journal(rid)
            assert [e.seq for e in journal] == [0, 1]
            assert journal[0].payload == by_id[rid].result
        raw = sqlite3.connect(tmp_path / "busy.db")
        try:
            counts = dict(raw.execute("SELECT run_id, count(*) FROM durably_journal GROUP BY 1"))
        finally:
            raw.close()
        assert counts == dict.fromkeys(claimed, 2)
        assert {r.id for r in every if r.status == "pending"} == set(by_id) - set(claimed)
    finally:
        store.close()


def test_a_constraint_violation_is_a_clear_durably_error(storage: Storage) -> None:
    import durably

    storage.create_run(new_run("r1"))
    run = claim_one(storage, "w1", T0 + 1)
    storage.commit("w1", [RunWrite("r1", run.epoch, [entry(0)])], T0 + 2)
    with pytest.raises(durably.DatabaseError) as info:
        storage.commit("w1", [RunWrite("r1", run.epoch, [entry(0)])], T0 + 3)
    assert "not a usable durably database" not in str(info.value)
    assert [e.seq for e in storage.load_journal("r1")] == [0]  # nothing lost


_CLOSE_WHILE_QUERYING = """
import sys, threading, time
from durably._errors import DatabaseError
from durably._storage import open_storage

url, rounds = sys.argv[1], int(sys.argv[2])
unexpected = []
for _ in range(rounds):
    store = open_storage(url)
    store.migrate()
    stop = threading.Event()

    def query() -> None:
        while not stop.is_set():
            try:
                store.get_run("r-none")
                store.load_journal("r-none")
            except DatabaseError:
                return  # what a query on a closed storage must say
            except Exception as exc:
                unexpected.append(f"{type(exc).__name__}: {exc}")
                return

    threads = [threading.Thread(target=query) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.002)
    store.close()
    stop.set()
    for t in threads:
        t.join()
print("unexpected:", unexpected[:3])
sys.exit(1 if unexpected else 0)
"""


def test_closing_while_other_threads_query_neither_crashes_nor_misleads(
    database_url: str, storage: Storage
) -> None:
    """An app closed while a worker's threads still query (a shutdown, a test's
    teardown) used to kill the process: SQLite connections were closed under
    the threads using them (a segmentation fault). Those queries now finish or
    fail with a DatabaseError; the process lives."""
    rounds = "60" if database_url.startswith("sqlite") else "15"
    done = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _CLOSE_WHILE_QUERYING, database_url, rounds],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])


def test_listening_on_a_closed_storage_is_refused(database_url: str) -> None:
    """A subscription made after close (a waiter that raced it) used to start
    a listening thread, and on PostgreSQL a connection, for a closed storage."""
    store = open_storage(database_url)
    store.migrate()
    store.close()
    before = {t.name for t in threading.enumerate()}
    with pytest.raises(DatabaseError, match="closed"):
        store.subscribe(lambda channel, payload: None)
    started = {t.name for t in threading.enumerate()} - before
    assert not started, started

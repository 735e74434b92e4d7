"""No lost wake-up between a parent going to sleep and its child's end,
committed at the same moment by two transactions (PostgreSQL)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from durably._storage.base import RunUpdate, RunWrite, Storage
from storage.test_storage import LEASE, T0, entry, new_run

DONE = RunUpdate(status="completed", result='"done"', release=True)


def test_a_parent_going_to_sleep_waits_for_its_childs_end_in_flight(
    pg_storage: tuple[Storage, str],
) -> None:
    storage: Any = pg_storage[0]
    url = pg_storage[1]
    claimed = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs([new_run("p", **claimed), new_run("c", parent_id="p", **claimed)])
    # The child's end, in another session's transaction still open: its
    # statement found the parent running, not asleep, so it did not wake it.
    end = storage.one_statement("w1", [RunWrite("c", 1, [entry(0)], DONE)], T0)
    asleep = RunUpdate(status="suspended", release=True, wake_children=("c",))
    answers: list[Any] = []

    def parent_sleeps() -> None:
        answers.append(storage.commit("w1", [RunWrite("p", 1, [entry(0)], asleep)], T0))

    with psycopg.connect(url) as other, psycopg.connect(url, autocommit=True) as probe:
        assert other.execute(end.sql, end.params).fetchall()
        sleeper = threading.Thread(target=parent_sleeps)
        sleeper.start()
        holder = other.info.backend_pid
        deadline = time.monotonic() + 10
        while sleeper.is_alive() and time.monotonic() < deadline:
            if probe.execute(
                "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder,)
            ).fetchone():
                break  # the parent's commit waits for the child's row
            time.sleep(0.01)
        other.commit()
        sleeper.join(20)
    assert answers == [set()]
    parent = storage.get_run("p")
    # Its commit saw the child ended: due at once, not asleep for good.
    assert parent is not None and parent.status == "suspended" and parent.wake_at == T0


def test_a_parent_going_to_sleep_announces_its_children_to_claims_it_made_skip(
    pg_storage: tuple[Storage, str],
) -> None:
    # The parent's commit locks its children's rows (above); a claim at that
    # moment skips them (FOR UPDATE SKIP LOCKED), and a child not started yet
    # then waited for the next poll. The commit now tells workers to look again.
    storage: Any = pg_storage[0]
    url = pg_storage[1]
    claimed = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs([new_run("p", **claimed), new_run("c", parent_id="p")])
    asleep = RunUpdate(status="suspended", release=True, wake_children=("c",))
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN durably_work")
        assert storage.commit("w1", [RunWrite("p", 1, [entry(0)], asleep)], T0) == set()
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert heard == [("durably_work", "c")]


def test_a_signal_to_a_run_not_started_yet_announces_it_to_claims_it_made_skip(
    pg_storage: tuple[Storage, str],
) -> None:
    # The signal locks the run's row; a claim at that moment skips a pending
    # run, which then waited for the next poll. The signal now says: look again.
    storage: Any = pg_storage[0]
    url = pg_storage[1]
    storage.create_runs([new_run("r")])
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN durably_work")
        storage.send_signal("r", "go", "1", T0)
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=1)]
    assert heard == [("durably_work", "r")]


def test_runs_started_together_announce_each_workflow_with_runs_to_claim_once(
    pg_storage: tuple[Storage, str],
) -> None:
    # A client's batch of starts is one statement: the runs created and one
    # notice per workflow that has runs waiting to be claimed (not for runs
    # created claimed, nor for ids that existed already).
    storage, url = pg_storage
    claimed = {"owner": "w1", "lease_until": T0 + LEASE}
    storage.create_runs([new_run("old", workflow="c")])
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN durably_work")
        answers = storage.create_runs(
            [
                *(new_run(f"a{i}", workflow="a") for i in range(3)),
                new_run("b0", workflow="b"),
                new_run("mine", workflow="m", **claimed),
                new_run("old", workflow="c"),
            ]
        )
        time.sleep(0.2)
        heard = sorted((n.channel, n.payload) for n in listener.notifies(timeout=0.5))
    assert heard == [("durably_work", "a"), ("durably_work", "b")]
    assert [(record.id, created) for record, created in answers] == [
        ("a0", True),
        ("a1", True),
        ("a2", True),
        ("b0", True),
        ("mine", True),
        ("old", False),
    ]

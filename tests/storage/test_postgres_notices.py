"""``durably_done`` notices: one per commit, naming every run it ended
(``_storage/postgres/notices.py``), on every path that ends runs."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pytest

from durably._storage.base import RunUpdate, RunWrite, Storage
from durably._storage.postgres.notices import done_ids, done_payloads

from .test_storage import LEASE, T0, entry, new_run

DONE = RunUpdate(status="completed", result='"done"', release=True)
# Ids no separator could split: digits, colons, non-ASCII, the longest allowed.
AWKWARD = ["1:2", "::", "0", "é:ü-ñ", "x" * 512, "3:abc", "é" * 512]


@pytest.mark.parametrize("run_ids", [AWKWARD, [f"{i}:{'é' * 500}" for i in range(40)]])
def test_payloads_name_every_id_and_stay_under_the_notify_limit(run_ids: list[str]) -> None:
    payloads = done_payloads(run_ids)
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert [i for p in payloads for i in done_ids(p)] == run_ids


def test_a_payload_that_does_not_parse_is_one_bare_id() -> None:
    # As an older durably sent it: one run id as it is. Lengths that int()
    # would take but that are not plain digits, or that do not move forward
    # (a negative length looped for ever), are not lengths.
    for bare in ["abc", "5:abc", ":x", "12", "-3:x", "+1:a", " 1:a", "1_0:abcdefghij", "0:", "1:"]:
        assert done_ids(bare) == [bare]


def done_heard(url: str, action: Callable[[], None]) -> list[str]:
    """The payloads of the durably_done notices sent while ``action`` ran."""
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN durably_done")
        action()
        time.sleep(0.2)
        return [note.payload for note in listener.notifies(timeout=0.5)]


def _long_ids(tag: str, n: int) -> list[str]:
    return [f"{i}:{tag}:" + "é" * 480 for i in range(n)]


@pytest.mark.parametrize("shape", ["one statement", "pipelined"])
def test_a_commit_ending_many_runs_sends_a_few_notices_naming_them_all(
    pg_storage: tuple[Storage, str], shape: str
) -> None:
    storage, url = pg_storage
    ids = _long_ids(shape, 60)  # about 58 kB of ids: several notices
    storage.create_runs([new_run(i) for i in ids])
    claimed = {r.id: r.epoch for r in storage.claim("w1", ["wf"], 100, T0, LEASE)}
    writes = [RunWrite(i, claimed[i], [entry(0)], DONE) for i in ids]
    if shape == "pipelined":  # an event is not among the one statement's shapes
        writes[0].events = [("k", "1")]
    payloads = done_heard(url, lambda: storage.commit("w1", writes, T0 + 1))
    assert 1 < len(payloads) < len(ids)
    assert all(len(p.encode()) < 8000 for p in payloads)
    assert sorted(i for p in payloads for i in done_ids(p)) == sorted(ids)


def test_a_lone_end_and_a_cancelled_tree_are_named_too(pg_storage: tuple[Storage, str]) -> None:
    storage, url = pg_storage
    storage.create_runs([new_run("12:ab:c")])
    run = storage.claim("w1", ["wf"], 1, T0, LEASE)[0]
    lone = done_heard(
        url, lambda: storage.commit("w1", [RunWrite(run.id, run.epoch, [], DONE)], T0)
    )
    assert [done_ids(p) for p in lone] == [["12:ab:c"]]

    storage.create_runs([new_run("2:p")])
    storage.create_runs([new_run(c, parent_id="2:p") for c in _long_ids("child", 20)])
    cancelled = done_heard(url, lambda: storage.request_cancel("2:p", T0, "stop"))
    assert sorted(i for p in cancelled for i in done_ids(p)) == sorted(
        ["2:p", *_long_ids("child", 20)]
    )


def test_a_listener_is_told_of_each_run_a_notice_names(pg_storage: tuple[Storage, str]) -> None:
    storage, _ = pg_storage
    heard: list[tuple[str, str]] = []
    unsubscribe = storage.subscribe(lambda channel, payload: heard.append((channel, payload)))
    try:
        ids = _long_ids("told", 30)
        storage.create_runs([new_run(i) for i in ids])
        claimed = storage.claim("w1", ["wf"], 100, T0, LEASE)
        deadline = time.monotonic() + 10
        while ("", "") not in heard and time.monotonic() < deadline:
            time.sleep(0.01)  # the listener says "" once it listens
        assert (
            storage.commit("w1", [RunWrite(r.id, r.epoch, [], DONE) for r in claimed], T0) == set()
        )
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline and len([c for c, _ in heard if c == "durably_done"]) < 30
        ):
            time.sleep(0.05)
    finally:
        unsubscribe()
    assert sorted(p for c, p in heard if c == "durably_done") == sorted(ids)

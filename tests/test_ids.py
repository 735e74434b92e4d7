"""Generated run ids: UUIDv7 hex, in the order they were made."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

import pytest

import durably
from durably import _ids
from durably._ids import new_run_id


def test_a_generated_id_is_a_version_7_uuid_in_hex_carrying_the_time() -> None:
    before = time.time_ns() // 1_000_000
    run_id = new_run_id()
    after = time.time_ns() // 1_000_000
    parsed = uuid.UUID(run_id)
    assert run_id == parsed.hex and len(run_id) == 32
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert before <= int(run_id[:12], 16) <= after


def test_ids_sort_in_the_order_they_were_made_even_within_one_millisecond() -> None:
    ids = [new_run_id() for _ in range(10_000)]  # thousands share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_stay_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_run_id()
    monkeypatch.setattr(_ids.time, "time_ns", lambda: 1_000_000_000_000)  # 1970-01-01 00:16:40
    later = [new_run_id() for _ in range(5)]
    assert [first, *later] == sorted([first, *later])


def test_ids_made_on_many_threads_are_distinct() -> None:
    made: list[str] = []

    def make() -> None:
        made.extend(new_run_id() for _ in range(2_000))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 16_000


def _in_a_child(run: Callable[[], bytes]) -> tuple[int, bytes]:
    """Fork; the child writes what ``run`` returns and exits. The child's exit
    status (None if it had not ended after 10 s, and was killed) and output."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(write, run())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(read)
            return -1, b""
        time.sleep(0.01)
    out = os.read(read, 64)
    os.close(read)
    return os.waitstatus_to_exitcode(status), out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_and_its_parent_make_different_ids() -> None:
    new_run_id()  # random bits are fetched ahead: the child gets a copy of them
    code, theirs = _in_a_child(lambda: new_run_id().encode())
    mine = new_run_id()
    assert code == 0 and len(theirs) == 32
    assert theirs.decode()[16:] != mine[16:]  # the random tails


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_an_id_was_being_made_can_make_ids() -> None:
    with _ids._lock:  # as if another thread were inside new_run_id at the fork
        code, theirs = _in_a_child(lambda: new_run_id().encode())
    assert code == 0 and len(theirs) == 32


async def test_runs_started_without_an_id_get_time_ordered_ones(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def noop(ctx: durably.Context, i: int) -> int:
        return i

    handles = [await app.start(noop, i) for i in range(20)]
    ids = [h.run_id for h in handles]
    assert ids == sorted(ids)
    assert {uuid.UUID(run_id).version for run_id in ids} == {7}
    stored = sorted(r.id for r in await app.list_runs(workflow="noop", limit=50))
    assert stored == ids

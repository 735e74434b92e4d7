"""The thread that batches concurrent calls (used for starts)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from durably._batching import Batcher


def test_close_while_a_batch_is_processed_and_another_waits() -> None:
    """close() used to wait out its whole 5 s join and leave the thread
    behind: its wake-up was cleared by the thread taking the queued item."""

    def slowly(items: Sequence[int]) -> list[int]:
        time.sleep(0.3)
        return list(items)

    batcher: Batcher[int, int] = Batcher(slowly, "test-batcher")
    first = batcher.submit(1)
    time.sleep(0.05)  # the first batch is being processed
    second = batcher.submit(2)
    began = time.monotonic()
    batcher.close()
    assert time.monotonic() - began < 2.0
    assert (first.result(1), second.result(1)) == (1, 2)
    time.sleep(0.1)
    assert not [t for t in threading.enumerate() if t.name == "test-batcher"]


def test_callers_that_gave_up_are_dropped_and_the_thread_lives() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def record(items: Sequence[int]) -> list[int]:
        gate.wait(5)  # holds the thread in a batch so the next ones queue up
        seen.append(list(items))
        return list(items)

    batcher: Batcher[int, int] = Batcher(record, "test-batcher-2")
    held = batcher.submit(1)
    time.sleep(0.05)
    gave_up = batcher.submit(2)
    kept = batcher.submit(3)
    assert gave_up.cancel()
    gate.set()
    assert held.result(2) == 1 and kept.result(2) == 3
    assert [2] not in seen and all(2 not in batch for batch in seen)
    assert batcher.submit(4).result(2) == 4
    batcher.close()


async def test_callers_on_a_loop_are_answered_together_and_each_gets_its_own() -> None:
    calls: list[list[int]] = []
    gate = threading.Event()

    def double(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        calls.append(list(items))
        return [i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher(double, "test-batcher-3")
    first = batcher.submit_async(0)
    await asyncio.sleep(0.05)  # the first batch holds the thread; the rest queue up
    rest = [batcher.submit_async(i) for i in range(1, 200)]
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 5) == [i * 2 for i in range(200)]
    assert calls == [[0], list(range(1, 200))]
    batcher.close()


async def test_an_async_caller_that_gave_up_is_dropped_and_errors_reach_the_others() -> None:
    seen: list[list[int]] = []
    gate = threading.Event()

    def picky(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        seen.append(list(items))
        if 13 in items:
            raise ValueError("13 is refused")
        return list(items)

    batcher: Batcher[int, int] = Batcher(picky, "test-batcher-4")
    held = batcher.submit_async(1)
    await asyncio.sleep(0.05)
    gave_up, unlucky, also = (batcher.submit_async(i) for i in (2, 13, 14))
    gave_up.cancel()
    gate.set()
    assert await asyncio.wait_for(held, 5) == 1
    for waiter in (unlucky, also):
        with pytest.raises(ValueError, match="13 is refused"):
            await asyncio.wait_for(waiter, 5)
    assert seen == [[1], [13, 14]]
    assert await asyncio.wait_for(batcher.submit_async(4), 5) == 4
    batcher.close()


def test_a_caller_whose_loop_closed_does_not_stop_the_thread() -> None:
    gate = threading.Event()

    def slow(items: Sequence[int]) -> list[int]:
        gate.wait(5)
        return list(items)

    batcher: Batcher[int, int] = Batcher(slow, "test-batcher-5")
    held = batcher.submit(0)  # holds the thread, so the next call is a batch of its own
    time.sleep(0.05)
    loop = asyncio.new_event_loop()

    async def submit() -> None:
        batcher.submit_async(1)

    loop.run_until_complete(submit())
    loop.close()  # its caller is gone before the answer
    gate.set()
    assert held.result(5) == 0
    time.sleep(0.2)  # the closed loop's batch is answered (or kills the thread)
    assert batcher.submit(2).result(5) == 2
    batcher.close()

"""The thread that batches concurrent calls (used for starts)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence

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


class Gated:
    """A batch function that holds the batcher's thread in its first call
    until released, and says when that call began (no sleeps to guess it)."""

    def __init__(self, answer: Callable[[Sequence[int]], list[int]] = list) -> None:
        self.answer = answer
        self.began = threading.Event()
        self.release = threading.Event()
        self.calls: list[list[int]] = []

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.began.set()
        self.release.wait(5)
        self.calls.append(list(items))
        return self.answer(items)


async def _began(gated: Gated) -> None:
    assert await asyncio.to_thread(gated.began.wait, 5)


async def test_callers_on_a_loop_are_answered_together_and_each_gets_its_own() -> None:
    gated = Gated(lambda items: [i * 2 for i in items])
    batcher: Batcher[int, int] = Batcher(gated, "test-batcher-3")
    first = batcher.submit_async(0)
    await _began(gated)  # the first batch holds the thread; the rest queue up
    rest = [batcher.submit_async(i) for i in range(1, 200)]
    gated.release.set()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 5) == [i * 2 for i in range(200)]
    assert gated.calls == [[0], list(range(1, 200))]
    batcher.close()


async def test_an_async_caller_that_gave_up_is_dropped_and_errors_reach_the_others() -> None:
    def picky(items: Sequence[int]) -> list[int]:
        if 13 in items:
            raise ValueError("13 is refused")
        return list(items)

    gated = Gated(picky)
    batcher: Batcher[int, int] = Batcher(gated, "test-batcher-4")
    held = batcher.submit_async(1)
    await _began(gated)
    gave_up, unlucky, also = (batcher.submit_async(i) for i in (2, 13, 14))
    gave_up.cancel()
    gated.release.set()
    assert await asyncio.wait_for(held, 5) == 1
    for waiter in (unlucky, also):
        with pytest.raises(ValueError, match="13 is refused"):
            await asyncio.wait_for(waiter, 5)
    assert gated.calls == [[1], [13, 14]]
    assert await asyncio.wait_for(batcher.submit_async(4), 5) == 4
    batcher.close()


async def test_a_caller_that_gave_up_during_its_batch_leaves_the_others_answered() -> None:
    gated = Gated()
    batcher: Batcher[int, int] = Batcher(gated, "test-batcher-6")
    gave_up, kept = batcher.submit_async(1), batcher.submit_async(2)
    await _began(gated)
    gave_up.cancel()  # too late to drop: the work goes on, its answer is dropped
    gated.release.set()
    assert await asyncio.wait_for(kept, 5) == 2
    assert gave_up.cancelled() and gated.calls == [[1, 2]]
    batcher.close()


def test_callers_on_two_loops_in_one_batch_each_get_their_answer() -> None:
    gated = Gated(lambda items: [i + 100 for i in items])
    batcher: Batcher[int, int] = Batcher(gated, "test-batcher-7")
    held = batcher.submit(0)
    assert gated.began.wait(5)
    answers: dict[int, int] = {}
    queued = threading.Barrier(3, timeout=5)

    def on_its_own_loop(item: int) -> None:
        async def go() -> None:
            waiter = batcher.submit_async(item)
            await asyncio.to_thread(queued.wait)
            answers[item] = await asyncio.wait_for(waiter, 5)

        asyncio.run(go())

    threads = [threading.Thread(target=on_its_own_loop, args=(i,)) for i in (1, 2)]
    for thread in threads:
        thread.start()
    queued.wait()  # both queued behind the held batch: they share the next one
    gated.release.set()
    for thread in threads:
        thread.join(5)
    assert held.result(5) == 100 and answers == {1: 101, 2: 102}
    assert [sorted(call) for call in gated.calls] == [[0], [1, 2]]
    batcher.close()


async def test_a_process_that_answers_the_wrong_number_fails_every_caller() -> None:
    gated = Gated(lambda items: [1])  # one answer, whatever the number of calls
    batcher: Batcher[int, int] = Batcher(gated, "test-batcher-8")
    held = batcher.submit_async(0)
    await _began(gated)
    waiters = [batcher.submit_async(i) for i in range(3)]  # one batch of three
    gated.release.set()
    assert await asyncio.wait_for(held, 5) == 1
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    assert [type(r) for r in results] == [RuntimeError] * 3, results
    assert "1 answers to 3 calls" in str(results[0])
    assert await asyncio.wait_for(batcher.submit_async(7), 5) == 1  # the thread lives
    batcher.close()


def test_a_caller_whose_loop_closed_does_not_stop_the_thread() -> None:
    gated = Gated()
    batcher: Batcher[int, int] = Batcher(gated, "test-batcher-5")
    held = batcher.submit(0)  # holds the thread, so the next call is a batch of its own
    assert gated.began.wait(5)
    loop = asyncio.new_event_loop()

    async def submit() -> None:
        batcher.submit_async(1)

    loop.run_until_complete(submit())
    loop.close()  # its caller is gone before the answer
    gated.release.set()
    assert held.result(5) == 0
    time.sleep(0.2)  # the closed loop's batch is answered (or kills the thread)
    assert batcher.submit(2).result(5) == 2
    batcher.close()

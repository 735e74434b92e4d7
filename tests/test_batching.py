"""The thread that batches concurrent calls (used for starts)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

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

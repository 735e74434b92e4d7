"""One thread that turns many concurrent calls into one batched call.

While a batch is being processed, new items queue up; the next batch takes
all of them. Used for starting runs: two thousand concurrent ``app.start``
calls become a handful of transactions instead of two thousand.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class BatcherClosed(RuntimeError):
    """The batcher was closed (its app closed or switched database)."""


class Batcher(Generic[T, R]):
    def __init__(self, process: Callable[[Sequence[T]], Sequence[R]], name: str) -> None:
        self._process = process
        self._name = name
        self._queue: deque[tuple[T, Future[R]]] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, item: T) -> Future[R]:
        future: Future[R] = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"{self._name} is closed")
            self._queue.append((item, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._wakeup.set()
        return future

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wakeup.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            with self._lock:
                batch = list(self._queue)
                self._queue.clear()
                closed = self._closed
            if batch:
                self._handle(batch)
            if closed:  # nothing more can arrive (submit refuses), and a
                return  # wake-up set by close() may have been cleared above

    def _handle(self, batch: list[tuple[T, Future[R]]]) -> None:
        # A caller that gave up (a request timed out, a task was cancelled) is
        # dropped before the work starts; once started, a future cannot be
        # cancelled, so every answer below lands. The thread must never die:
        # every later call would wait for it forever.
        batch = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            results = self._process([item for item, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - every caller gets the error
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

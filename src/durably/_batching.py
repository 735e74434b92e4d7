"""One thread that turns many concurrent calls into one batched call.

While a batch is being processed, new items queue up; the next batch takes
all of them. Used for starting runs: two thousand concurrent ``app.start``
calls become a handful of transactions instead of two thousand.

Callers on an event loop wait on a future of their own loop, and a batch
answers all of a loop's callers with one ``call_soon_threadsafe``: a
``concurrent.futures.Future`` per call, wrapped for the loop, cost the
starting process more CPU than the transaction that created the run.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_Waiter = Future[R] | asyncio.Future[R]
# What a batch hands one loop: each waiter with its result, or the error.
_Answers = list[tuple[asyncio.Future[R], R | None, BaseException | None]]


class BatcherClosed(RuntimeError):
    """The batcher was closed (its app closed or switched database)."""


class Batcher(Generic[T, R]):
    def __init__(self, process: Callable[[Sequence[T]], Sequence[R]], name: str) -> None:
        self._process = process
        self._name = name
        self._queue: deque[tuple[T, _Waiter[R]]] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, item: T) -> Future[R]:
        future: Future[R] = Future()
        self._enqueue(item, future)
        return future

    def submit_async(self, item: T) -> asyncio.Future[R]:
        """Like ``submit``, for a caller on the running event loop."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._enqueue(item, future)
        return future

    def _enqueue(self, item: T, waiter: _Waiter[R]) -> None:
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"{self._name} is closed")
            self._queue.append((item, waiter))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._wakeup.set()

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

    def _handle(self, batch: list[tuple[T, _Waiter[R]]]) -> None:
        # A caller that gave up (a request timed out, a task was cancelled) is
        # dropped before the work starts; once started, the work is done and
        # every answer below lands where a caller still waits. The thread must
        # never die: every later call would wait for it forever.
        batch = [(item, waiter) for item, waiter in batch if _still_wanted(waiter)]
        if not batch:
            return
        results: Sequence[R | None]
        try:
            results = self._process([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{self._name}: {len(results)} answers to {len(batch)} calls")
            error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - every caller gets the error
            results, error = [None] * len(batch), exc
        by_loop: dict[asyncio.AbstractEventLoop, _Answers[R]] = {}
        for (_, waiter), result in zip(batch, results, strict=True):
            if isinstance(waiter, Future):
                _set(waiter, result, error)
            else:
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, result, error))
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_answer, answers)
            except RuntimeError:  # the loop closed: nobody is left to answer
                pass


def _still_wanted(waiter: _Waiter[R]) -> bool:
    if isinstance(waiter, Future):
        return waiter.set_running_or_notify_cancel()
    # Read from another thread: a cancel that lands just after this is like
    # one after the work started (the work is done, the answer dropped).
    return not waiter.done()


def _answer(answers: _Answers[R]) -> None:
    for waiter, result, error in answers:
        if not waiter.done():  # else cancelled meanwhile
            _set(waiter, result, error)


def _set(waiter: _Waiter[R], result: R | None, error: BaseException | None) -> None:
    try:
        if error is None:
            waiter.set_result(result)  # type: ignore[arg-type]
        else:
            waiter.set_exception(error)
    except Exception as exc:  # noqa: BLE001 - e.g. an error a future refuses (StopIteration)
        waiter.set_exception(RuntimeError(f"{type(error).__name__}: {error}; {exc}"))

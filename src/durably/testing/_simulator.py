"""Run an app's real workers in one thread, on a virtual clock, and crash them.

The simulator swaps the app's database for a :class:`MemoryStorage`, its
clock for the :class:`VirtualLoop`'s, and runs workers in *inline* mode
(storage calls and group commits on the loop thread, no worker threads), so
one seed is one exact execution. A crash stops a worker the way SIGKILL
would: nothing more of it is written, its tasks are dropped where they are
(mid-step, mid-replay, mid-commit) and its runs keep their leases until they
lapse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._app import App
from .._storage.base import RunWrite
from .._worker.worker import Worker
from ._memory import MemoryStorage
from ._virtual import VirtualLoop

T = TypeVar("T")


class CrashedHere(Exception):
    """Raised inside a commit the simulator cut off (nothing of it is written)."""


class Simulator:
    def __init__(self, app: App, *, seed: int = 0, concurrency: int = 16) -> None:
        self.app = app
        self.loop = VirtualLoop(seed)
        self.storage = MemoryStorage()
        app.close()
        app._storage = self.storage
        app._inline = True
        app.clock = self.loop.clock
        # In memory every change notifies at once: no polling fallback is
        # needed, and without it a 30-day sleep is a handful of loop turns.
        app.poll_interval = 86400.0
        app._recheck = 86400.0
        self.concurrency = concurrency
        self.workers: list[Worker] = []
        self.crashes = 0
        self.commit_crashes: dict[int, str] = {}  # commit number -> "before" | "after"
        self._commits_seen = 0
        self.storage.on_commit = self._on_commit
        # Seconds until a replacement starts after a crash (None: no replacement).
        self.restart_after: Callable[[], float] | None = None
        self._starting: set[asyncio.Task[Worker]] = set()
        self.ticks = 0
        self.commit_ticks: list[tuple[int, Any]] = []  # (tick, writes) of each commit

    # -- time and order ---------------------------------------------------------
    def tick(self) -> int:
        """A global counter: every effect and every commit gets the next number."""
        self.ticks += 1
        return self.ticks

    def run(self, main: Callable[[Simulator], Awaitable[T]]) -> T:
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(main(self))
        finally:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            asyncio.set_event_loop(None)
            self.loop.close()

    # -- workers ------------------------------------------------------------------
    async def start_worker(self) -> Worker:
        worker = self.app._make_worker(self.concurrency, inline=True)
        worker.storage = _WorkerView(self.storage)  # type: ignore[assignment]
        await worker.start()
        self.workers.append(worker)
        return worker

    def stall(self, worker: Worker, seconds: float) -> None:
        """Pause ``worker``'s dealings with the database for ``seconds`` (a long
        GC pause, a network partition) while its steps keep going: its leases
        lapse, other workers take its runs over, and when it comes back its
        writes must be refused (a "zombie")."""
        until = self.loop.now + seconds
        view = worker.storage
        if isinstance(view, _WorkerView):
            view.blocked_until = until
        worker.committer.hold_until = until  # type: ignore[union-attr]

    def crash(self, worker: Worker) -> None:
        """Stop ``worker`` as SIGKILL would (see the module docstring)."""
        if worker not in self.workers:
            return
        self.workers.remove(worker)
        self.crashes += 1
        worker.committer.dead = True  # type: ignore[union-attr]
        worker._stopping = True
        for unsubscribe in worker._unsubscribe:
            unsubscribe()
        tasks = list(worker._tasks)
        for driver in worker.drivers.values():
            if driver.task is not None:
                tasks.append(driver.task)
            tasks.extend(driver._active.values())
        worker.drivers.clear()
        for task in tasks:
            task.cancel()
        if self.restart_after is not None:
            self.loop.call_later(self.restart_after(), self.start_worker_soon)

    def start_worker_soon(self) -> None:
        """Start one more worker from a callback (not awaited)."""
        task = self.loop.create_task(self.start_worker())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def crash_at_commit(self, number: int, when: str = "before") -> None:
        """Crash the committing worker at its ``number``-th commit (counted over all)."""
        self.commit_crashes[number] = when

    def _on_commit(self, writes: Any, now: float) -> None:
        self._commits_seen += 1
        when = self.commit_crashes.pop(self._commits_seen, None)
        victim = self._committer_of(writes)
        if when == "before" and victim is not None:
            self.loop.call_soon(self.crash, victim)
            victim.committer.dead = True  # type: ignore[union-attr]
            raise CrashedHere(f"crash before commit {self._commits_seen}")
        self.commit_ticks.append((self.tick(), list(writes)))
        if when == "after" and victim is not None:
            victim.committer.dead = True  # type: ignore[union-attr]
            self.loop.call_soon(self.crash, victim)

    def _committer_of(self, writes: list[RunWrite]) -> Worker | None:
        run_ids = {w.run_id for w in writes}
        for worker in self.workers:
            if run_ids & set(worker.drivers):
                return worker
        return None

    async def stop_all(self) -> None:
        for worker in list(self.workers):
            await worker.stop(drain_timeout=1.0)
        self.workers.clear()


class _WorkerView:
    """One worker's view of the shared storage, where renewals can be made to fail."""

    def __init__(self, storage: MemoryStorage) -> None:
        self._storage = storage
        self.blocked_until = 0.0

    def renew(self, worker_id: str, run_ids: Any, now: float, lease_seconds: float) -> Any:
        if now < self.blocked_until:
            raise ConnectionError("simulated: this worker cannot reach the database")
        return self._storage.renew(worker_id, run_ids, now, lease_seconds)

    def claim(self, worker_id: str, *args: Any, **kwargs: Any) -> Any:
        if args[2] < self.blocked_until:  # now
            raise ConnectionError("simulated: this worker cannot reach the database")
        return self._storage.claim(worker_id, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

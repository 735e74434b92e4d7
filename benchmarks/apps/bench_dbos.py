"""The benchmark's workflows for DBOS, and a queue worker process.

``python bench_dbos.py`` runs a worker: it launches DBOS on
``BENCH_DB_URL`` (executor id ``BENCH_EXECUTOR_ID``), listens on the ``bench``
queue and stays until SIGTERM. The same workflows as ``bench_durably``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Any

from common import bump
from dbos import DBOS

QUEUE = "bench"
# DBOS's default queue polling interval is 1 s; the benchmark polls every 0.1 s
# (override with BENCH_DBOS_POLL) so queued work is not left waiting.
POLL = float(os.environ.get("BENCH_DBOS_POLL", "0.1"))


def configure(url: str, executor_id: str | None = None) -> DBOS:
    config: dict[str, Any] = {
        "name": "bench",
        "system_database_url": url,
        "log_level": os.environ.get("BENCH_DBOS_LOG_LEVEL", "WARNING"),
    }
    if executor_id:
        config["executor_id"] = executor_id
    return DBOS(config=config)  # type: ignore[arg-type]


def _mark(env: str) -> None:
    path = os.environ.get(env)
    if path:
        bump(path)


# -- the 3-step workflow, async ------------------------------------------------------------


@DBOS.step()
async def add_one(x: int) -> int:
    return x + 1


@DBOS.step()
async def double(x: int) -> int:
    return x * 2


@DBOS.step()
async def minus_three(x: int) -> int:
    return x - 3


@DBOS.workflow()
async def three_steps(x: int) -> int:
    a = await add_one(x)
    b = await double(a)
    return await minus_three(b)


# -- the same, sync -------------------------------------------------------------------------


@DBOS.step()
def add_one_sync(x: int) -> int:
    return x + 1


@DBOS.step()
def double_sync(x: int) -> int:
    return x * 2


@DBOS.step()
def minus_three_sync(x: int) -> int:
    return x - 3


@DBOS.workflow()
def three_steps_sync(x: int) -> int:
    a = add_one_sync(x)
    b = double_sync(a)
    return minus_three_sync(b)


# -- sleepers ---------------------------------------------------------------------------------


@DBOS.step()
async def mark_asleep(x: int) -> int:
    _mark("BENCH_ASLEEP_MARK")
    return x


@DBOS.step()
async def mark_done(x: int) -> int:
    _mark("BENCH_DONE_MARK")
    return x


@DBOS.workflow()
async def sleeper(x: int, wake_at: float) -> int:
    await mark_asleep(x)
    # DBOS.sleep_async records its wake-up time durably on first execution.
    await DBOS.sleep_async(max(0.0, wake_at - time.time()))
    return await mark_done(x)


# -- blocked runs for the recovery scenario ---------------------------------------------------


@DBOS.step()
async def slow_double(x: int) -> int:
    if os.environ.get("BENCH_BLOCK"):
        _mark("BENCH_BLOCK_MARK")
        await asyncio.sleep(3600)
    return x * 2


@DBOS.step()
async def finish(x: int) -> int:
    _mark("BENCH_DONE_MARK")
    return x - 3


@DBOS.workflow()
async def blocker(x: int) -> int:
    a = await add_one(x)
    b = await slow_double(a)
    return await finish(b)


def serve() -> None:
    configure(os.environ["BENCH_DB_URL"], os.environ.get("BENCH_EXECUTOR_ID"))
    DBOS.launch()
    DBOS.register_queue(QUEUE, polling_interval_sec=POLL)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ready = os.environ.get("BENCH_READY_FILE")
    if ready:
        with open(ready, "w") as f:
            f.write("ready")
    print("bench dbos worker ready", flush=True)
    stop.wait()
    DBOS.destroy()


if __name__ == "__main__":
    serve()

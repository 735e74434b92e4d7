"""One engine x one scenario, in its own process, on a database it is handed.

    python benchmarks/scenario.py ENGINE SCENARIO --backend B --db-json JSON
                                  --params JSON --result-file PATH

The runner (``run.py``) starts this once per engine and scenario so memory and
state never leak between them. Progress goes to stderr; the figures go to
``--result-file`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "apps"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    count_rows,
    database_bytes,
    kill9,
    log_tail,
    marks,
    pg_stat_statements_available,
    pg_transactions,
    progress,
    python_env,
    rss_sample,
    run_async,
    spawn,
    stop,
    summary_ms,
    thread_count,
    wait_for_text,
    wait_marks,
)


def expected(x: int) -> int:
    return (x + 1) * 2 - 3


def total_rows(db: dict[str, Any]) -> int:
    return sum(count_rows(db).values())


# ======================================================================================
# durably
# ======================================================================================


class Durably:
    """durably through its public API only: App, decorators, start/result, worker()."""

    name = "durably"

    def __init__(self, db: dict[str, Any], params: dict[str, Any]) -> None:
        self.db = db
        self.p = params
        os.environ["DURABLY_DATABASE_URL"] = db["url"]
        import bench_durably

        self.m = bench_durably
        self.app = bench_durably.app
        self.concurrency = int(params.get("durably_concurrency", 100))

    def describe(self) -> dict[str, Any]:
        import durably

        return {
            "engine": "durably",
            "version": durably.__version__,
            "api": "async workflow, async steps",
            "worker_concurrency": self.concurrency,
        }

    # -- in-process -----------------------------------------------------------------
    async def _latency(self, n: int, warmup: int) -> list[float]:
        app, wf = self.app, self.m.three_steps
        times: list[float] = []
        async with app.worker(concurrency=self.concurrency):
            for i in range(warmup):
                h = await app.start(wf, i)
                assert await h.result(timeout=60) == expected(i)
            for i in range(n):
                t0 = time.perf_counter()
                h = await app.start(wf, i)
                r = await h.result(timeout=60)
                times.append(time.perf_counter() - t0)
                assert r == expected(i)
        return times

    def latency(self, n: int, warmup: int) -> dict[str, Any]:
        return summary_ms(run_async(self._latency(n, warmup)))

    async def _throughput_inproc(self, n: int) -> float:
        app, wf = self.app, self.m.three_steps
        async with app.worker(concurrency=self.concurrency):
            await asyncio.gather(*[(await app.start(wf, -i - 1)).result(60) for i in range(20)])
            t0 = time.perf_counter()
            handles = await asyncio.gather(*(app.start(wf, i) for i in range(n)))
            results = await asyncio.gather(*(h.result(timeout=600) for h in handles))
            elapsed = time.perf_counter() - t0
        assert results == [expected(i) for i in range(n)]
        return elapsed

    def throughput_inproc(self, n: int) -> dict[str, Any]:
        elapsed = run_async(self._throughput_inproc(n))
        return {"n": n, "seconds": elapsed, "per_second": n / elapsed}

    # -- worker processes ---------------------------------------------------------------
    def _worker_argv(self, concurrency: int) -> list[str]:
        exe = Path(sys.executable).with_name("durably")
        head = [str(exe)] if exe.exists() else [sys.executable, "-m", "durably"]
        return [*head, "worker", "bench_durably:app", "-c", str(concurrency)]

    def start_workers(
        self, k: int, env: dict[str, str] | None = None, concurrency: int | None = None
    ) -> list[Any]:
        procs = []
        for i in range(k):
            log = os.path.join(self.db["tmpdir"], f"durably-worker-{i}-{time.time_ns()}.log")
            proc = spawn(
                self._worker_argv(concurrency or self.concurrency),
                python_env({"DURABLY_DATABASE_URL": self.db["url"], **(env or {})}),
                log,
            )
            proc.bench_log_path = log  # type: ignore[attr-defined]
            procs.append(proc)
        for proc in procs:
            if not wait_for_text(proc.bench_log_path, " started", 60, proc):
                raise RuntimeError("durably worker not started:\n" + log_tail(proc.bench_log_path))
        return procs

    async def _client_throughput(self, n: int) -> float:
        app, wf = self.app, self.m.three_steps
        warm = await asyncio.gather(*(app.start(wf, -i - 1) for i in range(20)))
        for h in warm:
            await h.result(timeout=60)
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(app.start(wf, i) for i in range(n)))
        results = [await h.result(timeout=600) for h in handles]  # in start order
        elapsed = time.perf_counter() - t0
        assert results == [expected(i) for i in range(n)]
        return elapsed

    def throughput_workers(self, n: int, k: int) -> dict[str, Any]:
        return throughput_workers_scenario(self, n, k)

    # -- sleepers -------------------------------------------------------------------
    async def _start_many(self, wf: Any, args: list[tuple[Any, ...]], chunk: int = 1000) -> None:
        for lo in range(0, len(args), chunk):
            await asyncio.gather(*(self.app.start(wf, *a) for a in args[lo : lo + chunk]))
            if len(args) > chunk:
                progress(f"started {min(lo + chunk, len(args))}/{len(args)}")

    def _warm(self) -> None:
        async def go() -> None:
            hs = await asyncio.gather(*(self.app.start(self.m.three_steps, i) for i in range(20)))
            for h in hs:
                await h.result(timeout=60)

        run_async(go())

    def sleepers(self, n: int, sleep_seconds: float) -> dict[str, Any]:
        return sleep_scenario(self, n, sleep_seconds)

    def start_sleepers(self, n: int, wake_at: float) -> None:
        run_async(self._start_many(self.m.sleeper, [(i, wake_at) for i in range(n)]))

    def start_blockers(self, n: int) -> None:
        run_async(self._start_many(self.m.blocker, [(i,) for i in range(n)]))

    def completed(self, n: int, workflow: str) -> int:
        return len(self.app.list_runs_sync(status="completed", workflow=workflow, limit=n + 10))

    def suspended(self, n: int) -> int | None:
        return len(self.app.list_runs_sync(status="suspended", workflow="sleeper", limit=n + 10))

    def close_client(self) -> None:
        self.app.close()

    def recovery(self, n: int, lease: float) -> dict[str, Any]:
        env = {"DURABLY_LEASE_SECONDS": str(lease)}
        result = recovery_scenario(self, n, env, lambda extra: self.start_workers(1, extra, n)[0])
        result["setting"] = f"DURABLY_LEASE_SECONDS={lease}"
        return result

    def idle(self, seconds: float) -> dict[str, Any]:
        return idle_scenario(self, seconds, lambda: self.start_workers(1)[0])


# ======================================================================================
# DBOS
# ======================================================================================


class Dbos:
    """DBOS Transact: in-process ``DBOS.launch()``, or queue workers + ``DBOSClient``."""

    name = "dbos"

    def __init__(self, db: dict[str, Any], params: dict[str, Any]) -> None:
        self.db = db
        self.p = params
        self.api = params.get("dbos_api", "async")
        import bench_dbos

        self.m = bench_dbos
        self.client: Any = None
        self.launched = False

    def describe(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "engine": "dbos",
            "version": version("dbos"),
            "api": f"{self.api} workflow, {self.api} steps",
            "queue_polling_interval_sec": self.m.POLL,
        }

    def _launch(self) -> None:
        from dbos import DBOS

        self.m.configure(self.db["url"])
        DBOS.launch()
        self.launched = True

    def _destroy(self) -> None:
        from dbos import DBOS

        if self.launched:
            DBOS.destroy()
            self.launched = False

    # -- in-process -----------------------------------------------------------------
    def latency(self, n: int, warmup: int) -> dict[str, Any]:
        from dbos import DBOS

        self._launch()
        times: list[float] = []
        try:
            if self.api == "sync":
                wf = self.m.three_steps_sync
                for i in range(warmup):
                    assert DBOS.start_workflow(wf, i).get_result() == expected(i)
                for i in range(n):
                    t0 = time.perf_counter()
                    r = DBOS.start_workflow(wf, i).get_result()
                    times.append(time.perf_counter() - t0)
                    assert r == expected(i)
            else:

                async def go() -> None:
                    wf = self.m.three_steps
                    for i in range(warmup):
                        h = await DBOS.start_workflow_async(wf, i)
                        assert await h.get_result() == expected(i)
                    for i in range(n):
                        t0 = time.perf_counter()
                        h = await DBOS.start_workflow_async(wf, i)
                        r = await h.get_result()
                        times.append(time.perf_counter() - t0)
                        assert r == expected(i)

                run_async(go())
        finally:
            self._destroy()
        return summary_ms(times)

    def throughput_inproc(self, n: int) -> dict[str, Any]:
        from dbos import DBOS

        self._launch()
        try:
            if self.api == "sync":
                from concurrent.futures import ThreadPoolExecutor

                wf = self.m.three_steps_sync
                with ThreadPoolExecutor(32) as pool:
                    warm = list(pool.map(lambda i: DBOS.start_workflow(wf, -i - 1), range(20)))
                    [h.get_result() for h in warm]
                    t0 = time.perf_counter()
                    handles = list(pool.map(lambda i: DBOS.start_workflow(wf, i), range(n)))
                    results = list(pool.map(lambda h: h.get_result(), handles))
                    elapsed = time.perf_counter() - t0
            else:

                async def go() -> tuple[float, list[int]]:
                    wf = self.m.three_steps
                    warm = [await DBOS.start_workflow_async(wf, -i - 1) for i in range(20)]
                    await asyncio.gather(*(h.get_result() for h in warm))
                    t0 = time.perf_counter()
                    hs = await asyncio.gather(*(DBOS.start_workflow_async(wf, i) for i in range(n)))
                    rs = await asyncio.gather(*(h.get_result() for h in hs))
                    return time.perf_counter() - t0, list(rs)

                elapsed, results = run_async(go())
        finally:
            self._destroy()
        assert results == [expected(i) for i in range(n)]
        return {"n": n, "seconds": elapsed, "per_second": n / elapsed}

    # -- queue workers ------------------------------------------------------------------
    def start_workers(self, k: int, env: dict[str, str] | None = None) -> list[Any]:
        procs = []
        for i in range(k):
            tag = f"{i}-{time.time_ns()}"
            log = os.path.join(self.db["tmpdir"], f"dbos-worker-{tag}.log")
            ready = os.path.join(self.db["tmpdir"], f"dbos-ready-{tag}")
            extra = {
                "BENCH_DB_URL": self.db["url"],
                "BENCH_EXECUTOR_ID": f"bench-worker-{i}",
                "BENCH_READY_FILE": ready,
                **(env or {}),
            }
            proc = spawn([sys.executable, str(Path(self.m.__file__))], python_env(extra), log)
            proc.bench_log_path = log  # type: ignore[attr-defined]
            procs.append(proc)
            # One at a time: the first launch creates the schema.
            if not wait_for_text(log, "bench dbos worker ready", 90, proc):
                raise RuntimeError("DBOS worker not ready:\n" + log_tail(log))
        return procs

    def _client(self) -> Any:
        if self.client is None:
            from dbos import DBOSClient

            self.client = DBOSClient(system_database_url=self.db["url"])
        return self.client

    def _options(self, workflow: str) -> dict[str, Any]:
        return {"queue_name": self.m.QUEUE, "workflow_name": workflow}

    async def _enqueue_many(
        self, workflow: str, args: list[tuple[Any, ...]], chunk: int = 1000
    ) -> list[Any]:
        client = self._client()
        handles: list[Any] = []
        for lo in range(0, len(args), chunk):
            handles += await asyncio.gather(
                *(client.enqueue_async(self._options(workflow), *a) for a in args[lo : lo + chunk])
            )
            if len(args) > chunk:
                progress(f"enqueued {min(lo + chunk, len(args))}/{len(args)}")
        return handles

    async def _client_throughput(self, n: int) -> float:
        # sync: the workers run the sync workflow on their threads; async: on their loop
        name = "three_steps_sync" if self.api == "sync" else "three_steps"
        warm = await self._enqueue_many(name, [(-i - 1,) for i in range(20)])
        for h in warm:
            await h.get_result(polling_interval_sec=0.05)
        t0 = time.perf_counter()
        handles = await self._enqueue_many(name, [(i,) for i in range(n)], chunk=n)
        # In start order, one poller at a time (every 50 ms): a gather of n
        # pollers would flood the database with status reads.
        results = [await h.get_result(polling_interval_sec=0.05) for h in handles]
        elapsed = time.perf_counter() - t0
        assert results == [expected(i) for i in range(n)]
        return elapsed

    def throughput_workers(self, n: int, k: int) -> dict[str, Any]:
        return throughput_workers_scenario(self, n, k)

    # -- shared-shape scenarios -----------------------------------------------------------
    def _warm(self) -> None:
        async def go() -> None:
            hs = await self._enqueue_many("three_steps", [(i,) for i in range(20)])
            for h in hs:
                await h.get_result(polling_interval_sec=0.05)

        run_async(go())

    def start_sleepers(self, n: int, wake_at: float) -> None:
        run_async(self._enqueue_many("sleeper", [(i, wake_at) for i in range(n)]))

    def start_blockers(self, n: int) -> None:
        run_async(self._enqueue_many("blocker", [(i,) for i in range(n)]))

    def completed(self, n: int, workflow: str) -> int:
        rows = self._client().list_workflows(
            status="SUCCESS", name=workflow, load_input=False, load_output=False, limit=n + 10
        )
        return len(rows)

    def suspended(self, n: int) -> int | None:
        return None  # DBOS has no such status: a sleeping workflow stays PENDING

    def close_client(self) -> None:
        if self.client is not None:
            self.client.destroy()
            self.client = None

    def sleepers(self, n: int, sleep_seconds: float) -> dict[str, Any]:
        return sleep_scenario(self, n, sleep_seconds)

    def recovery(self, n: int, lease: float) -> dict[str, Any]:
        # DBOS has no lease: a process that launches with the executor id of a dead
        # one recovers that executor's PENDING workflows at once (the fresh worker
        # below reuses "bench-worker-0").
        result = recovery_scenario(self, n, {}, lambda extra: self.start_workers(1, extra)[0])
        result["setting"] = "fresh worker reuses the killed worker's executor_id (startup recovery)"
        return result

    def idle(self, seconds: float) -> dict[str, Any]:
        os.environ["BENCH_DBOS_POLL"] = os.environ.get("BENCH_DBOS_IDLE_POLL", "1.0")
        result = idle_scenario(self, seconds, lambda: self.start_workers(1)[0])
        result["setting"] = f"queue polling interval {os.environ['BENCH_DBOS_POLL']} s"
        return result


# ======================================================================================
# scenarios with the same shape for every engine (worker process + client)
# ======================================================================================


def _mark_path(engine: Any, what: str) -> str:
    return os.path.join(engine.db["tmpdir"], f"{what}.marks")


def throughput_workers_scenario(engine: Any, n: int, k: int) -> dict[str, Any]:
    """``k`` worker processes, and this process as the client starting ``n`` runs."""
    procs = engine.start_workers(k)
    try:
        elapsed = run_async(engine._client_throughput(n))
    finally:
        engine.close_client()
        for proc in procs:
            stop(proc)
    return {"n": n, "workers": k, "seconds": elapsed, "per_second": n / elapsed}


def sleep_scenario(engine: Any, n: int, sleep_seconds: float) -> dict[str, Any]:
    asleep_mark, done_mark = _mark_path(engine, "asleep"), _mark_path(engine, "done")
    env = {"BENCH_ASLEEP_MARK": asleep_mark, "BENCH_DONE_MARK": done_mark}
    os.environ.update(env)
    worker = engine.start_workers(1, env)[0]
    try:
        engine._warm()
        time.sleep(float(engine.p.get("pre_idle", 3.0)))
        rss_idle = rss_sample(worker.pid)
        rows_before = total_rows(engine.db)
        bytes_before = database_bytes(engine.db)
        t_begin = time.time()
        wake_at = t_begin + sleep_seconds
        progress(f"starting {n} sleepers, all due at T+{sleep_seconds:.0f}s")
        engine.start_sleepers(n, wake_at)
        t_started = time.time()
        wait_marks(asleep_mark, n, max(60.0, wake_at - time.time() + 60), "asleep")
        t_asleep = time.time()
        settle = float(engine.p.get("settle", 5.0))
        # let in-memory grace periods pass (durably suspends a waiting run after 1 s)
        time.sleep(max(0.0, min(settle, wake_at - time.time() - 2.0)))
        rss_asleep = rss_sample(worker.pid)
        suspended = engine.suspended(n)
        rows_asleep = total_rows(engine.db)
        bytes_asleep = database_bytes(engine.db)
        measured_before_wake = time.time() < wake_at
        progress(
            f"asleep: RSS {rss_idle / 2**20:.1f} -> {rss_asleep / 2**20:.1f} MiB, "
            f"rows +{rows_asleep - rows_before}"
        )
        threads_asleep = thread_count(worker.pid)
        due = max(wake_at, time.time())
        if time.time() < wake_at:
            time.sleep(wake_at - time.time())
        wake_timeout = float(engine.p.get("wake_timeout", 600.0))
        t_done: float | None = None
        t_completed: float | None = None
        try:
            t_done = wait_marks(done_mark, n, wake_timeout, "woken and done")
            deadline = time.monotonic() + 60
            while engine.completed(n, "sleeper") < n and time.monotonic() < deadline:
                time.sleep(0.05)
        except TimeoutError:
            pass
        completed = engine.completed(n, "sleeper")
        if completed == n:
            t_completed = time.time()
        else:
            progress(
                f"only {completed}/{n} sleepers completed "
                f"within {wake_timeout:.0f}s of the due time"
            )
    finally:
        engine.close_client()
        stop(worker)
    return {
        "n": n,
        "sleep_seconds": sleep_seconds,
        "start_seconds": t_started - t_begin,
        "all_asleep_seconds": t_asleep - t_begin,
        "rss_idle_mb": rss_idle / 2**20,
        "rss_asleep_mb": rss_asleep / 2**20,
        "rss_delta_mb": (rss_asleep - rss_idle) / 2**20,
        "rss_per_run_kb": (rss_asleep - rss_idle) / 1024 / n,
        "suspended": suspended,
        "rows_before": rows_before,
        "rows_asleep": rows_asleep,
        "rows_per_run": (rows_asleep - rows_before) / n,
        "db_bytes_per_run": (bytes_asleep - bytes_before) / n,
        "rss_measured_before_timers_fired": measured_before_wake,
        "all_started_before_due": t_started < wake_at,
        "worker_threads_asleep": threads_asleep,
        "wake_timeout_seconds": wake_timeout,
        "wake_to_done_marks_seconds": None if t_done is None else t_done - due,
        "wake_to_all_completed_seconds": None if t_completed is None else t_completed - due,
        "completed": completed,
        "all_completed": completed == n,
    }


def recovery_scenario(
    engine: Any, n: int, env: dict[str, str], start_worker: Any
) -> dict[str, Any]:
    block_mark, done_mark = _mark_path(engine, "blocked"), _mark_path(engine, "done")
    env = {**env, "BENCH_BLOCK_MARK": block_mark, "BENCH_DONE_MARK": done_mark}
    os.environ.update(env)
    first = start_worker({**env, "BENCH_BLOCK": "1"})
    second = None
    try:
        t0 = time.time()
        engine.start_blockers(n)
        wait_marks(block_mark, n, 600, "runs blocked in the slow step")
        in_flight_s = time.time() - t0
        progress(f"{n} runs blocked in their slow step; SIGKILL the worker")
        t_kill = time.time()
        kill9(first)
        second = start_worker(env)
        t_ready = time.time()
        t_done = wait_marks(done_mark, n, 900, "recovered")
        while engine.completed(n, "blocker") < n:
            time.sleep(0.05)
        t_completed = time.time()
        done = marks(done_mark)
    finally:
        engine.close_client()
        if second is not None:
            stop(second)
        if first.poll() is None:
            stop(first)
    return {
        "n": n,
        "seconds_to_get_in_flight": in_flight_s,
        "fresh_worker_ready_seconds": t_ready - t_kill,
        "kill_to_done_marks_seconds": t_done - t_kill,
        "kill_to_all_completed_seconds": t_completed - t_kill,
        "final_steps_executed": done,
        "per_second": n / (t_completed - t_kill),
    }


def idle_scenario(engine: Any, seconds: float, start_worker: Any) -> dict[str, Any]:
    if engine.db["backend"] != "postgres":
        raise RuntimeError("idle load is measured on PostgreSQL only")
    worker = start_worker()
    try:
        engine._warm()
        engine.close_client()  # only the worker talks to the database from here on
        time.sleep(float(engine.p.get("pre_idle", 5.0)))
        source = "pg_stat_database (xact_commit + xact_rollback)"
        if pg_stat_statements_available():
            source += "; pg_stat_statements is loaded but not used"
        before = pg_transactions(engine.db["dbname"])
        t0 = time.monotonic()
        time.sleep(seconds)
        after = pg_transactions(engine.db["dbname"])
        elapsed = time.monotonic() - t0
    finally:
        stop(worker)
    return {
        "seconds": elapsed,
        "transactions": after - before,
        "per_second": (after - before) / elapsed,
        "source": source,
    }


# ======================================================================================
# the floor: bare commits of one small row with the same driver
# ======================================================================================


def floor(db: dict[str, Any], n: int) -> dict[str, Any]:
    times: list[float] = []
    if db["backend"] == "sqlite":
        import sqlite3

        conn = sqlite3.connect(db["path"], isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
        for i in range(n + 20):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))  # autocommit
            if i >= 20:
                times.append(time.perf_counter() - t0)
        conn.close()
        driver = f"sqlite3 {sqlite3.sqlite_version}, WAL, synchronous=FULL, one INSERT per commit"
    else:
        import psycopg

        with psycopg.connect(db["url"], autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT NOT NULL)")
            for i in range(n + 20):
                t0 = time.perf_counter()
                conn.execute("INSERT INTO t (v) VALUES (%s)", (f"row {i}",))
                if i >= 20:
                    times.append(time.perf_counter() - t0)
        driver = f"psycopg {psycopg.__version__} autocommit, one INSERT per commit"
    result = summary_ms(times)
    result["driver"] = driver
    return result


# ======================================================================================


def make_engine(name: str, db: dict[str, Any], params: dict[str, Any]) -> Any:
    if name == "durably":
        return Durably(db, params)
    if name == "dbos":
        return Dbos(db, params)
    raise ValueError(f"unknown engine {name!r}")


def run(engine_name: str, scenario: str, db: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    if engine_name == "floor":
        return floor(db, int(p["floor_n"]))
    if engine_name in ("temporal", "restate"):
        import peers

        return peers.run(engine_name, scenario, p)
    engine = make_engine(engine_name, db, p)
    out: dict[str, Any] = {"engine_info": engine.describe()}
    if scenario == "latency":
        out.update(engine.latency(int(p["latency_n"]), int(p["latency_warmup"])))
    elif scenario == "throughput_inproc":
        out.update(engine.throughput_inproc(int(p["throughput_n"])))
    elif scenario == "throughput_workers":
        out.update(engine.throughput_workers(int(p["throughput_n"]), int(p["workers"])))
    elif scenario == "sleep":
        out.update(engine.sleepers(int(p["sleep_n"]), float(p["sleep_seconds"])))
    elif scenario == "recovery":
        out.update(engine.recovery(int(p["recovery_n"]), float(p["lease_seconds"])))
    elif scenario == "idle":
        out.update(engine.idle(float(p["idle_seconds"])))
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("engine")
    parser.add_argument("scenario")
    parser.add_argument("--db-json", required=True)
    parser.add_argument("--params", required=True)
    parser.add_argument("--result-file", required=True)
    args = parser.parse_args()

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(f"stopped by signal {signum}")  # run the finally blocks: stop workers

    signal.signal(signal.SIGTERM, terminate)
    db = json.loads(args.db_json)
    params = json.loads(args.params)
    t0 = time.time()
    try:
        result = run(args.engine, args.scenario, db, params)
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported in the results, the run goes on
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()
    result["wall_seconds"] = time.time() - t0
    Path(args.result_file).write_text(json.dumps(result, indent=2, default=str))
    with contextlib.suppress(Exception):
        shutil.rmtree(os.path.join(db.get("tmpdir", "/nonexistent"), "__pycache__"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

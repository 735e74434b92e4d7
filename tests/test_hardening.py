"""Hardening: each test pins down a failure mode found in review.

Every one of these failed on the code as first reviewed (a stranded run after
a failed commit, a hung run after a step raised CancelledError, a worker
killed by SystemExit in user code, a signal handed to two waits, ...). They
run on both backends and are bounded to a few seconds each.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import durably
from conftest import eventually
from durably._errors import DatabaseError

# -- 1. a failed group commit strands its runs -----------------------------------


async def test_transient_commit_failure_does_not_strand_the_run(
    make_app: Callable[..., durably.App],
) -> None:
    """One failed commit (connection reset, pool timeout, deadlock victim) makes
    the driver give up, but the row stays owned by this worker, whose renew loop
    keeps extending its lease: nobody can take the run over while the worker
    holds any other run. Expected: recovered within about one lease."""
    app = make_app(lease_seconds=0.6)
    storage = app.storage
    real_commit = storage.commit
    failed: list[str] = []

    def flaky_commit(worker_id: str, writes: Any, now: float) -> set[str]:
        if not failed and any(w.run_id == "victim" and w.entries for w in writes):
            failed.append("victim")
            raise DatabaseError("server closed the connection unexpectedly (simulated)")
        return real_commit(worker_id, writes, now)

    storage.commit = flaky_commit  # type: ignore[method-assign]
    real_nowait = storage.commit_nowait

    def flaky_nowait(worker_id: str, writes: Any, now: float) -> set[str] | None:
        # SQLite's commits made from the event loop
        if not failed and any(w.run_id == "victim" and w.entries for w in writes):
            failed.append("victim")
            raise DatabaseError("server closed the connection unexpectedly (simulated)")
        return real_nowait(worker_id, writes, now)

    storage.commit_nowait = flaky_nowait  # type: ignore[method-assign]

    @app.step()
    async def quick() -> str:
        return "ok"

    @app.step()
    async def long_step() -> str:
        await asyncio.sleep(6.0)
        return "kept"

    @app.workflow()
    async def victim_flow(ctx: durably.Context) -> str:
        return str(await quick())

    @app.workflow()
    async def keeper_flow(ctx: durably.Context) -> str:
        return str(await long_step())

    async with app.worker() as worker:
        writer: Any = worker.committer._writer
        if writer is not None:  # PostgreSQL: group commits go over the loop's connection
            real_send = writer.send

            async def flaky_send(prepared: Any, **options: Any) -> set[str]:
                ids = getattr(prepared, "run_ids", None) or (prepared.run_id,)
                if not failed and "victim" in ids:
                    failed.append("victim")
                    raise DatabaseError("server closed the connection unexpectedly (simulated)")
                return set(await real_send(prepared, **options))

            writer.send = flaky_send
        await app.start(keeper_flow, id="keeper")  # keeps the worker's renew loop busy
        await asyncio.sleep(0.2)
        handle = await app.start(victim_flow, id="victim")
        await eventually(lambda: failed)
        try:
            assert await handle.result(timeout=3.0) == "ok"
        finally:
            record = storage.get_run("victim")
            print("victim after failed commit:", record)


# -- 2. a worker that re-claims its own lapsed run loses it for good ---------------


async def test_worker_reclaiming_its_own_lapsed_run_keeps_driving_it(
    make_app: Callable[..., durably.App],
) -> None:
    """Renewal fails for a moment (database hiccup, blocked loop); the worker's
    own claim loop re-claims its lapsed runs (epoch + 1) but _spawn skips them
    because they are still in self.drivers. The old drivers' next commits are
    then fenced out (LeaseLost), yet the rows stay owned by this worker and the
    renew loop keeps them alive: stuck until the worker holds nothing else."""
    app = make_app(lease_seconds=0.6)
    storage = app.storage
    real_renew = storage.renew
    broken_until = [time.monotonic() + 1.5]
    executions: list[str] = []

    def failing_renew(worker_id: str, run_ids: Any, now: float, lease_seconds: float) -> Any:
        if time.monotonic() < broken_until[0]:
            raise DatabaseError("statement timeout (simulated)")
        return real_renew(worker_id, run_ids, now, lease_seconds)

    storage.renew = failing_renew  # type: ignore[method-assign]

    @app.step()
    async def slow() -> str:
        executions.append("slow")
        await asyncio.sleep(1.5)
        return "done"

    @app.step()
    async def long_step() -> str:
        await asyncio.sleep(6.0)
        return "kept"

    @app.workflow()
    async def victim_flow(ctx: durably.Context) -> str:
        return str(await slow())

    @app.workflow()
    async def keeper_flow(ctx: durably.Context) -> str:
        return str(await long_step())

    async with app.worker():
        broken_until[0] = time.monotonic() + 1.5
        await app.start(keeper_flow, id="keeper")
        handle = await app.start(victim_flow, id="victim")
        try:
            assert await handle.result(timeout=4.0) == "done"
        finally:
            print("victim:", storage.get_run("victim"), executions)


# -- 3. an async step that raises CancelledError hangs its run forever -------------


async def test_async_step_raising_cancelled_error_does_not_hang_the_run(
    make_app: Callable[..., durably.App],
) -> None:
    """A step awaiting an inner task that gets cancelled raises CancelledError
    (a BaseException): steps.execute only catches Exception, the attempt task
    dies silently, nothing is posted, and the driver keeps the run 'running'
    in memory forever (its lease renewed). Expected: a failed attempt."""
    app = make_app()

    @app.step(retry=durably.Retry(max_attempts=1))
    async def fetch() -> str:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        asyncio.get_running_loop().call_later(0.05, inner.cancel)
        await inner  # raises CancelledError into the step
        return "unreachable"

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        try:
            return str(await fetch())
        except durably.StepFailed as exc:
            return f"step failed: {exc.error_type}"

    async with app.worker() as worker:
        handle = await app.start(flow, id="cancelled-step")
        try:
            assert (await handle.result(timeout=3.0)).startswith("step failed")
        finally:
            for driver in list(worker.drivers.values()):
                driver.draining = True  # let the test end without waiting 5 s


# -- 4. a BaseException in an async workflow leaves the run suspended forever ------


class Halt(BaseException):
    """Some library's BaseException (or a BaseExceptionGroup from a TaskGroup)."""


async def test_base_exception_in_async_workflow_fails_the_run(
    make_app: Callable[..., durably.App],
) -> None:
    """AsyncInstance._main only catches Exception; the task ends with Halt, no
    outcome is set, and the driver writes the run as 'suspended' with no
    wake-up time and drops it: stuck forever. The sync flavour fails the run."""
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        await ctx.run("one", lambda: 1)
        raise Halt("stop")

    @app.workflow()
    def sync_flow(ctx: durably.Context) -> str:
        ctx.run("one", lambda: 1)
        raise Halt("stop")

    async with app.worker():
        sync_handle = await app.start(sync_flow, id="halt-sync")
        with pytest.raises(durably.WorkflowFailed):
            await sync_handle.result(timeout=5.0)  # the sync flavour is fine
        handle = await app.start(flow, id="halt-async")
        try:
            await handle.result(timeout=3.0)
            outcome = "completed"
        except durably.WorkflowFailed:
            outcome = "failed"
        except durably.ResultTimeout:
            outcome = "stuck"
    record = app.storage.get_run("halt-async")
    gc.collect()  # finalise the dead workflow task here, not inside pytest's reporting
    assert outcome == "failed", (outcome, record and (record.status, record.owner, record.wake_at))


# -- 5. sys.exit() in a step or an async workflow kills the whole worker -----------

_EXIT_SCRIPT = """
import asyncio, sys
import durably

app = durably.App("exits", sys.argv[1], lease_seconds=2.0)

@app.step(retry=durably.Retry(max_attempts=1))
def cli_step() -> str:
    sys.exit(2)  # argparse / click standalone mode inside a step

@app.workflow()
async def step_flow(ctx: durably.Context) -> str:
    try:
        return str(await cli_step())
    except durably.StepFailed as exc:
        return "step failed: " + exc.error_type

@app.workflow()
async def exit_flow(ctx: durably.Context) -> str:
    await ctx.run("one", lambda: 1)
    sys.exit(3)

async def main() -> str:
    async with app.worker():
        wf = step_flow if sys.argv[2] == "step" else exit_flow
        handle = await app.start(wf, id="exit")
        try:
            return str(await handle.result(timeout=5.0))
        except durably.WorkflowFailed as exc:
            return "run failed: " + exc.error_type

try:
    print("worker survived:", asyncio.run(main()), flush=True)
except BaseException as exc:
    print("worker died:", repr(exc), flush=True)
"""


@pytest.mark.parametrize("where", ["step", "workflow"])
def test_system_exit_in_user_code_does_not_kill_the_worker(
    database_url: str, tmp_path: Any, where: str
) -> None:
    """SystemExit (argparse/click inside a sync step, sys.exit in an async
    workflow) escapes steps.execute / AsyncInstance._main / RunDriver.run,
    propagates out of the worker's event loop and ends the worker process; the
    run is then re-claimed by the next worker and kills it too (poison pill).
    Expected: a failed step or run, as SyncInstance already does for workflow
    code."""
    import subprocess

    script = tmp_path / "exits.py"
    script.write_text(_EXIT_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), database_url, where],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "worker survived" in proc.stdout, proc.stdout + proc.stderr[-2000:]


# -- 6. shutdown leaves runs whose steps outlast the drain owned by a dead worker --


async def _worker_in_a_long_step(
    make_app: Callable[..., durably.App], run_id: str
) -> tuple[durably.App, Any]:
    """An app and its started worker, driving run ``run_id`` in a 10 s async step."""
    app = make_app(lease_seconds=30.0)

    @app.step()
    async def stubborn() -> str:
        await asyncio.sleep(10)
        return "x"

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        return str(await stubborn())

    worker = app._make_worker(10)
    await worker.start()
    await app.start(flow, id=run_id)
    await eventually(lambda: run_id in worker.drivers and bool(worker.drivers[run_id]._active))
    return app, worker


async def test_stop_hands_back_runs_whose_steps_outlast_the_drain(
    make_app: Callable[..., durably.App],
) -> None:
    """Worker.stop cancels drivers still busy after drain_timeout; their
    finally removes them from self.drivers, so `held` no longer names them and
    storage.release never runs for them: the run keeps owner + a fresh lease and
    other workers wait a full lease (30 s by default) before taking it."""
    app, worker = await _worker_in_a_long_step(make_app, "stubborn")
    await worker.stop(drain_timeout=0.3)
    record = app.storage.get_run("stubborn")
    assert record is not None
    assert record.owner is None, f"still owned by the stopped worker: {record}"


async def test_a_stop_whose_caller_gave_up_still_hands_the_runs_back(
    make_app: Callable[..., durably.App],
) -> None:
    """A caller that stops waiting for stop() (a timeout around it) must not
    cut the stop short: a later stop() waited for nothing, and the runs were
    never handed back nor the committer stopped."""
    app, worker = await _worker_in_a_long_step(make_app, "given-up")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(worker.stop(drain_timeout=0.5), 0.1)
    await worker.stop()  # the same stop, waited for to its end
    record = app.storage.get_run("given-up")
    assert record is not None
    assert record.owner is None, f"still owned by the stopped worker: {record}"
    committer: Any = worker.committer
    if hasattr(committer, "_thread"):
        await eventually(lambda: not committer._thread.is_alive())


# -- 7. shutdown during an in-flight claim orphans the claimed runs ----------------


async def test_stop_during_a_claim_does_not_orphan_the_claimed_runs(
    make_app: Callable[..., durably.App],
) -> None:
    """Worker.stop cancels the claim loop while storage.claim runs in an io
    thread. The claim still commits (owner, epoch + 1, lease), but its records
    are discarded: never driven, never released, stuck for a full lease."""
    app = make_app(lease_seconds=30.0)
    storage = app.storage
    real_claim = storage.claim
    entered = threading.Event()
    finished = threading.Event()

    def slow_claim(*args: Any) -> Any:
        entered.set()
        time.sleep(0.5)
        try:
            return real_claim(*args)
        finally:
            finished.set()

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        return "x"

    await app.start(flow, id="claimed-at-shutdown")
    storage.claim = slow_claim  # type: ignore[method-assign]
    worker = app._make_worker(10)
    await worker.start()
    await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
    await worker.stop(drain_timeout=0.5)
    await asyncio.get_running_loop().run_in_executor(None, finished.wait, 5)
    record = storage.get_run("claimed-at-shutdown")
    assert record is not None
    assert record.owner is None, f"claimed by a stopped worker and never released: {record}"


# -- 8. lambdas passed to ctx.run are kept alive forever (memory leak) -------------


class _Payload:
    pass


async def test_step_functions_are_not_kept_alive_after_their_run(
    make_app: Callable[..., durably.App],
) -> None:
    """Instance._begin_step calls _serde.return_type(fn), which caches type hints
    in the module-global _serde._hint_cache keyed by the function object. Every
    lambda / closure / partial given to ctx.run (a new object on every run and
    every replay) is kept forever with everything it captures."""
    app = make_app()
    refs: list[weakref.ref[_Payload]] = []

    @app.workflow()
    async def flow(ctx: durably.Context, n: int) -> int:
        payload = _Payload()  # e.g. a loaded order, a big list of rows
        refs.append(weakref.ref(payload))
        return int(await ctx.run("use", lambda: n * 2 if payload else 0))

    async with app.worker():
        for i in range(5):
            handle = await app.start(flow, i)
            assert await handle.result(timeout=10) == i * 2
    gc.collect()
    alive = sum(1 for r in refs if r() is not None)
    assert alive == 0, f"{alive} of {len(refs)} captured payloads are still alive"


# -- 9. decorated async steps cannot be scheduled with create_task / TaskGroup -----


async def test_decorated_step_works_with_create_task_and_task_group(
    make_app: Callable[..., durably.App],
) -> None:
    """An async @app.step called in a workflow returns an asyncio.Future, not a
    coroutine, so asyncio.create_task(step(...)) and TaskGroup.create_task(...)
    (the usual way to fan out) fail the run with a raw TypeError."""
    app = make_app()

    @app.step()
    async def double(x: int) -> int:
        return x * 2

    @app.workflow()
    async def flow(ctx: durably.Context) -> list[int]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(double(i)) for i in range(3)]
        return [t.result() for t in tasks]

    async with app.worker():
        handle = await app.start(flow, id="fan-out")
        assert await handle.result(timeout=10) == [0, 2, 4]


# -- 10. a new version that diverges fails in-flight runs instead of pinning them --


async def test_new_version_that_diverges_leaves_the_run_pinned_not_failed(
    make_app: Callable[..., durably.App],
) -> None:
    """PRODUCT.md semantic 8: a worker whose version differs dry-runs the
    journal; a divergence leaves the run pinned to its old version (never
    failed). The driver replays under the new code and fails the run with a
    NonDeterminismError; the claim query does not look at versions at all."""
    old = make_app("versions", suspend_after=0.1)

    @old.workflow(name="flow", version="1")
    async def flow_v1(ctx: durably.Context) -> str:
        await ctx.run("load", lambda: 1)
        await ctx.sleep("nap", 1.0)
        return "v1"

    async with old.worker():
        handle = await old.start(flow_v1, id="pinned")
        await eventually(lambda: handle.status_sync() == "suspended")

    new = make_app("versions", suspend_after=0.1)

    @new.workflow(name="flow", version="2")
    async def flow_v2(ctx: durably.Context) -> str:
        await ctx.run("load-v2", lambda: 1)  # renamed: the old journal diverges
        await ctx.sleep("nap", 1.0)
        return "v2"

    async with new.worker():
        await asyncio.sleep(2.0)  # the timer is due; the new worker claims and replays
    status = new.get_handle("pinned").status_sync()
    assert status != "failed", "a deploy of new code failed an in-flight run"


# -- 11. wait_for timeouts (and deadlines) can fire early by the worker's clock ----


async def test_wait_timeout_never_fires_early_by_the_workers_clock(
    make_app: Callable[..., durably.App],
) -> None:
    """Durable timers re-check `fire_at > clock()` when their asyncio handle
    fires (driver `fired` branch) so a clock stepped back never fires them
    early. The wait_for timeout (`wait_timeout` event) and the run deadline
    (`_deadline_passed`) are plain loop.call_later handles with no such check:
    after the clock steps back they time out before their deadline."""
    app = make_app(suspend_after=5.0)  # the wait stays in memory
    offset = [0.0]
    app.clock = lambda: time.time() + offset[0]  # type: ignore[method-assign]

    @app.workflow()
    async def flow(ctx: durably.Context) -> dict[str, float]:
        started = ctx.now().timestamp()
        try:
            await ctx.wait_for("approval", timeout=1.0)
        except TimeoutError:
            pass
        return {"started": started, "after": ctx.now().timestamp()}

    async with app.worker():
        handle = await app.start(flow, id="early-timeout")
        await eventually(lambda: handle.status_sync() == "suspended")
        offset[0] = -3.0  # NTP steps the clock back
        result = await handle.result(timeout=10)
    assert result["after"] >= result["started"] + 1.0, (
        f"timed out {result['started'] + 1.0 - result['after']:.2f}s before its deadline"
    )


# -- 12. one signal can be handed to two waits ---------------------------------------


async def test_a_signal_is_delivered_to_one_wait_only(
    make_app: Callable[..., durably.App],
) -> None:
    """RunDriver._handle('signal') drops the signal id from `_taken` as soon as
    it hands it to the code, before the write that marks it consumed has
    committed. A `_refresh` (watch loop) whose pending_signals read ran before
    that commit and returns after it offers the same, still "unconsumed"
    signal to the next wait on the topic, and the commit's CONSUME_SIGNAL
    (rowcount never checked) lets it through: the code receives it twice and
    the second signal is never delivered. Slow commits / reads here only widen
    the window a loaded database opens (SQLite sends two notifications per
    signal, hub + data_version, so the second refresh reads mid-commit)."""
    app = make_app(suspend_after=5.0)  # the waits stay in memory
    storage = app.storage
    real_commit, real_pending = storage.commit, storage.pending_signals

    def slow_commit(worker_id: str, writes: Any, now: float) -> set[str]:
        if any(w.consumed for w in writes):
            time.sleep(0.3)
        return real_commit(worker_id, writes, now)

    def slow_pending(run_ids: Any) -> Any:
        found = real_pending(run_ids)
        time.sleep(0.3)
        return found

    storage.commit = slow_commit  # type: ignore[method-assign]
    storage.pending_signals = slow_pending  # type: ignore[method-assign]

    @app.workflow()
    async def inbox(ctx: durably.Context) -> list[str]:
        # A second wait in parallel (any topic) keeps the run on the watch
        # loop's list of runs that wait for signals.
        other = asyncio.ensure_future(ctx.wait_for("other", timeout=30))
        got = []
        for _ in range(2):
            got.append(await ctx.wait_for("msg", timeout=10))
        other.cancel()
        return got

    async with app.worker():
        handle = await app.start(inbox, id="inbox")
        await eventually(lambda: handle.status_sync() == "suspended")
        await asyncio.sleep(0.5)
        await app.signal("inbox", "msg", "a")
        await asyncio.sleep(0.45)  # "a" is being committed as consumed right now
        await app.signal("inbox", "msg", "b")
        assert await handle.result(timeout=10) == ["a", "b"]

"""Misuse and unusual-but-legal input, found by a review acting as a new user.

Each test failed on the code before its fix: a step that re-ran without end,
a run stuck forever with nothing logged, a start that hung every later start.
They run on both backends and are bounded to a few seconds each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import enum
from collections.abc import Callable
from typing import Any

import pytest

import durably
from durably._errors import DatabaseError
from durably._worker.committer import CommitFailed


async def test_a_cancelled_start_does_not_hang_later_starts(
    make_app: Callable[..., durably.App],
) -> None:
    """A web request that times out while its ``app.start`` is in flight used
    to kill the thread that batches starts: every later start in the process
    waited forever."""
    app = make_app()

    @app.workflow()
    async def signup(ctx: durably.Context, user: str) -> str:
        return user

    await app.start(signup, "warm-up", id="warm-up")
    for i in range(20):  # some are cancelled before the batch starts, some during it
        task = asyncio.ensure_future(app.start(signup, f"u{i}", id=f"gave-up-{i}"))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    handle = await asyncio.wait_for(app.start(signup, "next", id="next"), 10)
    assert handle.id == "next"
    assert (await app.get_handle("next").status()) == "pending"


async def test_step_options_are_checked_where_they_are_given(
    make_app: Callable[..., durably.App],
) -> None:
    """``ctx.run(..., retry=5)`` used to be accepted; when the step first failed
    the engine's task died on it and the run stayed ``running`` forever, with
    nothing logged. A timedelta timeout was taken as a number."""
    app = make_app()

    def boom() -> None:
        raise ValueError("boom")

    def fine() -> str:
        return "ok"

    @app.workflow()
    async def wrong_retry(ctx: durably.Context) -> None:
        await ctx.run("x", boom, retry=5)  # type: ignore[arg-type]

    @app.workflow()
    async def timedelta_timeout(ctx: durably.Context) -> str:
        return str(await ctx.run("y", fine, timeout=dt.timedelta(seconds=3)))

    with pytest.raises(durably.ConfigurationError, match=r"retry= needs a durably.Retry"):

        @app.step(retry=3)  # type: ignore[arg-type]
        def bad_policy() -> None: ...

    @app.step(aliases="old_name")  # type: ignore[arg-type]
    def renamed() -> None: ...

    assert app._steps["renamed"].aliases == ("old_name",)
    async with app.worker():
        handle = await app.start(wrong_retry)
        with pytest.raises(durably.WorkflowFailed, match=r"retry= needs a durably.Retry"):
            await handle.result(timeout=10)
        assert await (await app.start(timedelta_timeout)).result(timeout=10) == "ok"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str boom")


async def test_an_error_that_cannot_be_printed_still_ends_its_run(
    make_app: Callable[..., durably.App],
) -> None:
    """An exception whose ``__str__`` raises, from a step, left the run stuck
    forever (its failure could not be written); from the workflow body, the
    run failed with a wrong message about non-durable awaits."""
    app = make_app()

    @app.step(retry=durably.Retry(max_attempts=1))
    async def step_raises() -> None:
        raise _Unprintable()

    @app.workflow()
    async def from_step(ctx: durably.Context) -> None:
        await step_raises()

    @app.workflow()
    async def from_body(ctx: durably.Context) -> None:
        raise _Unprintable()

    async with app.worker():
        for wf in (from_step, from_body):
            handle = await app.start(wf)
            with pytest.raises(durably.WorkflowFailed) as failed:
                await handle.result(timeout=10)
            assert "_Unprintable" in str(failed.value), failed.value
            assert "unprintable" in failed.value.message, failed.value.message


async def test_text_the_database_cannot_store_is_refused_or_escaped(
    make_app: Callable[..., durably.App],
) -> None:
    """A step returning a file name with a lone surrogate (what ``os.listdir``
    gives for undecodable names) failed its commit, and the run was replayed
    and the step re-run without end; a NUL in a step name did the same on
    PostgreSQL. Payloads now keep such text (escaped, it reads back exactly);
    names and ids that cannot be stored are refused where they are given."""
    app = make_app()
    calls: list[str] = []

    @app.step()
    async def listing() -> list[str]:
        calls.append("listing")
        return ["ok.txt", "bad\udcff.txt"]

    @app.workflow()
    async def files(ctx: durably.Context, name: str) -> list[str]:
        return [name, *await listing()]

    def noop() -> None: ...

    @app.workflow()
    async def nul_step(ctx: durably.Context) -> None:
        await ctx.run("charge\x00card", noop)

    async with app.worker():
        handle = await app.start(files, "arg\udcfe", id="files")
        assert await handle.result(timeout=10) == ["arg\udcfe", "ok.txt", "bad\udcff.txt"]
        assert calls == ["listing"]
        handle = await app.start(nul_step)
        with pytest.raises(durably.WorkflowFailed, match="NUL character or a lone surrogate"):
            await handle.result(timeout=10)
    with pytest.raises(durably.PayloadError, match="NUL character or a lone surrogate"):
        await app.start(files, "x", id="bad\x00id")
    with pytest.raises(durably.ConfigurationError, match="NUL character or a lone surrogate"):
        await app.signal("files", "topic\udcff", 1)


async def test_get_event_of_a_run_that_ended_without_it_does_not_wait_forever(
    make_app: Callable[..., durably.App],
) -> None:
    """Without a timeout, ``get_event`` on a run that had ended without
    setting the key waited forever; so did one whose run ended while it waited."""
    app = make_app()

    @app.workflow()
    async def quiet(ctx: durably.Context) -> str:
        ctx.set_event("stage", "only")
        await ctx.wait_for("go")
        return "done"

    async with app.worker():
        handle = await app.start(quiet, id="quiet")
        waiting = asyncio.ensure_future(app.get_event("quiet", "never"))
        assert await app.get_event("quiet", "stage", timeout=10) == "only"
        await app.signal("quiet", "go")
        assert await handle.result(timeout=10) == "done"
        with pytest.raises(durably.WaitTimeout, match=r"ended \(completed\) without"):
            await asyncio.wait_for(waiting, 10)
    with pytest.raises(TimeoutError, match="without setting event 'never'"):
        await asyncio.wait_for(app.get_event("quiet", "never"), 10)
    assert app.get_event_sync("quiet", "stage") == "only"


async def test_a_local_start_whose_write_failed_is_not_left_claimed(
    make_app: Callable[..., durably.App],
) -> None:
    """A start beside a worker writes the run already claimed by that worker;
    when that write failed (the worker's own connection cut), the fallback
    start wrote the same run still marked as claimed by a worker that was not
    driving it, and it sat idle for a whole lease."""
    app = make_app(lease_seconds=30)

    @app.workflow()
    async def quick(ctx: durably.Context, x: int) -> int:
        return x * 2

    async with app.worker() as worker:
        real_submit = worker.committer.submit

        def failing_submit(write: Any) -> Any:
            if write.create is not None:
                worker.committer.submit = real_submit  # type: ignore[method-assign]
                raise CommitFailed("connection cut (simulated)")
            return real_submit(write)

        worker.committer.submit = failing_submit  # type: ignore[method-assign]
        handle = await app.start(quick, 21, id="fallback")
        # Well within the 30 s lease a wrongly claimed run would sit out.
        assert await handle.result(timeout=10) == 42


@dataclasses.dataclass
class Order:
    id: str
    total: int


class Color(enum.Enum):
    RED = "red"


async def test_arguments_that_do_not_fit_their_types_fail_the_run_saying_so(
    make_app: Callable[..., durably.App],
) -> None:
    """A dict missing a dataclass field (or an unknown enum value) failed the
    run with a raw TypeError that named neither the argument nor the
    workflow. (It is not checked at start: that would run the types' own
    code, a ``__post_init__``, in the caller's process.)"""
    app = make_app()

    @app.workflow()
    async def ship(ctx: durably.Context, order: Order, color: Color = Color.RED) -> str:
        return order.id

    async with app.worker():
        for args, kwargs, what in [
            (({"id": "o1"},), {}, "total"),
            ((Order("o1", 3),), {"color": "blue"}, "blue"),
        ]:
            handle = await app.start(ship, *args, **kwargs)
            with pytest.raises(durably.WorkflowFailed, match=r"workflow 'ship' do not fit") as e:
                await handle.result(timeout=10)
            assert what in str(e.value)
        handle = await app.start(ship, {"id": "o2", "total": 5})  # a dict that fits is fine
        assert await handle.result(timeout=10) == "o2"


async def test_settings_are_checked_when_given(
    make_app: Callable[..., durably.App], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each was accepted and surfaced later: a raw TypeError from
    ``result(timeout=timedelta)``, every payload refused with
    ``max_payload_bytes=-1``, a busy loop with ``poll_interval=0``, runs that
    never progressed with a lease of a microsecond, a plain ValueError for a
    worker of no concurrency."""
    for options, what in [
        ({"max_payload_bytes": -1}, "max_payload_bytes"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"suspend_after": float("nan")}, "suspend_after"),
        ({"lease_seconds": 1e-6}, "at least"),
    ]:
        with pytest.raises(durably.ConfigurationError, match=what):
            make_app(**options)
    monkeypatch.setenv("DURABLY_LEASE_SECONDS", "0.000001")
    with pytest.raises(durably.ConfigurationError, match="DURABLY_LEASE_SECONDS must be at"):
        durably.App("env-lease", "sqlite:///never-opened.db")
    monkeypatch.delenv("DURABLY_LEASE_SECONDS")
    app = make_app()

    @app.workflow()
    async def quick(ctx: durably.Context) -> int:
        return 1

    with pytest.raises(durably.ConfigurationError, match="concurrency"):
        async with app.worker(concurrency=0):
            pass
    async with app.worker():
        handle = await app.start(quick)
        assert await handle.result(timeout=dt.timedelta(seconds=10)) == 1
    with pytest.raises(durably.ConfigurationError, match=r"result\(timeout=...\)"):
        await handle.result(timeout="1")  # type: ignore[arg-type]


async def test_a_write_that_always_fails_ends_its_run_instead_of_looping(
    make_app: Callable[..., durably.App],
) -> None:
    """A step result the database refuses (a DataError, a constraint) failed
    its commit; the run was handed back, replayed and the step run again,
    without end. After a few failures in a row the run now fails, saying
    why, and the step stops running."""
    app = make_app()
    storage = app.storage
    calls: list[int] = []

    def refuses(writes: Any) -> None:
        for write in writes:
            if any(e.name == "poison" for e in write.entries):
                raise DatabaseError("value refused by the database (simulated)")

    real_commit, real_nowait = storage.commit, storage.commit_nowait

    def commit(worker_id: str, writes: Any, now: float) -> Any:
        refuses(writes)
        return real_commit(worker_id, writes, now)

    def commit_nowait(worker_id: str, writes: Any, now: float) -> Any:
        refuses(writes)
        return real_nowait(worker_id, writes, now)

    storage.commit = commit  # type: ignore[method-assign]
    storage.commit_nowait = commit_nowait  # type: ignore[method-assign]

    @app.step()
    async def poison() -> int:
        calls.append(1)
        return 1

    @app.workflow()
    async def doomed(ctx: durably.Context) -> int:
        return await poison()

    async with app.worker() as worker:
        worker.committer._writer = None  # PostgreSQL: every write through storage.commit
        handle = await app.start(doomed)
        with pytest.raises(durably.WorkflowFailed, match="could not journal this run"):
            await handle.result(timeout=20)
        assert len(calls) == 3


async def test_durable_operations_in_the_wrong_place_say_where_to_call_them(
    make_app: Callable[..., durably.App],
) -> None:
    """``ctx.run`` inside a step was reported as a NonDeterminismError on the
    very first run; ``app.start`` inside workflow code failed the run with a
    message about non-durable awaits."""
    app = make_app()
    holder: dict[str, durably.Context] = {}

    def noop() -> None: ...

    @app.step(retry=durably.Retry(max_attempts=1))
    async def nested() -> None:
        await holder["ctx"].run("inner", noop)

    @app.workflow()
    async def step_in_step(ctx: durably.Context) -> str:
        holder["ctx"] = ctx
        try:
            await nested()
        except durably.StepFailed as exc:
            return exc.message
        return "no error"

    @app.workflow()
    async def target(ctx: durably.Context) -> int:
        return 1

    @app.workflow()
    async def starts_directly(ctx: durably.Context) -> str:
        handle = await app.start(target)
        return handle.id

    async with app.worker():
        said = await (await app.start(step_in_step)).result(timeout=10)
        assert "ctx.run() was called from inside a step" in said, said
        handle = await app.start(starts_directly)
        with pytest.raises(durably.WorkflowFailed, match=r"use ctx.child\(...\)"):
            await handle.result(timeout=10)


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
async def test_a_missing_await_is_named_as_such(make_app: Callable[..., durably.App]) -> None:
    """A workflow returning a step's result without awaiting it failed with
    "Object of type coroutine is not JSON serializable"."""
    app = make_app()

    @app.step()
    async def triple(x: int) -> int:
        return x * 3

    @app.workflow()
    async def forgot(ctx: durably.Context) -> int:
        return triple(2)  # type: ignore[return-value]

    async with app.worker():
        handle = await app.start(forgot)
        with pytest.raises(durably.WorkflowFailed, match="an `await` is missing"):
            await handle.result(timeout=10)

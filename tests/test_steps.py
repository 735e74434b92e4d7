"""Steps: retries are durable (semantic 6), step keys are stable (semantic 3)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

import durably


async def test_retries_then_succeeds_with_one_key(make_app: Callable[..., durably.App]) -> None:
    app = make_app()
    keys: list[str] = []

    @app.step(retry=durably.Retry(max_attempts=3, initial=0.05))
    def flaky() -> str:
        keys.append(durably.current_step_key())
        if len(keys) < 3:
            raise ConnectionError(f"attempt {len(keys)}")
        return "ok"

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        return str(await flaky())

    async with app.worker():
        handle = await app.start(flow, id="r-1")
        assert await handle.result(timeout=20) == "ok"
    assert keys == ["r-1:0"] * 3
    journal = app.storage.load_journal("r-1")
    assert [e.kind for e in journal] == ["attempt", "attempt", "step"]
    first = json.loads(journal[0].payload or "{}")
    assert first["attempt"] == 1 and first["type"] == "ConnectionError"
    assert first["message"] == "attempt 1" and first["next_at"] >= journal[0].at + 0.05


async def test_last_attempt_raises_step_failed_and_saga_compensates(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()
    done: list[str] = []

    @app.step()
    def reserve() -> str:
        done.append("reserve")
        return "res-1"

    @app.step(retry=durably.Retry(max_attempts=2, initial=0.01))
    def charge() -> str:
        raise RuntimeError("card declined")

    @app.step()
    def release(reservation: str) -> None:
        done.append(f"release {reservation}")

    @app.workflow()
    async def order(ctx: durably.Context) -> str:
        reservation = await reserve()
        try:
            await charge()
        except durably.StepFailed as exc:
            await release(reservation)
            return f"compensated after {exc.attempts}: {exc.error_type}: {exc.message}"
        return "charged"

    async with app.worker():
        handle = await app.start(order)
        result = await handle.result(timeout=20)
    assert result == "compensated after 2: RuntimeError: card declined"
    assert done == ["reserve", "release res-1"]


async def test_uncaught_step_failure_fails_the_run_with_its_traceback(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.step(retry=durably.Retry(max_attempts=1))
    def explode() -> None:
        raise ValueError("bad data")

    @app.workflow()
    async def flow(ctx: durably.Context) -> None:
        await explode()

    async with app.worker():
        handle = await app.start(flow)
        with pytest.raises(durably.WorkflowFailed) as info:
            await handle.result(timeout=20)
    assert info.value.error_type == "StepFailed"
    assert "ValueError: bad data" in str(info.value)
    assert (
        "raise ValueError"
        in json.loads(app.storage.load_journal(handle.id)[0].payload or "{}")["traceback"]
    )


async def test_non_retryable_errors_fail_at_once(make_app: Callable[..., durably.App]) -> None:
    app = make_app()
    attempts: list[int] = []

    @app.step(retry=durably.Retry(max_attempts=5, initial=0.01, non_retryable=(KeyError,)))
    def lookup() -> None:
        attempts.append(1)
        raise KeyError("nope")

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        try:
            await lookup()
        except durably.StepFailed as exc:
            return exc.error_type
        return "?"

    async with app.worker():
        assert await (await app.start(flow)).result(timeout=20) == "KeyError"
    assert attempts == [1]


async def test_default_policy_is_three_attempts(make_app: Callable[..., durably.App]) -> None:
    app = make_app()

    @app.step()
    def always_fails() -> None:
        raise OSError("down")

    definition = app._steps["always_fails"]
    assert definition.retry == durably.Retry(
        max_attempts=3, initial=1.0, backoff=2.0, max_interval=60.0
    )


async def test_step_timeout_counts_as_a_failed_attempt(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.step(timeout=0.1, retry=durably.Retry(max_attempts=2, initial=0.01))
    async def hangs() -> None:
        await asyncio.sleep(5)

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        try:
            await hangs()
        except durably.StepFailed as exc:
            return f"{exc.error_type} x{exc.attempts}"
        return "?"

    async with app.worker():
        assert await (await app.start(flow)).result(timeout=20) == "StepTimeout x2"


async def test_a_steps_own_timeout_error_is_its_error_not_a_step_timeout(
    make_app: Callable[..., durably.App],
) -> None:
    # A socket timing out inside a step raises TimeoutError (asyncio's, too,
    # since 3.11): that is the step's error, with or without a step timeout.
    app = make_app()
    policy = durably.Retry(max_attempts=1)

    @app.step(retry=policy)
    async def no_limit() -> None:
        raise TimeoutError("the upstream took too long")

    @app.step(timeout=5.0, retry=policy)
    async def with_limit() -> None:
        raise TimeoutError("the upstream took too long")

    @app.workflow()
    async def flow(ctx: durably.Context) -> list[str]:
        seen = []
        for step in (no_limit, with_limit):
            try:
                await step()
            except durably.StepFailed as exc:
                seen.append(f"{exc.error_type}: {exc.message}")
        return seen

    async with app.worker():
        assert (
            await (await app.start(flow)).result(timeout=20)
            == ["TimeoutError: the upstream took too long"] * 2
        )


async def test_a_step_timeout_covers_a_def_step_and_the_coroutine_it_returns(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    async def slow_call() -> None:
        await asyncio.sleep(0.3)

    @app.step(timeout=0.4, retry=durably.Retry(max_attempts=1))
    def wraps_a_call() -> Any:
        time.sleep(0.3)  # with its coroutine: 0.6 s, past the 0.4 s limit
        return slow_call()

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        try:
            await wraps_a_call()
        except durably.StepFailed as exc:
            return exc.error_type
        return "in time"

    async with app.worker():
        assert await (await app.start(flow)).result(timeout=20) == "StepTimeout"


async def test_step_key_from_context_inside_inline_steps(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context) -> list[str]:
        one = await ctx.run("first", lambda: ctx.step_key)
        two = await ctx.run("second", lambda: durably.current_step_key())
        try:
            _ = ctx.step_key  # not inside a step
        except durably.DurablyError:
            outside = "refused"
        else:
            outside = "allowed"
        return [one, two, outside]

    async with app.worker():
        handle = await app.start(flow, id="k-1")
        assert await handle.result(timeout=20) == ["k-1:0", "k-1:1", "refused"]


async def test_unserialisable_step_result_fails_the_step_clearly(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.workflow()
    async def flow(ctx: durably.Context) -> str:
        try:
            await ctx.run("make-lock", lambda: object())
        except durably.StepFailed as exc:
            return f"{exc.error_type}: {exc.message}"
        return "?"

    async with app.worker():
        result = await (await app.start(flow)).result(timeout=20)
    assert result.startswith("PayloadError: the result of step 'make-lock' cannot be stored")
    assert "object" in result


async def test_sync_step_in_async_workflow_and_async_step_in_sync_workflow(
    make_app: Callable[..., durably.App],
) -> None:
    app = make_app()

    @app.step()
    def sync_step(x: int) -> int:
        return x + 1

    @app.step()
    async def async_step(x: int) -> int:
        return x * 2

    @app.workflow()
    async def async_flow(ctx: durably.Context) -> int:
        return int(await sync_step(1)) + int(await ctx.run("twice", async_step, 5))

    @app.workflow()
    def sync_flow(ctx: durably.Context) -> int:
        via_ctx = ctx.run("twice", async_step, 5)
        try:
            async_step(1)
        except durably.DurablyError as exc:
            assert "ctx.run" in str(exc)
            return int(via_ctx)
        return -1

    async with app.worker():
        assert await (await app.start(async_flow)).result(timeout=20) == 12
        assert await (await app.start(sync_flow)).result(timeout=20) == 10

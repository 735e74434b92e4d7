"""Worker event loops: uvloop where installed, asyncio otherwise (durably[fast])."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import durably
from durably import _loops


def test_auto_takes_uvloop_when_installed_and_asyncio_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _loops.uvloop_installed()  # the test extras install durably[fast]
    assert _loops.chosen_loop("auto") == "uvloop"
    assert _loops.chosen_loop("asyncio") == "asyncio"
    monkeypatch.setattr(_loops, "uvloop_installed", lambda: False)
    assert _loops.chosen_loop("auto") == "asyncio"


def test_a_missing_or_unknown_loop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(durably.ConfigurationError, match=r"unknown event loop 'trio'.*auto"):
        _loops.chosen_loop("trio")
    monkeypatch.setattr(_loops, "uvloop_installed", lambda: False)

    async def never() -> None:
        raise AssertionError("must not run")

    with pytest.raises(durably.ConfigurationError, match=r"pip install 'durably\[fast\]'"):
        _loops.run_loop("uvloop", never())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_engine_runs_the_same_on_either_loop(
    make_app: Callable[..., durably.App], loop: str
) -> None:
    # Parallel steps, a durable timer, a signal, a child and an event, on the
    # loop that run_loop picks, in process (the worker CLI uses run_loop too).
    app = make_app()
    seen: list[str] = []

    @app.step()
    async def double(x: int) -> int:
        await asyncio.sleep(0.001)
        return x * 2

    @app.workflow()
    async def child(ctx: durably.Context, x: int) -> int:
        return int(await double(x)) + 1

    @app.workflow()
    async def parent(ctx: durably.Context, x: int) -> dict[str, Any]:
        pair = await asyncio.gather(double(x), double(x + 1))
        await ctx.sleep("nap", 0.05)
        ctx.set_event("stage", "waiting")
        approval = await ctx.wait_for("approve")
        kid = await ctx.child(child, x)
        return {"pair": pair, "approval": approval, "child": kid}

    async def main() -> dict[str, Any]:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])
        async with app.worker():
            handle = await app.start(parent, 5, id="p-1")
            assert await app.get_event("p-1", "stage", timeout=20) == "waiting"
            await app.signal("p-1", "approve", {"by": "ada"})
            return await handle.result(timeout=20)

    assert _loops.run_loop(loop, main()) == {
        "pair": [10, 12],
        "approval": {"by": "ada"},
        "child": 11,
    }
    assert seen == [loop]

"""Which event loop a worker process runs on.

uvloop (libuv's loop, the one uvicorn picks when it is installed) runs the
same worker on about a sixth less CPU per run than asyncio's own loop, which
matters because a worker's time between database round trips is mostly
event-loop bookkeeping. It is optional (``durably[fast]``); nothing in
durably depends on which loop it runs on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from ._errors import ConfigurationError

T = TypeVar("T")

LOOPS = ("auto", "asyncio", "uvloop")


def uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # absent, or present but broken: asyncio serves
        return False
    return True


def chosen_loop(loop: str) -> str:
    """``"asyncio"`` or ``"uvloop"`` for a requested ``loop`` (see :data:`LOOPS`)."""
    if loop not in LOOPS:
        raise ConfigurationError(f"unknown event loop {loop!r}: choose one of {', '.join(LOOPS)}")
    if loop == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    if loop == "uvloop" and not uvloop_installed():
        raise ConfigurationError(
            "the uvloop event loop was asked for but uvloop is not installed: "
            "pip install 'durably[fast]' (or choose the asyncio loop)"
        )
    return loop


def run_loop(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on the chosen event loop."""
    try:
        kind = chosen_loop(loop)
    except ConfigurationError:
        main.close()  # never awaited: say so quietly, not as a RuntimeWarning
        raise
    if kind == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)

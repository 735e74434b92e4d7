"""An asyncio event loop on a virtual clock, with a seeded scheduler.

Nothing sleeps: whenever every task waits, the clock jumps straight to the
next timer, so a 30-day ``ctx.sleep`` takes no real time. Each time the loop
runs the callbacks that are ready, it first shuffles them with a seeded
random generator, so one seed is one interleaving, and a failing seed
replays exactly.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from typing import Any

DEFAULT_START = 1_800_000_000.0  # an arbitrary epoch second (2027-01-15)


class Stuck(RuntimeError):
    """Every task waits and no timer is set: nothing can ever happen again."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector with no I/O: "waiting" advances the loop's clock instead."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self.unregister(fileobj)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[Any]:
        self._loop._advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """See the module docstring. ``loop.time()`` is epoch seconds of the virtual clock."""

    def __init__(self, seed: int = 0, start: float = DEFAULT_START) -> None:
        self.now = start
        self.rng = random.Random(seed)
        super().__init__(selector=_VirtualSelector(self))
        self._clock_resolution = 1e-6  # coarser than a float's step at this magnitude

    def time(self) -> float:
        return self.now

    def clock(self) -> float:
        """The virtual clock, for ``App.clock``."""
        return self.now

    def _advance(self, timeout: float | None) -> None:
        ready = self._ready  # type: ignore[attr-defined]
        if ready:
            items = list(ready)
            self.rng.shuffle(items)
            ready.clear()
            ready.extend(items)
            return
        if timeout is None:
            raise Stuck("every task waits and no timer is set")
        scheduled = self._scheduled  # type: ignore[attr-defined]
        # Jump to the next timer itself: at 1.8e9 seconds a float's resolution
        # (~2e-7 s) can swallow a tiny timeout and the clock would never move.
        target = self.now + timeout
        if scheduled:
            target = max(target, scheduled[0].when())
        self.now = target

    def _write_to_self(self) -> None:
        # No other thread wakes this loop; the self-pipe would only fill up.
        return None

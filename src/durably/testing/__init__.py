"""Testing helpers: an in-memory storage, a virtual clock, a crashing simulator.

These are the pieces the deterministic simulation runs on. The fuller
testing toolkit (virtual-time runs of your own workflows, crash at every
journal boundary) builds on them.
"""

from __future__ import annotations

from ._memory import MemoryStorage
from ._simulator import CrashedHere, Simulator
from ._virtual import Stuck, VirtualLoop

__all__ = ["CrashedHere", "MemoryStorage", "Simulator", "Stuck", "VirtualLoop"]

"""A worker process reports its garbage collector settings (tests/test_cli.py)."""

from __future__ import annotations

import gc

import durably

app = durably.App("gc-probe")


@app.step()
def read_settings() -> dict[str, object]:
    return {"threshold": list(gc.get_threshold()), "frozen": gc.get_freeze_count()}


@app.workflow()
def gc_settings(ctx: durably.Context) -> dict[str, object]:
    return read_settings()

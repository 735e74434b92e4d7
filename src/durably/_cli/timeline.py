"""A run's journal as a readable timeline (``durably show``, the demo)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from .._engine.journal import Entry, Kind
from .._storage.base import RunRecord

WIDTH = 64


def _clip(text: str, width: int = WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _detail(entry: Entry, origin: float) -> str:
    info: Any = json.loads(entry.payload) if entry.payload else {}
    if entry.kind == Kind.STEP:
        return "-> " + _clip(entry.payload or "null")
    if entry.kind == Kind.STEP_FAILED:
        return _clip(
            f"FAILED after {info.get('attempts')} attempt(s): "
            f"{info.get('type')}: {info.get('message')}"
        )
    if entry.kind == Kind.ATTEMPT:
        return _clip(
            f"attempt {info.get('attempt')} failed: {info.get('type')}: {info.get('message')}"
            f" (next attempt at +{info.get('next_at', origin) - origin:.3f}s)"
        )
    if entry.kind == Kind.TIMER:
        return f"sleeps until +{info.get('fire_at', origin) - origin:.3f}s"
    if entry.kind == Kind.FIRED:
        return "woke up"
    if entry.kind == Kind.NOW:
        return "= " + _when(float(info))
    if entry.kind == Kind.WAIT:
        deadline = info.get("deadline") if isinstance(info, dict) else None
        return "waits" + (f" until +{deadline - origin:.3f}s" if deadline else " (no timeout)")
    if entry.kind == Kind.SIGNAL:
        return "received " + _clip(entry.payload or "null")
    if entry.kind == Kind.WAIT_TIMEOUT:
        return "timed out"
    if entry.kind == Kind.EVENT:
        return "= " + _clip(entry.payload or "null")
    if entry.kind == Kind.CHILD:
        return f"started child run {info.get('id')}"
    if entry.kind == Kind.CHILD_DONE:
        return _clip(f"child {info.get('status')}: " + str(info.get("result") or info.get("error")))
    if entry.kind in (Kind.CANCEL, Kind.CANCEL_AT):
        return "CancelledError raised: " + str(info.get("reason"))
    return "= " + _clip(entry.payload or "")


def render(record: RunRecord, entries: Sequence[Entry]) -> list[str]:
    origin = record.created_at
    lines = [
        f"run {record.id}  workflow {record.workflow}  version {record.version}  "
        f"status {record.status}",
        f"created {_when(record.created_at)}"
        + (f"  finished +{record.finished_at - origin:.3f}s" if record.finished_at else ""),
        "",
        f"  {'time':>9}  {'pos':>3}  {'entry':<34} detail",
        f"  {'+0.000s':>9}  {'':>3}  {'run started':<34} args {_clip(record.args, 48)}",
    ]
    epoch = None
    for entry in entries:
        if entry.epoch != epoch:
            if epoch is not None:
                lines.append(
                    f"  {'':>9}  {'':>3}  -- claim {entry.epoch}: a worker took the run up "
                    "again and resumed it by replaying the journal --"
                )
            epoch = entry.epoch
        label = f"{entry.kind} {entry.name}" if entry.kind != entry.name else entry.kind
        lines.append(
            f"  {'+%.3fs' % (entry.at - origin):>9}  {entry.position:>3}  {label:<34} "
            f"{_detail(entry, origin)}"
        )
    if record.status == "completed":
        lines.append(
            f"  {'+%.3fs' % ((record.finished_at or origin) - origin):>9}  {'':>3}  "
            f"{'run completed':<34} -> {_clip(record.result or 'null')}"
        )
    elif record.status == "cancelled":
        lines.append(
            f"  {'+%.3fs' % ((record.finished_at or origin) - origin):>9}  {'':>3}  "
            f"{'run cancelled':<34} {_clip(record.cancel_reason or 'cancelled')}"
        )
    elif record.status == "failed":
        error = json.loads(record.error or "{}")
        lines.append(
            f"  {'+%.3fs' % ((record.finished_at or origin) - origin):>9}  {'':>3}  "
            f"{'run failed':<34} {_clip(str(error.get('type')) + ': ' + str(error.get('message')))}"
        )
    return lines

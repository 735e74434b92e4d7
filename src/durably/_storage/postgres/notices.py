"""What a ``durably_done`` NOTIFY carries: every run a commit ended, in one notice.

One notice per ended run cost every listening process a wake-up of its
listener thread, a notice object and a turn of the GIL for each run (about a
tenth of a worker's time at a few thousand runs a second), and the server a
queue entry per listener and run. A commit now sends one notice naming all
the runs it ended. A run id may hold any character but NUL, so no separator
is safe: each id is written as ``<length>:<id>`` and the ids are run
together. NOTIFY refuses payloads of 8,000 bytes or more: ids are packed
into a notice until it passes about 5,900 bytes (so it stays under 8,000
with one longest id over) and a larger commit sends several. The
batched commit statement (``queries.COMMIT_SIMPLE``) packs its notices in
SQL the same way.
"""

from __future__ import annotations

from collections.abc import Iterable

PAYLOAD_BYTES = 5900  # plus at most one longest id (512 characters) stays under 8,000


def done_payloads(run_ids: Iterable[str]) -> list[str]:
    """The ``durably_done`` payloads that name ``run_ids``."""
    payloads: list[str] = []
    parts: list[str] = []
    size = 0
    for run_id in run_ids:
        part = f"{len(run_id)}:{run_id}"
        if parts and size >= PAYLOAD_BYTES:
            payloads.append("".join(parts))
            parts, size = [], 0
        parts.append(part)
        size += len(part.encode())
    if parts:
        payloads.append("".join(parts))
    return payloads


def done_ids(payload: str) -> list[str]:
    """The run ids a ``durably_done`` payload names.

    A payload that does not parse is taken as one bare id, as an older
    durably sent it. An old bare id that happens to parse (``3:abc``) is
    misread; its waiters then hear of the end at their periodic re-read.
    """
    ids: list[str] = []
    at = 0
    while at < len(payload):
        colon = payload.find(":", at)
        digits = payload[at:colon] if colon > at else ""
        # ASCII digits only: int() would also take "-3", "+1", " 1" and "1_0",
        # and a length that does not move forward would loop for ever.
        if not (digits.isascii() and digits.isdigit()):
            return [payload]
        end = colon + 1 + int(digits)
        if end == colon + 1 or end > len(payload):  # an id is never empty
            return [payload]
        ids.append(payload[colon + 1 : end])
        at = end
    return ids or [payload]

"""What a ``durably_done`` NOTIFY carries: every run a commit ended, in one notice.

One notice per ended run cost every listening process a wake-up of its
listener thread, a notice object and a turn of the GIL for each run (about a
tenth of a worker's time at a few thousand runs a second), and the server a
queue entry per listener and run. A commit now sends one notice naming all
the runs it ended. A run id may hold any character but NUL, so no separator
is safe: each id is written as ``<length>:<id>`` and the ids are run
together. NOTIFY refuses payloads of 8,000 bytes or more, so a notice holds
up to about 6,000 bytes of ids and a larger commit sends several. The
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
    """The run ids a ``durably_done`` payload names. A payload that does not
    parse (sent by an older durably: the bare id) is that one id."""
    ids: list[str] = []
    at = 0
    try:
        while at < len(payload):
            colon = payload.index(":", at)
            end = colon + 1 + int(payload[at:colon])
            if end > len(payload) or colon == at:
                return [payload]
            ids.append(payload[colon + 1 : end])
            at = end
    except ValueError:
        return [payload]
    return ids

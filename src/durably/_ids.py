"""Generated run ids: UUIDv7 (RFC 9562) as 32 hex digits.

Time-ordered rather than random (uuid4) so that runs started together sit
side by side in every index keyed by run id (the runs' primary key, the
journal's): a batch of a hundred runs then dirties a few B-tree pages instead
of a hundred scattered ones, which is less to write and to fsync on SQLite
and fewer full-page images in PostgreSQL's WAL. Ids from one process also
sort in the order they were made: 48 bits of milliseconds, then a 12-bit
counter within the millisecond, then 62 random bits that keep processes apart
and make the next id unguessable (they come from ``os.urandom``, as uuid4's
did, but 256 ids' worth per call: each call is a system call that hands the
GIL to other threads, such as a client's batching thread, and waits to get
it back).
"""

from __future__ import annotations

import os
import threading
import time

_BATCH = 256  # ids' random bits fetched per os.urandom call

_lock = threading.Lock()
_last = 0  # milliseconds << 12 | counter, of the last id made here
_random = b""  # random bytes not used yet, 8 per id
_used = 0


def _forked() -> None:
    # The child must not hand out the parent's unused random bytes (both
    # would make the same ids), nor inherit a lock another thread held.
    global _lock, _random, _used
    _lock = threading.Lock()
    _random, _used = b"", 0


os.register_at_fork(after_in_child=_forked)


def new_run_id() -> str:
    global _last, _random, _used
    with _lock:
        # Never behind the last id, even if the clock steps back or 4,096
        # ids are made within one millisecond (the counter carries into it).
        stamp = max(time.time_ns() // 1_000_000 << 12, _last + 1)
        _last = stamp
        if _used >= len(_random):
            _random, _used = os.urandom(8 * _BATCH), 0
        tail = int.from_bytes(_random[_used : _used + 8], "big") >> 2
        _used += 8
    value = (stamp >> 12) << 80 | 0x7 << 76 | (stamp & 0xFFF) << 64 | 0b10 << 62 | tail
    return f"{value:032x}"

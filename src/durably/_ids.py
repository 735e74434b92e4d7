"""Generated run ids: UUIDv7 (RFC 9562) as 32 hex digits.

Time-ordered rather than random (uuid4) so that runs started together sit
side by side in every index keyed by run id (the runs' primary key, the
journal's): a batch of a hundred runs then dirties a few B-tree pages instead
of a hundred scattered ones, which is less to write and to fsync on SQLite
and fewer full-page images in PostgreSQL's WAL. Ids from one process also
sort in the order they were made: 48 bits of milliseconds, then a 12-bit
counter within the millisecond, then 62 random bits that keep processes apart.
"""

from __future__ import annotations

import os
import random
import threading
import time

_lock = threading.Lock()
_last = 0  # milliseconds << 12 | counter, of the last id made here
# Not os.urandom: that system call hands the GIL to other threads (a client's
# batching thread) and waits to get it back, on every start. A generator of
# our own, so a program's random.seed() cannot make two processes' ids
# collide, seeded afresh in a forked child as the random module's own is.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def new_run_id() -> str:
    global _last
    with _lock:
        # Never behind the last id, even if the clock steps back or 4,096
        # ids are made within one millisecond (the counter carries into it).
        stamp = max(time.time_ns() // 1_000_000 << 12, _last + 1)
        _last = stamp
    tail = _random.getrandbits(62)
    value = (stamp >> 12) << 80 | 0x7 << 76 | (stamp & 0xFFF) << 64 | 0b10 << 62 | tail
    return f"{value:032x}"

"""Random identifiers in lower-case hex (response, item and request ids, trace and span ids).

Each comes from the operating system's random source, as ``secrets.token_hex`` would make it, but the source
is read 4 KiB at a time and the ids are cut from that: an id costs a slice, not a system call and three
Python calls.  A forked child starts on bytes of its own (the parent's unread ones are dropped), so two
processes never hand out the same id.
"""

from __future__ import annotations

import os
import threading

__all__ = ["random_hex"]

#: random bytes read from the system at a time
_READ = 4096

_pool = ""  # hex digits not handed out yet
_at = 0
_lock = threading.Lock()  # ids are minted in the trio thread; a worker thread that mints one gets its own too


def random_hex(nbytes: int) -> str:
    """``nbytes`` random bytes as ``2 * nbytes`` lower-case hex digits (``secrets.token_hex(nbytes)``)."""
    global _pool, _at
    with _lock:
        start = _at
        end = start + 2 * nbytes
        if end > len(_pool):
            _pool = os.urandom(max(_READ, nbytes)).hex()
            start, end = 0, 2 * nbytes
        _at = end
        return _pool[start:end]


def _forget() -> None:
    """In a forked child: never hand out what the parent may hand out too."""
    global _pool, _at, _lock
    _pool, _at = "", 0
    _lock = threading.Lock()  # (a lock held by another thread at the fork would stay held in the child)


os.register_at_fork(after_in_child=_forget)

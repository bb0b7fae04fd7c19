"""Where SQLite limit checks should run: on the event loop, or in a worker thread?

``python bench/control_latency.py`` runs 64 concurrent tasks, each doing 150 requests' worth of
admission (requests, tokens, stream lease, daily budget) and settlement on one SQLite control file,
once with ``SQLiteControl`` as the gateway runs it (each transaction on the event loop) and once
with the same statements in ``trio.to_thread`` (each thread on its own connection); it prints the
CPU per request and the p50 latency of each.  README, "Limits, budgets and usage", quotes it.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

import trio

from streamgw.control.base import Charge, Check
from streamgw.control.sqlite import SQLiteControl

TASKS, ROUNDS = 64, 150
_local = threading.local()


def _conn(path: str) -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        _local.conn = conn
    return conn


def _threaded(path: str, lease: str, admit: bool) -> None:
    """The statements ``SQLiteControl`` runs for one admission or settlement, in one transaction."""
    conn, now = _conn(path), time.time()
    conn.execute("BEGIN IMMEDIATE")
    if admit:
        for name in ("rq:k", "tk:k", "bt:k:d"):
            conn.execute("SELECT value FROM state WHERE name = ? AND expires > ?", (name, now)).fetchone()
        conn.execute("SELECT COUNT(*) FROM state WHERE name > ? AND name < ? AND expires > ?",
                     ("ls:k\x1f", "ls:k ", now)).fetchone()
        conn.executemany("INSERT OR REPLACE INTO state VALUES (?, ?, ?)",
                         [("rq:k", now + 1, now + 1), ("ls:k\x1f" + lease, 0, now + 30)])
    else:
        conn.execute("SELECT value FROM state WHERE name = ? AND expires > ?", ("tk:k", now)).fetchone()
        conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", ("tk:k", now + 1, now + 1))
        conn.execute("INSERT INTO state VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET value = value + "
                     "excluded.value", ("bt:k:d", 25, now + 100))
        conn.execute("DELETE FROM state WHERE name = ?", ("ls:k\x1f" + lease,))
    conn.execute("COMMIT")


async def measure(mode: str) -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="streamgw-control-"), "control.db")
    control = SQLiteControl(path)
    await control.admit([Check("requests", "rq:x", 1)])  # creates the file and its schema
    latencies: list[float] = []

    async def one(task: int) -> None:
        for n in range(ROUNDS):
            lease = f"{task}-{n}"
            checks = [Check("requests", "rq:k", 10**8), Check("tokens", "tk:k", 10**9),
                      Check("budget", "bt:k:d", 10**12, ttl=100), Check("streams", "ls:k", 10**5, lease, 30)]
            charges = [Charge("tokens", "tk:k", 25, 10**9), Charge("add", "bt:k:d", 25, ttl=100),
                       Charge("release", "ls:k", lease=lease)]
            started = time.perf_counter()
            if mode == "loop":
                await control.admit(checks)
                await control.settle(charges)
            else:
                await trio.to_thread.run_sync(_threaded, path, lease, True)
                await trio.to_thread.run_sync(_threaded, path, lease, False)
            latencies.append(time.perf_counter() - started)

    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        for task in range(TASKS):
            nursery.start_soon(one, task)
    cpu = time.process_time() - cpu
    await control.aclose()
    return (f"{mode:>6}: {len(latencies)} requests at c={TASKS}: {cpu / len(latencies) * 1e6:.0f} µs CPU per request "
            f"(admit + settle), p50 {statistics.median(latencies) * 1e3:.2f} ms")


def main() -> int:
    for mode in ("loop", "thread"):
        print(trio.run(measure, mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Which Redis client under trio: our RESP client on trio sockets vs the sync ``redis`` package in worker threads.

    python bench/redis_clients.py [--ops 2000] [--tasks 64] [--size 4096]

Starts a throwaway ``redis-server``.  For each client: ``--ops`` sequential round trips of the
store's write (a pipelined ``SET`` of a ``--size``-byte record and its index, as
``RedisBackend.put_many`` sends them) and its read (``GET``), then ``--tasks`` concurrent tasks
doing the same.  Reports latency p50/p99 per operation and throughput.  The ``redis``
package is not a dependency of streamgw: ``pip install redis`` to include it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgw.store.resp import RedisClient
from streamgw.testing.redis_server import running_redis

Op = Callable[[int], Awaitable[None]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def trio_ops(client: RedisClient, value: bytes) -> tuple[Op, Op]:
    async def write(i: int) -> None:
        await client.pipeline([["SET", f"bench:resp:{i}", value, "PX", 60000],
                               ["SET", f"bench:idx:{i}", "msg_a\nmsg_b", "PX", 60000]])

    async def read(i: int) -> None:
        await client.execute("GET", f"bench:resp:{i}")

    return write, read


def threaded_ops(client: Any, value: bytes, limiter: trio.CapacityLimiter) -> tuple[Op, Op]:
    def write_sync(i: int) -> None:
        pipe = client.pipeline(transaction=False)
        pipe.set(f"bench:resp:{i}", value, px=60000)
        pipe.set(f"bench:idx:{i}", "msg_a\nmsg_b", px=60000)
        pipe.execute()

    async def write(i: int) -> None:
        await trio.to_thread.run_sync(write_sync, i, limiter=limiter)

    async def read(i: int) -> None:
        await trio.to_thread.run_sync(client.get, f"bench:resp:{i}", limiter=limiter)

    return write, read


async def sequential(op: Op, ops: int) -> dict[str, float]:
    times = []
    for i in range(ops):
        start = time.perf_counter()
        await op(i)
        times.append(time.perf_counter() - start)
    return {"p50_us": round(statistics.median(times) * 1e6, 1), "p99_us": round(percentile(times, 0.99) * 1e6, 1)}


async def concurrent(op: Op, ops: int, tasks: int) -> dict[str, float]:
    per_task = max(1, ops // tasks)

    async def worker(base: int) -> None:
        for i in range(per_task):
            await op(base + i)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for t in range(tasks):
            nursery.start_soon(worker, t * per_task)
    elapsed = time.perf_counter() - start
    return {"ops_per_s": round(per_task * tasks / elapsed)}


async def measure(write: Op, read: Op, args: argparse.Namespace) -> dict[str, Any]:
    await sequential(write, 200)  # warm up connections
    return {
        "write": await sequential(write, args.ops), "read": await sequential(read, args.ops),
        "write_concurrent": await concurrent(write, args.ops * 4, args.tasks),
        "read_concurrent": await concurrent(read, args.ops * 4, args.tasks),
    }


async def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    value = b"x" * args.size
    results: dict[str, Any] = {}
    ours = RedisClient(url, max_connections=16)
    try:
        results["trio_resp"] = await measure(*trio_ops(ours, value), args)
    finally:
        await ours.aclose()
    try:
        import redis
    except ImportError:
        results["redis_py_threads"] = "not installed (pip install redis)"
        return results
    pool = redis.ConnectionPool.from_url(url, max_connections=16)
    sync_client = redis.Redis(connection_pool=pool)
    try:
        results["redis_py_threads"] = await measure(*threaded_ops(sync_client, value, trio.CapacityLimiter(16)),
                                                    args)
    finally:
        pool.disconnect()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    with running_redis() as url:
        results = trio.run(run, url, args)
    print(json.dumps({"ops": args.ops, "tasks": args.tasks, "size": args.size, **results}, indent=2))


if __name__ == "__main__":
    main()

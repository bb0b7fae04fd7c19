"""A managed key made on one gateway works at once everywhere, and a change reaches every worker within a second.

Real processes: ``streamgw serve --workers 2`` instances sharing a real ``redis-server`` (two
instances, four workers) or one SQLite file (one instance, two workers).  Each worker is reached
through a keep-alive connection of its own, told apart by the ``pid`` of ``/readyz``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import httpx
import trio

from streamgw.testing.process import start_gateway, stop_process
from streamgw.testing.redis_server import require_redis, running_redis

ADMIN = "sk-admin-propagation-0123"
ADMIN_AUTH = {"authorization": f"Bearer {ADMIN}"}
#: what the tests assert: a change is seen by every worker within this many seconds
WITHIN = 1.0


def config_text(control: str) -> str:
    return f"""
[server]
drain_timeout = 1
graceful_timeout = 0.5

[store]
backend = "memory"

[providers.demo]
type = "demo"
first_token_delay = 0.0
tokens_per_second = 5000.0

[control]
{control}

[admin]
key = "{ADMIN}"
"""


@dataclass
class Instance:
    proc: Popen[bytes]
    url: str
    log: Path


@contextmanager
def instances(tmp_path: Path, control: str, count: int) -> Iterator[list[Instance]]:
    """``count`` gateways with ``--workers 2`` and the same ``[control]``; stopped at the end."""
    config = tmp_path / "streamgw.toml"
    config.write_text(config_text(control))
    started: list[Instance] = []
    try:
        for index in range(count):
            log = tmp_path / f"gateway-{index}.log"
            proc, url = start_gateway(config, log, extra_args=["--workers", "2", "--log-level", "debug"],
                                      probe="/readyz")
            started.append(Instance(proc, url, log))
        yield started
    finally:
        for instance in started:
            stop_process(instance.proc)


@asynccontextmanager
async def worker_clients(instance: Instance) -> AsyncIterator[dict[int, httpx.AsyncClient]]:
    """One client per worker of ``instance``, each on one keep-alive connection (by the worker's pid)."""
    found: dict[int, httpx.AsyncClient] = {}
    try:
        with trio.fail_after(20):
            while len(found) < 2:
                client = httpx.AsyncClient(base_url=instance.url, timeout=5,
                                           limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
                pid = (await client.get("/readyz")).json()["pid"]
                if pid in found:
                    await client.aclose()
                else:
                    found[pid] = client
        yield found
    finally:
        for client in found.values():
            await client.aclose()


async def status(client: httpx.AsyncClient, secret: str) -> int:
    answer = await client.get("/v1/models", headers={"authorization": f"Bearer {secret}"})
    return answer.status_code


async def until_refused(workers: list[httpx.AsyncClient], secret: str) -> float:
    """Seconds until every worker refuses ``secret`` (asked every 10 ms); fails after 5 s."""
    started = trio.current_time()
    waiting = list(workers)
    with trio.fail_after(5):
        while waiting:
            waiting = [w for w in waiting if await status(w, secret) != 401]
            if waiting:
                await trio.sleep(0.01)
    return trio.current_time() - started


async def check_propagation(maker: httpx.AsyncClient, workers: list[httpx.AsyncClient]) -> list[float]:
    """Make a key through ``maker``: every worker takes it at once; disabled, then deleted, every worker refuses it
    within ``WITHIN`` seconds.  Returns the two times measured."""
    answer = await maker.post("/admin/keys", json={"name": "roaming", "tenant": "team"}, headers=ADMIN_AUTH)
    assert answer.status_code == 201, answer.text
    secret, key_id = answer.json()["secret"], answer.json()["id"]
    for worker in workers:  # at once: the first request on each worker is admitted, no retry
        assert await status(worker, secret) == 200
        served = await worker.post("/v1/responses", json={"model": "demo/x", "input": "hi"},
                                   headers={"authorization": f"Bearer {secret}"})
        assert served.status_code == 200 and served.json()["status"] == "completed"

    times = []
    disabled = await maker.patch(f"/admin/keys/{key_id}", json={"disabled": True}, headers=ADMIN_AUTH)
    assert disabled.status_code == 200
    times.append(await until_refused(workers, secret))

    enabled = await maker.patch(f"/admin/keys/{key_id}", json={"disabled": False}, headers=ADMIN_AUTH)
    assert enabled.status_code == 200
    with trio.fail_after(5):
        for worker in workers:
            while await status(worker, secret) != 200:  # noqa: ASYNC110 -- nothing signals it: poll
                await trio.sleep(0.01)

    deleted = await maker.delete(f"/admin/keys/{key_id}", headers=ADMIN_AUTH)
    assert deleted.status_code == 200
    times.append(await until_refused(workers, secret))
    assert max(times) < WITHIN, times
    return times


async def test_two_instances_sharing_redis(tmp_path: Path) -> None:
    require_redis()
    with running_redis() as url:
        control = f'backend = "redis"\nurl = "{url}"\nkey_prefix = "propagation:"'
        with instances(tmp_path, control, 2) as (one, two):
            async with worker_clients(one) as makers, worker_clients(two) as others:
                maker = next(iter(makers.values()))
                times = await check_propagation(maker, [*others.values(), *makers.values()])
                print(f"redis, 2 instances x 2 workers: disabled seen after {times[0] * 1000:.0f} ms, "
                      f"deleted after {times[1] * 1000:.0f} ms")
                secret = (await maker.post("/admin/keys", json={"name": "quiet"}, headers=ADMIN_AUTH)).json()["secret"]
    logs = [instance.log.read_text(errors="replace") for instance in (one, two)]
    assert "admin: created key 'roaming'" in logs[0]  # logged at debug level, the secret never
    assert all(secret not in log and secret[7:] not in log for log in logs)


async def test_one_instance_two_workers_sharing_sqlite(tmp_path: Path) -> None:
    control = f'backend = "sqlite"\npath = "{tmp_path / "control.db"}"'
    with instances(tmp_path, control, 1) as (one,):
        async with worker_clients(one) as workers:
            maker = next(iter(workers.values()))
            times = await check_propagation(maker, list(workers.values()))
            print(f"sqlite, 1 instance x 2 workers: disabled seen after {times[0] * 1000:.0f} ms, "
                  f"deleted after {times[1] * 1000:.0f} ms")

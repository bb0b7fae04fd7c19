"""Store fixtures: a real ``redis-server`` per session, and every backend behind one parametrised fixture."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from streamgw.store.base import Backend
from streamgw.store.memory import MemoryBackend
from streamgw.store.redis import RedisBackend
from streamgw.store.service import StoreService
from streamgw.store.sqlite import SQLiteBackend
from streamgw.testing.redis_server import require_redis, running_redis

_PREFIXES = itertools.count()
T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T | None]]) -> T:
    """Poll ``check`` until it returns something truthy (within 10 seconds); return that."""
    with trio.fail_after(10):
        for _ in itertools.count():
            result = await check()
            if result:
                return result
            await trio.sleep(0.01)
    raise AssertionError("unreachable")


class Clock:
    """A settable wall clock for retention tests."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    require_redis()
    with running_redis() as url:
        yield url


def unique_prefix() -> str:
    """A key prefix no other test uses: tests share one Redis server."""
    return f"test{next(_PREFIXES)}:"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[Backend]:
    """Each backend, opened; Redis with a prefix of its own (its TTLs run on Redis's clock)."""
    chosen: Backend
    if request.param == "memory":
        chosen = MemoryBackend(clock=clock)
    elif request.param == "sqlite":
        chosen = SQLiteBackend(str(tmp_path / "store.db"), clock=clock)
    else:
        chosen = RedisBackend(request.getfixturevalue("redis_url"), key_prefix=unique_prefix(), clock=clock)
    await chosen.open()
    try:
        yield chosen
    finally:
        await chosen.aclose()


@pytest.fixture
async def running(nursery: trio.Nursery) -> AsyncIterator[Any]:
    """Start a service's writer in the test's nursery (``await running(service)``), close it afterwards."""
    started: list[StoreService] = []

    async def start(service: StoreService) -> StoreService:
        await nursery.start(service.run)
        started.append(service)
        return service

    yield start
    for service in started:
        await service.aclose()

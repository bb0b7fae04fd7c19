"""Control fixtures: a real ``redis-server`` per session, and every key store behind one parametrised fixture."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from streamgw.control.keys import KeyStore, MemoryKeyStore
from streamgw.control.keys_redis import RedisKeyStore
from streamgw.control.keys_sqlite import SQLiteKeyStore
from streamgw.testing.redis_server import require_redis, running_redis

_PREFIXES = itertools.count()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    require_redis()
    with running_redis() as url:
        yield url


def unique_prefix() -> str:
    """A key prefix no other test uses: tests share one Redis server."""
    return f"keys{next(_PREFIXES)}:"


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    """Each backend of managed keys in turn (Redis: a real server, a prefix of the test's own)."""
    store: KeyStore
    if request.param == "memory":
        store = MemoryKeyStore()
    elif request.param == "sqlite":
        store = SQLiteKeyStore(str(tmp_path / "control.db"))
    else:
        store = RedisKeyStore(request.getfixturevalue("redis_url"), key_prefix=unique_prefix())
    try:
        yield store
    finally:
        await store.aclose()

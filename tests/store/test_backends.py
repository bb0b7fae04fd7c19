"""Every backend (memory, SQLite, Redis) keeps records, item pointers and expiry the same way."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import trio

from streamgw.store.base import (
    Backend,
    EncodedRecord,
    ItemPointer,
    StoredResponse,
    StoreUnavailable,
    decode_record,
    encode_record,
)
from streamgw.store.redis import RedisBackend
from streamgw.store.sqlite import SQLiteBackend

from .conftest import Clock


def record(response_id: str, *item_ids: str, expires_at: float | None = None,
           body: bytes | None = None) -> EncodedRecord:
    pointers = tuple(ItemPointer(item_id, response_id, "input", i) for i, item_id in enumerate(item_ids))
    return EncodedRecord(response_id, body or f"body of {response_id}".encode(), expires_at, pointers)


async def test_put_get_replace(backend: Backend) -> None:
    assert await backend.get("resp_a") is None
    await backend.put_many([record("resp_a"), record("resp_b")])
    assert await backend.get("resp_a") == b"body of resp_a"
    await backend.put_many([record("resp_a", body=b"\x00newer \xe2\x9c\x93")])
    assert await backend.get("resp_a") == b"\x00newer \xe2\x9c\x93"
    assert await backend.get("resp_b") == b"body of resp_b"


async def test_pointers_locate_items_and_go_with_their_record(backend: Backend) -> None:
    await backend.put_many([record("resp_a", "msg_1", "msg_2"), record("resp_b", "msg_3")])
    assert await backend.locate("msg_2", "") == ItemPointer("msg_2", "resp_a", "input", 1)
    assert await backend.locate("msg_3", "") == ItemPointer("msg_3", "resp_b", "input", 0)
    assert await backend.locate("msg_404", "") is None
    assert await backend.delete("resp_a", "") is True
    assert await backend.delete("resp_a", "") is False
    assert await backend.get("resp_a") is None
    assert await backend.locate("msg_1", "") is None and await backend.locate("msg_2", "") is None
    assert await backend.locate("msg_3", "") is not None


async def test_expired_records_are_gone(backend: Backend, clock: Clock) -> None:
    await backend.put_many([record("resp_old", "msg_old", expires_at=clock.now + 0.3),
                            record("resp_keep", expires_at=None)])
    assert await backend.get("resp_old") is not None
    clock.now += 1  # memory and SQLite read the clock; Redis expires keys on its own
    if isinstance(backend, RedisBackend):
        await trio.sleep(0.5)
    await backend.purge(clock.now)
    assert await backend.get("resp_old") is None
    assert await backend.locate("msg_old", "") is None
    assert await backend.get("resp_keep") is not None


async def test_sqlite_file_is_created_in_wal_mode_and_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "fresh.db"
    first = SQLiteBackend(str(path))
    await first.open()
    await first.put_many([record("resp_a", "msg_1")])
    await first.aclose()
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    second = SQLiteBackend(str(path))
    try:
        assert await second.get("resp_a") == b"body of resp_a"
        assert await second.locate("msg_1", "") is not None
    finally:
        await second.aclose()


async def test_sqlite_writer_keeps_a_small_page_cache_and_readers_the_default(tmp_path: Path) -> None:
    backend = SQLiteBackend(str(tmp_path / "cache.db"))
    try:
        await backend.put_many([record("resp_a", "msg_1")])
        assert await backend.get("resp_a") == b"body of resp_a"
        assert backend._writer is not None and backend._readers
        assert backend._writer.execute("PRAGMA cache_size").fetchone()[0] == -256
        assert backend._readers[0].execute("PRAGMA cache_size").fetchone()[0] == -2000
    finally:
        await backend.aclose()


async def test_sqlite_purge_removes_rows(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteBackend(str(tmp_path / "p.db"), clock=clock)
    try:
        await store.put_many([record("resp_a", "msg_1", expires_at=clock.now + 10), record("resp_b")])
        assert await store.purge(clock.now + 11) == 1
        with sqlite3.connect(tmp_path / "p.db") as conn:
            assert conn.execute("SELECT id FROM responses").fetchall() == [("resp_b",)]
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 0
    finally:
        await store.aclose()


async def test_sqlite_that_cannot_open_is_unavailable_and_fails_fast(tmp_path: Path) -> None:
    store = SQLiteBackend(str(tmp_path / "no" / "such" / "dir.db"))
    with pytest.raises(StoreUnavailable, match="sqlite") as raised:
        await store.open()
    assert f"the directory {str(tmp_path / 'no' / 'such')!r} does not exist" in raised.value.message
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get("resp_a")
    assert time.monotonic() - started < 0.5
    await store.aclose()


async def test_redis_down_is_unavailable() -> None:
    store = RedisBackend("redis://127.0.0.1:1/0", timeout=0.5)
    for call in (store.open(), store.get("resp_a"), store.put_many([record("resp_a")]), store.delete("resp_a", "")):
        with pytest.raises(StoreUnavailable, match="redis"):
            await call
    await store.aclose()


async def test_redis_select_keeps_databases_apart(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    three, zero = RedisBackend(base + "/3", key_prefix="sel:"), RedisBackend(base + "/0", key_prefix="sel:")
    try:
        await three.put_many([record("resp_db")])
        assert await three.get("resp_db") is not None
        assert await zero.get("resp_db") is None
        assert await three.delete("resp_db", "")
    finally:
        await three.aclose()
        await zero.aclose()


def test_record_encoding_round_trip() -> None:
    original = StoredResponse(
        id="resp_x", response={"id": "resp_x", "status": "completed", "output": [{"id": "msg_o", "type": "message"}]},
        input_items=({"id": "msg_i", "type": "message", "role": "user", "content": [{"type": "input_text",
                                                                                        "text": "héllo ✓"}]},),
        origins=("@gateway",), provider="claude", provider_type="anthropic", index_ids=("msg_i", "msg_o"),
        created_at=12.5,
    )
    assert decode_record(encode_record(original)) == original
    assert [p.kind for p in original.pointers()] == ["input", "output"]
    with pytest.raises(ValueError):
        decode_record(b'{"v": 99}')

"""``[store] snapshot_after``: a stream's ``in_progress`` snapshot reaches the backend only if the stream outlives it.

The writes are observed from outside the gateway: an SQLite trigger on the shared file logs
every record written (its id, its status, and when), and a second gateway instance on the same
file reads what the first one stored.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio

from streamgw.config import StoreConfig
from streamgw.core.sse import SSEDecoder
from streamgw.store.sqlite import SQLiteBackend
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import running_gateway

from .conftest import eventually
from .test_app import config


@pytest.fixture
async def mock(nursery: trio.Nursery) -> AsyncIterator[tuple[ChatCompletionsMock, int]]:
    upstream = ChatCompletionsMock()
    port = await nursery.start(upstream.serve)
    yield upstream, port


async def logged_store(path: Path) -> Path:
    """The store file, with a trigger that logs every record written to it (id, status, wall-clock time)."""
    backend = SQLiteBackend(str(path))
    await backend.open()  # the gateway's own schema
    await backend.aclose()
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE write_log (id TEXT, status TEXT, at REAL)")
        conn.execute("CREATE TRIGGER log_write AFTER INSERT ON responses BEGIN INSERT INTO write_log VALUES "
                     "(new.id, json_extract(CAST(new.body AS TEXT), '$.response.status'), "
                     "(julianday('now') - 2440587.5) * 86400.0); END")
    return path


def writes(path: Path, response_id: str) -> list[tuple[str, float]]:
    """(status, time) of every write of ``response_id``, oldest first."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT status, at FROM write_log WHERE id = ? ORDER BY rowid", (response_id,))
        return [(str(status), float(at)) for status, at in rows.fetchall()]


@asynccontextmanager
async def gateway(mock_port: int, store: StoreConfig) -> AsyncIterator[httpx.AsyncClient]:
    async with running_gateway(config(mock_port, store)) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client


def events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(event.data) for event in SSEDecoder().feed(body)]


async def test_a_short_stream_is_written_once(mock: tuple[ChatCompletionsMock, int], tmp_path: Path) -> None:
    path = await logged_store(tmp_path / "gw.db")
    store = StoreConfig(backend="sqlite", path=str(path), snapshot_after=2.0)  # generous: the machine is shared
    async with gateway(mock[1], store) as client:
        ids = []
        for _ in range(5):
            answer = await client.post("/v1/responses", json={"model": "mock/text:tokens=20", "input": "short",
                                                               "stream": True})
            final = events(answer.content)[-1]
            assert final["type"] == "response.completed"
            ids.append(final["response"]["id"])
        await trio.sleep(2.5)  # past snapshot_after: a snapshot still held back would be written by now
    for response_id in ids:
        assert [status for status, _ in writes(path, response_id)] == ["completed"]


async def test_snapshot_after_zero_writes_the_snapshot_at_once(mock: tuple[ChatCompletionsMock, int],
                                                               tmp_path: Path) -> None:
    path = await logged_store(tmp_path / "gw.db")
    async with gateway(mock[1], StoreConfig(backend="sqlite", path=str(path), snapshot_after=0)) as client:
        answer = await client.post("/v1/responses", json={"model": "mock/text:tokens=3", "input": "short",
                                                           "stream": True})
        response_id = events(answer.content)[-1]["response"]["id"]
    assert [status for status, _ in writes(path, response_id)] == ["in_progress", "completed"]


@pytest.mark.parametrize("delay", [1.0, 0.0])
async def test_a_long_stream_reaches_other_instances_after_the_delay(
        mock: tuple[ChatCompletionsMock, int], tmp_path: Path, delay: float) -> None:
    """This instance reads the snapshot at once; another one sharing the file once ``snapshot_after`` passed."""
    path = await logged_store(tmp_path / "gw.db")
    store = StoreConfig(backend="sqlite", path=str(path), snapshot_after=delay)
    body = {"model": "mock/text:tokens=30,token_delay=0.1", "input": "long", "stream": True}
    async with gateway(mock[1], store) as first, gateway(mock[1], store) as second, \
            first.stream("POST", "/v1/responses", json=body) as response, \
            aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_raw())) as chunks:
        opened = json.loads(SSEDecoder().feed(await chunks.__anext__())[0].data)
        seen_at = time.time()
        response_id = opened["response"]["id"]
        assert (await first.get(f"/v1/responses/{response_id}")).json()["status"] == "in_progress"

        async def seen() -> httpx.Response | None:
            answer = await second.get(f"/v1/responses/{response_id}")
            return answer if answer.status_code != 404 else None

        other = await eventually(seen)  # within 10 s: generous, the machine is shared
        assert other.json()["status"] == "in_progress", "seen by the other instance while it still streams"
        rest = b"".join([chunk async for chunk in chunks])
    assert events(rest)[-1]["type"] == "response.completed"
    logged = writes(path, response_id)
    assert [status for status, _ in logged] == ["in_progress", "completed"]
    # The snapshot was submitted right after the first event was sent: written no sooner than the delay after
    # the client read that event, less the time the client took to read it (half the delay: a loaded machine).
    if delay:
        assert logged[0][1] - seen_at >= delay / 2

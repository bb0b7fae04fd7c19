"""The store survives anything: a record it cannot encode, a writer that crashes, a store that hangs, a deleted file.

Real parts throughout: the SQLite file, a ``redis-server`` of the test's own (stopped with
SIGSTOP to make it hang), the memory backend, and a real gateway (hypercorn) in front of a
Chat Completions mock on loopback.  Names added by this work are imported inside the tests,
so that on the code before it each test fails on its own assertion, not on an import.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from streamgw.app.metrics import Metrics
from streamgw.app.routes import Gateway, create_app
from streamgw.config import StoreConfig
from streamgw.store.base import EncodedRecord, StoredResponse
from streamgw.store.memory import MemoryBackend
from streamgw.store.service import StoreService
from streamgw.store.sqlite import SQLiteBackend
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import running_gateway
from streamgw.testing.process import running_mock, start_gateway, stop_process
from streamgw.testing.redis_server import redis_process, require_redis

from .conftest import eventually, unique_prefix
from .test_app import config, sse_events
from .test_service import stored

#: a request body (raw bytes: httpx will not encode a lone surrogate) with one in its metadata
POISON = b'{"model":"mock/text:tokens=3","input":"poison","metadata":{"k":"secret-\\ud800-value"}}'


def dropped(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("streamgw_store_records_dropped_total", {"reason": reason}) or 0.0


class Live:
    """A gateway serving in the test's trio run, its state (``gw``) and a client."""

    def __init__(self, gw: Gateway, client: httpx.AsyncClient) -> None:
        self.gw = gw
        self.client = client

    async def create(self, **body: Any) -> httpx.Response:
        return await self.client.post("/v1/responses", json={"model": "mock/text:tokens=3", **body})

    async def ready(self) -> tuple[int, dict[str, Any]]:
        answer = await self.client.get("/readyz")
        return answer.status_code, answer.json()

    async def written(self) -> None:
        """Wait until nothing is pending: what was submitted reached the backend (or was given up on)."""
        async def done() -> bool:
            return not self.gw.store.pending

        await eventually(done)


@pytest.fixture
async def mock_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    upstream = ChatCompletionsMock()
    port: int = await nursery.start(upstream.serve)
    yield port


@asynccontextmanager
async def live_gateway(mock_port: int, store: StoreConfig) -> AsyncIterator[Live]:
    app = create_app(config(mock_port, store))
    async with running_gateway(config(mock_port, store), app) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield Live(app.extensions["streamgw"], client)


def store_config(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreConfig:
    if kind == "sqlite":
        return StoreConfig(backend="sqlite", path=str(tmp_path / "gw.db"))
    if kind == "redis":
        return StoreConfig(backend="redis", url=request.getfixturevalue("redis_url"), key_prefix=unique_prefix())
    return StoreConfig(backend="memory")


# -- a record that cannot be encoded ---------------------------------------------------------------


def test_encode_record_refuses_a_lone_surrogate_without_quoting_it() -> None:
    from streamgw.store.base import RecordNotEncodable, encode_record

    record = StoredResponse("resp_1", {"id": "resp_1", "metadata": {"k": "secret-\ud800-value"}})
    with pytest.raises(RecordNotEncodable) as raised:
        encode_record(record)
    assert "surrogate" in str(raised.value) and "secret" not in str(raised.value)
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecordNotEncodable, match="nested too deeply"):
        encode_record(StoredResponse("resp_2", {"id": "resp_2", "metadata": {"k": deep}}))


def test_what_the_fast_encoder_refuses_is_still_stored_as_before() -> None:
    """orjson refuses deep nesting, huge integers and non-string keys: the standard library encodes them."""
    from streamgw.store.base import decode_record, encode_record

    deep: Any = "leaf"
    for _ in range(300):  # over orjson's 254 levels, well under the standard library's limit
        deep = [deep]
    response = {"id": "resp_3", "metadata": {"deep": deep, "big": 2**70}, "tools": [{7: "int key"}]}
    decoded = decode_record(encode_record(StoredResponse("resp_3", response)))
    assert decoded.response == {**response, "tools": [{"7": "int key"}]}  # as json.dumps always stored it
    plain = {"id": "resp_4", "output": [{"type": "message", "text": "h\u00e9llo \u2603", "n": 1.5}]}
    assert decode_record(encode_record(StoredResponse("resp_4", plain))).response == plain


async def test_a_record_that_cannot_be_encoded_costs_only_itself(running: Any, caplog: pytest.LogCaptureFixture,
                                                                  tmp_path: Path) -> None:
    """Real SQLite: the bad record of a batch becomes a tombstone, the records around it are written."""
    metrics = Metrics()
    backend = SQLiteBackend(str(tmp_path / "store.db"))
    service = StoreService(StoreConfig(backend="sqlite"), metrics, backend)
    bad = StoredResponse("resp_bad", {"id": "resp_bad", "metadata": {"k": "secret-\ud800-value"}},
                         created_at=time.time())
    for record in (stored("resp_a"), bad, stored("resp_c")):
        service.submit(record)  # before the writer runs: one batch
    await running(service)
    await eventually(lambda: _none_pending(service))
    for good in ("resp_a", "resp_c"):
        assert await backend.get(good) is not None
    tombstone = await service.get("resp_bad", "")
    assert tombstone is not None and tombstone.omitted is not None and "could not be encoded" in tombstone.omitted
    assert dropped(metrics, "unencodable") == 1
    service.submit(stored("resp_d"))
    await eventually(lambda: _written(backend, "resp_d"))
    logged = [r.getMessage() for r in caplog.records if "could not be encoded" in r.getMessage()]
    assert logged and "resp_bad" in logged[0] and all("secret" not in line for line in caplog.messages)


async def _none_pending(service: StoreService) -> bool:
    return not service.pending


async def _written(backend: Any, response_id: str) -> bool:
    return await backend.get(response_id) is not None


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
async def test_after_a_poisoned_request_the_next_one_is_stored(kind: str, mock_port: int, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    """The issue's reproduction: a lone surrogate in ``metadata`` used to kill the writer for good."""
    async with live_gateway(mock_port, store_config(kind, tmp_path, request)) as live:
        # The parser refuses it now (400 naming the param); either way its record must cost nothing else.
        poisoned = await live.client.post("/v1/responses", content=POISON, headers={"content-type": "application/json"})
        assert poisoned.status_code == 400 and poisoned.json()["error"]["code"] == "invalid_unicode", poisoned.text
        for _ in range(3):  # a few in a row: a writer killed by the first would fail each of them
            created = await live.create(input="after the poison")
            assert created.status_code == 200, created.text
            streamed = await live.create(input="streamed after the poison", stream=True)
            assert streamed.status_code == 200 and sse_events(streamed.content)[-1]["type"] == "response.completed"
        await live.written()
        fetched = await live.client.get(f"/v1/responses/{created.json()['id']}")
        assert fetched.status_code == 200 and fetched.json() == created.json()
        assert await live.gw.store.backend.get(created.json()["id"]) is not None  # type: ignore[union-attr]
        assert await live.ready() == (200, {"ready": True, "draining": False, "pid": os.getpid()})
        # refused at parse time, so never queued: the writer's own survival is tested record by record above
        assert dropped(live.gw.metrics, "unencodable") == 0


def test_two_workers_both_survive_poisoned_requests(tmp_path: Path) -> None:
    """``--workers 2`` on one SQLite file: a poisoned writer in either worker used to fail every other request."""
    with running_mock() as upstream:
        config_file = tmp_path / "gw.toml"
        config_file.write_text(f"""
[store]
backend = "sqlite"
path = "{tmp_path / 'gw.db'}"

[providers.mock]
type = "chat"
base_url = "http://127.0.0.1:{upstream}/v1"
api_key = "sk-upstream-test"
""")
        proc, url = start_gateway(config_file, tmp_path / "gw.log", extra_args=["--workers", "2"], probe="/readyz")
        try:
            fresh = httpx.Limits(max_keepalive_connections=0)  # a new connection each: both workers get some
            with httpx.Client(base_url=url, timeout=30, limits=fresh) as client:
                for _ in range(8):
                    client.post("/v1/responses", content=POISON, headers={"content-type": "application/json"})
                created = [client.post("/v1/responses", json={"model": "mock/text:tokens=3", "input": f"after {i}"})
                           for i in range(10)]
                assert [answer.status_code for answer in created] == [200] * 10, [a.text for a in created]
                for answer in created:  # written before the answer left (confirm_writes), so any worker finds it
                    assert client.get(f"/v1/responses/{answer.json()['id']}").status_code == 200
                # Which worker accepts a new connection is the kernel's choice: ask until both answered
                # (a worker whose writer had died would answer 503 here, or not at all).
                ready = []
                while len({answer.json()["pid"] for answer in ready}) < 2 and len(ready) < 400:
                    ready.append(client.get("/readyz"))
                assert {answer.status_code for answer in ready} == {200}
                assert len({answer.json()["pid"] for answer in ready}) == 2, "both workers answered (and are ready)"
        finally:
            stop_process(proc)


# -- a writer that fails or crashes anyway ---------------------------------------------------------


class PickyBackend(MemoryBackend):
    """A memory backend that fails (not as an outage) every batch holding ``resp_bad``."""

    async def put_many(self, records: Sequence[EncodedRecord]) -> None:
        if any(record.id == "resp_bad" for record in records):
            raise RuntimeError("this backend does not like resp_bad")
        await super().put_many(records)


async def test_a_batch_failing_for_one_record_is_written_record_by_record(running: Any) -> None:
    metrics = Metrics()
    backend = PickyBackend()
    service = StoreService(StoreConfig(backend="memory"), metrics, backend)
    for response_id in ("resp_a", "resp_bad", "resp_c"):
        service.submit(stored(response_id))
    await running(service)
    await eventually(lambda: _none_pending(service))
    assert [await backend.get(i) is not None for i in ("resp_a", "resp_bad", "resp_c")] == [True, False, True]
    assert dropped(metrics, "error") == 1
    service.submit(stored("resp_d"))
    await eventually(lambda: _written(backend, "resp_d"))


class CrashOnce(StoreService):
    """A service whose writer loop crashes on its first batch (a stand-in for a bug in it)."""

    crashed = False

    async def _write_batch(self, ids: list[str]) -> None:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("a bug in the writer")
        await super()._write_batch(ids)


async def test_a_crashed_writer_is_restarted(running: Any, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    backend = MemoryBackend()
    service = await running(CrashOnce(StoreConfig(backend="memory"), metrics, backend))
    service.submit(stored("resp_lost"))
    with trio.fail_after(5):  # nobody waits forever for a record the crash took with it
        await service.wait_written("resp_lost")
    service.submit(stored("resp_next"))
    await eventually(lambda: _written(backend, "resp_next"))
    assert service.crashed and service.unwritable() is None
    assert metrics.registry.get_sample_value("streamgw_store_task_restarts_total", {"task": "writer"}) == 1
    assert any("writer task crashed" in line for line in caplog.messages)
    assert any("writer task restarted" in line for line in caplog.messages)


# -- a store that hangs ----------------------------------------------------------------------------


@contextmanager
def stoppable_redis() -> Iterator[tuple[str, Any]]:
    """A ``redis-server`` of this test's own; always continued before it is stopped for good."""
    require_redis()
    with redis_process() as (url, proc):
        try:
            yield url, proc
        finally:
            os.kill(proc.pid, signal.SIGCONT)


async def test_a_hung_redis_delays_no_answer_and_readiness_says_so(mock_port: int) -> None:
    """SIGSTOP on redis-server: 20 stored responses in a row used to wait the store timeout each."""
    with stoppable_redis() as (url, proc):
        store = StoreConfig(backend="redis", url=url, key_prefix=unique_prefix(), timeout=1.0)
        async with live_gateway(mock_port, store) as live:
            live.gw.store.probe_every = 0.2
            before = (await live.create(input="before the hang")).json()["id"]
            await live.written()
            os.kill(proc.pid, signal.SIGSTOP)
            started = time.monotonic()
            answers = [await live.create(input=f"while hung {i}", stream=bool(i % 2)) for i in range(20)]
            elapsed = time.monotonic() - started
            assert [a.status_code for a in answers] == [200] * 20
            assert elapsed < 6.0, f"20 responses took {elapsed:.1f} s with the store hung (1 s timeout)"
            assert await live.ready() == (503, {"ready": False, "draining": False, "pid": os.getpid(),
                                                "store": "unwritable"})
            started = time.monotonic()
            fetched = await live.client.get(f"/v1/responses/{before}")
            assert fetched.status_code == 503 and fetched.json()["error"]["code"] == "store_unavailable"
            assert time.monotonic() - started < 3.0, "a read waits the store timeout (1 s), not more"
            chained = await live.create(input="next", previous_response_id=before)
            assert chained.status_code == 503 and chained.json()["error"]["type"] == "provider_error"

            os.kill(proc.pid, signal.SIGCONT)

            async def recovered() -> bool:
                return (await live.ready())[0] == 200

            await eventually(recovered)  # by the health check alone: no request needed
            after = (await live.create(input="after the hang")).json()["id"]
            await live.written()
            assert (await live.client.get(f"/v1/responses/{after}")).status_code == 200
            assert await live.gw.store.backend.get(after) is not None  # type: ignore[union-attr]


# -- a deleted SQLite file -------------------------------------------------------------------------


def rows(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM responses")}


async def test_a_deleted_sqlite_directory_makes_the_store_unwritable_until_it_is_back(
        mock_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    path = directory / "gw.db"
    async with live_gateway(mock_port, StoreConfig(backend="sqlite", path=str(path))) as live:
        live.gw.store.probe_every = 0.1
        first = (await live.create(input="first")).json()["id"]
        await live.written()
        assert first in rows(path)
        shutil.rmtree(directory)
        lost = await live.create(input="into the void")
        assert lost.status_code == 200, "the response is served all the same"

        async def unwritable() -> bool:
            return await live.ready() == (503, {"ready": False, "draining": False, "pid": os.getpid(),
                                                "store": "unwritable"})

        await eventually(unwritable)
        # Whichever store operation met the deleted file first (the write, the health check, or the purge that
        # starts with the store) says so; the write or check after it fails to open the file and says that
        # the store cannot write, with why.
        assert any("was deleted" in message for message in caplog.messages)
        assert any(r.levelno == logging.ERROR and "cannot write" in r.getMessage() and str(directory) in
                   r.getMessage() for r in caplog.records)
        directory.mkdir()

        async def recovered() -> bool:
            return (await live.ready())[0] == 200

        await eventually(recovered)
        after = (await live.create(input="after")).json()["id"]
        await live.written()
        assert rows(path) == {after}, "written to the file at the path, not to the deleted one"


async def test_a_deleted_sqlite_file_is_noticed_without_traffic(mock_port: int, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "gw.db"
    async with live_gateway(mock_port, StoreConfig(backend="sqlite", path=str(path))) as live:
        live.gw.store.check_every = 0.1
        first = (await live.create(input="first")).json()["id"]
        await live.written()
        path.unlink()

        async def recreated() -> bool:
            return path.exists()

        await eventually(recreated)  # the health check noticed, dropped the stale file and opened a new one
        assert any("was deleted" in line for line in caplog.messages)
        await eventually(lambda: _ready(live))
        after = (await live.create(input="after")).json()["id"]
        await live.written()
        assert rows(path) == {after} and first != after


async def _ready(live: Live) -> bool:
    return (await live.ready())[0] == 200

"""The store through the app, in process: endpoints, streamed snapshots, failures, 200 chains at once.

The gateway (hypercorn), a Chat Completions mock and the clients share the test's trio run.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import h11
import httpx
import pytest
import trio

from streamgw.config import Config, ProviderConfig, Secret, StoreConfig
from streamgw.core.sse import SSEDecoder
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import RawClient, running_gateway

from .conftest import eventually, unique_prefix

CONCURRENT = 200


class Stack:
    """The mock upstream and an HTTP client for one running gateway."""

    def __init__(self, mock: ChatCompletionsMock, client: httpx.AsyncClient, port: int) -> None:
        self.mock = mock
        self.client = client
        self.port = port

    async def create(self, **body: Any) -> httpx.Response:
        return await self.client.post("/v1/responses", json={"model": "mock/text:tokens=3", **body})

    def upstream_bodies(self, marker: str) -> list[dict[str, Any]]:
        return [r.json() for r in self.mock.requests if marker.encode() in r.body]


@pytest.fixture
async def mock(nursery: trio.Nursery) -> AsyncIterator[tuple[ChatCompletionsMock, int]]:
    upstream = ChatCompletionsMock()
    port = await nursery.start(upstream.serve)
    yield upstream, port


def config(mock_port: int, store: StoreConfig) -> Config:
    provider = ProviderConfig(name="mock", type="chat", base_url=f"http://127.0.0.1:{mock_port}/v1",
                              api_key=Secret("sk-upstream-test-key"))
    return Config(providers={"mock": provider}, store=store)


@asynccontextmanager
async def open_stack(mock: tuple[ChatCompletionsMock, int], store: StoreConfig) -> AsyncIterator[Stack]:
    async with running_gateway(config(mock[1], store)) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield Stack(mock[0], client, port)


@pytest.fixture
async def stack(mock: tuple[ChatCompletionsMock, int], tmp_path: Path) -> AsyncIterator[Stack]:
    async with open_stack(mock, StoreConfig(backend="sqlite", path=str(tmp_path / "gw.db"))) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "redis"])
async def shared_stack(request: pytest.FixtureRequest, mock: tuple[ChatCompletionsMock, int],
                       tmp_path: Path) -> AsyncIterator[Stack]:
    """A gateway on SQLite, then on Redis (a key prefix of its own)."""
    if request.param == "sqlite":
        store = StoreConfig(backend="sqlite", path=str(tmp_path / "gw.db"))
    else:
        store = StoreConfig(backend="redis", url=request.getfixturevalue("redis_url"), key_prefix=unique_prefix())
    async with open_stack(mock, store) as opened:
        yield opened


def sse_events(body: bytes) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    return [json.loads(event.data) for event in decoder.feed(body)]


async def test_get_input_items_delete(stack: Stack) -> None:
    created = (await stack.create(input=[{"role": "user", "content": f"item {i}"} for i in range(5)])).json()
    fetched = await stack.client.get(f"/v1/responses/{created['id']}")
    assert fetched.status_code == 200 and fetched.json() == created
    listed = (await stack.client.get(f"/v1/responses/{created['id']}/input_items")).json()
    texts = [item["content"][0]["text"] for item in listed["data"]]
    assert texts == [f"item {i}" for i in reversed(range(5))], "newest first by default, as on OpenAI"
    assert listed["object"] == "list" and listed["has_more"] is False
    assert listed["first_id"] == listed["data"][0]["id"] and listed["last_id"] == listed["data"][-1]["id"]
    seen: list[str] = []
    after: str | None = None
    while True:
        params = {"limit": "2", "order": "asc", **({"after": after} if after else {})}
        page = (await stack.client.get(f"/v1/responses/{created['id']}/input_items", params=params)).json()
        seen += [item["content"][0]["text"] for item in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == [f"item {i}" for i in range(5)]
    deleted = await stack.client.delete(f"/v1/responses/{created['id']}")
    assert deleted.json() == {"id": created["id"], "object": "response", "deleted": True}
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        gone = await stack.client.request(method, f"/v1/responses/{created['id']}{path}")
        assert gone.status_code == 404 and gone.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(("query", "param"), [
    ({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"limit": "x"}, "limit"),
    ({"order": "up"}, "order"), ({"after": "msg_nope"}, "after"),
])
async def test_input_items_query_is_validated(stack: Stack, query: dict[str, str], param: str) -> None:
    created = (await stack.create(input="x")).json()
    answer = await stack.client.get(f"/v1/responses/{created['id']}/input_items", params=query)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param


async def test_a_streamed_response_reads_in_progress_until_it_ends(stack: Stack) -> None:
    body = {"model": "mock/text:tokens=8,token_delay=0.05", "input": "slow", "stream": True}
    async with stack.client.stream("POST", "/v1/responses", json=body) as response, \
            aclosing(cast("AsyncGenerator[bytes, None]", response.aiter_raw())) as chunks:
        decoder = SSEDecoder()
        first = json.loads(decoder.feed(await chunks.__anext__())[0].data)
        response_id = first["response"]["id"]
        live = (await stack.client.get(f"/v1/responses/{response_id}")).json()
        assert live["status"] == "in_progress" and live["output"] == []
        rest = b"".join([chunk async for chunk in chunks])
    final = sse_events(rest)[-1]["response"]
    stored = (await stack.client.get(f"/v1/responses/{response_id}")).json()
    assert stored["status"] == "completed" and stored == final


async def test_a_stream_the_client_left_is_stored_as_failed(stack: Stack) -> None:
    body = {"model": "mock/stall:token_delay=0.01", "input": "leaving", "stream": True}
    client = await RawClient.connect(stack.port)
    try:
        await client.send_json("/v1/responses", body)
        assert (await client.response_head()).status_code == 200
        data = await client.next_event()
        assert isinstance(data, h11.Data)
        response_id = json.loads(SSEDecoder().feed(bytes(data.data))[0].data)["response"]["id"]
    finally:
        await client.aclose()

    async def finished() -> dict[str, Any] | None:
        stored: dict[str, Any] = (await stack.client.get(f"/v1/responses/{response_id}")).json()
        return None if stored["status"] == "in_progress" else stored

    stored = await eventually(finished)
    assert stored["status"] == "failed" and "disconnected" in stored["error"]["message"]


async def test_store_false_keeps_nothing(stack: Stack) -> None:
    created = (await stack.create(input="private", store=False)).json()
    assert created["store"] is False
    assert (await stack.client.get(f"/v1/responses/{created['id']}")).status_code == 404
    chained = await stack.create(input="next", previous_response_id=created["id"])
    assert chained.status_code == 404 and chained.json()["error"]["param"] == "previous_response_id"


async def test_concurrent_chains_keep_their_own_history(shared_stack: Stack) -> None:
    """200 conversations, each continued by one of 200 requests sent at once; half streamed their first turn."""
    stack = shared_stack
    first_ids: dict[int, str] = {}

    async def first_turn(i: int) -> None:
        if i % 2:
            first_ids[i] = (await stack.create(input=f"first-{i}-end")).json()["id"]
            return
        answer = await stack.client.post("/v1/responses", json={"model": "mock/text:tokens=3", "stream": True,
                                                                "input": f"first-{i}-end"})
        first_ids[i] = sse_events(answer.content)[-1]["response"]["id"]

    second: dict[int, httpx.Response] = {}

    async def second_turn(i: int) -> None:
        second[i] = await stack.create(input=f"second-{i}-end", previous_response_id=first_ids[i])

    async with trio.open_nursery() as nursery:
        for i in range(CONCURRENT):
            nursery.start_soon(first_turn, i)
    async with trio.open_nursery() as nursery:
        for i in range(CONCURRENT):
            nursery.start_soon(second_turn, i)
    for i in range(CONCURRENT):
        assert second[i].status_code == 200, second[i].text
        (sent,) = stack.upstream_bodies(f"second-{i}-end")
        texts = [json.dumps(message) for message in sent["messages"]]
        assert len(texts) == 3 and f"first-{i}-end" in texts[0] and "tok0 tok1 tok2" in texts[1]
        assert f"second-{i}-end" in texts[2]
        assert sum("first-" in text for text in texts) == 1, "no other conversation's turn leaked in"
    response_id = second[7].json()["id"]
    listed = (await stack.client.get(f"/v1/responses/{response_id}/input_items", params={"order": "asc"})).json()
    assert [item["role"] for item in listed["data"]] == ["user", "assistant", "user"]


async def test_many_requests_continue_the_same_response(shared_stack: Stack) -> None:
    stack = shared_stack
    root = (await stack.create(input="shared-root")).json()["id"]
    answers: list[httpx.Response] = []

    async def branch(i: int) -> None:
        answers.append(await stack.create(input=f"branch-{i}-end", previous_response_id=root))

    async with trio.open_nursery() as nursery:
        for i in range(CONCURRENT):
            nursery.start_soon(branch, i)
    assert [a.status_code for a in answers] == [200] * CONCURRENT
    for i in range(CONCURRENT):
        (sent,) = stack.upstream_bodies(f"branch-{i}-end")
        assert len(sent["messages"]) == 3 and "shared-root" in json.dumps(sent["messages"][0])


async def test_a_store_that_is_down_does_not_take_the_gateway_down(mock: tuple[ChatCompletionsMock, int]) -> None:
    store = StoreConfig(backend="redis", url="redis://127.0.0.1:1/0", timeout=0.5)
    async with open_stack(mock, store) as stack:
        created = await stack.create(input="still served")
        assert created.status_code == 200 and created.json()["status"] == "completed"
        streamed = await stack.create(input="streamed too", stream=True)
        assert sse_events(streamed.content)[-1]["type"] == "response.completed"
        async def counted() -> bool:
            return 'streamgw_store_errors_total{op="write"}' in (await stack.client.get("/metrics")).text

        await eventually(counted)
        chained = await stack.create(input="next", previous_response_id=created.json()["id"])
        assert chained.status_code == 503
        assert chained.json()["error"] | {"message": ""} == {"message": "", "type": "provider_error", "param": None,
                                                              "code": "store_unavailable"}
        assert (await stack.client.get(f"/v1/responses/{created.json()['id']}")).status_code == 503


async def test_a_response_too_large_to_store_says_so(mock: tuple[ChatCompletionsMock, int], tmp_path: Path) -> None:
    store = StoreConfig(backend="sqlite", path=str(tmp_path / "small.db"), max_response_bytes=3000)
    async with open_stack(mock, store) as stack:
        small = (await stack.create(input="small")).json()
        big = (await stack.create(input="x" * 5000)).json()
        assert (await stack.client.get(f"/v1/responses/{small['id']}")).status_code == 200
        async def tombstoned() -> httpx.Response | None:
            fetched = await stack.client.get(f"/v1/responses/{big['id']}")
            return fetched if fetched.status_code != 200 else None  # readable while pending, then a tombstone

        fetched = await eventually(tombstoned)
        assert fetched.status_code == 404 and "max_response_bytes (3000)" in fetched.json()["error"]["message"]
        chained = await stack.create(input="next", previous_response_id=big["id"])
        assert chained.status_code == 404
        assert chained.json()["error"]["code"] == "previous_response_not_stored"
        assert "max_response_bytes" in chained.json()["error"]["message"]
        metrics = (await stack.client.get("/metrics")).text
        assert 'streamgw_store_errors_total{op="too_large"} 1.0' in metrics


async def test_the_terminal_event_leaves_after_its_record_is_written(stack: Stack, tmp_path: Path) -> None:
    """With confirm_writes (the default) another instance sharing the store can continue at once."""
    created = (await stack.create(input="durable")).json()
    streamed = sse_events((await stack.create(input="durable streamed", stream=True)).content)[-1]["response"]
    with sqlite3.connect(tmp_path / "gw.db") as conn:
        rows = dict(conn.execute("SELECT id, body FROM responses WHERE id IN (?, ?)",
                                 (created["id"], streamed["id"])).fetchall())
    assert json.loads(rows[created["id"]])["response"]["status"] == "completed"
    assert json.loads(rows[streamed["id"]])["response"]["status"] == "completed"

"""Tenant isolation of stored responses, through a real gateway (hypercorn) on every backend.

Keys A and C share the tenant ``team-a``; key B is a tenant of its own.  Whatever door B
uses (GET, DELETE, input_items, ``previous_response_id``, ``item_reference``, WebSocket
mode), A's responses do not exist for it: the answer is byte-for-byte the one for an id
that was never stored, and nothing of A's reaches the upstream on B's behalf.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from streamgw.app.metrics import Metrics
from streamgw.app.routes import Gateway
from streamgw.config import Config, ProviderConfig, Secret, StoreConfig
from streamgw.store.base import Backend, EncodedRecord, ItemPointer, StoredResponse, decode_record, encode_record
from streamgw.store.service import StoreService
from streamgw.store.sqlite import SQLiteBackend
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import running_gateway
from streamgw.testing.responses_mock import ResponsesMock

from .conftest import eventually, unique_prefix

KEY_A = "gw-tenancy-key-alpha"
KEY_B = "gw-tenancy-key-bravo"
KEY_C = "gw-tenancy-key-charlie"  # A's team mate: same tenant
MODEL = "mock/text:tokens=3"


class Tenancy:
    """A running gateway with three keys, its upstream mock, and one client per key."""

    def __init__(self, port: int, mock: ChatCompletionsMock, clients: dict[str, httpx.AsyncClient]) -> None:
        self.port = port
        self.mock = mock
        self.a, self.b, self.c = clients["a"], clients["b"], clients["c"]

    def upstream_saw(self, marker: str) -> int:
        """How many upstream requests carried ``marker``."""
        return sum(marker.encode() in request.body for request in self.mock.requests)


def gateway_config(mock_port: int, store: StoreConfig) -> Config:
    provider = ProviderConfig(name="mock", type="chat", base_url=f"http://127.0.0.1:{mock_port}/v1",
                              api_key=Secret("sk-upstream-tenancy"))
    return Config(auth_keys=(Secret(KEY_A), Secret(KEY_B), Secret(KEY_C)), auth_tenants=("team-a", "", "team-a"),
                  providers={"mock": provider}, store=store)


def store_config(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if backend == "sqlite":
        return StoreConfig(backend="sqlite", path=str(tmp_path / "tenancy.db"))
    if backend == "redis":
        return StoreConfig(backend="redis", url=request.getfixturevalue("redis_url"), key_prefix=unique_prefix())
    return StoreConfig(backend="memory")


@asynccontextmanager
async def open_tenancy(nursery: trio.Nursery, store: StoreConfig) -> AsyncIterator[Tenancy]:
    mock = ChatCompletionsMock()
    mock_port = await nursery.start(mock.serve)
    async with running_gateway(gateway_config(mock_port, store)) as port:
        clients = {name: httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                           headers={"authorization": f"Bearer {key}"})
                   for name, key in (("a", KEY_A), ("b", KEY_B), ("c", KEY_C))}
        try:
            yield Tenancy(port, mock, clients)
        finally:
            for client in clients.values():
                await client.aclose()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def tenancy(request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Tenancy]:
    async with open_tenancy(nursery, store_config(request.param, request, tmp_path)) as opened:
        yield opened


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await client.post("/v1/responses", json={"model": MODEL, **body})
    assert answer.status_code == 200, answer.text
    created: dict[str, Any] = answer.json()
    return created


def seen(answer: httpx.Response) -> tuple[int, str, bytes]:
    """What a client can learn from an answer (``x-request-id`` aside, which is random anyway)."""
    return answer.status_code, answer.headers["content-type"], answer.content


def marker(name: str) -> str:
    return f"{name}-{secrets.token_hex(8)}"


async def test_store_routes_answer_another_tenant_as_for_a_missing_id(tenancy: Tenancy) -> None:
    secret = marker("alpha-secret")
    owned = await create(tenancy.a, input=secret)
    paths = [("GET", f"/v1/responses/{owned['id']}"), ("GET", f"/v1/responses/{owned['id']}/input_items"),
             ("DELETE", f"/v1/responses/{owned['id']}")]
    as_b = [seen(await tenancy.b.request(method, path)) for method, path in paths]
    assert [status for status, _, _ in as_b] == [404, 404, 404]
    assert all(secret.encode() not in body for _, _, body in as_b)
    # B's DELETE removed nothing: A and A's team mate still read it, in full
    for client in (tenancy.a, tenancy.c):
        assert (await client.get(f"/v1/responses/{owned['id']}")).json() == owned
        items = (await client.get(f"/v1/responses/{owned['id']}/input_items")).json()["data"]
        assert [item["content"][0]["text"] for item in items] == [secret]
    assert (await tenancy.c.delete(f"/v1/responses/{owned['id']}")).status_code == 200, "the team shares"
    # now the id really is missing: every answer B got before is the very answer for a missing id
    for client in (tenancy.a, tenancy.b):
        assert [seen(await client.request(method, path)) for method, path in paths] == as_b


@pytest.mark.parametrize("stream", [False, True])
async def test_another_tenant_cannot_continue_a_response(tenancy: Tenancy, stream: bool) -> None:
    secret = marker("alpha-history")
    owned = await create(tenancy.a, input=secret)
    chained = await tenancy.b.post("/v1/responses", json={
        "model": MODEL, "input": "what did they say?", "previous_response_id": owned["id"], "stream": stream})
    assert tenancy.upstream_saw(secret) == 1, "only A's own request carried A's text upstream"
    assert chained.status_code == 404
    assert chained.json()["error"]["code"] == "previous_response_not_found"
    assert chained.json()["error"]["param"] == "previous_response_id"
    # the team mate continues it; then, once it is gone, B's answer is the one for a missing id
    mate = await create(tenancy.c, input="go on", previous_response_id=owned["id"])
    assert mate["previous_response_id"] == owned["id"] and tenancy.upstream_saw(secret) == 2
    assert (await tenancy.a.delete(f"/v1/responses/{owned['id']}")).status_code == 200
    missing = await tenancy.b.post("/v1/responses", json={
        "model": MODEL, "input": "what did they say?", "previous_response_id": owned["id"], "stream": stream})
    assert seen(missing) == seen(chained)


async def test_item_references_reach_only_the_tenants_own_items(tenancy: Tenancy) -> None:
    secret, intruder = marker("alpha-item"), marker("bravo-item")
    guessable = "msg_shared_1"  # a client-chosen id another tenant can guess, or pick on purpose
    owned = await create(tenancy.a, input=[{"type": "message", "role": "user", "id": guessable, "content": secret}])
    output_id = owned["output"][0]["id"]
    # B picks the same id for an item of its own: it must not shadow A's item in A's index
    await create(tenancy.b, input=[{"type": "message", "role": "user", "id": guessable, "content": intruder}])
    for item_id in (output_id, "msg_never_stored"):
        refused = await tenancy.b.post("/v1/responses", json={
            "model": MODEL, "input": [{"type": "item_reference", "id": item_id}]})
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"] == {"message": f"Item with id '{item_id}' not found.",
                                           "type": "not_found_error", "param": "input[0].id",
                                           "code": "item_not_found"}
    assert tenancy.upstream_saw(secret) == 1
    await create(tenancy.c, input=[{"type": "item_reference", "id": guessable},
                                          {"role": "user", "content": "and?"}])
    sent = tenancy.mock.requests[-1].body
    assert secret.encode() in sent and intruder.encode() not in sent, "the team mate got A's item, not B's"
    await create(tenancy.b, input=[{"type": "item_reference", "id": guessable}])
    sent = tenancy.mock.requests[-1].body
    assert intruder.encode() in sent and secret.encode() not in sent, "B got its own item"


@asynccontextmanager
async def websocket(port: int, key: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(f"ws://127.0.0.1:{port}/v1/responses",
                                  extra_headers=[("authorization", f"Bearer {key}")]) as ws:
        yield ws


async def ws_create(ws: WebSocketConnection, **fields: Any) -> dict[str, Any]:
    """The terminal event (or the error frame) answering one ``response.create``."""
    await ws.send_message(json.dumps({"type": "response.create", "model": MODEL, **fields}))
    with trio.fail_after(10):
        while True:
            event: dict[str, Any] = json.loads(await ws.get_message())
            if event["type"] in ("error", "response.completed", "response.failed", "response.incomplete"):
                return event


async def test_websocket_mode_reaches_only_the_tenants_own_responses(tenancy: Tenancy) -> None:
    secret = marker("alpha-socket")
    async with websocket(tenancy.port, KEY_A) as ws:
        owned = (await ws_create(ws, input=secret))["response"]
    async with websocket(tenancy.port, KEY_B) as ws:
        chained = await ws_create(ws, input="and?", previous_response_id=owned["id"])
        referenced = await ws_create(ws, input=[{"type": "item_reference", "id": owned["output"][0]["id"]}])
        # the connection's own last response still chains (kept per connection)
        own = (await ws_create(ws, input="mine"))["response"]
        follow = await ws_create(ws, input="more", previous_response_id=own["id"], store=False)
    assert (chained["status"], chained["error"]["code"]) == (404, "previous_response_not_found")
    assert (referenced["status"], referenced["error"]["code"]) == (404, "item_not_found")
    assert follow["type"] == "response.completed"
    assert tenancy.upstream_saw(secret) == 1
    async with websocket(tenancy.port, KEY_C) as ws:
        mate = await ws_create(ws, input="go on", previous_response_id=owned["id"])
    assert mate["type"] == "response.completed" and tenancy.upstream_saw(secret) == 2


def database_bytes(directory: Path, name: str) -> bytes:
    """The database file and its WAL, as bytes."""
    return b"".join(path.read_bytes() for path in sorted(directory.glob(f"{name}*")))


async def test_no_key_is_written_into_the_store(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A key without an explicit tenant is its own tenant, recorded as a hash: the database never holds the key."""
    async with open_tenancy(nursery, StoreConfig(backend="sqlite", path=str(tmp_path / "keys.db"))) as tenancy:
        owned = await create(tenancy.b, input="bravo's own")
        assert (await tenancy.b.get(f"/v1/responses/{owned['id']}")).status_code == 200
        assert (await tenancy.a.get(f"/v1/responses/{owned['id']}")).status_code == 404
    written = database_bytes(tmp_path, "keys.db")
    assert owned["id"].encode() in written
    assert KEY_B.encode() not in written and KEY_A.encode() not in written


# ------------------------------------------------------------------------------- the layers below


def test_callers_and_their_tenants() -> None:
    gw = Gateway(gateway_config(1, StoreConfig(backend="none")))
    a, b, c = (gw.caller(f"Bearer {key}") for key in (KEY_A, KEY_B, KEY_C))
    assert a is not None and b is not None and c is not None
    assert (a.tenant, a.key_index, c.tenant, c.key_index) == ("t:team-a", 0, "t:team-a", 2)
    assert b.tenant.startswith("key:") and len(b.tenant) == 4 + 24 and KEY_B not in b.tenant
    assert b.key_index == 1
    for header in (None, "", f"Basic {KEY_A}", "Bearer", f"Bearer {KEY_A}x", f"Bearer {KEY_A[:-1]}"):
        assert gw.caller(header) is None, header
    anonymous = Gateway(Config(store=StoreConfig(backend="none"))).caller(None)
    assert anonymous is not None and anonymous.tenant == ""


def pointer_record(response_id: str, owner: str, *item_ids: str) -> EncodedRecord:
    pointers = tuple(ItemPointer(item_id, response_id, "input", i) for i, item_id in enumerate(item_ids))
    return EncodedRecord(response_id, f"body of {response_id}".encode(), None, pointers, owner)


async def test_each_backend_keeps_an_item_index_per_tenant(backend: Backend) -> None:
    await backend.put_many([pointer_record("resp_a", "t:team-a", "msg_1", "msg_2"),
                            pointer_record("resp_b", "key:0123", "msg_1")])
    assert await backend.locate("msg_1", "t:team-a") == ItemPointer("msg_1", "resp_a", "input", 0)
    assert await backend.locate("msg_1", "key:0123") == ItemPointer("msg_1", "resp_b", "input", 0)
    assert await backend.locate("msg_2", "key:0123") is None and await backend.locate("msg_1", "") is None
    assert await backend.delete("resp_b", "key:0123") is True
    assert await backend.locate("msg_1", "key:0123") is None
    assert await backend.locate("msg_1", "t:team-a") == ItemPointer("msg_1", "resp_a", "input", 0)


def stored(response_id: str, owner: str, text: str = "hi") -> StoredResponse:
    output = [{"id": f"msg_out_{response_id}", "type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": text}]}]
    return StoredResponse(id=response_id, response={"id": response_id, "status": "completed", "output": output},
                          provider="mock", provider_type="chat", index_ids=(f"msg_out_{response_id}",),
                          created_at=time.time(), owner=owner)


async def test_the_service_answers_for_the_owner_only_pending_or_written(nursery: trio.Nursery) -> None:
    service = StoreService(StoreConfig(backend="memory"), Metrics())
    service.submit(stored("resp_1", "t:team-a"))
    for _ in range(2):  # pending (the writer is not running yet), then written
        assert await service.get("resp_1", "key:other") is None and await service.get("resp_1", "") is None
        assert await service.item("msg_out_resp_1", "key:other") is None
        assert await service.delete("resp_1", "key:other") is False
        record = await service.get("resp_1", "t:team-a")
        assert record is not None and record.owner == "t:team-a"
        assert await service.item("msg_out_resp_1", "t:team-a") is not None
        if service.pending:
            await nursery.start(service.run)

            async def written() -> bool:
                return not service.pending

            await eventually(written)
    assert await service.delete("resp_1", "t:team-a") is True
    assert await service.get("resp_1", "t:team-a") is None
    await service.aclose()


async def test_a_record_too_large_to_keep_stays_its_owners(nursery: trio.Nursery) -> None:
    service = StoreService(StoreConfig(backend="memory", max_response_bytes=300), Metrics())
    await nursery.start(service.run)
    service.submit(stored("resp_big", "t:team-a", text="x" * 1000))

    async def written() -> bool:
        return not service.pending

    await eventually(written)
    assert await service.get("resp_big", "key:other") is None, "not even 'not stored' tells another tenant"
    tombstone = await service.get("resp_big", "t:team-a")
    assert tombstone is not None and tombstone.omitted is not None
    await service.aclose()


_OLD_SCHEMA = (
    "CREATE TABLE responses (id TEXT PRIMARY KEY, body BLOB NOT NULL, expires_at REAL)",
    "CREATE INDEX responses_by_expiry ON responses (expires_at)",
    "CREATE TABLE items (id TEXT PRIMARY KEY, response_id TEXT NOT NULL, kind TEXT NOT NULL, idx INTEGER NOT NULL)",
    "CREATE INDEX items_by_response ON items (response_id)",
)


async def test_a_database_from_before_tenants_is_migrated_to_the_anonymous_tenant(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = json.loads(encode_record(stored("resp_old", "")))
    del old["owner"]  # records written before tenants have no owner at all
    with sqlite3.connect(path) as conn:
        for statement in _OLD_SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO responses VALUES ('resp_old', ?, NULL)", (json.dumps(old).encode(),))
        conn.execute("INSERT INTO items VALUES ('msg_out_resp_old', 'resp_old', 'output', 0)")
    conn.close()
    store = SQLiteBackend(str(path))
    try:
        await store.open()
        body = await store.get("resp_old")
        assert body is not None and decode_record(body).owner == ""
        assert await store.locate("msg_out_resp_old", "") == ItemPointer("msg_out_resp_old", "resp_old", "output", 0)
        assert await store.locate("msg_out_resp_old", "t:team-a") is None
        # the same item id in a tenant's index: both live side by side
        await store.put_many([pointer_record("resp_new", "t:team-a", "msg_out_resp_old")])
        assert await store.locate("msg_out_resp_old", "t:team-a") == ItemPointer(
            "msg_out_resp_old", "resp_new", "input", 0)
        assert await store.locate("msg_out_resp_old", "") is not None
        assert await store.delete("resp_old", "t:team-a") is False, "the old row is the anonymous tenant's"
        assert await store.delete("resp_old", "") is True
    finally:
        await store.aclose()
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert tables == {"responses", "items"} and {"items_by_response", "responses_by_expiry"} <= indexes


def test_old_records_decode_to_the_anonymous_tenant() -> None:
    record = stored("resp_1", "key:abc")
    assert decode_record(encode_record(record)) == record
    old = json.loads(encode_record(dataclasses.replace(record, owner="")))
    del old["owner"]
    assert decode_record(json.dumps(old).encode()).owner == ""
    with pytest.raises(ValueError, match="owner"):
        decode_record(json.dumps({**old, "owner": 7}).encode())


@pytest.mark.parametrize("tenants", [("", "", ""), ("team-a", "team-a", "team-a")])
async def test_without_a_store_upstream_ids_are_forwarded_only_for_a_sole_tenant(
        nursery: trio.Nursery, tenants: tuple[str, str, str]) -> None:
    """With ``[store] backend = "none"`` a native upstream resolves ids itself, under one credential for all
    tenants: the gateway forwards them only when every key is one tenant."""
    upstream = ResponsesMock()
    upstream_port = await nursery.start(upstream.serve)
    provider = ProviderConfig(name="oai", type="openai", base_url=f"http://127.0.0.1:{upstream_port}/v1",
                              api_key=Secret("sk-upstream-tenancy"))
    config = Config(auth_keys=(Secret(KEY_A), Secret(KEY_B), Secret(KEY_C)), auth_tenants=tenants,
                    providers={"oai": provider}, store=StoreConfig(backend="none"))
    async with running_gateway(config) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"authorization": f"Bearer {KEY_B}"}) as client:
        answer = await client.post("/v1/responses", json={
            "model": "oai/text:tokens=2", "input": "and?", "previous_response_id": "resp_from_upstream"})
    forwarded = [r for r in upstream.requests if b"resp_from_upstream" in r.body]
    if tenants[0]:  # one team: the upstream is the judge of its own ids, as without keys
        assert len(forwarded) == 1 and answer.status_code == 200, answer.text
    else:
        assert forwarded == [] and answer.status_code == 400
        assert (answer.json()["error"]["code"], answer.json()["error"]["param"]) == (
            "store_disabled", "previous_response_id")

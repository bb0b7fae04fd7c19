"""Expansion of previous_response_id and item_reference, for translated and native targets alike."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from streamgw.app.metrics import Metrics
from streamgw.config import ProviderConfig, StoreConfig
from streamgw.core.blobs import encode_blob
from streamgw.core.request import parse_request
from streamgw.engine.routing import Plan, Target
from streamgw.errors import InvalidRequest, NotFound
from streamgw.store.base import CLIENT, MINTED
from streamgw.store.chain import expand, native_input, record_for
from streamgw.store.service import StoreService

CHAT = ProviderConfig(name="groq", type="chat", base_url="http://x")
CLAUDE = ProviderConfig(name="claude", type="anthropic", base_url="http://x")
OAI = ProviderConfig(name="oai", type="openai", base_url="http://x")
OAI2 = ProviderConfig(name="oai2", type="openai", base_url="http://x")


def plan(*providers: ProviderConfig) -> Plan:
    return Plan(tuple(Target(p, "m") for p in providers))


def request(**body: Any) -> Any:
    return parse_request(json.dumps({"model": "m", **body}).encode())


def service(backend: str = "memory") -> StoreService:
    return StoreService(StoreConfig(backend=backend), Metrics())


def user(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}], **extra}


async def first_turn(store: StoreService, provider: ProviderConfig, *, store_flag: bool = True,
                     output: list[dict[str, Any]] | None = None) -> str:
    """Record a finished first turn served by ``provider``; return its id."""
    expansion = await expand(request(input="turn one", instructions="first rules"), plan(provider), store, tenant="")
    output = output if output is not None else [
        {"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": encode_blob("claude", {"s": 1})},
        {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
    ]
    response = {"id": "resp_one", "status": "completed", "store": store_flag, "output": output}
    store.submit(record_for(expansion, response, provider.name, provider.type, time.time()))
    return "resp_one"


async def test_a_plain_request_is_unchanged_and_gets_ids_to_store() -> None:
    store = service()
    req = request(input=[user("hi"), user("again", id="msg_client")])
    expansion = await expand(req, plan(CHAT), store, tenant="")
    assert expansion.request is req
    assert [i["id"].startswith("msg_") for i in expansion.items] == [True, True]
    assert expansion.items[1]["id"] == "msg_client" and expansion.origins == (MINTED, CLIENT)
    assert "id" not in req.input[0], "minted ids stay in the stored copy"
    assert len(expansion.new_ids) == 2


async def test_previous_turn_is_prepended_and_instructions_are_not_inherited() -> None:
    store = service()
    previous = await first_turn(store, CLAUDE)
    req = request(input=[{"type": "function_call_output", "call_id": "call_1", "output": "42"}],
                  previous_response_id=previous, instructions="second rules")
    expansion = await expand(req, plan(CLAUDE), store, tenant="")
    kinds = [item["type"] for item in expansion.request.input]
    assert kinds == ["message", "reasoning", "function_call", "function_call_output"]
    assert expansion.request.input[0]["content"][0]["text"] == "turn one"
    assert expansion.request.instructions == "second rules"
    assert expansion.request.previous_response_id == previous, "still echoed in the response"
    assert expansion.origins == (MINTED, "claude", "claude", MINTED)
    assert len(expansion.items) == 4 and all("id" in item for item in expansion.items)
    # the next turn needs one lookup only: the stored input holds the whole chain
    store.submit(record_for(expansion, {"id": "resp_two", "status": "completed", "output": []}, "claude",
                            "anthropic", time.time()))
    third = await expand(request(input="three", previous_response_id="resp_two"), plan(CHAT), store, tenant="")
    assert [item["type"] for item in third.request.input] == [*kinds, "message"]


async def test_item_references_resolve_by_id() -> None:
    store = service()
    await first_turn(store, CLAUDE)
    req = request(input=[{"type": "item_reference", "id": "fc_1"}, user("and?")])
    expansion = await expand(req, plan(CHAT), store, tenant="")
    assert expansion.request.input[0]["call_id"] == "call_1"
    assert expansion.origins[0] == "claude" and len(expansion.new_ids) == 1
    with pytest.raises(NotFound) as missing:
        await expand(request(input=[user("x"), {"id": "msg_nope"}]), plan(CHAT), store, tenant="")
    assert missing.value.param == "input[1].id" and missing.value.status == 404


async def test_unknown_previous_response_is_a_404_naming_the_param() -> None:
    with pytest.raises(NotFound) as missing:
        await expand(request(input="x", previous_response_id="resp_nope"), plan(CHAT), service(), tenant="")
    assert missing.value.param == "previous_response_id" and missing.value.code == "previous_response_not_found"


async def test_a_response_still_in_progress_cannot_be_continued() -> None:
    store = service()
    expansion = await expand(request(input="x"), plan(CHAT), store, tenant="")
    store.submit(record_for(expansion, {"id": "resp_live", "status": "in_progress", "output": []}, "groq", "chat",
                            time.time()))
    with pytest.raises(InvalidRequest) as live:
        await expand(request(input="y", previous_response_id="resp_live"), plan(CHAT), store, tenant="")
    assert live.value.param == "previous_response_id" and live.value.code == "previous_response_in_progress"


async def test_without_a_store_chaining_is_refused_unless_every_target_is_native() -> None:
    store = service("none")
    with pytest.raises(InvalidRequest) as disabled:
        await expand(request(input="x", previous_response_id="resp_1"), plan(OAI, CHAT), store, tenant="")
    assert disabled.value.code == "store_disabled" and disabled.value.param == "previous_response_id"
    req = request(input="x", previous_response_id="resp_upstream")
    assert (await expand(req, plan(OAI), store, tenant="", sole_tenant=True)).request is req, \
        "the upstream is the judge of its own ids"


@pytest.mark.parametrize("field", ["previous_response_id", "input"])
async def test_without_a_store_several_tenants_never_reach_upstream_ids(field: str) -> None:
    """The upstream keeps every tenant's responses under one credential: it cannot judge whose an id is."""
    if field == "input":
        req = request(input=[{"type": "item_reference", "id": "msg_of_another_tenant"}])
    else:
        req = request(input="x", previous_response_id="resp_of_another_tenant")
    with pytest.raises(InvalidRequest) as refused:
        await expand(req, plan(OAI), service("none"), tenant="key:0123", sole_tenant=False)
    assert refused.value.code == "store_disabled" and refused.value.param == field
    assert "more than one tenant" in refused.value.message


async def test_native_upstream_that_stored_the_chain_gets_the_id() -> None:
    store = service()
    previous = await first_turn(store, OAI, output=[{"id": "msg_up", "type": "message", "role": "assistant",
                                                     "content": [{"type": "output_text", "text": "a"}]}])
    req = request(input=[{"type": "item_reference", "id": "msg_up"}, user("next")], previous_response_id=previous)
    raw = (await expand(req, plan(OAI), store, tenant="")).request.raw
    assert raw["previous_response_id"] == previous
    assert raw["input"] == [{"id": "msg_up", "type": "message", "role": "assistant",
                             "content": [{"type": "output_text", "text": "a"}]}, user("next")]


@pytest.mark.parametrize(("first", "store_flag", "targets"), [
    (OAI, False, (OAI,)),  # the upstream did not store it
    (CLAUDE, True, (OAI,)),  # another provider served it
    (OAI, True, (OAI2,)),  # another native upstream
    (OAI, True, (OAI, OAI2)),  # a route over two native upstreams
])
async def test_native_upstream_otherwise_gets_the_chain_rebuilt(first: ProviderConfig, store_flag: bool,
                                                                targets: tuple[ProviderConfig, ...]) -> None:
    store = service()
    previous = await first_turn(store, first, store_flag=store_flag)
    req = request(input="next", previous_response_id=previous)
    expansion = await expand(req, plan(*targets), store, tenant="")
    raw = expansion.request.raw
    assert "previous_response_id" not in raw
    kinds = [item["type"] for item in raw["input"]]
    assert kinds == ["message", "function_call", "message"], "gateway blobs never reach a native upstream"
    assert "id" not in raw["input"][0], "ids the gateway minted mean nothing upstream"
    assert ("id" in raw["input"][1]) is (targets == (first,) and first is OAI)
    assert expansion.request.input[1]["type"] == "reasoning", "translated targets still get every item"


def test_native_input_rules() -> None:
    items = [
        {"id": "rs_a", "type": "reasoning", "summary": [], "encrypted_content": "opaque-upstream"},
        {"id": "rs_b", "type": "reasoning", "summary": [], "encrypted_content": encode_blob("oai", {})},
        {"id": "rs_c", "type": "reasoning", "summary": []},
        {"id": "msg_c", "type": "message", "role": "user", "content": []},
        {"id": "msg_m", "type": "message", "role": "user", "content": []},
    ]
    kept = native_input(items, ["oai", CLIENT, "claude", CLIENT, MINTED], "oai")
    assert [item.get("id") for item in kept] == ["rs_a", "msg_c", None]

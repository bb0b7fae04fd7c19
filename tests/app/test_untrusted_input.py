"""Untrusted request bodies on every front door: lone surrogates, bytes that are not UTF-8, deep nesting.

A real hypercorn server (``running_gateway``) with providers of every dialect; each bad body must be
a 400 ``invalid_request_error`` naming the string or the nesting at fault — found at parse time, so
no upstream is ever contacted (the dialects' request builders used to answer such input with a 500).
Over WebSocket mode the same frame gets an error frame and the connection stays usable.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from streamgw.config import Config, DemoSettings, ProviderConfig, Secret, StoreConfig
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import running_gateway

KEY = "gw-untrusted-input-key"
AUTH = {"authorization": f"Bearer {KEY}"}
NEVER = "http://127.0.0.1:9/v1"  # loopback discard port: nothing may ever be sent there
DIALECTS = ("chat", "openai", "anthropic", "gemini", "ollama")


def config(chat_port: int) -> Config:
    providers = {kind: ProviderConfig(name=kind, type=kind, base_url=NEVER, api_key=Secret("upstream-key"))
                 for kind in DIALECTS}
    providers["chat"] = ProviderConfig(name="chat", type="chat", base_url=f"http://127.0.0.1:{chat_port}/v1")
    providers["demo"] = ProviderConfig(name="demo", type="demo", demo=DemoSettings(0.0, 5000))
    return Config(auth_keys=(Secret(KEY),), providers=providers, store=StoreConfig(backend="none"))


@pytest.fixture
async def gateway(nursery: trio.Nursery) -> Any:
    mock = ChatCompletionsMock()
    port = await nursery.start(mock.serve)
    async with running_gateway(config(port)) as gateway_port:
        yield gateway_port, mock


def deep_tool_schema(levels: int) -> str:
    schema = '{"type":"string"}'
    for _ in range(levels):
        schema = '{"type":"object","properties":{"a":' + schema + "}}"
    return schema


BAD_BODIES = [
    (rb'{"model":"%s/m","input":"hi","metadata":{"k":"\ud800"},"stream":true}', "metadata.k", "invalid_unicode"),
    (rb'{"model":"%s/m","input":"a\ud800b"}', "input", "invalid_unicode"),
    (rb'{"model":"%s/m","input":"hi","tools":[{"type":"function","name":"f","parameters":{"type":"object",'
     rb'"description":"\udfff"}}]}', "tools[0].parameters.description", "invalid_unicode"),
    (b'{"model":"%s/m","input":"a\xffb","stream":true}', "input", "invalid_unicode"),
    (b'{"model":"%s/m","instructions":"\xed\xb0\x80","input":"hi"}', "instructions", "invalid_unicode"),
]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_bad_unicode_is_a_400_naming_the_param(gateway: Any, dialect: str) -> None:
    port, mock = gateway
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
        for template, param, code in BAD_BODIES:
            response = await client.post("/v1/responses", content=template.replace(b"%s", dialect.encode()),
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, response.text
            assert response.json() == {"error": {"message": response.json()["error"]["message"],
                                                 "type": "invalid_request_error", "param": param, "code": code}}
    assert mock.requests == []  # refused before any upstream was contacted


async def test_a_975_deep_tool_schema_is_a_400_not_a_500(gateway: Any) -> None:
    port, mock = gateway
    body = '{"model":"chat/m","input":"hi","tools":[{"type":"function","name":"f","parameters":%s}]}'
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
        for levels in (60, 487):  # 125 and 975 levels of nesting
            response = await client.post("/v1/responses", content=(body % deep_tool_schema(levels)).encode(),
                                         headers={"content-type": "application/json"})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["type"] == "invalid_request_error"
            # At 975 levels json.loads itself may give up first (its own recursion limit): still a 400.
            assert error["code"] == "nesting_too_deep" or (levels == 487 and error["code"] == "invalid_json")
    assert mock.requests == []


async def frame(ws: Any) -> dict[str, Any]:
    with trio.fail_after(10):
        message = await ws.get_message()
    parsed: dict[str, Any] = json.loads(message)
    return parsed


async def test_websocket_bad_frames_get_an_error_frame_and_the_connection_stays_usable(gateway: Any) -> None:
    port, mock = gateway
    url = f"ws://127.0.0.1:{port}/v1/responses"
    bad = [
        (r'{"type":"response.create","model":"chat/m","input":"hi","metadata":{"k":"\ud800"}}', "metadata.k",
         "invalid_unicode"),
        (r'{"type":"response.create","model":"anthropic/m","input":[{"role":"user","content":"\udc01"}]}',
         "input[0].content", "invalid_unicode"),
        ('{"type":"response.create","model":"chat/m","input":"hi","tools":[{"type":"function","name":"f",'
         f'"parameters":{deep_tool_schema(60)}}}]}}', None, "nesting_too_deep"),
    ]
    async with open_websocket_url(url, extra_headers=list(AUTH.items())) as ws:
        for text, param, code in bad:
            await ws.send_message(text)
            answer = await frame(ws)
            assert answer["type"] == "error" and answer["status"] == 400, answer
            assert answer["error"]["type"] == "invalid_request_error"
            assert answer["error"]["code"] == code
            if param is not None:
                assert answer["error"]["param"] == param
            else:
                assert answer["error"]["param"].startswith("tools[0].parameters.properties.a")
        await ws.send_message(json.dumps({"type": "response.create", "model": "demo/demo", "input": "still here?"}))
        events = []
        while not events or events[-1]["type"] not in ("response.completed", "response.failed", "error"):
            events.append(await frame(ws))
        assert events[-1]["type"] == "response.completed"
    assert mock.requests == []

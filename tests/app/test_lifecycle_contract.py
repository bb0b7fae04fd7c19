"""Front-door contract of the response lifecycle, against a real hypercorn server.

``x-request-id`` kept when well-formed (else minted) on every answer, ``GET /v1/responses`` is a 405
in the error envelope, ``GET /v1/models/{id}``, and one answer for an upstream's ``invalid_prompt``
whether it comes before the first delta or later (400: the request itself is wrong).
"""

from __future__ import annotations

import json

import httpx
import trio

from streamgw.config import Config, ProviderConfig, RouteConfig, Secret, StoreConfig
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import post_sse, running_gateway
from streamgw.testing.server import MockRequest, Responder

KEY = "gw-lifecycle-key"
AUTH = {"authorization": f"Bearer {KEY}"}
_CHUNK = b'data: {"id":"c1","object":"chat.completion.chunk","created":0,"model":"m","choices":[{"index":0,' \
         b'"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}\n\n'
_FLAGGED = b'data: {"error":{"message":"flagged by policy","type":"invalid_request_error","code":400}}\n\n'


class FlaggingMock(ChatCompletionsMock):
    """Streams one text chunk, then an error event that says the request was invalid."""

    async def handle(self, req: MockRequest, send: Responder) -> None:
        self.requests.append(req)
        await send.start(200, [("content-type", "text/event-stream")])
        await send.chunk(_CHUNK)
        await send.end(_FLAGGED)


def config(port: int = 1) -> Config:
    return Config(
        auth_keys=(Secret(KEY),),
        providers={"demo": ProviderConfig(name="demo", type="demo"),
                   "up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                        api_key=Secret("sk-upstream-test-key"))},
        routes={"fast": RouteConfig("fast", ("demo/demo",))},
        store=StoreConfig(backend="none"),
    )


async def test_get_on_responses_is_405_in_the_envelope() -> None:
    async with running_gateway(config()) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
        answer = await client.get("/v1/responses")
        assert answer.status_code == 405
        assert answer.headers["allow"] == "POST"
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "method_not_allowed"
        put = await client.put("/v1/responses/resp_1")
        assert put.status_code == 405 and "GET" in put.headers["allow"] and "DELETE" in put.headers["allow"]


async def test_models_retrieve_one_and_list_routes() -> None:
    async with running_gateway(config()) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
        listed = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
        assert {"demo/demo", "fast"} <= listed
        one = await client.get("/v1/models/demo/demo")
        assert one.status_code == 200 and one.json() == {"id": "demo/demo", "object": "model", "created": 0,
                                                         "owned_by": "demo"}
        assert (await client.get("/v1/models/fast")).json()["owned_by"] == "route"
        missing = await client.get("/v1/models/nope/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


async def test_request_id_kept_when_well_formed_and_echoed_everywhere() -> None:
    body = {"model": "demo/demo", "input": "hi"}
    async with running_gateway(config()) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
        mine = {"x-request-id": "trace-42:a.b_c"}
        assert (await client.post("/v1/responses", json=body, headers=mine)).headers["x-request-id"] == "trace-42:a.b_c"
        error = await client.post("/v1/responses", json={"model": "nope"}, headers=mine)
        assert error.status_code == 400 and error.headers["x-request-id"] == "trace-42:a.b_c"
        denied = await client.post("/v1/responses", json=body, headers={**mine, "authorization": "Bearer wrong"})
        assert denied.status_code == 401 and denied.headers["x-request-id"] == "trace-42:a.b_c"
        assert (await client.get("/v1/models", headers=mine)).headers["x-request-id"] == "trace-42:a.b_c"
        minted = (await client.post("/v1/responses", json=body, headers={"x-request-id": "bad id <x>" + "y" * 200}))
        assert minted.headers["x-request-id"].startswith("req_")
    async with running_gateway(config()) as port:
        sse = await post_sse(port, {**body, "stream": True}, {**AUTH, "x-request-id": "stream-1"})
    assert sse.status == 200 and sse.headers["x-request-id"] == "stream-1"


async def test_invalid_prompt_after_the_first_delta_is_a_400_like_before_it(nursery: trio.Nursery) -> None:
    mock = FlaggingMock()
    port = await nursery.start(mock.serve)
    async with running_gateway(config(port)) as gw_port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", headers=AUTH) as client:
        answer = await client.post("/v1/responses", json={"model": "up/m", "input": "hi"})
    assert answer.status_code == 400, answer.text
    error = json.loads(answer.text)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_prompt"

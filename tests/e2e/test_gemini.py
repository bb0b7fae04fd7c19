"""The gemini dialect end to end: gateway process + Gemini mock + image server + the official openai SDK.

The gateway runs as its own process with ``[providers.gem] type = "gemini"`` pointing at the mock
(in a thread, so the tests see exactly what reached "Gemini"); a second local server hands out a
tiny PNG for the remote-image test.
"""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from streamgw.core.sse import SSEDecoder
from streamgw.testing.gemini_mock import GeminiMock, signature_for
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.process import start_gateway, stop_process
from streamgw.testing.server import MockRequest, Responder, serving_in_thread

UPSTREAM_KEY = "AIzaSyE2eUpstream0123456789abcdefghijk"
WRONG_KEY = "AIzaSyE2eWrongKey9876543210zyxwvutsrqp"
GATEWAY_KEY = "sk-gw-gemini-e2e-key"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def tiny_png() -> bytes:
    """A valid 1x1 RGBA PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00\xff")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


PNG = tiny_png()


@dataclass
class Stack:
    """The running pieces: the gateway's URL and process, the mock, the image server's port."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    mock: GeminiMock
    image_port: int


async def serve_image(req: MockRequest, send: Responder) -> None:
    if req.path == "/pixel.png":
        await send.full(200, {"content-type": "image/png"}, PNG)
    else:
        await send.full(404, {"content-type": "text/plain"}, b"no such image")


def config(mock_port: int) -> str:
    base = f"http://127.0.0.1:{mock_port}"
    return f"""
[auth]
keys = ["{GATEWAY_KEY}"]

[providers.gem]
type = "gemini"
base_url = "{base}"
api_key = "{UPSTREAM_KEY}"

[providers.gembad]
type = "gemini"
base_url = "{base}"
api_key = "{WRONG_KEY}"

[fetch]
allow_hosts = ["127.0.0.1"]  # the image server is on loopback, refused by default
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    mock = GeminiMock(api_key=UPSTREAM_KEY)
    tmp = tmp_path_factory.mktemp("gemini-e2e")
    with mock.serving_in_thread() as mock_port, serving_in_thread(lambda: serve_image) as image_port:
        (tmp / "streamgw.toml").write_text(config(mock_port))
        proc, url = start_gateway(tmp / "streamgw.toml", tmp / "gateway.log")
        try:
            yield Stack(url, proc, tmp / "gateway.log", mock, image_port)
        finally:
            assert stop_process(proc) == 0, "the gateway must exit cleanly on SIGTERM"
    assert UPSTREAM_KEY not in (tmp / "gateway.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack.url + "/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=20) as sdk:
        yield sdk


def raw_stream(stack: Stack, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST a streamed request with plain httpx; return the response and its decoded events."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", stack.url + "/v1/responses", json={**body, "stream": True}, headers=AUTH,
                      timeout=20) as response:
        for chunk in response.iter_raw():
            for sse in decoder.feed(chunk):
                payload = json.loads(sse.data)
                assert sse.event == payload["type"]
                events.append(payload)
        decoder.finish()
    return response, events


def sent_to_gemini(mock: GeminiMock, marker: str) -> tuple[MockRequest, dict[str, Any]]:
    for req in reversed(mock.requests):
        if marker.encode() in req.body:
            return req, req.json()
    raise AssertionError(f"no upstream request contained {marker!r}")


# --- text --------------------------------------------------------------------------------------------


def test_streamed_text_through_the_sdk(stack: Stack, client: openai.OpenAI) -> None:
    with client.responses.create(model="gem/text:tokens=5", input="stream me", stream=True) as stream:
        events = list(stream)
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "tok0 tok1 tok2 tok3 tok4 "
    final = events[-1].response
    assert final.output_text == deltas and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 5
    assert final.model_extra is not None and final.model_extra["provider"] == "gem"


def test_streamed_events_pass_every_invariant(stack: Stack) -> None:
    response, events = raw_stream(stack, {"model": "gem/text:tokens=7", "input": "check me"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    final = check_events(events)
    assert output_text(final) == "".join(f"tok{i} " for i in range(7))


def test_non_streamed_text(stack: Stack, client: openai.OpenAI) -> None:
    resp = client.responses.create(model="gem/text:tokens=3", input="no stream", instructions="Be brief.")
    assert resp.output_text == "tok0 tok1 tok2 " and resp.status == "completed"
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.input_tokens + 3


def test_what_reaches_gemini(stack: Stack, client: openai.OpenAI) -> None:
    client.responses.create(
        model="gem/text:tokens=1", input="marker-translation", instructions="sys text", temperature=0.3,
        top_p=0.9, max_output_tokens=77, reasoning={"effort": "low"},
    )
    req, body = sent_to_gemini(stack.mock, "marker-translation")
    assert req.path == "/v1beta/models/text%3Atokens%3D1:streamGenerateContent"
    assert req.query == {"alt": "sse"}
    assert req.headers["x-goog-api-key"] == UPSTREAM_KEY and "authorization" not in req.headers
    assert req.headers["accept-encoding"] == "identity"
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "marker-translation"}]}],
        "systemInstruction": {"parts": [{"text": "sys text"}]},
        "generationConfig": {"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 77,
                             "thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}},
    }


# --- tools and signatures ----------------------------------------------------------------------------


def test_tool_round_trip_brings_the_signature_back(stack: Stack, client: openai.OpenAI) -> None:
    question = {"role": "user", "content": "marker-sig weather in Paris?"}
    first = client.responses.create(model="gem/sig-required", input=[question], tools=[WEATHER_TOOL],
                                    reasoning={"effort": "low"})
    assert [o.type for o in first.output] == ["reasoning", "function_call"]
    reasoning, call = first.output
    assert reasoning.encrypted_content is not None and reasoning.encrypted_content.startswith("gw1:")
    assert reasoning.summary[0].text == "Thinking 0. Thinking 1. Thinking 2. "
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    replay = [item.model_dump(exclude_none=True) for item in first.output]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}
    second = client.responses.create(model="gem/sig-required", input=[question, *replay, output],
                                     tools=[WEATHER_TOOL])
    assert second.output_text == "The weather is fine."
    _, body = sent_to_gemini(stack.mock, "temp_c")
    model_turn, results = body["contents"][1], body["contents"][2]
    assert model_turn["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                    "thoughtSignature": signature_for("get_weather", {"city": "Paris"})}]
    assert results["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"output": {"temp_c": 18}}}}]


def test_without_the_reasoning_item_gemini_3_refuses(stack: Stack, client: openai.OpenAI) -> None:
    call = {"type": "function_call", "call_id": "call_" + "x" * 24, "name": "get_weather",
            "arguments": '{"city": "Paris"}'}
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gem/sig-required", input=[{"role": "user", "content": "q"}, call,
                                                                            output])
    assert "thought_signature" in info.value.message


def test_two_parallel_calls(stack: Stack) -> None:
    _, events = raw_stream(stack, {"model": "gem/two-tools", "input": "two", "tools": [WEATHER_TOOL]})
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["reasoning", "function_call", "function_call"]
    calls = final["output"][1:]
    assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Tokyo"]
    assert len({c["call_id"] for c in calls}) == 2 and all(c["call_id"].startswith("call_") for c in calls)


def test_reasoning_then_text(stack: Stack) -> None:
    _, events = raw_stream(stack, {"model": "gem/thinking:tokens=2", "input": "think",
                                   "reasoning": {"effort": "medium"}})
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["reasoning", "message", "reasoning"]
    assert final["output"][0]["summary"][0]["text"] == "Thinking 0. Thinking 1. Thinking 2. "
    assert output_text(final) == "tok0 tok1 "
    assert final["output"][2]["encrypted_content"].startswith("gw1:")  # the text's signature
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 3
    assert any(e["type"] == "response.reasoning_summary_text.delta" for e in events)


# --- stop reasons and failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "reason", "text"),
    [
        ("gem/max-tokens:tokens=3", "max_output_tokens", "tok0 tok1 tok2 "),
        ("gem/safety", "content_filter", "tok0 tok1 tok2 "),
        ("gem/blocked-prompt", "content_filter", ""),
    ],
)
def test_incomplete_turns(stack: Stack, client: openai.OpenAI, model: str, reason: str, text: str) -> None:
    response, events = raw_stream(stack, {"model": model, "input": "long"})
    assert response.status_code == 200
    final = check_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": reason} and output_text(final) == text
    sdk = client.responses.create(model=model, input="long")
    assert sdk.status == "incomplete" and sdk.incomplete_details is not None
    assert sdk.incomplete_details.reason == reason


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("gem/cut", "upstream connection failed mid-stream"),
        ("gem/eof", "ended before a finishReason"),
        ("gem/error-mid", "An internal error has occurred mid-stream."),
    ],
)
def test_mid_stream_failures_end_with_response_failed(stack: Stack, model: str, message: str) -> None:
    response, events = raw_stream(stack, {"model": model, "input": "fail later"})
    assert response.status_code == 200
    final = check_events(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"]["code"] == "server_error" and message in final["error"]["message"]
    assert output_text(final) == "tok0 tok1 tok2 "


@pytest.mark.parametrize("stream", [True, False])
def test_malformed_call_before_any_output_is_a_502(stack: Stack, stream: bool) -> None:
    response = httpx.post(stack.url + "/v1/responses", headers=AUTH, timeout=20,
                          json={"model": "gem/malformed-call", "input": "x", "stream": stream})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["type"] == "provider_error" and "finishReason=MALFORMED_FUNCTION_CALL" in error["message"]


# --- images ------------------------------------------------------------------------------------------


def test_remote_image_is_fetched_and_sent_inline(stack: Stack, client: openai.OpenAI) -> None:
    url = f"http://127.0.0.1:{stack.image_port}/pixel.png"
    content = [{"type": "input_text", "text": "marker-image what is this?"},
               {"type": "input_image", "image_url": url}]
    resp = client.responses.create(model="gem/text:tokens=1", input=[{"role": "user", "content": content}])
    assert resp.output_text == "tok0 "
    _, body = sent_to_gemini(stack.mock, "marker-image")
    assert body["contents"][0]["parts"] == [
        {"text": "marker-image what is this?"},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(PNG).decode()}},
    ]
    assert url not in json.dumps(body)


def test_missing_remote_image_is_a_400(stack: Stack, client: openai.OpenAI) -> None:
    content = [{"type": "input_image", "image_url": f"http://127.0.0.1:{stack.image_port}/missing.png"}]
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="gem/text", input=[{"role": "user", "content": content}])
    assert info.value.message.endswith("could not fetch image at input[0].content[0]: "
                                       "the URL is not reachable or not allowed")


def test_built_in_tools_are_refused(stack: Stack) -> None:
    response = httpx.post(stack.url + "/v1/responses", headers=AUTH, timeout=10,
                          json={"model": "gem/text", "input": "x", "tools": [{"type": "web_search"}]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools[0].type"


# --- upstream errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code"),
    [
        ("gem/status-400", 400, "invalid_request_error", "context_length_exceeded"),
        ("gem/status-400-key", 502, "provider_error", "upstream_auth_failed"),
        ("gembad/text", 502, "provider_error", "upstream_auth_failed"),
        ("gem/status-403", 502, "provider_error", "upstream_auth_failed"),
        ("gem/status-404", 404, "not_found_error", "model_not_found"),
        ("gem/status-429", 429, "rate_limit_error", "rate_limit_exceeded"),
        ("gem/status-500", 502, "provider_error", "upstream_5xx"),
        ("gem/status-503", 502, "provider_error", "upstream_5xx"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors(stack: Stack, model: str, status: int, error_type: str, code: str, stream: bool) -> None:
    response = httpx.post(stack.url + "/v1/responses", json={"model": model, "input": "x", "stream": stream},
                          headers=AUTH, timeout=20)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == error_type and error["code"] == code and error["message"]
    if status == 429:
        assert response.headers["retry-after"] == "7"
    text = response.text + str(response.headers)
    assert UPSTREAM_KEY not in text and WRONG_KEY not in text


def test_sdk_sees_our_statuses(stack: Stack, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as rate:
        client.responses.create(model="gem/status-429", input="x")
    assert rate.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="gem/status-400", input="x")
    assert "exceeds the maximum number of tokens" in bad.value.message
    with pytest.raises(openai.InternalServerError) as denied:
        client.responses.create(model="gem/status-403", input="x")
    assert "has been suspended" in denied.value.message and UPSTREAM_KEY not in denied.value.message

"""The Ollama dialect end to end: gateway process + Ollama mock + the official openai SDK as the client.

Own fixtures (module scope): a local Ollama mock without a key, a "hosted" one behind a bearer key,
a tiny image server for remote ``input_image`` URLs, and a gateway process configured with
``type = "ollama"`` providers pointing at them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import FunctionToolParam

from streamgw.core.sse import SSEDecoder
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.ollama_mock import OllamaMock
from streamgw.testing.process import free_port, start_gateway, stop_process
from streamgw.testing.server import MockRequest, Responder, serving_in_thread

GATEWAY_KEY = "sk-gw-ollama-test-42"
HOSTED_KEY = "sk-hosted-ollama-0123456789abcdef"
WRONG_KEY = "sk-wrong-hosted-key-9876543210"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PNG_B64 = base64.b64encode(PNG).decode()
WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": None,
}


@dataclass
class Stack:
    """The running gateway and what it talks to."""

    url: str
    local: OllamaMock
    hosted: OllamaMock
    images_url: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=20)


async def serve_png(req: MockRequest, send: Responder) -> None:
    if req.path == "/cat.png":
        await send.full(200, {"content-type": "image/png"}, PNG)
    else:
        await send.full(404, {"content-type": "text/plain"}, b"no such image")


def config(local: int, hosted: int) -> str:
    return f"""
[auth]
keys = ["{GATEWAY_KEY}"]

[providers.local]
type = "ollama"
base_url = "http://127.0.0.1:{local}"
models = ["text-local"]

[providers.hosted]
type = "ollama"
base_url = "http://127.0.0.1:{hosted}/"
api_key = "{HOSTED_KEY}"

[providers.hostedbad]
type = "ollama"
base_url = "http://127.0.0.1:{hosted}"
api_key = "{WRONG_KEY}"

[fetch]
allow_hosts = ["127.0.0.1"]  # the image server is on loopback, refused by default
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    local, hosted = OllamaMock(), OllamaMock(api_key=HOSTED_KEY)
    tmp = tmp_path_factory.mktemp("ollama-gateway")
    with (
        local.serving_in_thread() as local_port,
        hosted.serving_in_thread() as hosted_port,
        serving_in_thread(lambda: serve_png) as images_port,
    ):
        path = tmp / "streamgw.toml"
        path.write_text(config(local_port, hosted_port))
        proc, url = start_gateway(path, tmp / "gateway.log", port=free_port())
        try:
            yield Stack(url, local, hosted, f"http://127.0.0.1:{images_port}")
        finally:
            assert stop_process(proc) == 0, "the gateway must exit cleanly on SIGTERM"


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


def sent_to(mock: OllamaMock, marker: str) -> dict[str, Any]:
    """The last body ``mock`` received that contains ``marker``."""
    for req in reversed(mock.requests):
        if marker.encode() in req.body:
            assert req.path == "/api/chat" and req.method == "POST"
            body: dict[str, Any] = req.json()
            return body
    raise AssertionError(f"no upstream request contained {marker!r}")


# --- text ------------------------------------------------------------------------------------------


def test_streamed_text_through_the_sdk(stack: Stack) -> None:
    events = list(stack.client().responses.create(model="local/text:tokens=5", input="stream me", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "tok0 tok1 tok2 tok3 tok4 "
    final = events[-1].response
    assert final.output_text == deltas and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 5
    assert final.usage.input_tokens == len("stream me") // 4 + 1
    assert final.model_extra is not None and final.model_extra.get("provider") == "local"


def test_streamed_events_pass_every_invariant(stack: Stack) -> None:
    response, events = raw_stream(stack, {"model": "local/text:tokens=7", "input": "check me"})
    assert response.status_code == 200
    assert output_text(check_events(events)) == "".join(f"tok{i} " for i in range(7))


def test_non_streamed_text_and_bare_model_name(stack: Stack) -> None:
    resp = stack.client().responses.create(model="text-local", input="no stream", instructions="Be brief.")
    assert resp.output_text == "".join(f"tok{i} " for i in range(8)) and resp.status == "completed"
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.input_tokens + 8


def test_what_reaches_the_upstream(stack: Stack) -> None:
    stack.client().responses.create(
        model="local/text:tokens=1", input="marker-translation", instructions="sys text", temperature=0.3,
        top_p=0.9, max_output_tokens=77, reasoning={"effort": "minimal"}, text={"format": {"type": "json_object"}},
        extra_body={"stop": ["END"]},
    )
    sent = sent_to(stack.local, "marker-translation")
    assert sent["model"] == "text:tokens=1" and sent["stream"] is True
    assert sent["messages"] == [{"role": "system", "content": "sys text"},
                                {"role": "user", "content": "marker-translation"}]
    assert sent["options"] == {"temperature": 0.3, "top_p": 0.9, "num_predict": 77, "stop": ["END"]}
    assert sent["think"] == "low" and sent["format"] == "json"
    assert "authorization" not in stack.local.requests[-1].headers


# --- tools, reasoning, stop reasons --------------------------------------------------------------


def test_function_call_round_trip(stack: Stack) -> None:
    client = stack.client()
    first = client.responses.create(model="local/tool", input="marker-weather in Paris?", tools=[WEATHER_TOOL])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    follow = client.responses.create(
        model="local/text:tokens=2",
        input=[{"role": "user", "content": "marker-round-trip in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}],
        tools=[WEATHER_TOOL],
    )
    assert follow.output_text == "tok0 tok1 "
    sent = sent_to(stack.local, "marker-round-trip")
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [{"id": call.call_id, "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]
    assert tool == {"role": "tool", "content": '{"temp_c": 18}', "tool_name": "get_weather",
                    "tool_call_id": call.call_id}
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.", "parameters": WEATHER_TOOL["parameters"]}}]


def test_two_tool_calls_streamed(stack: Stack) -> None:
    _, events = raw_stream(stack, {"model": "local/two-tools", "input": "two", "tools": [WEATHER_TOOL]})
    final = check_events(events)
    calls = [o for o in final["output"] if o["type"] == "function_call"]
    assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Tokyo"]
    assert len({c["call_id"] for c in calls}) == 2


def test_reasoning_then_text(stack: Stack) -> None:
    _, events = raw_stream(stack, {"model": "local/thinking:tokens=2,thinking_tokens=3", "input": "think",
                                   "reasoning": {"effort": "high"}})
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"][0]["text"] == "think0 think1 think2 "
    assert output_text(final) == "tok0 tok1 "
    assert sent_to(stack.local, "thinking_tokens=3")["think"] == "high"


def test_length_is_incomplete(stack: Stack) -> None:
    _, events = raw_stream(stack, {"model": "local/length:tokens=3", "input": "long"})
    final = check_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}


def test_sdk_non_streamed_length(stack: Stack) -> None:
    resp = stack.client().responses.create(model="local/length:tokens=2", input="long")
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("scenario", ["error-mid", "cut", "eof", "malformed"])
def test_mid_stream_failures_end_with_response_failed(stack: Stack, scenario: str) -> None:
    response, events = raw_stream(stack, {"model": f"local/{scenario}", "input": "fail later"})
    assert response.status_code == 200
    final = check_events(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"]["code"] == "server_error" and final["error"]["message"]
    assert output_text(final).startswith("tok0")


def test_error_line_before_any_output_is_a_502(stack: Stack) -> None:
    response = httpx.post(stack.url + "/v1/responses", json={"model": "local/error-mid:tokens=0", "input": "x",
                                                              "stream": True}, headers=AUTH, timeout=20)
    assert response.status_code == 502
    assert "error was encountered while running the model" in response.json()["error"]["message"]


# --- images and what Ollama cannot take ------------------------------------------------------------


def test_images_reach_ollama_as_bare_base64(stack: Stack) -> None:
    content: Any = [{"type": "input_text", "text": "marker-images"},
               {"type": "input_image", "image_url": f"data:image/png;base64,{PNG_B64}"},
               {"type": "input_image", "image_url": f"{stack.images_url}/cat.png"}]
    resp = stack.client().responses.create(model="local/text:tokens=1", input=[{"role": "user", "content": content}])
    assert resp.status == "completed"
    [message] = sent_to(stack.local, "marker-images")["messages"]
    assert message == {"role": "user", "content": "marker-images", "images": [PNG_B64, PNG_B64]}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": [{"role": "user", "content": [
            {"type": "input_text", "text": "x"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}]}]},
         "input[0].content[1].type"),
        ({"input": "x", "tools": [WEATHER_TOOL], "tool_choice": "required"}, "tool_choice"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://127.0.0.1:1/x.png"}]}]},
         "input"),
    ],
)
def test_what_ollama_cannot_take_is_a_400(stack: Stack, extra: dict[str, Any], param: str) -> None:
    response = httpx.post(stack.url + "/v1/responses", json={"model": "local/text", **extra}, headers=AUTH,
                          timeout=20)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


# --- upstream errors and keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code", "text"),
    [
        ("local/status-400", 400, "invalid_request_error", None, "invalid options"),
        ("local/status-404", 404, "not_found_error", "model_not_found", "try pulling it first"),
        ("local/missing-llama9", 404, "not_found_error", "model_not_found", 'model "missing-llama9" not found'),
        ("local/status-429", 429, "rate_limit_error", "rate_limit_exceeded", "too many requests"),
        ("local/status-500", 502, "provider_error", "upstream_5xx", "llama runner process has terminated"),
        ("hostedbad/text", 502, "provider_error", "upstream_auth_failed", "unauthorized"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_before_the_first_byte(
    stack: Stack, model: str, status: int, error_type: str, code: str | None, text: str, stream: bool
) -> None:
    response = httpx.post(stack.url + "/v1/responses", json={"model": model, "input": "x", "stream": stream},
                          headers=AUTH, timeout=20)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == error_type and text in error["message"] and error["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "7"
    assert HOSTED_KEY not in response.text and WRONG_KEY not in response.text


def test_sdk_maps_statuses_to_its_exceptions(stack: Stack) -> None:
    client = stack.client()
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="local/missing-x", input="x")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="local/status-400", input="x")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="local/status-429", input="x")


def test_hosted_ollama_gets_the_bearer_key(stack: Stack) -> None:
    resp = stack.client().responses.create(model="hosted/text:tokens=2", input="marker-hosted")
    assert resp.output_text == "tok0 tok1 "
    req = next(r for r in reversed(stack.hosted.requests) if b"marker-hosted" in r.body)
    assert req.headers["authorization"] == f"Bearer {HOSTED_KEY}"
    assert req.headers["accept-encoding"] == "identity"

"""The native ``openai`` dialect end to end: gateway process + Responses mock upstream + the openai SDK.

The gateway runs with its own config (``[providers.oai] type = "openai"``) against a
``ResponsesMock`` in a thread, which records every request and the exact bytes it answered,
so a test can compare what the client got with what the upstream sent.  The upstream key is
deliberately not key-shaped: only the configured-secret redaction can keep it out of output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from streamgw.core.sse import SSEDecoder
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.process import start_gateway, stop_process
from streamgw.testing.responses_mock import ResponsesMock
from streamgw.testing.server import MockRequest

from .conftest import Gateway

UPSTREAM_KEY = "openai-upstream-credential-5d9e1a"
WRONG_KEY = "openai-wrong-credential-2c7b4f"
GATEWAY_KEY = "gw-native-e2e-key"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ResponsesMock]:
    mock = ResponsesMock(api_key=UPSTREAM_KEY)
    with mock.serving_in_thread() as port:
        mock.port = port  # type: ignore[attr-defined]
        yield mock


def gateway_config(port: int) -> str:
    base = f"http://127.0.0.1:{port}/v1"
    return f"""
[auth]
keys = ["{GATEWAY_KEY}"]

[providers.oai]
type = "openai"
base_url = "{base}"
api_key = "{UPSTREAM_KEY}"
models = ["native-bare"]

[providers.oaibad]
type = "openai"
base_url = "{base}"
api_key = "{WRONG_KEY}"

[providers.oaislow]
type = "openai"
base_url = "{base}"
api_key = "{UPSTREAM_KEY}"
[providers.oaislow.timeouts]
first_token = 0.5
idle = 0.5
"""


@pytest.fixture(scope="module")
def gateway(upstream: ResponsesMock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("openai-native-gateway")
    config = tmp / "streamgw.toml"
    config.write_text(gateway_config(upstream.port))  # type: ignore[attr-defined]
    proc, url = start_gateway(config, tmp / "gateway.log")
    gw = Gateway(url, proc, tmp / "gateway.log")
    try:
        yield gw
    finally:
        gw.close_clients()
        assert stop_process(proc) == 0, "the gateway must exit cleanly on SIGTERM"
        log = (tmp / "gateway.log").read_text(errors="replace")
        assert UPSTREAM_KEY not in log and WRONG_KEY not in log


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return gateway.client(key=GATEWAY_KEY)


def raw_stream(gateway: Gateway, body: dict[str, Any]) -> tuple[httpx.Response, bytes, list[dict[str, Any]]]:
    """POST a streamed request; return the response, its body bytes and its decoded events."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    received = b""
    with httpx.stream("POST", gateway.url + "/v1/responses", json={**body, "stream": True}, headers=AUTH,
                      timeout=20) as response:
        for chunk in response.iter_raw():
            received += chunk
            for sse in decoder.feed(chunk):
                payload = json.loads(sse.data)
                assert sse.event == payload["type"], "the event: line must equal data.type"
                events.append(payload)
        decoder.finish()
    return response, received, events


def upstream_request(mock: ResponsesMock, marker: str) -> MockRequest:
    for req in reversed(mock.requests):
        if marker.encode() in req.body:
            return req
    raise AssertionError(f"no upstream request contained {marker!r}")


_SNAPSHOT = re.compile(
    rb'^(data: \{"type":"response\.(?:created|in_progress|queued|completed|incomplete|failed)","response":\{.*)'
    rb'(\},"sequence_number":\d+\})$',
    re.MULTILINE,
)


def with_provider(body: bytes, provider: str) -> bytes:
    """The upstream's bytes with ``"provider"`` added at the end of every ``response`` snapshot."""
    return _SNAPSHOT.sub(rb'\1,"provider":"' + provider.encode() + rb'"\2', body)


def without_comments(body: bytes) -> bytes:
    return b"".join(block + b"\n\n" for block in body.split(b"\n\n") if block and not block.startswith(b":"))


# --- streamed ------------------------------------------------------------------------------------


def test_stream_is_the_upstreams_byte_for_byte_but_for_provider(gateway: Gateway, upstream: ResponsesMock) -> None:
    response, received, events = raw_stream(gateway, {"model": "oai/text:tokens=6", "input": "marker-bytes"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    sent = upstream.sent[upstream_request(upstream, "marker-bytes").request_id]
    assert without_comments(received) == with_provider(sent, "oai")
    assert without_comments(received) != sent
    final = check_events(events)
    assert output_text(final) == "".join(f"tok{i} " for i in range(6))
    assert all(e["response"]["provider"] == "oai" for e in events if "response" in e)
    assert any("obfuscation" in e for e in events)  # deltas untouched, padding included


def test_sdk_parses_the_relayed_stream(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="oai/text:tokens=3", input="sdk stream", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    final = events[-1].response
    assert final.output_text == "tok0 tok1 tok2 " and final.model == "text:tokens=3"
    assert final.model_extra is not None and final.model_extra["provider"] == "oai"
    with client.responses.stream(model="oai/tool", input="helper", tools=[WEATHER_TOOL]) as stream:
        done = stream.get_final_response()
    assert done.output[0].type == "function_call" and json.loads(done.output[0].arguments) == {"city": "Paris"}


def test_non_streamed_is_the_terminal_response(gateway: Gateway, client: openai.OpenAI,
                                              upstream: ResponsesMock) -> None:
    resp = client.responses.create(model="oai/text:tokens=2", input="marker-sdk-plain", instructions="Be brief.")
    assert resp.output_text == "tok0 tok1 " and resp.status == "completed" and resp.instructions == "Be brief."
    body = {"model": "oai/reasoning:tokens=2", "input": "marker-plain"}
    plain = httpx.post(gateway.url + "/v1/responses", json=body, headers=AUTH, timeout=20)
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
    req = upstream_request(upstream, "marker-plain")
    assert req.json()["stream"] is True  # the upstream always streams; the gateway aggregates
    terminal = upstream.sent[req.request_id].split(b"event: response.completed\ndata: ")[1]
    assert plain.json() == {**json.loads(terminal)["response"], "provider": "oai"}


def test_what_reaches_the_upstream(client: openai.OpenAI, upstream: ResponsesMock) -> None:
    client.responses.create(
        model="oai/text:tokens=1", input="marker-fields", temperature=0.3, max_output_tokens=64,
        include=["reasoning.encrypted_content"], stream_options={"include_obfuscation": False}, stream=True,
        extra_body={"provider": "oai", "prompt_cache_retention": "24h",
                    "context_management": [{"type": "compaction", "compact_threshold": 5000}]},
    ).close()
    req = upstream_request(upstream, "marker-fields")
    assert req.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert req.headers["accept"] == "text/event-stream" and req.headers["accept-encoding"] == "identity"
    assert req.json() == {
        "model": "text:tokens=1", "input": "marker-fields", "temperature": 0.3, "max_output_tokens": 64,
        "include": ["reasoning.encrypted_content"], "stream_options": {"include_obfuscation": False},
        "stream": True, "prompt_cache_retention": "24h",
        "context_management": [{"type": "compaction", "compact_threshold": 5000}],
    }


def test_unknown_fields_reach_the_upstream_which_judges_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="oai/text", input="x", extra_body={"x_future_field": 1})
    assert info.value.body["param"] == "x_future_field"  # type: ignore[index]
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as small:  # valid for us, not for this upstream
        client.responses.create(model="oai/text", input="x", max_output_tokens=8, stream=True)
    assert (small.value.code, small.value.param) == ("integer_below_min_value", "max_output_tokens")


def test_bare_model_routes_to_the_native_provider(client: openai.OpenAI, upstream: ResponsesMock) -> None:
    resp = client.responses.create(model="native-bare", input="marker-bare")
    assert resp.model_extra is not None and resp.model_extra["provider"] == "oai"
    assert upstream_request(upstream, "marker-bare").json()["model"] == "native-bare"


def test_function_call_round_trip(client: openai.OpenAI, upstream: ResponsesMock) -> None:
    first = client.responses.create(model="oai/tool", input="marker-weather in Paris?", tools=[WEATHER_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    items: Any = [
        {"role": "user", "content": "marker-round-trip in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'},
    ]
    follow = client.responses.create(model="oai/text:tokens=2", input=items, tools=[WEATHER_TOOL])
    assert follow.output_text == "tok0 tok1 "
    sent = upstream_request(upstream, "marker-round-trip").json()
    assert sent["input"] == items and sent["tools"] == [WEATHER_TOOL]


def test_parallel_calls_and_reasoning_streams(gateway: Gateway) -> None:
    _, _, calls = raw_stream(gateway, {"model": "oai/two-tools", "input": "two", "tools": [WEATHER_TOOL]})
    final = check_events(calls)
    assert [json.loads(o["arguments"])["city"] for o in final["output"]] == ["Paris", "Tokyo"]
    _, _, events = raw_stream(gateway, {"model": "oai/reasoning:tokens=2", "input": "think"})
    final = check_events(events)
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning" and len(reasoning["summary"]) == 2
    assert reasoning["encrypted_content"].startswith("gAAAAB")  # the upstream's own blob, relayed as is
    assert message["type"] == "message" and final["usage"]["output_tokens_details"]["reasoning_tokens"] == 4


def test_length_is_incomplete(gateway: Gateway, client: openai.OpenAI) -> None:
    _, _, events = raw_stream(gateway, {"model": "oai/length:tokens=3", "input": "long"})
    final = check_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    plain = client.responses.create(model="oai/length:tokens=2", input="long")
    assert plain.status == "incomplete" and plain.output_text == "tok0 tok1 "


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "code", "message"),
    [
        ("failed", "server_error", "The model failed to generate a response."),
        ("error-event", "server_error", "The server had an error while processing your request."),
        ("cut", "server_error", "upstream connection failed mid-stream"),
        ("malformed", "server_error", "malformed upstream event"),
        ("slow/stall", "upstream_idle_timeout", "idle timeout"),
    ],
)
def test_mid_stream_failures_end_with_one_honest_response_failed(
    gateway: Gateway, scenario: str, code: str, message: str
) -> None:
    model = "oaislow/stall" if scenario == "slow/stall" else f"oai/{scenario}"
    response, _, events = raw_stream(gateway, {"model": model, "input": "fail later"})
    assert response.status_code == 200
    final = check_events(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"]["code"] == code and message in final["error"]["message"]
    assert output_text(final).startswith("tok0") and final["provider"] == model.split("/")[0]
    assert final["output"] and final["output"][0]["status"] == "incomplete"


def test_sdk_sees_the_upstream_failure(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="oai/error-event", input="x", stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.error is not None
    assert "error while processing" in events[-1].response.error.message
    assert not any(e.type == "error" for e in events)


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code"),
    [
        ("oai/status-400", 400, "invalid_request_error", "context_length_exceeded"),
        ("oai/status-404", 404, "not_found_error", "model_not_found"),
        ("oai/status-429", 429, "rate_limit_error", "rate_limit_exceeded"),
        ("oai/status-500", 502, "provider_error", "upstream_5xx"),
        ("oai/status-503", 502, "provider_error", "upstream_5xx"),
        ("oai/status-401", 502, "provider_error", "upstream_auth_failed"),
        ("oaibad/text", 502, "provider_error", "upstream_auth_failed"),
        ("oai/failed:tokens=0", 502, "provider_error", "server_error"),
        ("oai/error-event:tokens=0", 502, "provider_error", "server_error"),
        ("oai/cut:tokens=0", 502, "provider_error", None),
        ("oaislow/stall:tokens=0", 504, "provider_error", "first_token_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_errors_before_the_first_byte(
    gateway: Gateway, model: str, status: int, error_type: str, code: str | None, stream: bool
) -> None:
    body = {"model": model, "input": "x", "stream": stream}
    response = httpx.post(gateway.url + "/v1/responses", json=body, headers=AUTH, timeout=20)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == error_type and error["message"]
    if code is not None:
        assert error["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "7"
    text = response.text + str(response.headers)
    assert UPSTREAM_KEY not in text and WRONG_KEY not in text


def test_sdk_maps_upstream_statuses_to_its_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as rate:
        client.responses.create(model="oai/status-429", input="x")
    assert rate.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="oai/status-400", input="x", stream=True)
    assert bad.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError) as auth:
        client.responses.create(model="oaibad/text", input="x")
    assert auth.value.status_code == 502 and WRONG_KEY not in auth.value.response.text

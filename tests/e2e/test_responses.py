"""POST /v1/responses end to end: hypercorn + gateway process + mock upstream + the official openai SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from streamgw.core.sse import SSEDecoder
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.invariants import check_events, output_text

from .conftest import GATEWAY_KEY, UPSTREAM_KEY, WRONG_UPSTREAM_KEY, Gateway

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def raw_stream(gateway: Gateway, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST a streamed request with plain httpx; return the response and its decoded events."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", gateway.url + "/v1/responses", json={**body, "stream": True}, headers=AUTH,
                      timeout=20) as response:
        for chunk in response.iter_raw():
            for sse in decoder.feed(chunk):
                payload = json.loads(sse.data)
                assert sse.event == payload["type"], "the event: line must equal data.type"
                events.append(payload)
        decoder.finish()
    return response, events


def find_upstream_request(mock: ChatCompletionsMock, marker: str) -> dict[str, Any]:
    for req in reversed(mock.requests):
        if marker.encode() in req.body:
            body: dict[str, Any] = req.json()
            return body
    raise AssertionError(f"no upstream request contained {marker!r}")


def test_streamed_text_through_the_sdk(gateway: Gateway) -> None:
    client = gateway.client()
    events = list(client.responses.create(model="mock/text:tokens=5", input="stream me", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "tok0 tok1 tok2 tok3 tok4 "
    final = events[-1].response
    assert final.output_text == deltas and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 5
    assert final.model_extra is not None and final.model_extra.get("provider") == "mock"


def test_streamed_events_pass_every_invariant(gateway: Gateway) -> None:
    response, events = raw_stream(gateway, {"model": "mock/text:tokens=7", "input": "check me"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-request-id"].startswith("req_")
    final = check_events(events)
    assert output_text(final) == "".join(f"tok{i} " for i in range(7))
    assert all(ev["response"]["provider"] == "mock" for ev in events if "response" in ev)


def test_non_streamed_text(gateway: Gateway) -> None:
    resp = gateway.client().responses.create(model="mock/text:tokens=3", input="no stream", instructions="Be brief.")
    assert resp.output_text == "tok0 tok1 tok2 " and resp.status == "completed"
    assert resp.instructions == "Be brief." and resp.id.startswith("resp_")
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.input_tokens + 3


def test_what_reaches_the_upstream(gateway: Gateway, mock: ChatCompletionsMock) -> None:
    gateway.client().responses.create(
        model="mock/text:tokens=1", input="marker-translation", instructions="sys text",
        temperature=0.3, top_p=0.9, max_output_tokens=77, extra_body={"provider": "mock", "stop": ["END"]},
    )
    sent = find_upstream_request(mock, "marker-translation")
    assert sent["model"] == "text:tokens=1" and sent["stream"] is True
    assert sent["messages"] == [{"role": "system", "content": "sys text"},
                                {"role": "user", "content": "marker-translation"}]
    assert sent["temperature"] == 0.3 and sent["top_p"] == 0.9 and sent["max_tokens"] == 77
    assert sent["stop"] == "END" and "provider" not in sent
    assert sent["stream_options"] == {"include_usage": True}


def test_bare_model_name_routes_to_its_provider(gateway: Gateway) -> None:
    resp = gateway.client().responses.create(model="text-bare", input="bare")
    assert resp.model_extra is not None and resp.model_extra["provider"] == "mock"


def test_function_call_round_trip(gateway: Gateway, mock: ChatCompletionsMock) -> None:
    client = gateway.client()
    first = client.responses.create(model="mock/tool", input="marker-weather in Paris?", tools=[WEATHER_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    follow = client.responses.create(
        model="mock/text:tokens=2",
        input=[{"role": "user", "content": "marker-round-trip in Paris?"},
               {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}],
        tools=[WEATHER_TOOL],
    )
    assert follow.output_text == "tok0 tok1 "
    sent = find_upstream_request(mock, "marker-round-trip")
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    assert assistant["tool_calls"] == [{"id": call.call_id, "type": "function",
                                        "function": {"name": "get_weather", "arguments": call.arguments}}]
    assert tool == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 18}'}
    assert sent["tools"][0]["function"]["name"] == "get_weather"


def test_two_parallel_tool_calls_streamed(gateway: Gateway) -> None:
    _, events = raw_stream(gateway, {"model": "mock/two-tools", "input": "two", "tools": [WEATHER_TOOL]})
    final = check_events(events)
    calls = [o for o in final["output"] if o["type"] == "function_call"]
    assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Tokyo"]
    assert len({c["call_id"] for c in calls}) == 2


def test_reasoning_then_text(gateway: Gateway) -> None:
    _, events = raw_stream(gateway, {"model": "mock/reasoning:tokens=2", "input": "think"})
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["summary"][0]["text"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] > 0


def test_length_finish_is_incomplete(gateway: Gateway) -> None:
    _, events = raw_stream(gateway, {"model": "mock/length:tokens=3", "input": "long"})
    final = check_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize("scenario", ["error-mid", "cut", "eof", "malformed"])
def test_mid_stream_failures_end_with_response_failed(gateway: Gateway, scenario: str) -> None:
    response, events = raw_stream(gateway, {"model": f"mock/{scenario}", "input": "fail later"})
    assert response.status_code == 200
    final = check_events(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"]["code"] == "server_error" and final["error"]["message"]
    assert not any(e["type"] == "response.completed" for e in events)
    assert output_text(final).startswith("tok0")


def test_sdk_sees_response_failed(gateway: Gateway) -> None:
    events = list(gateway.client().responses.create(model="mock/error-mid", input="x", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.error is not None
    assert "error while processing" in events[-1].response.error.message


def test_idle_timeout_mid_stream(gateway: Gateway) -> None:
    _, events = raw_stream(gateway, {"model": "slow/stall", "input": "stall"})
    final = check_events(events)
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_idle_timeout"


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code"),
    [
        ("mock/status-400", 400, "invalid_request_error", None),
        ("mock/status-404", 404, "not_found_error", "model_not_found"),
        ("mock/status-429", 429, "rate_limit_error", "rate_limit_exceeded"),
        ("mock/status-500", 502, "provider_error", None),
        ("mock/status-503", 502, "provider_error", None),
        ("mock/status-401", 502, "provider_error", "upstream_auth_failed"),
        ("badkey/text", 502, "provider_error", "upstream_auth_failed"),
        ("down/text", 502, "provider_error", "upstream_unreachable"),
        ("slow/text:ttft=3", 504, "provider_error", "first_token_timeout"),
        ("nowhere/text", 404, "not_found_error", "model_not_found"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_before_the_first_byte(
    gateway: Gateway, model: str, status: int, error_type: str, code: str | None, stream: bool
) -> None:
    response = httpx.post(gateway.url + "/v1/responses", json={"model": model, "input": "x", "stream": stream},
                          headers=AUTH, timeout=20)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    error = response.json()["error"]
    assert error["type"] == error_type and error["message"]
    if code is not None:
        assert error["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "7"
    text = response.text + str(response.headers)
    assert UPSTREAM_KEY not in text and WRONG_UPSTREAM_KEY not in text


def test_sdk_maps_statuses_to_its_exceptions(gateway: Gateway) -> None:
    client = gateway.client()
    with pytest.raises(openai.RateLimitError) as rate:
        client.responses.create(model="mock/status-429", input="x")
    assert rate.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope/x", input="x")
    with pytest.raises(openai.AuthenticationError):
        gateway.client(key="sk-not-the-key").responses.create(model="demo/x", input="x")
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="demo/x", input="x", temperature=3)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "demo/x"}, "input"),
        ({"model": "demo/x", "input": 5}, "input"),
        ({"model": "demo/x", "input": [{"type": "bogus"}]}, "input[0].type"),
        ({"model": "demo/x", "input": [{"role": "user", "content": [{"type": "input_video"}]}]},
         "input[0].content[0].type"),
        ({"model": "demo/x", "input": "x", "temperature": 2.5}, "temperature"),
        ({"model": "demo/x", "input": "x", "top_p": 1.5}, "top_p"),
        ({"model": "demo/x", "input": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "demo/x", "input": "x", "max_output_tokens": -1}, "max_output_tokens"),
        ({"model": "demo/x", "input": "x", "stream": "yes"}, "stream"),
        ({"model": "mock/text", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ],
)
def test_validation_errors_name_the_param(gateway: Gateway, body: dict[str, Any], param: str) -> None:
    response = httpx.post(gateway.url + "/v1/responses", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_invalid_json_and_oversized_bodies(gateway: Gateway) -> None:
    bad = httpx.post(gateway.url + "/v1/responses", content=b"{nope", headers=AUTH, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    big = {"model": "demo/x", "input": "x" * (2 * 1024 * 1024)}
    too_big = httpx.post(gateway.url + "/v1/responses", json=big, headers=AUTH, timeout=10)
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "invalid_request_error"


def test_auth_is_required_on_v1_only(gateway: Gateway) -> None:
    missing = httpx.post(gateway.url + "/v1/responses", json={"model": "demo/x", "input": "x"}, timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200

"""The anthropic dialect end to end: gateway process + Anthropic mock upstream + the official openai SDK.

The gateway runs with its own config (``[providers.claude] type = "anthropic"``) against an
``AnthropicMock`` in a thread, so every test can look at exactly what reached the upstream.  The
upstream key is deliberately not key-shaped: only the configured-secret redaction can keep it
out of the output, and the mock's 401 echoes it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from streamgw.core.blobs import decode_blob, encode_blob
from streamgw.core.sse import SSEDecoder
from streamgw.testing.anthropic_mock import AnthropicMock, signature_for
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.process import start_gateway, stop_process

from .conftest import Gateway

UPSTREAM_KEY = "anthropic-upstream-credential-7f3a9c"
WRONG_KEY = "anthropic-wrong-credential-0b1d2e"
GATEWAY_KEY = "gw-anthropic-e2e-key"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
THOUGHT = "".join(f"think{i} " for i in range(5))
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def mock() -> Iterator[AnthropicMock]:
    upstream = AnthropicMock(api_key=UPSTREAM_KEY)
    with upstream.serving_in_thread() as port:
        upstream.port = port  # type: ignore[attr-defined]
        yield upstream


def gateway_config(port: int) -> str:
    base = f"http://127.0.0.1:{port}"
    return f"""
[auth]
keys = ["{GATEWAY_KEY}"]

[providers.claude]
type = "anthropic"
base_url = "{base}"
api_key = "{UPSTREAM_KEY}"

[providers.claude2]
type = "anthropic"
base_url = "{base}"
api_key = "{UPSTREAM_KEY}"

[providers.claudebad]
type = "anthropic"
base_url = "{base}"
api_key = "{WRONG_KEY}"
"""


@pytest.fixture(scope="module")
def gateway(mock: AnthropicMock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("anthropic-gateway")
    config = tmp / "streamgw.toml"
    config.write_text(gateway_config(mock.port))  # type: ignore[attr-defined]
    proc, url = start_gateway(config, tmp / "gateway.log")
    try:
        yield Gateway(url, proc, tmp / "gateway.log")
    finally:
        assert stop_process(proc) == 0, "the gateway must exit cleanly on SIGTERM"
        log = (tmp / "gateway.log").read_text(errors="replace")
        assert UPSTREAM_KEY not in log and WRONG_KEY not in log


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with gateway.client(key=GATEWAY_KEY) as sdk:
        yield sdk


def raw_stream(gateway: Gateway, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST a streamed request with plain httpx; return the response and its decoded events."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    with httpx.stream("POST", gateway.url + "/v1/responses", json={**body, "stream": True}, headers=AUTH,
                      timeout=20) as response:
        for chunk in response.iter_raw():
            for sse in decoder.feed(chunk):
                payload = json.loads(sse.data)
                assert sse.event == payload["type"]
                events.append(payload)
        decoder.finish()
    return response, events


def sent(mock: AnthropicMock, marker: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The body and headers of the last upstream request containing ``marker``."""
    for req in reversed(mock.requests):
        if marker.encode() in req.body:
            return req.json(), req.headers
    raise AssertionError(f"no upstream request contained {marker!r}")


def replayable(items: list[Any]) -> list[Any]:
    """Output items as a client sends them back as input."""
    return [item.model_dump(exclude_none=True) for item in items]


def conversation(*items: Any) -> Any:
    """An ``input`` list (typed loosely: the SDK's TypedDict union does not take plain dicts)."""
    return list(items)


# --- text --------------------------------------------------------------------------------------------


def test_streamed_text_through_the_sdk(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="claude/text:tokens=5", input="stream me", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "tok0 tok1 tok2 tok3 tok4 "
    final = events[-1].response
    assert final.output_text == deltas and final.usage is not None and final.usage.output_tokens == 5
    assert final.model_extra is not None and final.model_extra.get("provider") == "claude"


def test_streamed_events_pass_every_invariant(gateway: Gateway) -> None:
    response, events = raw_stream(gateway, {"model": "claude/text:tokens=4,cache_read=40,cache_write=8",
                                            "input": "check me"})
    assert response.status_code == 200
    final = check_events(events)
    assert output_text(final) == "tok0 tok1 tok2 tok3 "
    usage = final["usage"]
    assert usage["input_tokens_details"] == {"cached_tokens": 40, "cache_write_tokens": 8}
    assert usage["input_tokens"] == 40 + 8 + len("check me") // 4 + 1


def test_non_streamed_text(client: openai.OpenAI) -> None:
    resp = client.responses.create(model="claude/text:tokens=3", input="no stream", instructions="Be brief.")
    assert resp.output_text == "tok0 tok1 tok2 " and resp.status == "completed"
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.input_tokens + 3


def test_what_reaches_the_upstream(client: openai.OpenAI, mock: AnthropicMock) -> None:
    client.responses.create(
        model="claude/text:tokens=1", input="marker-translation", instructions="sys text", temperature=1.6,
        max_output_tokens=77, safety_identifier="user-hash", extra_body={"stop": ["END"]},
    )
    body, headers = sent(mock, "marker-translation")
    assert body == {
        "model": "text:tokens=1", "max_tokens": 77, "stream": True, "system": "sys text",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "marker-translation"}]}],
        "temperature": 1.0, "stop_sequences": ["END"], "metadata": {"user_id": "user-hash"},
    }
    assert headers["x-api-key"] == UPSTREAM_KEY and headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers


def test_image_urls_go_up_as_urls(client: openai.OpenAI, mock: AnthropicMock) -> None:
    image = {"type": "input_image", "image_url": "https://img.test/cat.png"}
    client.responses.create(model="claude/text:tokens=1",
                            input=conversation({"role": "user", "content": [
                                {"type": "input_text", "text": "marker-image"}, image]}))
    body, _ = sent(mock, "marker-image")
    assert body["messages"][0]["content"][1] == {"type": "image", "source": {"type": "url",
                                                                              "url": "https://img.test/cat.png"}}


# --- tools -------------------------------------------------------------------------------------------


def test_function_call_round_trip(client: openai.OpenAI, mock: AnthropicMock) -> None:
    first = client.responses.create(model="claude/tool", input="marker-weather in Paris?", tools=[WEATHER_TOOL])
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("toolu_")
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    follow = client.responses.create(
        model="claude/text:tokens=2", tools=[WEATHER_TOOL],
        input=conversation({"role": "user", "content": "marker-round-trip in Paris?"}, *replayable(first.output),
                           {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'}),
    )
    assert follow.output_text == "tok0 tok1 "
    body, _ = sent(mock, "marker-round-trip")
    assert body["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": call.call_id, "name": "get_weather",
                                           "input": {"city": "Paris", "unit": "celsius"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.call_id,
                                      "content": '{"temp_c": 18}'}]},
    ]
    assert body["tools"][0]["name"] == "get_weather" and body["tools"][0]["input_schema"]["required"] == ["city"]


def test_two_tool_calls_streamed(gateway: Gateway, mock: AnthropicMock) -> None:
    _, events = raw_stream(gateway, {"model": "claude/two-tools", "input": "marker-two", "tools": [WEATHER_TOOL],
                                     "parallel_tool_calls": False})
    final = check_events(events)
    calls = [o for o in final["output"] if o["type"] == "function_call"]
    assert [json.loads(c["arguments"])["city"] for c in calls] == ["Paris", "Tokyo"]
    assert len({c["call_id"] for c in calls}) == 2
    body, _ = sent(mock, "marker-two")
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


# --- reasoning ---------------------------------------------------------------------------------------


def test_reasoning_is_replayed_with_its_signature(client: openai.OpenAI, mock: AnthropicMock) -> None:
    first = client.responses.create(model="claude/thinking:tokens=2", input="marker-think once",
                                    reasoning={"effort": "low"})
    body, _ = sent(mock, "marker-think once")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048} and body["max_tokens"] > 2048
    reasoning, message = first.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == THOUGHT
    assert decode_blob(reasoning.encrypted_content, "claude") == {"thinking": THOUGHT,
                                                                  "signature": signature_for(THOUGHT)}
    assert message.type == "message" and first.output_text == "tok0 tok1 "
    again = client.responses.create(
        model="claude/text:tokens=1", reasoning={"effort": "low"},
        input=conversation({"role": "user", "content": "marker-think once"}, *replayable(first.output),
                           {"role": "user", "content": "marker-think twice"}),
    )
    assert again.status == "completed"  # the mock rejects a thinking block with a bad signature
    body, _ = sent(mock, "marker-think twice")
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "thinking", "thinking": THOUGHT, "signature": signature_for(THOUGHT)},
        {"type": "text", "text": "tok0 tok1 "}]}


def test_reasoning_before_a_tool_call_round_trip(client: openai.OpenAI, mock: AnthropicMock) -> None:
    first = client.responses.create(model="claude/thinking-tool", input="marker-think-tool",
                                    reasoning={"effort": "medium"}, tools=[WEATHER_TOOL])
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert call.type == "function_call"
    client.responses.create(
        model="claude/text:tokens=1", reasoning={"effort": "medium"}, tools=[WEATHER_TOOL],
        input=conversation({"role": "user", "content": "marker-think-tool"}, *replayable(first.output),
                           {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
                           {"role": "user", "content": "marker-think-tool-2"}),
    )
    body, _ = sent(mock, "marker-think-tool-2")
    assistant, results = body["messages"][1:]
    assert [block["type"] for block in assistant["content"]] == ["thinking", "tool_use"]
    assert assistant["content"][0]["signature"] == signature_for(THOUGHT)
    assert results["content"] == [{"type": "tool_result", "tool_use_id": call.call_id, "content": "sunny"},
                                  {"type": "text", "text": "marker-think-tool-2"}]


def test_redacted_thinking_round_trip(client: openai.OpenAI, mock: AnthropicMock) -> None:
    first = client.responses.create(model="claude/redacted:tokens=1", input="marker-redacted")
    reasoning = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary == []
    blob = decode_blob(reasoning.encrypted_content, "claude")
    assert blob is not None and set(blob) == {"redacted"}
    client.responses.create(model="claude/text:tokens=1",
                            input=conversation(*replayable(first.output),
                                               {"role": "user", "content": "marker-redacted-2"}))
    body, _ = sent(mock, "marker-redacted-2")
    assert body["messages"][0]["content"][0] == {"type": "redacted_thinking", "data": blob["redacted"]}


def test_another_providers_blob_is_dropped(client: openai.OpenAI, mock: AnthropicMock) -> None:
    first = client.responses.create(model="claude/thinking:tokens=1", input="marker-foreign",
                                    reasoning={"effort": "low"})
    foreign = {"type": "reasoning", "id": "rs_x", "summary": [],
               "encrypted_content": encode_blob("gemini", {"thinking": "x", "signature": "y"})}
    client.responses.create(
        model="claude2/text:tokens=1",
        input=conversation({"role": "user", "content": "marker-foreign"}, foreign, *replayable(first.output),
                           {"role": "user", "content": "marker-foreign-2"}),
    )
    body, _ = sent(mock, "marker-foreign-2")
    assert body["messages"][1] == {"role": "assistant", "content": [{"type": "text", "text": "tok0 "}]}


# --- stop reasons and failures ----------------------------------------------------------------------


def test_max_tokens_is_incomplete(gateway: Gateway, client: openai.OpenAI) -> None:
    _, events = raw_stream(gateway, {"model": "claude/max-tokens:tokens=3", "input": "long"})
    final = check_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    resp = client.responses.create(model="claude/max-tokens:tokens=3", input="long")
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens" and resp.output_text == "tok0 tok1 tok2 "


def test_refusal_is_incomplete_content_filter(gateway: Gateway) -> None:
    _, events = raw_stream(gateway, {"model": "claude/refusal", "input": "bad"})
    final = check_events(events)
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "content_filter"}


@pytest.mark.parametrize(
    ("scenario", "message"),
    [("error-mid", "Overloaded"), ("cut", ""), ("eof", "message_stop")],
)
def test_mid_stream_failures_end_with_response_failed(gateway: Gateway, scenario: str, message: str) -> None:
    response, events = raw_stream(gateway, {"model": f"claude/{scenario}", "input": "fail later"})
    assert response.status_code == 200
    final = check_events(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"]["code"] == "server_error" and message in final["error"]["message"]
    assert output_text(final).startswith("tok0")


# --- errors before the first byte --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code", "retry_after"),
    [
        ("claude/status-400", 400, "invalid_request_error", "context_length_exceeded", None),
        ("claude/status-401", 502, "provider_error", "upstream_auth_failed", None),
        ("claudebad/text", 502, "provider_error", "upstream_auth_failed", None),
        ("claude/status-402", 429, "rate_limit_error", "insufficient_quota", None),
        ("claude/status-404", 404, "not_found_error", "model_not_found", None),
        ("claude/status-429", 429, "rate_limit_error", "rate_limit_exceeded", "7"),
        ("claude/status-500", 502, "provider_error", "upstream_5xx", None),
        ("claude/status-529", 502, "provider_error", "overloaded", "3"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_before_the_first_byte(
    gateway: Gateway, model: str, status: int, error_type: str, code: str, retry_after: str | None, stream: bool
) -> None:
    response = httpx.post(gateway.url + "/v1/responses", json={"model": model, "input": "x", "stream": stream},
                          headers=AUTH, timeout=20)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == (error_type, code) and error["message"]
    assert response.headers.get("retry-after") == retry_after
    text = response.text + str(response.headers)
    assert UPSTREAM_KEY not in text and WRONG_KEY not in text


def test_upstream_401_echoing_our_key_is_redacted(gateway: Gateway) -> None:
    response = httpx.post(gateway.url + "/v1/responses", json={"model": "claude/status-401", "input": "x"},
                          headers=AUTH, timeout=20)
    message = response.json()["error"]["message"]
    assert "invalid x-api-key" in message and "[redacted]" in message and UPSTREAM_KEY not in message


def test_sdk_maps_statuses_to_its_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as rate:
        client.responses.create(model="claude/status-429", input="x")
    assert rate.value.response.headers["retry-after"] == "7"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="claude/status-400", input="x")
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="claude/status-529", input="x")


def test_our_own_validation_names_the_param(gateway: Gateway, mock: AnthropicMock) -> None:
    before = len(mock.requests)
    body = {"model": "claude/text", "input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-1"}]}]}
    response = httpx.post(gateway.url + "/v1/responses", json=body, headers=AUTH, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input[0].content[0]"
    assert len(mock.requests) == before  # nothing was sent upstream

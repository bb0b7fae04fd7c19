"""The Anthropic mock is faithful: the official anthropic SDK parses everything it sends."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types import MessageParam, RawMessageStreamEvent

from streamgw.testing.anthropic_mock import AnthropicMock, input_tokens, parse_model, signature_for

KEY = "sk-ant-test-mock-key-0123456789"
USER: list[MessageParam] = [{"role": "user", "content": "What is the weather in Paris?"}]
TEXT_20 = "".join(f"tok{i} " for i in range(20))
THOUGHT = "".join(f"think{i} " for i in range(5))
WEATHER: Any = {
    "name": "lookup_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CLOCK: Any = {"name": "lookup_time", "input_schema": {"type": "object", "properties": {}}}
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture
def mock() -> AnthropicMock:
    return AnthropicMock(api_key=KEY)


@pytest.fixture
def base_url(mock: AnthropicMock) -> Iterator[str]:
    with mock.serving_in_thread() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def client(base_url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def raw(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers=HEADERS, timeout=10) as http:
        yield http


def events_of(client: anthropic.Anthropic, model: str, **kwargs: Any) -> list[RawMessageStreamEvent]:
    kwargs.setdefault("max_tokens", 1024)
    kwargs.setdefault("messages", USER)
    with client.messages.create(model=model, stream=True, **kwargs) as stream:
        return list(stream)


def final_message(client: anthropic.Anthropic, model: str, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("max_tokens", 4096)
    kwargs.setdefault("messages", USER)
    with client.messages.stream(model=model, **kwargs) as stream:
        return stream.get_final_message()


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of an SSE body, checking the exact SSE framing on the way."""
    assert text.endswith("\n\n")
    out = []
    for block in text[:-2].split("\n\n"):
        event_line, data_line = block.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        data = json.loads(data_line[len("data: "):])
        assert data_line[len("data: "):] == json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        out.append((event_line[len("event: "):], data))
    return out


def post(raw: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return raw.post("/v1/messages", json=body, headers=headers)


# ------------------------------------------------------------------------------ SDK, streamed


def test_text_stream_events(client: anthropic.Anthropic) -> None:
    events = events_of(client, "text")
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-2:] == ["message_delta", "message_stop"]
    assert "ping" not in kinds  # the SDK drops pings
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    assert text == TEXT_20
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.id.startswith("msg_") and start.message.model == "text"
    assert start.message.usage.input_tokens == input_tokens({"messages": USER})
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 20


def test_stream_helper_accumulates_text(client: anthropic.Anthropic) -> None:
    message = final_message(client, "text:tokens=3,token_text=w{i}.")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == "w0.w1.w2."
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 3


def test_stream_helper_accumulates_tool_input(client: anthropic.Anthropic) -> None:
    message = final_message(client, "tool", tools=[WEATHER])
    [block] = message.content
    assert block.type == "tool_use" and block.name == "lookup_weather" and block.id.startswith("toolu_")
    assert block.input == {"city": "Paris", "unit": "celsius"}
    assert message.stop_reason == "tool_use"


def test_two_tools_use_the_request_tool_names(client: anthropic.Anthropic) -> None:
    message = final_message(client, "two-tools", tools=[WEATHER, CLOCK])
    blocks = [b for b in message.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in blocks] == [
        ("lookup_weather", {"city": "Paris", "unit": "celsius"}), ("lookup_time", {"city": "Tokyo", "unit": "celsius"})]
    assert blocks[0].id != blocks[1].id


def test_input_json_arrives_in_fragments_starting_empty(client: anthropic.Anthropic) -> None:
    events = events_of(client, "tool")
    fragments = [e.delta.partial_json for e in events
                 if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
    assert fragments[0] == "" and len(fragments) > 2
    assert json.loads("".join(fragments)) == {"city": "Paris", "unit": "celsius"}


def test_thinking_with_signature(client: anthropic.Anthropic) -> None:
    message = final_message(client, "thinking:tokens=2", thinking={"type": "enabled", "budget_tokens": 2048})
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == THOUGHT
    assert thinking.signature == signature_for(THOUGHT)
    assert text.type == "text" and text.text == "tok0 tok1 "


def test_signature_arrives_as_its_own_delta_before_the_block_stop(client: anthropic.Anthropic) -> None:
    events = events_of(client, "thinking-tool")
    kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in events]
    at = kinds.index(("content_block_delta", "signature_delta"))
    assert kinds[at - 1] == ("content_block_delta", "thinking_delta")
    assert kinds[at + 1] == ("content_block_stop", None)
    assert events[-2].type == "message_delta" and events[-2].delta.stop_reason == "tool_use"


def test_redacted_thinking(client: anthropic.Anthropic) -> None:
    redacted, text = final_message(client, "redacted:tokens=1").content
    assert redacted.type == "redacted_thinking" and len(redacted.data) > 20
    assert text.type == "text" and text.text == "tok0 "


@pytest.mark.parametrize(("model", "reason"), [("max-tokens:tokens=2", "max_tokens"), ("refusal", "refusal")])
def test_stop_reasons(client: anthropic.Anthropic, model: str, reason: str) -> None:
    assert final_message(client, model).stop_reason == reason


def test_cache_knobs_show_in_usage(client: anthropic.Anthropic) -> None:
    usage = final_message(client, "text:tokens=1,cache_read=300,cache_write=40").usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (300, 40)


def test_error_mid_stream_raises_with_the_overloaded_body(client: anthropic.Anthropic) -> None:
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in client.messages.create(model="error-mid", max_tokens=10, messages=USER, stream=True):
            seen.append(event.type)
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert seen.count("content_block_delta") == 3 and "message_stop" not in seen


# The SDK's own transport (httpx2) raises its RemoteProtocolError, which is neither httpx's nor the SDK's.
CUT = "peer closed connection without sending complete message body"


def test_cut_stream_breaks_the_sdk(client: anthropic.Anthropic) -> None:
    with pytest.raises(Exception, match=CUT):
        events_of(client, "cut")


# ------------------------------------------------------------------------------ raw bytes


def test_exact_byte_layout_with_pings(raw: httpx.Client) -> None:
    response = post(raw, {"model": "text:tokens=2", "max_tokens": 5, "messages": USER, "stream": True})
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["request-id"].startswith("req_")
    events = sse_events(response.text)
    assert all(name == data["type"] for name, data in events)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]


@pytest.mark.parametrize(("model", "last"), [("eof", "message_delta"), ("error-mid", "error")])
def test_streams_that_end_badly(raw: httpx.Client, model: str, last: str) -> None:
    response = post(raw, {"model": model, "max_tokens": 5, "messages": USER, "stream": True})
    names = [name for name, _ in sse_events(response.text)]
    assert names[-1] == last and "message_stop" not in names


def test_non_streamed_message(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="thinking-tool", max_tokens=4096, messages=USER, tools=[WEATHER])
    assert [b.type for b in message.content] == ["thinking", "tool_use"]
    assert message.content[0].type == "thinking" and message.content[0].signature == signature_for(THOUGHT)
    assert message.content[1].type == "tool_use" and message.content[1].input == {"city": "Paris", "unit": "celsius"}
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 5 + 5


def test_non_streamed_failures(client: anthropic.Anthropic, raw: httpx.Client) -> None:
    with pytest.raises(anthropic.OverloadedError):
        client.messages.create(model="error-mid", max_tokens=10, messages=USER)
    with pytest.raises(anthropic.APIConnectionError):  # a body cut before its end
        client.messages.create(model="cut", max_tokens=10, messages=USER)


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("model", "exc", "etype"),
    [
        ("status-400", anthropic.BadRequestError, "invalid_request_error"),
        ("status-401", anthropic.AuthenticationError, "authentication_error"),
        ("status-402", anthropic.PaymentRequiredError, "billing_error"),
        ("status-404", anthropic.NotFoundError, "not_found_error"),
        ("status-429", anthropic.RateLimitError, "rate_limit_error"),
        ("status-500", anthropic.InternalServerError, "api_error"),
        ("status-529", anthropic.OverloadedError, "overloaded_error"),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_status_scenarios_raise_the_sdk_exceptions(
    client: anthropic.Anthropic, model: str, exc: type[anthropic.APIStatusError], etype: str, stream: bool
) -> None:
    with pytest.raises(exc) as info:
        client.messages.create(model=model, max_tokens=10, messages=USER, stream=stream)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == etype
    assert body["request_id"].startswith("req_")
    retry = {"status-429": "7", "status-529": "3"}.get(model)
    assert info.value.response.headers.get("retry-after") == retry


def test_wrong_key_is_401(base_url: str) -> None:
    with anthropic.Anthropic(base_url=base_url, api_key="sk-ant-wrong", max_retries=0) as sdk, \
            pytest.raises(anthropic.AuthenticationError) as info:
        sdk.messages.create(model="text", max_tokens=10, messages=USER)
    assert info.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                          "message": "invalid x-api-key"},
                               "request_id": info.value.body["request_id"]}  # type: ignore[index]


def test_x_api_key_and_bearer_are_both_accepted(raw: httpx.Client, base_url: str) -> None:
    body = {"model": "text:tokens=1", "max_tokens": 5, "messages": USER}
    assert post(raw, body).status_code == 200
    bearer = httpx.post(base_url + "/v1/messages", json=body, timeout=10,
                        headers={"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"})
    assert bearer.status_code == 200 and bearer.json()["content"][0]["text"] == "tok0 "


def test_anthropic_version_is_required(base_url: str) -> None:
    response = httpx.post(base_url + "/v1/messages", json={"model": "text", "max_tokens": 5, "messages": USER},
                          headers={"x-api-key": KEY}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == {"type": "invalid_request_error",
                                        "message": "anthropic-version: header is required"}


def test_unknown_path_is_404(raw: httpx.Client) -> None:
    response = raw.post("/v1/complete", json={})
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"


# ------------------------------------------------------------------------------ validation


def good_turns() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": THOUGHT, "signature": signature_for(THOUGHT)},
            {"type": "tool_use", "id": "toolu_1", "name": "lookup_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                                     {"type": "text", "text": "and?"}]},
    ]


def test_a_well_formed_replay_is_accepted(raw: httpx.Client) -> None:
    body = {"model": "text:tokens=1", "max_tokens": 3000, "messages": good_turns(), "tools": [WEATHER],
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    assert post(raw, body).status_code == 200


def bad_signature() -> list[dict[str, Any]]:
    turns = good_turns()
    turns[1]["content"][0]["signature"] = "forged"
    return turns


def missing_result() -> list[dict[str, Any]]:
    turns = good_turns()
    turns[2]["content"] = [{"type": "text", "text": "and?"}]
    return turns


def stray_result() -> list[dict[str, Any]]:
    turns = good_turns()
    turns[2]["content"].insert(1, {"type": "tool_result", "tool_use_id": "toolu_9", "content": "?"})
    return turns


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"max_tokens": None}, "max_tokens: Field required"),
        ({"messages": None}, "messages: Field required"),
        ({"messages": []}, "at least one message"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]}, "must be non-empty"),
        ({"stream_options": {"include_usage": True}}, "stream_options: Extra inputs are not permitted"),
        ({"temperature": 1.5}, "temperature"),
        ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "greater than or equal to 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 2000}, "max_tokens": 2000}, "budget_tokens"),
        ({"messages": bad_signature()}, "messages.1.content.0: Invalid `signature`"),
        ({"messages": missing_result()}, "messages.1: `tool_use` ids were found without `tool_result`"),
        ({"messages": stray_result()}, "unexpected `tool_use_id`"),
        ({"model": "text:bogus=1"}, "unknown mock knob"),
    ],
)
def test_validation_like_the_api(raw: httpx.Client, change: dict[str, Any], fragment: str) -> None:
    body = {"model": "text", "max_tokens": 4096, "messages": USER, **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = post(raw, body)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


def test_requests_are_recorded(mock: AnthropicMock, client: anthropic.Anthropic) -> None:
    client.messages.create(model="text:tokens=1", max_tokens=9, messages=USER, system="sys")
    [sent] = mock.bodies()
    assert sent == {"model": "text:tokens=1", "max_tokens": 9, "messages": USER, "system": "sys"}
    assert mock.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_parse_model() -> None:
    assert parse_model("text") == ("text", {})
    assert parse_model("claude-3-5-sonnet:latest") == ("claude-3-5-sonnet:latest", {})
    assert parse_model("thinking:thinking_tokens=2,ttft=0.5") == ("thinking", {"thinking_tokens": 2, "ttft": 0.5})
    with pytest.raises(ValueError, match="bad value"):
        parse_model("text:tokens=-1")


def test_first_event_waits_for_ttft(client: anthropic.Anthropic) -> None:
    started = time.monotonic()
    events_of(client, "text:tokens=2,ttft=0.3")
    assert time.monotonic() - started >= 0.3


# ------------------------------------------------------------------------------ CLI


def test_cli_prints_listening_and_serves() -> None:
    cmd = [sys.executable, "-m", "streamgw.testing.anthropic_mock", "--port", "0", "--api-key", KEY, "--tokens", "2"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the mock did not report its port"
            word, port = proc.stdout.readline().split()
            assert word == "LISTENING"
            with anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key=KEY, max_retries=0) as sdk:
                assert final_message(sdk, "text").content[0].text == "tok0 tok1 "  # type: ignore[union-attr]
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""

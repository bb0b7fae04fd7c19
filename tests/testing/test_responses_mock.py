"""The native Responses mock is faithful: the official openai SDK parses everything it sends."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from streamgw.core.sse import SSEDecoder
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.responses_mock import SCENARIOS, STATUS_SCENARIOS, ResponsesMock

KEY = "sk-test-mock-key-0123456789"
TEXT_20 = "".join(f"tok{i} " for i in range(20))
WEATHER_TOOL = {
    "type": "function",
    "name": "lookup_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


@pytest.fixture
def mock() -> ResponsesMock:
    return ResponsesMock(api_key=KEY)


@pytest.fixture
def base_url(mock: ResponsesMock) -> Iterator[str]:
    with mock.serving_in_thread() as port:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def raw(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {KEY}"}, timeout=10) as http:
        yield http


def sdk_events(client: openai.OpenAI, model: str, **kwargs: Any) -> list[Any]:
    with client.responses.create(model=model, input="What is the weather in Paris?", stream=True,
                                 **kwargs) as stream:
        return list(stream)


def wire_events(raw: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """POST a streamed request; return the response and its events, checking the exact framing."""
    resp = raw.post("/responses", json={"input": "hi", **body, "stream": True})
    decoder = SSEDecoder()
    events = []
    for sse in decoder.feed(resp.content):
        payload = json.loads(sse.data)
        assert sse.event == payload["type"]
        assert json.dumps(payload, separators=(",", ":"), ensure_ascii=False) == sse.data
        events.append(payload)
    decoder.finish()
    assert resp.content.count(b"\n\n") == len(events) and b"[DONE]" not in resp.content
    return resp, events


# ------------------------------------------------------------------------------ SDK, streamed


@pytest.mark.parametrize("model", ["text", "tool", "two-tools", "reasoning", "length:tokens=3"])
def test_sdk_parses_every_event_into_its_own_type(client: openai.OpenAI, model: str) -> None:
    events = sdk_events(client, model, tools=[WEATHER_TOOL])
    for event in events:
        assert type(event).__module__.startswith("openai.types.responses."), type(event)
        # Fields the SDK's models do not declare: obfuscation padding, and the call name on
        # function_call_arguments.done (OpenAI sends it).
        assert set(event.model_extra or {}) <= {"obfuscation", "name"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert events[-1].type in ("response.completed", "response.incomplete")


@pytest.mark.parametrize("model", ["text:tokens=4", "tool", "two-tools", "reasoning:tokens=2", "length:tokens=3"])
def test_wire_streams_pass_every_invariant(raw: httpx.Client, model: str) -> None:
    resp, events = wire_events(raw, {"model": model, "tools": [WEATHER_TOOL]})
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["x-request-id"].startswith("req_")
    final = check_events(events)
    assert events[0]["response"]["service_tier"] == "auto" and final["service_tier"] == "default"
    assert final["id"].startswith("resp_") and len(final["id"]) == 53
    assert final["model"] == model and final["tools"] == [WEATHER_TOOL]


def test_text_stream_and_stream_helper(client: openai.OpenAI) -> None:
    events = sdk_events(client, "text")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == TEXT_20
    final = events[-1].response
    assert final.output_text == TEXT_20 and final.status == "completed" and final.completed_at is not None
    assert final.usage is not None and final.usage.output_tokens == 20
    assert final.usage.total_tokens == final.usage.input_tokens + 20
    with client.responses.stream(model="text:tokens=3", input="hi", instructions="Be brief.") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        response = stream.get_final_response()
    assert deltas == ["tok0 ", "tok1 ", "tok2 "] and response.output_text == "tok0 tok1 tok2 "
    assert response.instructions == "Be brief."


def test_tool_calls_join_to_json(client: openai.OpenAI) -> None:
    with client.responses.stream(model="two-tools", input="weather?", tools=[WEATHER_TOOL]) as stream:
        response = stream.get_final_response()
    calls = [item for item in response.output if item.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Tokyo"}]
    assert {c.name for c in calls} == {"lookup_weather"} and len({c.call_id for c in calls}) == 2
    assert all(c.call_id.startswith("call_") and c.id.startswith("fc_") for c in calls)


def test_reasoning_has_summary_parts_and_encrypted_content(client: openai.OpenAI) -> None:
    events = sdk_events(client, "reasoning:tokens=1,reasoning_tokens=3")
    parts = [e for e in events if e.type == "response.reasoning_summary_part.done"]
    assert [p.part.text for p in parts] == ["think0 think1 ", "think2 "]
    final = events[-1].response
    reasoning, message = final.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert [s.text for s in reasoning.summary] == ["think0 think1 ", "think2 "]
    assert message.type == "message" and final.output_text == "tok0 "
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 3


def test_length_ends_incomplete(client: openai.OpenAI) -> None:
    final = sdk_events(client, "length:tokens=2")[-1]
    assert final.type == "response.incomplete"
    assert final.response.incomplete_details is not None
    assert final.response.incomplete_details.reason == "max_output_tokens"
    assert final.response.output[0].status == "incomplete" and final.response.completed_at is None


def test_failed_and_error_event_endings(client: openai.OpenAI) -> None:
    failed = sdk_events(client, "failed")
    assert failed[-1].type == "response.failed" and failed[-1].response.error is not None
    assert failed[-1].response.error.code == "server_error"
    assert not any(e.type == "response.output_item.done" for e in failed)  # the message was left open
    errored = sdk_events(client, "error-event")
    assert errored[-1].type == "error" and errored[-1].code == "server_error"
    assert [e.sequence_number for e in errored] == list(range(len(errored)))
    assert "".join(e.delta for e in errored if e.type == "response.output_text.delta") == "tok0 tok1 tok2 "
    early = sdk_events(client, "error-event:tokens=0")
    assert [e.type for e in early] == ["response.created", "response.in_progress", "error"]


def test_cut_and_malformed_break_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        sdk_events(client, "cut")
    with pytest.raises(json.JSONDecodeError):
        sdk_events(client, "malformed")


def test_obfuscation_is_on_by_default_and_can_be_turned_off(raw: httpx.Client) -> None:
    _, events = wire_events(raw, {"model": "tool"})
    deltas = [e for e in events if e["type"].endswith(".delta")]
    assert deltas and all(isinstance(e["obfuscation"], str) and e["obfuscation"] for e in deltas)
    assert all(list(e)[-2:] == ["obfuscation", "sequence_number"] for e in deltas)
    _, plain = wire_events(raw, {"model": "tool", "stream_options": {"include_obfuscation": False}})
    assert not any("obfuscation" in e for e in plain)
    _, summary = wire_events(raw, {"model": "reasoning:tokens=1"})
    assert not any("obfuscation" in e for e in summary if e["type"].startswith("response.reasoning_summary"))


# -------------------------------------------------------------------------- SDK, non-streamed


def test_non_streamed_bodies(client: openai.OpenAI) -> None:
    text = client.responses.create(model="text:tokens=2", input="hi")
    assert text.output_text == "tok0 tok1 " and text.status == "completed"
    assert text.usage is not None and text.usage.output_tokens == 2
    length = client.responses.create(model="length:tokens=2", input="hi")
    assert length.status == "incomplete" and length.incomplete_details is not None
    failed = client.responses.create(model="failed", input="hi")
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="error-event", input="hi")


# ------------------------------------------------------------------------------- SDK, errors


@pytest.mark.parametrize(
    ("model", "error", "status", "code"),
    [
        ("status-400", openai.BadRequestError, 400, "context_length_exceeded"),
        ("status-401", openai.AuthenticationError, 401, "invalid_api_key"),
        ("status-404", openai.NotFoundError, 404, "model_not_found"),
        ("status-429", openai.RateLimitError, 429, "rate_limit_exceeded"),
        ("status-500", openai.InternalServerError, 500, None),
        ("status-503", openai.InternalServerError, 503, None),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_status_scenarios(client: openai.OpenAI, model: str, error: type[openai.APIStatusError],
                          status: int, code: str | None, stream: bool) -> None:
    with pytest.raises(error) as info:
        client.responses.create(model=model, input="hi", stream=stream)
    assert info.value.status_code == status and info.value.code == code
    assert info.value.response.headers["content-type"] == "application/json"
    assert set(info.value.response.json()["error"]) == {"message", "type", "param", "code"}
    if status == 429:
        assert info.value.response.headers["retry-after"] == "7" and info.value.type == "requests"


def test_wrong_key_and_unknown_parameters_are_rejected(base_url: str, client: openai.OpenAI) -> None:
    wrong = "sk-test-wrong-key-987654321"
    with openai.OpenAI(base_url=base_url, api_key=wrong, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as info:
            sdk.responses.create(model="text", input="hi")
    assert wrong not in info.value.response.text
    assert info.value.body["message"].startswith("Incorrect API key provided: sk-tes*")  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="text", input="hi", extra_body={"provider": "oai"})
    assert (bad.value.param, bad.value.code) == ("provider", "unknown_parameter")
    with pytest.raises(openai.BadRequestError) as small:
        client.responses.create(model="text", input="hi", max_output_tokens=8)
    assert small.value.code == "integer_below_min_value"


def test_models_endpoint(client: openai.OpenAI) -> None:
    assert {model.id for model in client.models.list()} == set(SCENARIOS + STATUS_SCENARIOS)


# ------------------------------------------------------------------------ what was recorded


def test_records_requests_and_the_bytes_it_sent(client: openai.OpenAI, mock: ResponsesMock,
                                                raw: httpx.Client) -> None:
    client.responses.create(model="text:tokens=1", input="hi", tools=[WEATHER_TOOL], include=["x.y"],
                            stream=True).close()
    req = mock.requests[-1]
    assert (req.method, req.path, req.headers["authorization"]) == ("POST", "/v1/responses", f"Bearer {KEY}")
    assert req.json() == {"model": "text:tokens=1", "input": "hi", "tools": [WEATHER_TOOL], "include": ["x.y"],
                          "stream": True}
    resp = raw.post("/responses", json={"model": "tool", "input": "x", "stream": True})
    assert mock.sent[mock.requests[-1].request_id] == resp.content
    again = raw.post("/responses", json={"model": "tool", "input": "x", "stream": True})
    assert again.content != resp.content  # fresh ids and obfuscation per request


def test_timing_knobs(raw: httpx.Client) -> None:
    body = {"model": "text:tokens=3,ttft=0.05,token_delay=0.02", "input": "x", "stream": True}
    start = time.monotonic()
    with raw.stream("POST", "/responses", json=body) as resp:
        chunks = resp.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - start
        for _ in chunks:
            pass
    total = time.monotonic() - start
    assert first.startswith(b"event: response.created\n")
    assert first_at < total and total >= 0.05 + 2 * 0.02


def test_output_text_helper_matches_the_sdk(raw: httpx.Client, client: openai.OpenAI) -> None:
    _, events = wire_events(raw, {"model": "reasoning:tokens=2"})
    assert output_text(check_events(events)) == "tok0 tok1 "


def test_cli_prints_listening_and_serves() -> None:
    cmd = [sys.executable, "-m", "streamgw.testing.responses_mock", "--port", "0", "--tokens", "2"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the mock did not report its port"
            word, port = proc.stdout.readline().split()
            assert word == "LISTENING"
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/responses", json={"model": "text", "input": "x"},
                              timeout=10)
            assert output_text(resp.json()) == "tok0 tok1 "
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""


# ------------------------------------------------------------------- the example streams in fixtures/streams/openai

EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "openai"
GET_WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Get current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
    "strict": True,
}


def shape(value: Any) -> Any:
    """Keys in order and value kinds, recursively: what two streams must share to look alike."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


@pytest.mark.parametrize(
    ("example", "body"),
    [
        ("text.sse", {"model": "text:tokens=3", "input": "Say hi."}),
        ("function_call.sse", {"model": "tool", "input": "Weather in Paris?", "tools": [GET_WEATHER_TOOL]}),
    ],
)
def test_streams_have_the_exact_shape_of_the_protocols_examples(
    raw: httpx.Client, example: str, body: dict[str, Any]
) -> None:
    expected = [json.loads(sse.data) for sse in SSEDecoder().feed((EXAMPLES / example).read_bytes())]
    _, events = wire_events(raw, body)
    assert [shape(e) for e in events] == [shape(e) for e in expected]
    deltas = [e["delta"] for e in events if e["type"].endswith(".delta")]
    if example == "function_call.sse":
        assert deltas == [e["delta"] for e in expected if e["type"].endswith(".delta")]
        assert events[-1]["response"]["tools"] == [GET_WEATHER_TOOL]

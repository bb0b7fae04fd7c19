"""The Gemini mock is faithful: the official google-genai SDK parses everything it sends."""

from __future__ import annotations

import base64
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from google import genai
from google.genai import errors, types

from streamgw.testing.gemini_mock import GeminiMock, parse_model, prompt_tokens, signature_for

KEY = "AIzaSyMockKey0123456789abcdefghijklm"
PROMPT = "What is the weather in Paris?"
TEXT_20 = "".join(f"tok{i} " for i in range(20))
WEATHER = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="lookup_weather",
            description="Weather for a city",
            parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
        )
    ]
)
THINK = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))


@pytest.fixture
def mock() -> GeminiMock:
    return GeminiMock(api_key=KEY)


@pytest.fixture
def base_url(mock: GeminiMock) -> Iterator[str]:
    with mock.serving_in_thread() as port:
        yield f"http://127.0.0.1:{port}"


def sdk(base_url: str, key: str = KEY, version: str | None = None) -> genai.Client:
    retry = types.HttpRetryOptions(attempts=1)
    options = types.HttpOptions(base_url=base_url, api_version=version, retry_options=retry)
    return genai.Client(api_key=key, http_options=options)


@pytest.fixture
def client(base_url: str) -> Iterator[genai.Client]:
    with sdk(base_url) as gen:
        yield gen


@pytest.fixture
def raw(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url + "/v1beta", headers={"x-goog-api-key": KEY}, timeout=10) as http:
        yield http


def stream(client: genai.Client, model: str, config: Any = None, contents: Any = PROMPT) -> list[Any]:
    return list(client.models.generate_content_stream(model=model, contents=contents, config=config))


def user_text(text: str = PROMPT) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def sse_payloads(body: bytes, line_end: bytes = b"\r\n") -> list[dict[str, Any]]:
    """The JSON of each event, checking the exact framing: ``data: <json>`` + blank line, nothing else."""
    separator = line_end * 2
    assert body.endswith(separator)
    events = body[: -len(separator)].split(separator)
    assert all(ev.startswith(b"data: ") and b"\n" not in ev and b"\r" not in ev for ev in events), events
    return [json.loads(ev[len(b"data: ") :]) for ev in events]


# ------------------------------------------------------------------------------- SDK, streamed


def test_text_stream(client: genai.Client) -> None:
    chunks = stream(client, "text")
    assert "".join(c.text for c in chunks) == TEXT_20
    assert [c.candidates[0].finish_reason for c in chunks][-2:] == [None, types.FinishReason.STOP]
    assert len({(c.response_id, c.model_version) for c in chunks}) == 1
    usage = chunks[-1].usage_metadata
    assert usage.prompt_token_count == len(PROMPT) // 4 + 1
    assert usage.candidates_token_count == 20
    assert usage.total_token_count == usage.prompt_token_count + 20
    assert chunks[0].usage_metadata.candidates_token_count == 1  # cumulative


def test_v1beta_is_served_too(base_url: str, mock: GeminiMock) -> None:
    with sdk(base_url, version="v1beta") as gen:
        assert "".join(c.text for c in stream(gen, "text:tokens=2")) == "tok0 tok1 "
    assert mock.requests[-1].path == "/v1beta/models/text:tokens=2:streamGenerateContent"
    assert mock.requests[-1].query == {"alt": "sse"}
    assert mock.requests[-1].headers["x-goog-api-key"] == KEY


def test_tool_call_with_signature(client: genai.Client) -> None:
    chunks = stream(client, "tool", types.GenerateContentConfig(tools=[WEATHER]))
    [part] = chunks[-1].candidates[0].content.parts
    assert part.function_call.name == "lookup_weather"
    assert part.function_call.args == {"city": "Paris"}
    assert part.function_call.id is None  # the Developer API rarely sends ids: the gateway mints them
    assert part.thought_signature == base64.b64decode(signature_for("lookup_weather", {"city": "Paris"}))
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_two_tools_sign_only_the_first(client: genai.Client) -> None:
    [chunk] = stream(client, "two-tools")
    parts = chunk.candidates[0].content.parts
    assert [p.function_call.args["city"] for p in parts] == ["Paris", "Tokyo"]
    assert parts[0].thought_signature and parts[1].thought_signature is None


def test_thinking_sends_thoughts_only_when_asked(client: genai.Client) -> None:
    chunks = stream(client, "thinking:tokens=2", THINK)
    parts = [p for c in chunks for p in c.candidates[0].content.parts]
    assert [p.text for p in parts if p.thought] == ["Thinking 0. ", "Thinking 1. ", "Thinking 2. "]
    assert "".join(p.text for p in parts if not p.thought) == "tok0 tok1 "
    assert parts[-1].text == "" and parts[-1].thought_signature
    assert chunks[-1].usage_metadata.thoughts_token_count == 3
    quiet = stream(client, "thinking:tokens=2")
    assert not any(p.thought for c in quiet for p in c.candidates[0].content.parts)
    assert quiet[-1].usage_metadata.thoughts_token_count == 3


def test_tool_thinks_first_when_asked(client: genai.Client) -> None:
    parts = [p for c in stream(client, "tool", THINK) for p in c.candidates[0].content.parts]
    assert [bool(p.thought) for p in parts] == [True, True, True, False]
    assert parts[-1].function_call is not None and parts[-1].thought_signature


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("max-tokens:tokens=2", types.FinishReason.MAX_TOKENS),
        ("safety", types.FinishReason.SAFETY),
        ("malformed-call", types.FinishReason.MALFORMED_FUNCTION_CALL),
    ],
)
def test_other_finish_reasons(client: genai.Client, model: str, reason: types.FinishReason) -> None:
    last = stream(client, model)[-1].candidates[0]
    assert last.finish_reason == reason
    if reason == types.FinishReason.SAFETY:
        assert last.content is None and any(r.blocked for r in last.safety_ratings)


def test_blocked_prompt_has_no_candidates(client: genai.Client) -> None:
    [chunk] = stream(client, "blocked-prompt")
    assert chunk.candidates is None
    assert chunk.prompt_feedback.block_reason == types.BlockedReason.SAFETY


def test_truncated_streams(client: genai.Client) -> None:
    eof = stream(client, "eof")
    assert "".join(c.text for c in eof) == "tok0 tok1 tok2 "
    assert all(c.candidates[0].finish_reason is None for c in eof)
    with pytest.raises(Exception, match=r"incomplete chunked read|peer closed"):
        stream(client, "cut")
    with pytest.raises(errors.ServerError) as info:
        stream(client, "error-mid")
    assert info.value.code == 500 and "mid-stream" in str(info.value.message)


# --------------------------------------------------------------------------- SDK, not streamed


def test_generate_content_aggregates(client: genai.Client) -> None:
    response = client.models.generate_content(model="text:tokens=4", contents=PROMPT)
    assert response.text == "tok0 tok1 tok2 tok3 "
    assert len(response.candidates[0].content.parts) == 1
    assert response.usage_metadata.candidates_token_count == 4


def test_generate_content_thinking_and_calls(client: genai.Client) -> None:
    thinking = client.models.generate_content(model="thinking:tokens=2", contents=PROMPT, config=THINK)
    parts = thinking.candidates[0].content.parts
    assert [(bool(p.thought), p.text) for p in parts] == [
        (True, "Thinking 0. Thinking 1. Thinking 2. "), (False, "tok0 tok1 ")]
    assert parts[1].thought_signature
    calls = client.models.generate_content(model="two-tools", contents=PROMPT).function_calls
    assert calls is not None and [c.args["city"] for c in calls] == ["Paris", "Tokyo"]


def test_generate_content_failures(client: genai.Client) -> None:
    with pytest.raises(errors.ServerError):
        client.models.generate_content(model="error-mid", contents=PROMPT)
    eof = client.models.generate_content(model="eof", contents=PROMPT)
    assert eof.text == "tok0 tok1 tok2 " and eof.candidates[0].finish_reason is None


# --------------------------------------------------------------------------------- errors, auth


@pytest.mark.parametrize(
    ("model", "error", "code", "status"),
    [
        ("status-400", errors.ClientError, 400, "INVALID_ARGUMENT"),
        ("status-400-key", errors.ClientError, 400, "INVALID_ARGUMENT"),
        ("status-403", errors.ClientError, 403, "PERMISSION_DENIED"),
        ("status-404", errors.ClientError, 404, "NOT_FOUND"),
        ("status-429", errors.ClientError, 429, "RESOURCE_EXHAUSTED"),
        ("status-500", errors.ServerError, 500, "INTERNAL"),
        ("status-503", errors.ServerError, 503, "UNAVAILABLE"),
    ],
)
def test_status_scenarios(client: genai.Client, model: str, error: type[errors.APIError], code: int,
                          status: str) -> None:
    with pytest.raises(error) as info:
        stream(client, model)
    assert (info.value.code, info.value.status) == (code, status)
    assert info.value.message


def test_error_details(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as key:
        client.models.generate_content(model="status-400-key", contents=PROMPT)
    assert key.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    with pytest.raises(errors.ClientError) as rate:
        client.models.generate_content(model="status-429", contents=PROMPT)
    assert rate.value.details["error"]["details"][0]["retryDelay"] == "7s"
    assert "retry-after" not in rate.value.response.headers
    with pytest.raises(errors.ClientError) as denied:
        client.models.generate_content(model="status-403", contents=PROMPT)
    assert KEY in denied.value.message  # the gateway must redact this one


def test_wrong_and_missing_keys(base_url: str, raw: httpx.Client) -> None:
    with sdk(base_url, key="AIzaWrongKey") as gen, pytest.raises(errors.ClientError) as wrong:
        stream(gen, "text")
    assert wrong.value.code == 400
    assert wrong.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    body = {"contents": [user_text()]}
    missing = httpx.post(f"{base_url}/v1beta/models/text:generateContent", json=body, timeout=10)
    assert missing.status_code == 403 and missing.json()["error"]["status"] == "PERMISSION_DENIED"
    by_query = httpx.post(f"{base_url}/v1beta/models/text:generateContent?key={KEY}", json=body, timeout=10)
    assert by_query.status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "Invalid JSON payload"),
        ({}, "contents is not specified"),
        ({"contents": []}, "contents is not specified"),
        ({"contents": [user_text()], "stream": True}, 'Unknown name "stream"'),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role: user, model"),
        ({"contents": [{"role": "user", "parts": []}]}, "parts must not be empty"),
        ({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {}}]}]}, "oneof field 'data'"),
        ({"contents": [{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "%%"}}]}]},
         "Base64 decoding failed"),
        ({"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                       user_text()]}, "number of function response parts"),
        ({"contents": [user_text()], "generationConfig": {"maxTokens": 5}}, 'Unknown name "maxTokens"'),
        ({"contents": [user_text()], "toolConfig": {"functionCallingConfig": {"mode": "AUTO",
                                                                               "allowedFunctionNames": ["f"]}}},
         "only be set when mode is ANY"),
        ({"contents": [user_text()], "generationConfig": {"thinkingConfig": {"thinkingBudget": 1,
                                                                               "thinkingLevel": "LOW"}}},
         "only one of thinking budget and thinking level"),
    ],
)
def test_validation(raw: httpx.Client, body: Any, message: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = raw.post("/models/text:generateContent", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and message in error["message"]


def test_snake_case_fields_are_accepted(raw: httpx.Client) -> None:
    body = {"contents": [user_text()], "system_instruction": {"parts": [{"text": "s"}]},
            "generation_config": {"max_output_tokens": 5, "thinking_config": {"include_thoughts": True}}}
    response = raw.post("/models/thinking:tokens=1:generateContent", json=body)
    assert response.status_code == 200
    assert response.json()["candidates"][0]["content"]["parts"][0]["thought"] is True


def test_unknown_routes_and_knobs(raw: httpx.Client) -> None:
    assert raw.post("/models/text:countTokens", json={"contents": [user_text()]}).status_code == 404
    assert raw.get("/models").status_code == 404
    bad = raw.post("/models/text:bogus=1:generateContent", json={"contents": [user_text()]})
    assert bad.status_code == 400 and "unknown mock knob" in bad.json()["error"]["message"]


# ------------------------------------------------------------------------ thought signatures


def test_signature_round_trip_for_gemini_3(client: genai.Client) -> None:
    first = client.models.generate_content(model="sig-required", contents=PROMPT, config=THINK)
    model_turn = first.candidates[0].content
    assert model_turn.parts[-1].function_call is not None
    reply = types.Part(function_response=types.FunctionResponse(name="get_weather", response={"output": "18C"}))
    history = [types.Content(role="user", parts=[types.Part(text=PROMPT)]), model_turn,
               types.Content(role="user", parts=[reply])]
    second = client.models.generate_content(model="sig-required", contents=history)
    assert second.text == "The weather is fine."


@pytest.mark.parametrize("model", ["sig-required", "gemini-3-pro", "tool-3"])
def test_missing_or_wrong_signature_is_refused(client: genai.Client, model: str) -> None:
    call = types.Part(function_call=types.FunctionCall(name="get_weather", args={"city": "Paris"}))
    reply = types.Part(function_response=types.FunctionResponse(name="get_weather", response={"output": "18C"}))
    history = [types.Content(role="user", parts=[types.Part(text=PROMPT)]),
               types.Content(role="model", parts=[call]), types.Content(role="user", parts=[reply])]
    with pytest.raises(errors.ClientError) as missing:
        client.models.generate_content(model=model, contents=history)
    assert "Function call is missing a thought_signature in functionCall parts" in str(missing.value.message)
    call.thought_signature = b"not the one"
    with pytest.raises(errors.ClientError) as wrong:
        client.models.generate_content(model=model, contents=history)
    assert wrong.value.message == "Corrupted thought signature."
    # Other models do not check.
    assert client.models.generate_content(model="text:tokens=1", contents=history).text == "tok0 "


# ----------------------------------------------------------------------------------- raw bytes


def test_sse_byte_layout(raw: httpx.Client, mock: GeminiMock) -> None:
    response = raw.post("/models/text:tokens=3:streamGenerateContent?alt=sse", json={"contents": [user_text()]})
    assert response.headers["content-type"] == "text/event-stream"
    assert b"event:" not in response.content
    payloads = sse_payloads(response.content)
    assert [p["candidates"][0]["content"]["parts"][0]["text"] for p in payloads] == ["tok0 ", "tok1 ", "tok2 "]
    assert b'"candidates": [{"content": {"parts": [{"text": "tok0 "}],"role": "model"}' in response.content
    mock.line_end = b"\n"
    lf = raw.post("/models/text:tokens=3:streamGenerateContent?alt=sse", json={"contents": [user_text()]})
    assert len(sse_payloads(lf.content, b"\n")) == 3 and b"\r" not in lf.content


def test_error_mid_stream_is_raw_json_lines(raw: httpx.Client) -> None:
    body = raw.post("/models/error-mid:streamGenerateContent?alt=sse", json={"contents": [user_text()]}).content
    events, _, tail = body.rpartition(b"\r\n\r\n")
    assert len(sse_payloads(events + b"\r\n\r\n")) == 3
    assert tail.startswith(b"{\r\n") and json.loads(tail)["error"]["status"] == "INTERNAL"


def test_malformed_call_carries_a_finish_message(raw: httpx.Client) -> None:
    # python-genai drops finishMessage on the Developer API; the wire has it.
    body = raw.post("/models/malformed-call:streamGenerateContent?alt=sse", json={"contents": [user_text()]})
    [chunk] = sse_payloads(body.content)
    candidate = chunk["candidates"][0]
    assert candidate["finishReason"] == "MALFORMED_FUNCTION_CALL" and "content" not in candidate
    assert candidate["finishMessage"].startswith("Malformed function call")


def test_without_alt_sse_the_stream_is_a_json_array(raw: httpx.Client) -> None:
    response = raw.post("/models/text:tokens=3:streamGenerateContent", json={"contents": [user_text()]})
    assert response.headers["content-type"].startswith("application/json")
    array = response.json()
    assert [a["candidates"][0]["content"]["parts"][0]["text"] for a in array] == ["tok0 ", "tok1 ", "tok2 "]
    blocked = raw.post("/models/blocked-prompt:streamGenerateContent", json={"contents": [user_text()]}).json()
    assert blocked[0]["promptFeedback"]["blockReason"] == "SAFETY"


def test_records_requests_and_counts_prompt_tokens(client: genai.Client, mock: GeminiMock) -> None:
    stream(client, "text:tokens=1", types.GenerateContentConfig(system_instruction="Be brief."))
    sent = mock.requests[-1].json()
    assert sent["contents"] == [{"parts": [{"text": PROMPT}], "role": "user"}]
    assert prompt_tokens(sent) == (len(PROMPT) + len("Be brief.")) // 4 + 1


def test_timing_knobs(raw: httpx.Client) -> None:
    started = time.monotonic()
    body = raw.post("/models/text:tokens=3,ttft=0.2,token_delay=0.1:streamGenerateContent?alt=sse",
                    json={"contents": [user_text()]}).content
    assert len(sse_payloads(body)) == 3
    assert time.monotonic() - started >= 0.4


def test_parse_model() -> None:
    assert parse_model("text") == ("text", {})
    assert parse_model("gemini-2.5-flash") == ("gemini-2.5-flash", {})
    assert parse_model("text:tokens=3,token_text=x") == ("text", {"tokens": 3, "token_text": "x"})
    assert parse_model("models:weird") == ("models:weird", {})
    with pytest.raises(ValueError, match="out of range"):
        parse_model("text:tokens=-1")


def test_cli_prints_listening_and_serves() -> None:
    cmd = [sys.executable, "-m", "streamgw.testing.gemini_mock", "--port", "0", "--tokens", "2", "--lf"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the mock did not report its port"
            word, port = proc.stdout.readline().split()
            assert word == "LISTENING"
            url = f"http://127.0.0.1:{port}/v1beta/models/text:streamGenerateContent?alt=sse"
            response = httpx.post(url, json={"contents": [user_text()]}, timeout=10)
            assert len(sse_payloads(response.content, b"\n")) == 2
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
        proc.stderr.read()

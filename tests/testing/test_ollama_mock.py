"""The Ollama mock is faithful: the official ``ollama`` Python client parses everything it sends."""

from __future__ import annotations

import base64
import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from streamgw.testing.ollama_mock import OllamaMock, parse_model, prompt_eval_count

ollama = pytest.importorskip("ollama")

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TEXT_8 = "".join(f"tok{i} " for i in range(8))
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK_TOOL = {"type": "function", "function": {"name": "lookup_time", "parameters": {"type": "object"}}}


@pytest.fixture
def mock() -> OllamaMock:
    return OllamaMock()


@pytest.fixture
def base_url(mock: OllamaMock) -> Iterator[str]:
    with mock.serving_in_thread() as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
def client(base_url: str) -> Iterator[Any]:
    sdk = ollama.Client(host=base_url)
    try:
        yield sdk
    finally:
        sdk.close()


@pytest.fixture
def raw(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as http:
        yield http


def stream(client: Any, model: str, **kwargs: Any) -> list[Any]:
    return list(client.chat(model=model, messages=USER, stream=True, **kwargs))


def ndjson(text: str) -> list[dict[str, Any]]:
    """The objects of an NDJSON body, checking the exact framing on the way."""
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    objects = [json.loads(line) for line in lines]
    compact = [json.dumps(o, separators=(",", ":"), ensure_ascii=False) for o in objects]
    assert lines == compact, "one compact JSON object per line"
    return objects


# ------------------------------------------------------------------------------ SDK, streamed


def test_text_stream(client: Any) -> None:
    chunks = stream(client, "text")
    assert "".join(c.message.content or "" for c in chunks) == TEXT_8
    assert [c.done for c in chunks] == [False] * 8 + [True]
    last = chunks[-1]
    assert last.done_reason == "stop" and last.message.content == "" and last.message.role == "assistant"
    assert last.eval_count == 8 and last.prompt_eval_count == prompt_eval_count(USER) == 8
    assert last.total_duration > 0 and last.load_duration > 0 and last.eval_duration > 0
    assert all(c.model == "text" for c in chunks)
    assert all(datetime.fromisoformat(c.created_at) for c in chunks)


def test_tool_call_arguments_are_objects(client: Any) -> None:
    chunks = stream(client, "tool", tools=[WEATHER_TOOL])
    [call] = chunks[0].message.tool_calls
    assert call.function.name == "lookup_weather"
    assert call.function.arguments == {"city": "Paris", "unit": "celsius"}
    assert chunks[-1].done and chunks[-1].done_reason == "stop"


def test_two_tools_in_one_chunk(client: Any) -> None:
    chunks = stream(client, "two-tools", tools=[WEATHER_TOOL, CLOCK_TOOL])
    calls = chunks[0].message.tool_calls
    assert [(c.function.name, c.function.arguments["city"]) for c in calls] == [
        ("lookup_weather", "Paris"), ("lookup_time", "Tokyo")]
    assert len(chunks) == 2


def test_default_tool_name(client: Any) -> None:
    assert stream(client, "tool")[0].message.tool_calls[0].function.name == "get_weather"


def test_thinking_then_content(client: Any) -> None:
    chunks = stream(client, "thinking:tokens=2,thinking_tokens=3", think=True)
    assert [c.message.thinking for c in chunks[:3]] == ["think0 ", "think1 ", "think2 "]
    assert all(not c.message.content for c in chunks[:3])
    assert "".join(c.message.content or "" for c in chunks[3:]) == "tok0 tok1 "
    assert chunks[-1].eval_count == 5


def test_length(client: Any) -> None:
    assert stream(client, "length:tokens=2")[-1].done_reason == "length"


def test_error_line_mid_stream_raises(client: Any) -> None:
    seen: list[str] = []
    with pytest.raises(ollama.ResponseError) as info:
        for chunk in client.chat(model="error-mid", messages=USER, stream=True):
            seen.append(chunk.message.content)
    assert seen == ["tok0 ", "tok1 ", "tok2 "]
    assert "error was encountered" in info.value.error


@pytest.mark.parametrize(
    ("model", "status", "message"),
    [
        ("status-400", 400, "invalid options"),
        ("status-404", 404, 'model "status-404" not found, try pulling it first'),
        ("missing-qwen:7b", 404, 'model "missing-qwen:7b" not found, try pulling it first'),
        ("status-429", 429, "too many requests"),
        ("status-500", 500, "llama runner process has terminated"),
    ],
)
@pytest.mark.parametrize("streamed", [True, False])
def test_status_errors(client: Any, model: str, status: int, message: str, streamed: bool) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        result = client.chat(model=model, messages=USER, stream=streamed)
        if streamed:
            list(result)
    assert info.value.status_code == status and message in info.value.error


def test_ollama_style_model_names_are_unknown_scenarios(client: Any) -> None:
    assert "".join(c.message.content for c in stream(client, "llama3.2:3b")) == TEXT_8


# ------------------------------------------------------------------------------ SDK, not streamed


def test_non_streamed_aggregates(client: Any) -> None:
    resp = client.chat(model="thinking:tokens=2,thinking_tokens=2", messages=USER, stream=False)
    assert resp.done and resp.done_reason == "stop"
    assert resp.message.content == "tok0 tok1 " and resp.message.thinking == "think0 think1 "
    assert resp.eval_count == 4


def test_non_streamed_tools(client: Any) -> None:
    resp = client.chat(model="two-tools", messages=USER, stream=False, tools=[WEATHER_TOOL])
    assert [c.function.arguments["city"] for c in resp.message.tool_calls] == ["Paris", "Tokyo"]


def test_tags_list(client: Any) -> None:
    names = [m.model for m in client.list().models]
    assert "text:latest" in names and "thinking:latest" in names


def test_records_the_exact_json_the_sdk_sent(client: Any, mock: OllamaMock) -> None:
    image = base64.b64encode(b"\x89PNG fake").decode()
    messages = [*USER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "lookup_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C", "tool_name": "lookup_weather"},
        {"role": "user", "content": "and this?", "images": [image]}]
    stream_ = client.chat(model="text:tokens=1", messages=messages, stream=True, tools=[WEATHER_TOOL],
                          think="low", format="json", options={"temperature": 0.5, "num_predict": 9})
    list(stream_)
    sent = mock.requests[-1].json()
    assert sent["model"] == "text:tokens=1" and sent["stream"] is True and sent["think"] == "low"
    assert sent["format"] == "json" and sent["options"] == {"temperature": 0.5, "num_predict": 9}
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent["messages"][3]["images"] == [image]
    assert sent["tools"][0]["function"]["name"] == "lookup_weather"


# ------------------------------------------------------------------------------ raw bytes


def test_byte_layout_is_ndjson(raw: httpx.Client) -> None:
    resp = raw.post("/api/chat", json={"model": "text:tokens=2", "messages": USER})  # stream defaults to true
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/x-ndjson"
    objects = ndjson(resp.text)
    assert [set(o) for o in objects[:2]] == [{"model", "created_at", "message", "done"}] * 2
    assert objects[0]["message"] == {"role": "assistant", "content": "tok0 "}
    assert set(objects[-1]) == {"model", "created_at", "message", "done", "done_reason", "total_duration",
                                "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                                "eval_duration"}
    assert objects[-1]["created_at"].endswith("Z")


def test_non_streamed_is_one_json_object(raw: httpx.Client) -> None:
    resp = raw.post("/api/chat", json={"model": "text:tokens=2", "messages": USER, "stream": False})
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["done"] is True and body["message"] == {"role": "assistant", "content": "tok0 tok1 "}


def test_tool_call_line_shape(raw: httpx.Client) -> None:
    first = ndjson(raw.post("/api/chat", json={"model": "tool", "messages": USER}).text)[0]
    [call] = first["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["index"] == 0
    assert call["function"]["arguments"] == {"city": "Paris", "unit": "celsius"}
    two = ndjson(raw.post("/api/chat", json={"model": "two-tools", "messages": USER}).text)[0]
    assert all("id" not in c for c in two["message"]["tool_calls"])


def test_eof_and_malformed(raw: httpx.Client) -> None:
    eof = ndjson(raw.post("/api/chat", json={"model": "eof", "messages": USER}).text)
    assert len(eof) == 3 and not any(o["done"] for o in eof)
    lines = raw.post("/api/chat", json={"model": "malformed:tokens=4", "messages": USER}).text.split("\n")
    assert len(lines) == 4 + 1 + 1 + 1  # 4 text, the broken line, the done line, and the final ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[2])
    assert json.loads(lines[-2])["done"] is True


def test_error_mid_bytes(raw: httpx.Client) -> None:
    objects = ndjson(raw.post("/api/chat", json={"model": "error-mid", "messages": USER}).text)
    assert objects[-1] == {"error": "an error was encountered while running the model: unexpected EOF"}
    assert len(objects) == 4


def test_cut_closes_mid_body(raw: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        raw.post("/api/chat", json={"model": "cut", "messages": USER})


def test_429_has_retry_after(raw: httpx.Client) -> None:
    resp = raw.post("/api/chat", json={"model": "status-429", "messages": USER})
    assert resp.status_code == 429 and resp.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": USER}, "model is required"),
        ({"model": "", "messages": USER}, "model is required"),
        ({"model": "text", "messages": "hi"}, "cannot unmarshal string"),
        ({"model": "text", "messages": [{"content": "x"}]}, "invalid role"),
        ({"model": "text", "messages": [{"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": '{"city":"Paris"}'}}]}]}, "ToolCallFunctionArguments"),
        ({"model": "text", "messages": [{"role": "user", "content": "x", "images": ["data:image/png;base64,AAAA"]}]},
         "illegal base64"),
        ({"model": "text", "messages": [{"role": "tool", "content": 5}]}, "cannot unmarshal number"),
        ({"model": "text", "messages": USER, "think": "extreme"}, "invalid think value"),
        ({"model": "text", "messages": USER, "format": "yaml"}, "invalid format"),
        ({"model": "text", "messages": USER, "options": [1]}, "cannot unmarshal array"),
        ({"model": "text:nope=1", "messages": USER}, "unknown mock knob"),
    ],
)
def test_validation_errors(raw: httpx.Client, body: dict[str, Any], message: str) -> None:
    resp = raw.post("/api/chat", json=body)
    assert resp.status_code == 400 and message in resp.json()["error"]


@pytest.mark.parametrize(("content", "message"), [(b"", "missing request body"), (b"{nope", "invalid character"),
                                                  (b"[1]", "cannot unmarshal")])
def test_unparsable_bodies(raw: httpx.Client, content: bytes, message: str) -> None:
    resp = raw.post("/api/chat", content=content)
    assert resp.status_code == 400 and message in resp.json()["error"]


def test_other_routes(raw: httpx.Client) -> None:
    assert raw.get("/").text == "Ollama is running"
    assert raw.get("/api/version").json()["version"]
    missing = raw.post("/v1/chat/completionz", json={})
    assert missing.status_code == 404 and missing.text == "404 page not found"


def test_api_key_when_configured() -> None:
    mock = OllamaMock(api_key="sk-hosted-0123456789")
    with mock.serving_in_thread() as port:
        url = f"http://127.0.0.1:{port}/api/chat"
        body = {"model": "text:tokens=1", "messages": USER, "stream": False}
        assert httpx.post(url, json=body, timeout=10).status_code == 401
        ok = httpx.post(url, json=body, headers={"authorization": "Bearer sk-hosted-0123456789"}, timeout=10)
        assert ok.status_code == 200 and ok.json()["message"]["content"] == "tok0 "


def test_ttft_knob_delays_the_first_line(raw: httpx.Client) -> None:
    started = time.monotonic()
    with raw.stream("POST", "/api/chat", json={"model": "text:tokens=1,ttft=0.3", "messages": USER}) as resp:
        next(resp.iter_lines())
        assert time.monotonic() - started >= 0.3


def test_parse_model() -> None:
    assert parse_model("llama3.2:3b") == ("llama3.2:3b", {})
    assert parse_model("text:tokens=3,token_delay=0.5") == ("text", {"tokens": 3, "token_delay": 0.5})
    with pytest.raises(ValueError, match="bad value"):
        parse_model("text:tokens=-1")
    assert prompt_eval_count([{"role": "user", "content": "abcdefgh"}, {"role": "assistant"}]) == 3


def test_cli_prints_listening_and_serves() -> None:
    cmd = [sys.executable, "-m", "streamgw.testing.ollama_mock", "--port", "0", "--tokens", "3"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the mock did not report its port"
            word, port = proc.stdout.readline().split()
            assert word == "LISTENING"
            sdk = ollama.Client(host=f"http://127.0.0.1:{port}")
            try:
                assert sdk.chat(model="text", messages=USER).message.content == "tok0 tok1 tok2 "
            finally:
                sdk.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""

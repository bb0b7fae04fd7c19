"""The Chat Completions mock is faithful: the official openai SDK parses everything it sends."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import h11
import httpx
import openai
import pytest
import trio
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from streamgw.testing.chat_mock import ChatCompletionsMock, mask_key, parse_model, prompt_tokens
from streamgw.testing.server import MockRequest, MockServerStats, Pacer, Responder, serve_http

KEY = "sk-test-mock-key-0123456789"
PROMPT = "What is the weather in Paris?"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
TEXT_20 = "".join(f"tok{i} " for i in range(20))
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def mock() -> ChatCompletionsMock:
    return ChatCompletionsMock(api_key=KEY)


@pytest.fixture
def base_url(mock: ChatCompletionsMock) -> Iterator[str]:
    with mock.serving_in_thread() as port:
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def raw(base_url: str) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=10) as http:
        yield http


def stream_chunks(client: openai.OpenAI, model: str, **kwargs: Any) -> list[ChatCompletionChunk]:
    created = client.chat.completions.create(model=model, messages=USER, stream=True, **kwargs)
    with cast("openai.Stream[ChatCompletionChunk]", created) as stream:
        return list(stream)


async def wait_until(condition: Callable[[], object]) -> None:
    """Poll plain counters (the stats have no events to wait on)."""
    with trio.fail_after(1):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.001)


def sse_data(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the exact framing on the way."""
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(ev.startswith("data: ") and "\n" not in ev for ev in events), events
    return [ev[len("data: ") :] for ev in events]


def reassemble_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.id or ""
                if call.function is not None:
                    slot["name"] += call.function.name or ""
                    slot["arguments"] += call.function.arguments or ""
    return calls


# ------------------------------------------------------------------------------ SDK, streamed


def test_text_stream_joins_to_expected_text(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, "text")
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT_20
    assert [c.choices[0].finish_reason for c in chunks][-2:] == [None, "stop"]
    assert len({(c.id, c.created, c.model, c.object) for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].model == "text"
    assert all(c.usage is None for c in chunks)


def test_usage_chunk_when_requested(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, "text", stream_options={"include_usage": True})
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 20
    assert last.usage.prompt_tokens == prompt_tokens(USER) == len(PROMPT) // 4 + 1
    assert last.usage.total_tokens == last.usage.prompt_tokens + 20
    assert all(c.usage is None for c in chunks[:-1])


def test_tool_stream_reassembles_to_json(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, "tool", tools=[WEATHER_TOOL])
    calls = reassemble_tool_calls(chunks)
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "lookup_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    fragments = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(fragments) > 2
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_two_tools_stream_reassembles_both(client: openai.OpenAI) -> None:
    calls = reassemble_tool_calls(stream_chunks(client, "two-tools"))
    assert sorted(calls) == [0, 1]
    assert calls[0]["id"] != calls[1]["id"]
    assert {c["name"] for c in calls.values()} == {"get_weather"}
    assert [json.loads(calls[i]["arguments"])["city"] for i in (0, 1)] == ["Paris", "Tokyo"]


def test_reasoning_stream_exposes_reasoning_content(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, "reasoning", stream_options={"include_usage": True})
    extras = [c.choices[0].delta.model_extra or {} for c in chunks if c.choices]
    reasoning = "".join(e.get("reasoning_content") or "" for e in extras)
    assert reasoning == "".join(f"think{i} " for i in range(5))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT_20
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 5
    assert usage.completion_tokens == 25


def test_refusal_and_length(client: openai.OpenAI) -> None:
    refusal = stream_chunks(client, "refusal")
    refused = "".join(c.choices[0].delta.refusal or "" for c in refusal)
    assert refused == "I'm sorry, but I can't help with that."
    assert refusal[-1].choices[0].finish_reason == "stop"
    assert stream_chunks(client, "length:tokens=2")[-1].choices[0].finish_reason == "length"


def test_error_mid_stream_raises_api_error(client: openai.OpenAI) -> None:
    seen: list[str] = []
    with pytest.raises(openai.APIError, match="error while processing"):
        for chunk in client.chat.completions.create(model="error-mid", messages=USER, stream=True):
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "tok0 tok1 tok2 "


def test_cut_raises_a_connection_error(client: openai.OpenAI) -> None:
    with pytest.raises((openai.APIConnectionError, httpx.RemoteProtocolError)):
        for _ in client.chat.completions.create(model="cut", messages=USER, stream=True):
            pass


def test_knob_overrides_in_model_name(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, "text:tokens=3,token_text=w{i}-")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "w0-w1-w2-"
    assert chunks[0].model == "text:tokens=3,token_text=w{i}-"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="text:bogus=1", messages=USER)
    assert info.value.param == "model"


def test_unknown_model_name_behaves_like_text(client: openai.OpenAI) -> None:
    chunks = stream_chunks(client, "llama3:8b")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT_20


# -------------------------------------------------------------------------- SDK, non-streamed


def test_non_streamed_text(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="text", messages=USER)
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == TEXT_20
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 20
    assert completion.usage.prompt_tokens == prompt_tokens(USER)


def test_non_streamed_tools_and_reasoning(client: openai.OpenAI) -> None:
    tools = client.chat.completions.create(model="two-tools", messages=USER)
    calls = tools.choices[0].message.tool_calls or []
    assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Paris", "Tokyo"]  # type: ignore[union-attr]
    assert tools.choices[0].finish_reason == "tool_calls"
    reasoning = client.chat.completions.create(model="reasoning:tokens=1", messages=USER)
    message = reasoning.choices[0].message
    assert message.content == "tok0 "
    assert (message.model_extra or {})["reasoning_content"] == "think0 think1 think2 think3 think4 "


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
def test_status_scenarios(client: openai.OpenAI, model: str, error: type[openai.APIStatusError],
                          status: int, code: str | None) -> None:
    with pytest.raises(error) as info:
        client.chat.completions.create(model=model, messages=USER, stream=True)
    assert info.value.status_code == status
    assert info.value.code == code
    assert info.value.response.headers["content-type"] == "application/json"
    body = info.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_rate_limit_carries_retry_after(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="status-429", messages=USER)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.type == "requests"
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="status-503", messages=USER)
    assert unavailable.value.response.headers["retry-after"] == "3"


def test_wrong_key_is_rejected_without_echoing_it(base_url: str) -> None:
    wrong = "sk-test-wrong-key-987654321"
    with openai.OpenAI(base_url=base_url, api_key=wrong, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as info:
            sdk.chat.completions.create(model="text", messages=USER)
    body = info.value.response.json()["error"]
    assert body["type"] == "invalid_request_error" and body["code"] == "invalid_api_key"
    assert body["param"] is None
    assert wrong not in info.value.response.text
    assert mask_key(wrong) in body["message"]
    assert body["message"].startswith("Incorrect API key provided: sk-tes*")


def test_fault_rate_one_always_fails(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="text:fault_rate=1", messages=USER)


def test_models_endpoint(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"text", "tool", "two-tools", "reasoning", "status-429"} <= ids


# ------------------------------------------------------------------------ what was received


def test_records_the_exact_json_the_sdk_sent(client: openai.OpenAI, mock: ChatCompletionsMock) -> None:
    stream_chunks(client, "tool", tools=[WEATHER_TOOL], temperature=0.5,
                  stream_options={"include_usage": True})
    req = mock.requests[-1]
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["content-type"] == "application/json"
    assert req.json() == {
        "model": "tool",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [WEATHER_TOOL],
        "temperature": 0.5,
    }
    assert req.request_id == len(mock.requests)


def test_echo_streams_back_the_request_body(client: openai.OpenAI, mock: ChatCompletionsMock) -> None:
    chunks = stream_chunks(client, "echo", max_tokens=12)
    echoed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert echoed.encode() == mock.requests[-1].body
    assert json.loads(echoed)["max_tokens"] == 12


# ------------------------------------------------------------------------- raw wire details


def test_byte_layout_is_compact_sse(raw: httpx.Client) -> None:
    body = {"model": "two-tools", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    resp = raw.post("/chat/completions", json=body)
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["transfer-encoding"] == "chunked"
    assert resp.headers["x-request-id"].startswith("req_")
    payloads = sse_data(resp.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    for payload, chunk in zip(payloads, chunks, strict=False):
        assert json.dumps(chunk, separators=(",", ":"), ensure_ascii=False) == payload
        assert list(chunk)[:4] == ["id", "object", "created", "model"]
    for chunk in chunks[:-1]:
        assert chunk["usage"] is None
        assert list(chunk["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    first_call = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert set(first_call) == {"index", "id", "type", "function"}
    assert first_call["function"]["arguments"] == ""
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert chunks[-2]["choices"][0] == finish
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


def test_eof_and_malformed_scenarios(raw: httpx.Client) -> None:
    body: dict[str, Any] = {"model": "eof", "messages": USER, "stream": True}
    eof = sse_data(raw.post("/chat/completions", json=body).text)
    assert "[DONE]" not in eof
    assert all(json.loads(p)["choices"][0]["finish_reason"] is None for p in eof)
    assert len(eof) == 4
    body["model"] = "malformed"
    malformed = sse_data(raw.post("/chat/completions", json=body).text)
    broken = []
    for payload in malformed[:-1]:
        try:
            json.loads(payload)
        except ValueError:
            broken.append(payload)
    assert len(broken) == 1 and malformed[-1] == "[DONE]"


def test_error_mid_stream_bytes(raw: httpx.Client) -> None:
    resp = raw.post("/chat/completions", json={"model": "error-mid", "messages": USER, "stream": True})
    payloads = sse_data(resp.text)
    assert json.loads(payloads[-1]) == {"error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error", "param": None, "code": None,
    }}
    assert "[DONE]" not in payloads


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b"{not json", None, None),
        (b'{"messages":[{"role":"user","content":"x"}]}', "model", "missing_required_parameter"),
        (b'{"model":"text"}', "messages", "missing_required_parameter"),
        (b'{"model":"text","messages":[]}', "messages", "empty_array"),
        (b'{"model":"text","messages":"hi"}', "messages", "invalid_type"),
        (b'{"model":"m","messages":[{"role":"robot","content":"x"}]}', "messages[0].role", "invalid_value"),
    ],
)
def test_validation_errors(raw: httpx.Client, body: bytes, param: str | None, code: str | None) -> None:
    resp = raw.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


def test_unknown_route_is_404(raw: httpx.Client) -> None:
    resp = raw.post("/completions", json={})
    assert resp.status_code == 404
    assert resp.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"


def test_timing_knobs(raw: httpx.Client) -> None:
    body = {"model": "text:tokens=3,ttft=0.05,token_delay=0.02", "messages": USER, "stream": True}
    start = time.monotonic()
    with raw.stream("POST", "/chat/completions", json=body) as resp:
        headers_at = time.monotonic() - start
        resp.read()
    total = time.monotonic() - start
    assert headers_at < total  # headers go out before the first-token delay
    assert total >= 0.05 + 2 * 0.02
    heavy = {"model": "text:tokens=1,ttft=0.02,heavy_tail=2", "messages": USER, "stream": True}
    start = time.monotonic()
    raw.post("/chat/completions", json=heavy).raise_for_status()
    assert time.monotonic() - start >= 0.02


# ------------------------------------------------------------------------------ pure helpers


def test_helpers() -> None:
    assert parse_model("text") == ("text", {})
    assert parse_model("llama3:8b") == ("llama3:8b", {})
    assert parse_model("tool:tokens=5,token_delay=0.01") == ("tool", {"tokens": 5, "token_delay": 0.01})
    assert parse_model("text:heavy_tail=none") == ("text", {"heavy_tail": None})
    for bad in ("text:tokens=x", "text:nope=1", "text:fault_rate=2"):
        with pytest.raises(ValueError):
            parse_model(bad)
    assert mask_key("sk-test-wrong-api-key") == "sk-tes************key"
    assert "secret" not in mask_key("secret")
    parts = [{"role": "user", "content": [{"type": "text", "text": "abcdefgh"}, {"type": "image_url"}]}]
    assert prompt_tokens([*parts, {"role": "assistant", "content": None}]) == 3


def test_cli_prints_listening_and_serves() -> None:
    cmd = [sys.executable, "-m", "streamgw.testing.chat_mock", "--port", "0", "--tokens", "4"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            assert ready, "the mock did not report its port"
            word, port = proc.stdout.readline().split()
            assert word == "LISTENING"
            body = {"model": "text", "messages": USER}
            resp = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=10)
            assert resp.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 "
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""


# ------------------------------------------------------------------- trio: the bare server


async def post_stream(port: int, model: str) -> trio.SocketStream:
    """Send a streamed chat request over a raw socket (the caller reads and closes it)."""
    body = json.dumps({"model": model, "messages": USER, "stream": True}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(head.encode() + body)
    return stream


async def read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    received = b""
    with trio.fail_after(5):
        while marker not in received:
            data = await stream.receive_some()
            assert data, "connection closed early"
            received += data
    return received


async def test_keep_alive_reuses_one_connection(nursery: trio.Nursery) -> None:
    stats = MockServerStats()

    async def hello(req: MockRequest, send: Responder) -> None:
        await send.full(200, {"content-type": "text/plain"}, b"hello " + req.query.get("n", "").encode())

    port = await nursery.start(lambda task_status: serve_http(hello, stats=stats, task_status=task_status))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        assert (await http.get("/a", params={"n": "1"})).text == "hello 1"
        assert (await http.get("/b", params={"n": "2"})).text == "hello 2"
    assert (stats.connections_opened, stats.requests_served) == (1, 2)


async def test_client_disconnect_is_recorded_within_50ms(nursery: trio.Nursery) -> None:
    mock = ChatCompletionsMock()
    port = await nursery.start(mock.serve)
    async with await post_stream(port, "stall") as stream:
        await read_until(stream, b"tok0")
    closed_at = trio.current_time()
    await wait_until(lambda: mock.stats.disconnects)
    [(request_id, disconnected_at)] = mock.stats.disconnects
    assert request_id == mock.requests[0].request_id
    assert disconnected_at - closed_at < 0.05
    await wait_until(lambda: mock.stats.connections_open == 0)


async def test_disconnect_while_sending_is_recorded(nursery: trio.Nursery) -> None:
    mock = ChatCompletionsMock(tokens=100_000, token_delay=0.001)
    port = await nursery.start(mock.serve)
    async with await post_stream(port, "text") as stream:
        await read_until(stream, b"tok9 ")
    await wait_until(lambda: mock.stats.disconnects)
    assert mock.stats.requests_served == 1


async def test_handler_failure_is_a_500_and_the_server_survives(nursery: trio.Nursery) -> None:
    async def flaky(req: MockRequest, send: Responder) -> None:
        if req.path == "/boom":
            raise RuntimeError("kaput")
        if req.path == "/cut":
            await send.start(200, {"content-type": "text/plain"})
            await send.chunk(b"partial")
            await send.abort()
            return
        await send.start(200, {"content-type": "text/plain"})
        await send.chunk(b"a")
        await send.chunk(b"b")  # the server ends a stream the handler left open

    port = await nursery.start(lambda task_status: serve_http(flaky, task_status=task_status))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        boom = await http.get("/boom")
        assert boom.status_code == 500
        assert boom.json()["error"]["type"] == "server_error"
        assert "kaput" in boom.json()["error"]["message"]
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/cut")
        assert (await http.get("/ok")).text == "ab"


# ------------------------------------------------------------------------------ the shared pacer


async def test_paced_streams_are_the_same_bytes_on_the_same_schedule(nursery: trio.Nursery) -> None:
    """``pacer=Pacer()`` (the bench's mock): one task writes the timed chunks of every stream."""
    plain, paced = ChatCompletionsMock(), ChatCompletionsMock(pacer=Pacer())
    answers: dict[str, tuple[list[bytes], list[float]]] = {}

    async def read(name: str, port: int) -> None:
        async with await post_stream(port, "text:tokens=5,ttft=0.02,token_delay=0.03") as stream:
            start, received, chunks, times = trio.current_time(), b"", [], []
            with trio.fail_after(5):
                while not received.endswith(b"0\r\n\r\n"):
                    data = await stream.receive_some()
                    assert data
                    received += data
                    chunks.append(data)
                    times.append(trio.current_time() - start)
        answers[name] = (chunks, times)

    ports = {"plain": await nursery.start(plain.serve), "paced": await nursery.start(paced.serve)}
    async with trio.open_nursery() as clients:
        for name, port in ports.items():
            for i in range(4):
                clients.start_soon(read, f"{name}{i}", port)

    def body(chunks: list[bytes]) -> bytes:  # the SSE body, ids and timestamps (they differ per request) left out
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="POST", target="/", headers=[("host", "m"), ("content-length", "0")]))
        conn.receive_data(b"".join(chunks))
        data = b""
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                data += event.data
        return re.sub(rb'"(id|created)":("[^"]*"|\d+)', b"", data)

    reference = body(answers["plain0"][0])
    assert reference.count(b'"content":"tok') == 5 and reference.endswith(b"data: [DONE]\n\n")
    for name, (chunks, times) in answers.items():
        assert body(chunks) == reference, name
        # role and tok0 at ttft, each later token 30 ms after the previous one: 0.02 + 4 * 0.03
        assert 0.14 - 0.005 < times[-1] < 0.14 + 0.1, (name, times)
    assert paced.pacer is not None and not paced.pacer.heap.running  # the pacer's task ended with the streams


async def test_a_paced_client_that_leaves_is_recorded_and_forgotten(nursery: trio.Nursery) -> None:
    mock = ChatCompletionsMock(pacer=Pacer())
    port = await nursery.start(mock.serve)
    async with await post_stream(port, "text:tokens=1000,token_delay=0.01") as stream:
        await read_until(stream, b"tok3 ")
    await wait_until(lambda: mock.stats.disconnects)
    await wait_until(lambda: mock.stats.connections_open == 0)
    await wait_until(lambda: mock.pacer is not None and not mock.pacer.heap.running)  # dropped, not written to
    [(request_id, _)] = mock.stats.disconnects
    assert request_id == mock.requests[0].request_id
    assert mock.pacer is not None and len(mock.pacer.heap) == 0  # nothing of the stream left to write

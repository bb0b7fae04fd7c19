"""WebSocket mode on ``/v1/responses`` (OpenAI's WebSocket mode) against a real hypercorn server.

The gateway runs in the test's trio run (``running_gateway``) in front of two mock upstreams
on loopback — Chat Completions (events rebuilt by the emitter) and native Responses (events
relayed) — so one clock serves the client, the gateway and the upstreams.  Clients are
trio-websocket, a raw wsproto client for a client that vanishes without a close frame, and
the official ``openai`` SDK (``client.responses.connect()``) in a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, RejectData, Request, TextMessage

from streamgw.app.routes import create_app
from streamgw.config import Config, DemoSettings, ProviderConfig, Secret, ServerConfig, StoreConfig
from streamgw.core.sse import SSEDecoder
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import post_sse, running_gateway
from streamgw.testing.invariants import TERMINAL, check_events, output_text
from streamgw.testing.responses_mock import ResponsesMock

GATEWAY_KEY = "gw-websocket-test-key"
UPSTREAM_KEY = "upstream-credential-for-ws-tests"
AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
SLOW = "up/text:tokens=400,token_delay=0.01"  # 4 s: every test leaves or interrupts long before its end


@dataclass
class Upstreams:
    chat: ChatCompletionsMock
    chat_port: int
    native: ResponsesMock
    native_port: int

    def config(self, *, store: str = "memory", max_age: float = 3600.0, max_body: int = 1 << 20) -> Config:
        return Config(
            server=ServerConfig(websocket_max_age=max_age, max_body_bytes=max_body),
            auth_keys=(Secret(GATEWAY_KEY),),
            providers={
                "up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{self.chat_port}/v1",
                                     api_key=Secret(UPSTREAM_KEY)),
                "oai": ProviderConfig(name="oai", type="openai", base_url=f"http://127.0.0.1:{self.native_port}/v1",
                                      api_key=Secret(UPSTREAM_KEY)),
                "demo": ProviderConfig(name="demo", type="demo", demo=DemoSettings(0.01, 2000)),
            },
            store=StoreConfig(backend=store),
        )


@pytest.fixture
async def upstreams(nursery: trio.Nursery) -> Upstreams:
    chat = ChatCompletionsMock(api_key=UPSTREAM_KEY)
    native = ResponsesMock(api_key=UPSTREAM_KEY)
    chat_port = await nursery.start(chat.serve)
    native_port = await nursery.start(native.serve)
    return Upstreams(chat, chat_port, native, native_port)


@asynccontextmanager
async def connect(port: int, key: str | None = GATEWAY_KEY) -> AsyncIterator[WebSocketConnection]:
    headers = [("authorization", f"Bearer {key}")] if key is not None else []
    async with open_websocket_url(f"ws://127.0.0.1:{port}/v1/responses", extra_headers=headers) as ws:
        yield ws


def create(**fields: Any) -> str:
    return json.dumps({"type": "response.create", **fields})


async def frame(ws: WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(10):
        message = await ws.get_message()
    assert isinstance(message, str), "every server frame is a text frame"
    parsed: dict[str, Any] = json.loads(message)
    return parsed


async def response_frames(ws: WebSocketConnection) -> list[dict[str, Any]]:
    """Frames up to and including a terminal event, or the error frame that answered instead."""
    frames: list[dict[str, Any]] = []
    while True:
        frames.append(await frame(ws))
        if frames[-1]["type"] in TERMINAL or frames[-1]["type"] == "error":
            return frames


async def run_one(ws: WebSocketConnection, **fields: Any) -> list[dict[str, Any]]:
    await ws.send_message(create(**fields))
    return await response_frames(ws)


def assert_error(frame_: dict[str, Any], status: int, code: str, param: str | None = None,
                 type_: str = "invalid_request_error") -> None:
    assert frame_["type"] == "error", frame_
    assert frame_["status"] == status, frame_
    error = frame_["error"]
    assert (error["type"], error["code"], error["param"]) == (type_, code, param), error
    assert isinstance(error["message"], str) and error["message"]


_VOLATILE = frozenset({"created_at", "completed_at", "obfuscation"})
_IDS = frozenset({"id", "item_id", "call_id", "encrypted_content"})


def normalise(events: list[dict[str, Any]]) -> list[Any]:
    """Events with ids replaced by their order of appearance and clock values dropped."""
    seen: dict[str, str] = {}

    def walk(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items() if k not in _VOLATILE}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if key in _IDS and isinstance(value, str):
            return seen.setdefault(value, f"<id{len(seen)}>")
        return value

    return [walk(event) for event in events]


# ------------------------------------------------------------------------------- the stream itself


@pytest.mark.parametrize("model", ["up/text:tokens=8", "up/tool", "oai/text:tokens=8", "oai/reasoning"])
async def test_same_events_as_sse_and_invariants_hold(upstreams: Upstreams, model: str) -> None:
    body = {"model": model, "input": "What is the weather in Paris?", "tools": [WEATHER_TOOL]}
    async with running_gateway(upstreams.config()) as port:
        sse = await post_sse(port, {**body, "stream": True}, AUTH)
        assert sse.status == 200
        async with connect(port) as ws:
            frames = await run_one(ws, **body)
    final = check_events(frames)
    assert final["status"] == "completed" and final["provider"] == model.split("/")[0]
    assert len(frames) > 5
    assert normalise(frames) == normalise(sse.events)


async def test_native_events_are_relayed_byte_for_byte(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port, connect(port) as ws:
        await ws.send_message(create(model="oai/text:tokens=6", input="hi", stream=False))
        raw: list[str] = []
        while not raw or json.loads(raw[-1])["type"] not in TERMINAL:
            with trio.fail_after(10):
                raw.append(str(await ws.get_message()))
    upstream_request = upstreams.native.requests[-1]
    sent_body = upstream_request.json()
    assert sent_body["stream"] is True and "type" not in sent_body, "envelope fields never go upstream"
    upstream_data = {event.data for event in SSEDecoder().feed(upstreams.native.sent[upstream_request.request_id])}
    deltas = [text for text in raw if json.loads(text)["type"] == "response.output_text.delta"]
    assert len(deltas) == 6
    assert all(text in upstream_data for text in deltas), "a relayed event is the upstream's JSON text unchanged"
    assert all('"obfuscation":' in text for text in deltas)
    check_events([json.loads(text) for text in raw])


async def test_failure_after_output_started_ends_with_response_failed(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port, connect(port) as ws:
        frames = await run_one(ws, model="up/error-mid", input="hi")
        final = check_events(frames)
        assert frames[-1]["type"] == "response.failed" and final["error"]["code"] == "server_error"
        assert [f["delta"] for f in frames if f["type"] == "response.output_text.delta"] == ["tok0 ", "tok1 ", "tok2 "]
        again = await run_one(ws, model="up/text:tokens=2", input="still there?")
    assert check_events(again)["status"] == "completed"


@pytest.mark.parametrize(
    ("model", "status", "error_type", "code"),
    [
        ("up/status-429", 429, "rate_limit_error", "rate_limit_exceeded"),
        ("up/status-500", 502, "provider_error", None),
        ("oai/status-400", 400, "invalid_request_error", None),
        ("nowhere/model", 404, "not_found_error", None),
    ],
)
async def test_error_before_first_delta_is_an_error_frame(
    upstreams: Upstreams, model: str, status: int, error_type: str, code: str | None
) -> None:
    async with running_gateway(upstreams.config()) as port, connect(port) as ws:
        frames = await run_one(ws, model=model, input="hi")
        assert len(frames) == 1, "no response events before or after the error frame"
        error = frames[0]
        assert error["type"] == "error" and error["status"] == status
        assert error["error"]["type"] == error_type
        if code is not None:
            assert error["error"]["code"] == code
        if status == 429:
            assert error["error"]["headers"] == {"retry-after": "7"}
        assert UPSTREAM_KEY not in json.dumps(error)
        after = await run_one(ws, model="demo/demo", input="still there?")
    assert check_events(after)["status"] == "completed"


# ------------------------------------------------------------------------------------ validation


async def test_bad_frames_get_error_frames_and_the_connection_stays_usable(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port, connect(port) as ws:
        await ws.send_message("this is not json")
        assert_error(await frame(ws), 400, "invalid_json")
        await ws.send_message("[1, 2]")
        assert_error(await frame(ws), 400, "invalid_json")
        await ws.send_message(json.dumps({"type": "response.cancel", "response_id": "resp_1"}))
        assert_error(await frame(ws), 400, "unknown_event_type", "type")
        await ws.send_message(json.dumps({"model": "demo/demo", "input": "no type"}))
        assert_error(await frame(ws), 400, "unknown_event_type", "type")
        for fields, param in [
            ({"model": "demo/demo", "input": "hi", "temperature": 7}, "temperature"),
            ({"input": "no model"}, "model"),
            ({"model": "demo/demo", "input": [{"type": "message", "role": "wizard", "content": "hi"}]},
             "input[0].role"),
        ]:
            await ws.send_message(create(**fields))
            bad = await frame(ws)
            assert_error(bad, 400, bad["error"]["code"], param)
        await ws.send_message(create(model="demo/demo", input="hi", stream_id="lane-1"))
        assert_error(await frame(ws), 400, "unsupported_parameter", "stream_id")
        await ws.send_message(create(model="demo/demo", input="hi", background=True))
        assert_error(await frame(ws), 400, "unsupported_parameter", "background")
        # ``stream`` is implicit: even a frame that says false streams
        frames = await run_one(ws, model="up/text:tokens=3", input="finally", stream=False, store=False)
    assert check_events(frames)["status"] == "completed"
    assert upstreams.chat.requests[-1].json()["stream"] is True


async def test_frame_over_the_body_limit(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config(max_body=4000)) as port, connect(port) as ws:
        await ws.send_message(create(model="demo/demo", input="x" * 5000))
        assert_error(await frame(ws), 413, "request_too_large")
        frames = await run_one(ws, model="demo/demo", input="x" * 3000)
    assert check_events(frames)["status"] == "completed"


async def rejected_upgrade(port: int, key: str | None) -> tuple[int, dict[str, str], bytes]:
    """Attempt the upgrade with a raw wsproto client; the HTTP status, headers and body of its refusal."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        conn = WSConnection(ConnectionType.CLIENT)
        headers = [(b"authorization", f"Bearer {key}".encode())] if key is not None else []
        await stream.send_all(conn.send(Request(host="gateway", target="/v1/responses", extra_headers=headers)))
        status, head, body = 0, {}, b""
        with trio.fail_after(5):
            while True:
                data = await stream.receive_some(65536)
                conn.receive_data(data or None)
                for event in conn.events():
                    if isinstance(event, AcceptConnection):
                        raise AssertionError("the upgrade must be refused")
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        head = {name.decode().lower(): value.decode() for name, value in event.headers}
                        if not event.has_body:
                            return status, head, body
                    elif isinstance(event, RejectData):
                        body += event.data
                        if event.body_finished:
                            return status, head, body
    finally:
        await stream.aclose()


async def test_unauthorised_upgrade_is_an_http_401_before_the_handshake(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port:
        for key in (None, "wrong-key"):
            status, headers, body = await rejected_upgrade(port, key)
            assert status == 401
            assert headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
            assert "Bearer" in error["message"]
        async with connect(port) as ws:
            frames = await run_one(ws, model="demo/demo", input="with the right key")
    assert check_events(frames)["status"] == "completed"
    assert upstreams.chat.requests == [] and upstreams.native.requests == []


# ------------------------------------------------------------------------------ in flight, chaining


async def test_one_response_in_flight(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port, connect(port) as ws:
        await ws.send_message(create(model="up/text:tokens=30,token_delay=0.01", input="first"))
        first = [await frame(ws)]
        await ws.send_message(create(model="up/text:tokens=2", input="second, too early"))
        frames = first + await response_frames(ws)
        errors = [f for f in frames if f["type"] == "error"]
        assert len(errors) == 1
        assert_error(errors[0], 400, "response_already_in_flight")
        events = [f for f in frames if f["type"] != "error"]
        if events[-1]["type"] not in TERMINAL:
            events += await response_frames(ws)
        final = check_events(events)
        assert final["status"] == "completed" and output_text(final).count("tok") == 30
        # The terminal event frees the connection: the next request right after it is served.
        after = await run_one(ws, model="up/text:tokens=2", input="third")
    assert check_events(after)["status"] == "completed"
    inputs = [req.json()["messages"][-1]["content"] for req in upstreams.chat.requests]
    assert inputs == ["first", "third"], "the refused request never reached the upstream"


@pytest.mark.parametrize("store", ["memory", "none"])
async def test_chaining_on_one_connection_with_store_false(upstreams: Upstreams, store: str) -> None:
    async with running_gateway(upstreams.config(store=store)) as port, connect(port) as ws:
        first = check_events(await run_one(ws, model="up/text:tokens=3", input="first question", store=False))
        second_frames = await run_one(ws, model="up/text:tokens=2", input="second question", store=False,
                                      previous_response_id=first["id"])
        second = check_events(second_frames)
        assert second["previous_response_id"] == first["id"]
        messages = upstreams.chat.requests[-1].json()["messages"]
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", "first question"), ("assistant", output_text(first)), ("user", "second question")]
        # only the last response is kept: the first one is gone (store: false)
        stale = await run_one(ws, model="up/text:tokens=2", input="third", store=False,
                              previous_response_id=first["id"])
        assert_error(stale[0], 404, "previous_response_not_found", "previous_response_id", "not_found_error")
        third = await run_one(ws, model="up/text:tokens=2", input="third", store=False,
                              previous_response_id=second["id"])
        assert check_events(third)["status"] == "completed"
    assert len(upstreams.chat.requests[-1].json()["messages"]) == 5
    async with running_gateway(upstreams.config(store=store)) as port, connect(port) as ws:
        other = await run_one(ws, model="up/text:tokens=2", input="elsewhere", previous_response_id=second["id"])
    assert_error(other[0], 404, "previous_response_not_found", "previous_response_id", "not_found_error")


async def test_stored_responses_chain_across_connections(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port:
        async with connect(port) as ws:
            first = check_events(await run_one(ws, model="up/text:tokens=3", input="remember me"))
        async with connect(port) as ws:
            second = check_events(await run_one(ws, model="up/text:tokens=2", input="and now?",
                                                previous_response_id=first["id"]))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=AUTH) as client:
            stored = (await client.get(f"/v1/responses/{second['id']}")).json()
    assert stored["status"] == "completed" and stored["output"] == second["output"]
    contents = [m["content"] for m in upstreams.chat.requests[-1].json()["messages"]]
    assert contents == ["remember me", output_text(first), "and now?"]


@pytest.mark.parametrize("store", ["memory", "none"])
async def test_unknown_previous_response(upstreams: Upstreams, store: str) -> None:
    async with running_gateway(upstreams.config(store=store)) as port, connect(port) as ws:
        frames = await run_one(ws, model="up/text", input="hi", previous_response_id="resp_never_existed")
        assert len(frames) == 1
        assert_error(frames[0], 404, "previous_response_not_found", "previous_response_id", "not_found_error")
        after = await run_one(ws, model="up/text:tokens=2", input="fresh start")
    assert check_events(after)["status"] == "completed"
    assert len(upstreams.chat.requests) == 1


# ------------------------------------------------------------------------------- lifetime and pings


class RawWebSocket:
    """A bare wsproto client: it can vanish without a close frame (as a killed process does), and it
    sees exactly how the server ends a connection."""

    def __init__(self, stream: trio.SocketStream, conn: WSConnection) -> None:
        self.stream = stream
        self.conn = conn
        self._text: list[str] = []
        self._pending: list[Any] = []

    @classmethod
    async def open(cls, port: int) -> RawWebSocket:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        conn = WSConnection(ConnectionType.CLIENT)
        headers = [(b"authorization", f"Bearer {GATEWAY_KEY}".encode())]
        await stream.send_all(conn.send(Request(host="gateway", target="/v1/responses", extra_headers=headers)))
        client = cls(stream, conn)
        event = await client._next_event()
        assert isinstance(event, AcceptConnection), f"upgrade not accepted: {event!r}"
        return client

    async def _next_event(self) -> Any:
        while not self._pending:
            with trio.fail_after(10):
                data = await self.stream.receive_some(65536)
            assert data, "the gateway closed the TCP connection without a close frame"
            self.conn.receive_data(data)
            self._pending.extend(self.conn.events())
        return self._pending.pop(0)

    async def send(self, text: str) -> None:
        await self.stream.send_all(self.conn.send(TextMessage(data=text)))

    async def receive(self) -> dict[str, Any]:
        """The next text frame, parsed."""
        while True:
            event = await self._next_event()
            assert not isinstance(event, CloseConnection), f"closed by the gateway: {event!r}"
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    text, self._text = "".join(self._text), []
                    parsed: dict[str, Any] = json.loads(text)
                    return parsed

    async def closed_by_server(self) -> int:
        """Expect the server's close frame next: answer it, wait for the TCP close; its close code."""
        event = await self._next_event()
        assert isinstance(event, CloseConnection), f"expected a close frame, got {event!r}"
        await self.stream.send_all(self.conn.send(event.response()))
        with trio.fail_after(5):
            assert await self.stream.receive_some(65536) == b"", "the server closes the TCP connection after"
        await self.stream.aclose()
        code: int = event.code
        return code


async def _disconnect_time(mock: ChatCompletionsMock) -> float:
    """When the mock saw the gateway's upstream connection close (polled: the mock has no event for it)."""
    with trio.fail_after(5):
        while not mock.stats.disconnects:  # noqa: ASYNC110
            await trio.sleep(0.002)
    assert len(mock.stats.disconnects) == 1
    return mock.stats.disconnects[0][1]


@pytest.mark.parametrize("phase", ["before_first_token", "mid_stream"])
async def test_client_that_vanishes_cancels_the_upstream(upstreams: Upstreams, phase: str) -> None:
    model = "up/text:ttft=10" if phase == "before_first_token" else SLOW
    async with running_gateway(upstreams.config()) as port:
        client = await RawWebSocket.open(port)
        await client.send(create(model=model, input="a long one"))
        if phase == "mid_stream":
            while (await client.receive())["type"] != "response.output_text.delta":
                pass
        else:
            with trio.fail_after(5):
                while not upstreams.chat.requests:  # noqa: ASYNC110
                    await trio.sleep(0.002)
            await trio.sleep(0.05)
        left_at = trio.current_time()
        await client.stream.aclose()  # no close frame: the TCP connection just goes
        closed_at = await _disconnect_time(upstreams.chat)
    assert closed_at - left_at < 1.0, f"the upstream stayed open {closed_at - left_at:.3f} s after the client left"


async def test_client_close_frame_cancels_the_upstream(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port:
        async with connect(port) as ws:
            await ws.send_message(create(model=SLOW, input="a long one"))
            events = [await frame(ws) for _ in range(6)]
            assert events[-1]["type"] == "response.output_text.delta"
            left_at = trio.current_time()
        closed_at = await _disconnect_time(upstreams.chat)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            metrics = (await client.get("/metrics")).text
    assert closed_at - left_at < 1.0
    assert 'streamgw_upstream_errors_total{kind="client_disconnected",provider="up"} 1.0' in metrics
    assert "streamgw_streams_in_flight 0.0" in metrics
    assert "streamgw_websocket_connections 0.0" in metrics


async def test_pings_are_answered(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port, connect(port) as ws:
        with trio.fail_after(2):
            await ws.ping(b"idle connection")
        await ws.send_message(create(model="up/text:tokens=150,token_delay=0.01", input="hi"))
        frames: list[dict[str, Any]] = [await frame(ws)]

        async def read_all() -> None:  # trio-websocket reads a pong only while its message queue has room
            frames.extend(await response_frames(ws))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            with trio.fail_after(2):
                await ws.ping(b"while streaming")
            answered_after = len(frames)
    assert check_events(frames)["status"] == "completed"
    assert answered_after < len(frames) - 10, "the pong came while the response was still streaming"


async def test_connection_age_limit_when_idle(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config(max_age=0.3)) as port:
        before = trio.current_time()
        client = await RawWebSocket.open(port)
        await client.send(create(model="demo/demo", input="quick"))
        frames = [await client.receive()]
        while frames[-1]["type"] not in TERMINAL:
            frames.append(await client.receive())
        assert check_events(frames)["status"] == "completed"
        limit = await client.receive()
        waited = trio.current_time() - before
        assert_error(limit, 400, "websocket_connection_limit_reached")
        assert "0.3 seconds" in limit["error"]["message"]
        assert await client.closed_by_server() == 1000
    assert 0.3 <= waited < 3


async def test_connection_age_limit_lets_the_response_in_flight_finish(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config(max_age=0.3)) as port:
        client = await RawWebSocket.open(port)
        opened = trio.current_time()
        await client.send(create(model="up/text:tokens=60,token_delay=0.015", input="slow"))  # ~0.9 s
        frames = [await client.receive()]
        while frames[-1]["type"] not in TERMINAL:
            frames.append(await client.receive())
        assert trio.current_time() - opened > 0.5, "the response outlived the connection's age limit"
        final = check_events(frames)
        assert final["status"] == "completed" and output_text(final).count("tok") == 60
        assert_error(await client.receive(), 400, "websocket_connection_limit_reached")
        assert await client.closed_by_server() == 1000


async def test_drain_lets_the_response_in_flight_finish_then_closes_with_1001(upstreams: Upstreams) -> None:
    config = upstreams.config()
    app = create_app(config)
    gw = app.extensions["streamgw"]
    async with running_gateway(config, app) as port:
        client = await RawWebSocket.open(port)
        await client.send(create(model="up/text:tokens=20,token_delay=0.02", input="slow"))
        frames = [await client.receive()]
        gw.drain.begin(5)  # what SIGTERM does
        while frames[-1]["type"] not in TERMINAL:
            frames.append(await client.receive())
        final = check_events(frames)
        assert final["status"] == "completed" and output_text(final).count("tok") == 20
        assert await client.closed_by_server() == 1001


async def test_drain_closes_an_idle_connection_at_once(upstreams: Upstreams) -> None:
    config = upstreams.config()
    app = create_app(config)
    async with running_gateway(config, app) as port:
        client = await RawWebSocket.open(port)
        begun = trio.current_time()
        app.extensions["streamgw"].drain.begin(30)
        assert await client.closed_by_server() == 1001
        assert trio.current_time() - begun < 1


async def test_metrics_count_websocket_responses(upstreams: Upstreams) -> None:
    async with running_gateway(upstreams.config()) as port:
        async with connect(port) as ws:
            await run_one(ws, model="up/text:tokens=2", input="one")
            await run_one(ws, model="up/status-429", input="two")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                during = (await client.get("/metrics")).text
    assert "streamgw_websocket_connections 1.0" in during
    assert 'streamgw_websocket_responses_total{provider="up",status="200"} 1.0' in during
    assert 'streamgw_websocket_responses_total{provider="up",status="429"} 1.0' in during
    assert 'streamgw_requests_total{provider="up",status="200"} 1.0' in during


# ---------------------------------------------------------------------------------- the openai SDK


def _sdk_session(port: int) -> list[Any]:
    """Two chained responses and a bad chain over one ``client.responses.connect()`` (blocking)."""
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=GATEWAY_KEY, max_retries=0, timeout=10)
    events: list[Any] = []
    try:
        with client.responses.connect() as connection:
            previous: str | None = None
            for text in ("first", "second", "third"):
                chain = "resp_unknown" if text == "third" else previous
                connection.response.create(model="up/text:tokens=3", input=text, store=False,
                                           **({"previous_response_id": chain} if chain else {}))
                for event in connection:
                    events.append(event)
                    if event.type in TERMINAL or event.type == "error":
                        previous = getattr(getattr(event, "response", None), "id", None)
                        break
    finally:
        client.close()
    return events


# openai's sync WebSocket client calls websockets' connect() in a form websockets 17 deprecates
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
async def test_openai_sdk_connect(upstreams: Upstreams) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("websockets")
    if not hasattr(openai.OpenAI(api_key="x", base_url="http://127.0.0.1:1/v1").responses, "connect"):
        pytest.skip("this openai SDK has no Responses WebSocket mode")
    async with running_gateway(upstreams.config()) as port:
        with trio.fail_after(30):
            events = await trio.to_thread.run_sync(_sdk_session, port, abandon_on_cancel=True)
    types = [event.type for event in events]
    assert types.count("response.completed") == 2 and types[-1] == "error"
    completed = [event.response for event in events if event.type == "response.completed"]
    assert [item.content[0].text for item in completed[0].output] == ["tok0 tok1 tok2 "]
    error = events[-1]
    assert error.status == 404 and error.error.code == "previous_response_not_found"
    assert error.error.param == "previous_response_id"
    contents = [m["content"] for m in upstreams.chat.requests[-1].json()["messages"]]
    assert contents == ["first", "tok0 tok1 tok2 ", "second"]

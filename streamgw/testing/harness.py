"""In-process test harness: the gateway under hypercorn and mock upstreams in the test's own trio run.

Everything shares one clock, so a test can compare when its client closed a socket with
when the mock upstream saw its connection close.  The client is raw trio + h11, so the
test controls exactly when bytes are read and when the connection goes away.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import trio
from quart_trio import QuartTrio

from streamgw.app.routes import create_app
from streamgw.config import Config
from streamgw.core.sse import SSEDecoder
from streamgw.serving.main import hypercorn_config, serve_until


@asynccontextmanager
async def running_gateway(config: Config, app: QuartTrio | None = None) -> AsyncIterator[int]:
    """Serve ``config`` on 127.0.0.1 (a free port) until the block exits; yields the port.

    ``app`` (from ``create_app(config)``) lets a test reach the gateway's state while it serves.
    """
    app = create_app(config) if app is None else app
    hc = hypercorn_config(config)  # production settings; only the bind and shutdown differ
    hc.bind = ["127.0.0.1:0"]
    hc.graceful_timeout = 0.5
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(lambda task_status: serve_until(
            app, hc, shutdown_trigger, task_status=task_status))
        try:
            yield int(binds[0].rsplit(":", 1)[1])
        finally:
            stop.set()


@dataclass
class SSEResult:
    """What a raw client saw: status, headers, events, keepalive comments, and timing."""

    status: int
    headers: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: int = 0
    body: bytes = b""
    first_event_at: float | None = None


class RawClient:
    """One HTTP/1.1 connection to the gateway, driven by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        """Open a connection to 127.0.0.1:``port``."""
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send_json(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Send a POST with a JSON body."""
        data = json.dumps(body).encode()
        head = [("host", "gateway"), ("content-type", "application/json"), ("content-length", str(len(data))),
                *(headers or {}).items()]
        await self.stream.send_all(self.conn.send(h11.Request(method="POST", target=path, headers=head))
                                   + self.conn.send(h11.Data(data=data)) + self.conn.send(h11.EndOfMessage()))

    async def next_event(self) -> h11.Event:
        """The next h11 event, reading from the socket as needed."""
        while True:
            event = self.conn.next_event()
            if isinstance(event, h11.Event):
                return event
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def response_head(self) -> h11.Response:
        """Read up to the response headers."""
        event = await self.next_event()
        assert isinstance(event, h11.Response), event
        return event

    async def aclose(self) -> None:
        """Close the connection (the client leaves)."""
        await self.stream.aclose()


async def post_sse(port: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> SSEResult:
    """POST ``body`` to /v1/responses and read the whole answer, decoding SSE when it is a stream."""
    client = await RawClient.connect(port)
    try:
        await client.send_json("/v1/responses", body, headers)
        head = await client.response_head()
        result = SSEResult(head.status_code, {k.decode(): v.decode() for k, v in head.headers})
        decoder = SSEDecoder()
        raw = bytearray()
        while True:
            event = await client.next_event()
            if isinstance(event, h11.Data):
                raw += event.data
                result.comments += event.data.count(b": keepalive\n\n")
                for sse in decoder.feed(bytes(event.data)):
                    if result.first_event_at is None:
                        result.first_event_at = trio.current_time()
                    result.events.append(json.loads(sse.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        result.body = bytes(raw)
        return result
    finally:
        await client.aclose()

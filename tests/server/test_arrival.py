"""``streamgw.arrived``: when the server had read a request's head, for the application's clocks to start there.

hypercorn parses the head, makes the request's stream and its scope, and starts a task that runs the application;
on this machine that is a good part of a millisecond before the application runs, and the client waits through it
too.  Served by the production worker; the client and the server share one trio run, hence one clock.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import trio

from streamgw.serving.hypercorn_trio import ARRIVED_EXTENSION

from .serving_support import lifespan, worker_serving


class _Recorder:
    """An ASGI application that notes, per request, the arrival the server gave and when it began itself."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, float]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        self.seen.append((scope["extensions"].get(ARRIVED_EXTENSION), trio.current_time()))
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/slow":
            await trio.sleep(0.1)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def _serving(app: _Recorder) -> AbstractAsyncContextManager[int]:
    return worker_serving(app)


async def _answer(client: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        data += await client.receive_some(4096)
    return data


async def test_the_arrival_is_the_read_that_completed_the_head_and_precedes_the_application() -> None:
    app = _Recorder()
    head = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n"
    async with _serving(app) as port, await trio.open_tcp_stream("127.0.0.1", port) as client:
        sent = []
        for _ in range(2):  # two requests on one connection, each head in two pieces 50 ms apart
            await client.send_all(head)
            await trio.sleep(0.05)
            sent.append(trio.current_time())
            await client.send_all(b"\r\nhi")
            assert (await _answer(client)).startswith(b"HTTP/1.1 200")
    assert len(app.seen) == 2
    for (arrived, began), completed in zip(app.seen, sent, strict=True):
        assert type(arrived) is float
        assert completed <= arrived <= began  # not the first piece's read, not the application's start
        assert began - arrived < 0.05
    assert app.seen[1][0] - app.seen[0][0] >= 0.05  # the second request's own read, not the connection's first


async def test_a_pipelined_request_is_not_dated_from_before_the_response_it_waited_for() -> None:
    app = _Recorder()
    request = b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi"
    async with _serving(app) as port, await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(request % b"/slow" + request % b"/x")  # the second is read with the first
        answers = b""
        while answers.count(b"HTTP/1.1 200") < 2 or not answers.endswith(b"ok"):
            answers += await client.receive_some(4096)
    (first_arrived, first_began), (second_arrived, second_began) = app.seen
    assert type(first_arrived) is float and first_arrived <= first_began
    assert second_began - first_began >= 0.1  # taken up once the slow response was over
    assert second_arrived is None or second_arrived >= first_began + 0.1  # its timeouts do not count that wait


async def test_an_http2_request_is_dated_from_the_read_that_brought_its_headers() -> None:
    app = _Recorder()
    async with _serving(app) as port, httpx.AsyncClient(http1=False, http2=True) as client:
        before = trio.current_time()
        answers = [await client.post(f"http://127.0.0.1:{port}/x", content=b"hi") for _ in range(2)]
    assert [(a.http_version, a.status_code) for a in answers] == [("HTTP/2", 200)] * 2
    assert len(app.seen) == 2
    for arrived, began in app.seen:
        assert type(arrived) is float and before <= arrived <= began and began - arrived < 0.05
    assert app.seen[1][0] > app.seen[0][1]  # the second request's own read

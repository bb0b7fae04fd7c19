"""A request whose head and body came whole is served in its connection's own task; the worker's ``ClientWatch``
reads its client meanwhile.

No task is spawned for such a request (its spawn and the scheduler's turn before it started were on the way to
the first event); a request whose body comes in pieces still has a task of its own, and the connection's task
goes on reading the body for it.  While the connection's task serves, its socket is in the watch's epoll set:
the client's close reaches the request at once, a request sent early waits for the one being served, and the
watch keeps no socket once its request is over.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import trio

from streamgw.serving.hypercorn_trio import client_watch

from .serving_support import lifespan, worker_serving


class _App:
    """``/wait``: answers a first chunk, then waits for ``http.disconnect`` (the client leaving) and notes it;
    any other path: a short answer that names the path."""

    def __init__(self) -> None:
        self.disconnected = trio.Event()
        self.watched_while_serving: list[int] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        self.watched_while_serving.append(len(client_watch()))
        path = scope["path"].encode()
        if path == b"/wait":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            if (await receive())["type"] == "http.disconnect":
                self.disconnected.set()
            return
        if path == b"/slow":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await trio.sleep(0.2)
            await send({"type": "http.response.body", "body": b"last"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(path))]})
        await send({"type": "http.response.body", "body": path})


def _post(path: bytes, body: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n%s" % (path, len(body), body)


class _Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def _read_until(stream: trio.SocketStream, marker: bytes) -> bytes:
    received = b""
    with trio.fail_after(5):
        while marker not in received:
            data = await stream.receive_some(65536)
            assert data, received
            received += data
    return received


async def test_a_whole_request_has_no_task_of_its_own_and_one_in_pieces_has() -> None:
    app = _App()
    async with worker_serving(app) as port, await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(_post(b"/warm"))
        await _read_until(client, b"/warm")
        spawns = _Spawns()
        trio.lowlevel.add_instrument(spawns)
        try:
            await client.send_all(_post(b"/whole", b"0123456789"))
            await _read_until(client, b"/whole")
            whole = list(spawns.names)
            head = _post(b"/pieces", b"0123456789")
            await client.send_all(head[:-5])
            await trio.sleep(0.05)
            await client.send_all(head[-5:])
            await _read_until(client, b"/pieces")
        finally:
            trio.lowlevel.remove_instrument(spawns)
    assert whole == []
    assert len(spawns.names) == 1  # the request in pieces: its application's task
    # watched while it was served in the connection's task (and not after: the watch is empty between requests)
    assert app.watched_while_serving == [1, 1, 0]


async def test_the_client_leaving_reaches_a_request_served_in_its_connection_s_task() -> None:
    app = _App()
    async with worker_serving(app) as port:
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(_post(b"/wait"))
            await _read_until(client, b"first")
            assert len(client_watch()) == 1
        with trio.fail_after(2):
            await app.disconnected.wait()
        await trio.sleep(0.05)
        assert len(client_watch()) == 0


async def test_a_request_sent_early_is_served_after_the_one_being_served() -> None:
    app = _App()
    async with worker_serving(app) as port, await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(_post(b"/slow"))
        received = await _read_until(client, b"first")
        await client.send_all(_post(b"/next"))  # read by the watch, kept until /slow is over
        await trio.sleep(0.05)
        assert len(client_watch()) == 0  # it read once and let go: nothing more is read meanwhile
        received += await _read_until(client, b"/next")
    first, second = received.split(b"HTTP/1.1 200", 2)[1:]
    assert first.endswith(b"4\r\nlast\r\n0\r\n\r\n") and second.endswith(b"/next")
    assert app.watched_while_serving == [1, 1]


async def test_a_client_that_resets_its_connection_is_heard_too() -> None:
    app = _App()
    async with worker_serving(app) as port:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(_post(b"/wait"))
        await _read_until(client, b"first")
        # SO_LINGER 0: the close sends a reset, not a FIN (the watch's read gets ECONNRESET, not EOF)
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.socket.close()
        with trio.fail_after(2):
            await app.disconnected.wait()
        await trio.sleep(0.05)
        assert len(client_watch()) == 0

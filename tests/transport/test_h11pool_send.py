"""``TrioH11Transport.send``: an upstream request without an ``httpx.Request``, byte for byte the same on the wire.

A raw trio server records every byte a connection sent, so header order and spelling are compared, not
what a parser makes of them.
"""

from __future__ import annotations

import os
import socket
from functools import partial

import httpx
import pytest
import trio

from streamgw.transport.h11pool import TrioH11Transport
from streamgw.transport.meanwhile import MEANWHILE

_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 5\r\n\r\nhello"


class RawServer:
    """Answers every request with ``_ANSWER`` and keeps each request's raw bytes (one list per connection)."""

    def __init__(self) -> None:
        self.connections: list[list[bytes]] = []
        self.port = 0
        #: answer this many requests of each connection, then read the next one and close without an answer
        self.close_after: int | None = None
        #: seconds to wait before each answer
        self.delay = 0.0
        #: when set, each answer waits for this event
        self.gate: trio.Event | None = None
        #: the server's side of each connection
        self.streams: list[trio.SocketStream] = []
        #: when set, each answer is these writes instead of ``_ANSWER``, each after the first once ``part_sent``
        #: has a turn of it: ``part_sent.send(None)`` lets the next one go
        self.parts: list[bytes] | None = None
        self.part_sent, self.part_go = trio.open_memory_channel[None](0)

    async def serve(self, stream: trio.SocketStream) -> None:
        seen: list[bytes] = []
        self.connections.append(seen)
        self.streams.append(stream)
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, rest = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(rest) < length:
                    rest += await stream.receive_some(65536)
                seen.append(head + b"\r\n\r\n" + rest[:length])
                buffer = rest[length:]
                if self.close_after is not None and len(seen) > self.close_after:
                    return  # the race of a keep-alive connection the server closes as a request comes in
                if self.delay:
                    await trio.sleep(self.delay)
                if self.gate is not None:
                    await self.gate.wait()
                for i, part in enumerate(self.parts or [_ANSWER]):
                    if i:
                        await self.part_go.receive()
                    await stream.send_all(part)


async def start(nursery: trio.Nursery) -> RawServer:
    server = RawServer()
    listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


TIMEOUTS = {"connect": 5.0, "read": None, "write": 30.0, "pool": None}


async def test_send_writes_what_an_httpx_request_writes(nursery: trio.Nursery) -> None:
    server = await start(nursery)
    transport = TrioH11Transport()
    url = httpx.URL(f"http://127.0.0.1:{server.port}/v1/chat/completions?x=1")
    headers = {"Authorization": "Bearer sk-1", "content-type": "application/json", "accept": "text/event-stream"}
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'
    try:
        for request in (httpx.Request("POST", url, headers=headers, content=body,
                                      extensions={"timeout": TIMEOUTS}), None):
            if request is None:
                response = await transport.send("POST", url, headers, body, TIMEOUTS)
            else:
                response = await transport.handle_async_request(request)
            assert response.status_code == 200
            assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"hello"
        empty = httpx.Request("POST", url, headers={"a": "b"}, extensions={"timeout": TIMEOUTS})
        response = await transport.handle_async_request(empty)
        assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"hello"
        response = await transport.send("POST", url, {"a": "b"}, b"", TIMEOUTS)
        assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"hello"
    finally:
        await transport.aclose()
    [requests] = server.connections  # one connection, reused by all four requests
    assert len(requests) == 4
    assert requests[0] == requests[1]
    assert requests[0].startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert requests[0].endswith(b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert requests[2] == requests[3]
    assert b"\r\nContent-Length: 0\r\n" in requests[2]


async def test_send_makes_a_head_once_per_url_and_headers_and_writes_what_httpx_writes(
        nursery: trio.Nursery) -> None:
    server = await start(nursery)
    transport = TrioH11Transport()
    url = httpx.URL(f"http://127.0.0.1:{server.port}/v1/chat/completions")
    headers = {"content-type": "application/json", "authorization": "Bearer sk-1"}
    own_host = {"Host": "upstream.example", "content-type": "application/json"}
    sent = [(headers, b'{"a":1}'), (headers, b'{"a":12345}'), (headers, b""), (own_host, b'{"b":2}'),
            ({**headers, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}, b'{"a":1}')]
    try:
        for given, body in sent:
            for via_httpx in (True, False):
                if via_httpx:
                    request = httpx.Request("POST", url, headers=given, content=body, extensions={"timeout": TIMEOUTS})
                    response = await transport.handle_async_request(request)
                else:
                    response = await transport.send("POST", url, given, body, TIMEOUTS)
                assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"hello"
        # one head kept for the first headers (three bodies), one for the traceparent's; none with a Host given
        assert len(transport._prepared) == 2
        with pytest.raises(httpx.LocalProtocolError):  # refused before a connection is taken, and not kept
            await transport.send("POST", url, {"x-bad": "a\r\nb"}, b"{}", TIMEOUTS)
        assert len(transport._prepared) == 2
        long_url = url.copy_with(path="/v1/" + "m" * 5000)  # sent as any other, its head not kept
        response = await transport.send("POST", long_url, headers, b"{}", TIMEOUTS)
        assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"hello"
        assert len(transport._prepared) == 2
    finally:
        await transport.aclose()
    [requests] = server.connections
    assert len(requests) == 2 * len(sent) + 1
    assert requests[-1].startswith(b"POST /v1/" + b"m" * 5000 + b" HTTP/1.1\r\nHost: ")
    for i in range(0, len(requests) - 1, 2):
        assert requests[i] == requests[i + 1]  # httpx's bytes, then ours
    assert requests[3].endswith(b'\r\nContent-Length: 11\r\n\r\n{"a":12345}')
    assert b"\r\nHost: upstream.example\r\n" in requests[7]


async def test_send_replays_its_body_on_a_fresh_connection_when_the_kept_one_was_stale(
        nursery: trio.Nursery) -> None:
    server = await start(nursery)
    server.close_after = 1  # the second request on a connection finds it closed: a stale keep-alive one
    transport = TrioH11Transport()
    url = httpx.URL(f"http://127.0.0.1:{server.port}/v1/x")
    try:
        for _ in range(2):
            response = await transport.send("POST", url, {"content-type": "application/json"}, b'{"a":1}', TIMEOUTS)
            assert b"".join([chunk async for chunk in response.aiter_raw()]) == b"hello"
    finally:
        await transport.aclose()
    [first, stale], [replayed] = server.connections
    assert first == stale == replayed
    assert replayed.endswith(b'\r\n\r\n{"a":1}')



def _waiting_bytes(stream: trio.SocketStream) -> bytes:
    """What the peer sent that this side has not read yet (peeked: it stays to be read)."""
    with socket.socket(fileno=os.dup(stream.socket.fileno())) as sock:
        try:
            return sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return b""


async def test_meanwhile_runs_once_the_request_is_written_and_before_the_head_is_awaited(
        nursery: trio.Nursery) -> None:
    """``MEANWHILE``'s work runs once an exchange's request is on the wire, before the wait for its answer.

    The server answers only once the work has run: a transport that waited for the head first would wait here
    for good (the test's deadline).  The work sees the whole request waiting at the server's side.
    """
    server = await start(nursery)
    url = httpx.URL(f"http://127.0.0.1:{server.port}/v1/x")
    body = b'{"model":"m"}'
    seen: list[bytes] = []

    def work() -> None:
        [stream] = server.streams
        seen.append(_waiting_bytes(stream))
        assert server.gate is not None
        server.gate.set()

    async def one() -> bytes:
        response = await transport.send("POST", url, {"content-type": "application/json"}, body, TIMEOUTS)
        return b"".join([chunk async for chunk in response.aiter_raw()])

    transport = TrioH11Transport()
    try:
        with trio.fail_after(5):
            assert await one() == b"hello"  # the connection is open, the server's side of it known
            server.gate = trio.Event()
            waiting = MEANWHILE.set(work)
            try:
                assert await one() == b"hello"
            finally:
                MEANWHILE.reset(waiting)
            server.gate = None
            assert await one() == b"hello"  # no work set: nothing runs
    finally:
        await transport.aclose()
    [connection] = server.connections
    assert len(seen) == 1 and seen[0] == connection[1]
    assert seen[0].endswith(b"\r\n\r\n" + body)


class _Steps(trio.abc.Instrument):
    """How many times ``task`` was scheduled."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def test_a_request_that_fits_the_socket_goes_out_without_a_trip_through_the_scheduler(
        nursery: trio.Nursery) -> None:
    """The request is written at once; the task's next schedule point is its wait for the response head.

    The server answers 50 ms after each request, on a kept connection: sending the second request and
    getting its head takes the task one wake-up (the head's arrival), not a checkpoint after the write too.
    """
    server = await start(nursery)
    server.delay = 0.05
    url = httpx.URL(f"http://127.0.0.1:{server.port}/v1/x")
    transport = TrioH11Transport()
    try:
        first = await transport.send("POST", url, {}, b"", TIMEOUTS)  # connects (not counted)
        assert b"".join([chunk async for chunk in first.aiter_raw()]) == b"hello"
        steps = _Steps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            second = await transport.send("POST", url, {}, b"", TIMEOUTS)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert b"".join([chunk async for chunk in second.aiter_raw()]) == b"hello"
    finally:
        await transport.aclose()
    assert steps.count == 1


async def test_the_first_body_bytes_after_the_head_are_read_without_a_trip_through_the_scheduler(
        nursery: trio.Nursery) -> None:
    """Body bytes waiting in the socket when the response's first body read comes are read at once (the wait
    for the head was the schedule point); a later read that finds its bytes waiting still lets others run."""
    server = await start(nursery)
    server.parts = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"5\r\nhello\r\n", b"5\r\nworld\r\n",
                    b"0\r\n\r\n"]
    url = httpx.URL(f"http://127.0.0.1:{server.port}/v1/x")
    transport = TrioH11Transport()
    counted = []
    try:
        response = await transport.send("POST", url, {}, b"", TIMEOUTS)
        chunks = response.aiter_raw()
        for _ in range(2):
            await server.part_sent.send(None)
            await trio.sleep(0.05)  # the part is in the socket by now
            steps = _Steps(trio.lowlevel.current_task())
            trio.lowlevel.add_instrument(steps)
            try:
                assert await chunks.__anext__() in (b"hello", b"world")
            finally:
                trio.lowlevel.remove_instrument(steps)
            counted.append(steps.count)
        await server.part_sent.send(None)
        assert b"".join([chunk async for chunk in chunks]) == b""
    finally:
        await transport.aclose()
    assert counted == [0, 1]

"""Tests for the trio + h11 transport, against a tiny trio + h11 server in the same run."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import h11
import httpx
import pytest
import trio
import trustme

from streamgw.transport.h11pool import BODY_EXTENSION, CONNECT_TO_EXTENSION, FIRST_PIECE, TrioH11Transport

# -- the in-test server --------------------------------------------------------


@dataclass
class ConnRecord:
    """What the server saw of one client connection."""

    index: int
    requests: int = 0
    alpn: str | None = None
    eof_at: float | None = None  # when the server observed the client closing
    eof: trio.Event = field(default_factory=trio.Event)
    server_closed: trio.Event = field(default_factory=trio.Event)

    def saw_eof(self) -> None:
        if self.eof_at is None:
            self.eof_at = trio.current_time()
            self.eof.set()


@dataclass
class Seen:
    """One request as the server received it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    conn: ConnRecord


class Exchange:
    """The server side of one request: helpers to answer it."""

    def __init__(self, stream: trio.abc.Stream, conn: h11.Connection, seen: Seen) -> None:
        self.stream = stream
        self.h11 = conn
        self.seen = seen
        self.close_connection = False  # set to drop the connection after the handler

    async def emit(self, event: h11.Response | h11.InformationalResponse | h11.Data | h11.EndOfMessage
                   ) -> None:
        await self.stream.send_all(self.h11.send(event))

    async def start(self, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if headers is None:
            headers = [(b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked")]
        reason = b"OK" if status == 200 else b""
        await self.emit(h11.Response(status_code=status, headers=headers, reason=reason))

    async def send(self, data: bytes) -> None:
        await self.emit(h11.Data(data=data))

    async def end(self) -> None:
        await self.emit(h11.EndOfMessage())

    async def respond(self, body: bytes = b"ok", status: int = 200,
                      headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await self.start(status, [(b"content-length", str(len(body)).encode()), *(headers or [])])
        if body:
            await self.send(body)
        await self.end()

    async def watch_for_eof(self, scope: trio.CancelScope) -> None:
        """Record when the client closes the connection, then cancel ``scope``."""
        try:
            while await self.stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.seen.conn.saw_eof()
        scope.cancel()


Handler = Callable[[Exchange], Awaitable[None]]


async def default_handler(ex: Exchange) -> None:
    """Echo the request body (or the target, for a request without one)."""
    content_type = dict(ex.seen.headers).get(b"content-type", b"text/plain")
    await ex.respond(ex.seen.body or b"you asked for " + ex.seen.target,
                     headers=[(b"content-type", content_type)])


class Server:
    """An HTTP/1.1 server (h11 over trio) that records connections and requests."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.handler: Handler = default_handler
        self.connections: list[ConnRecord] = []
        self.requests: list[Seen] = []
        self.open = 0
        self.max_open = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https://localhost' if self.tls else 'http://127.0.0.1'}:{self.port}"

    async def serve(self, stream: trio.abc.Stream) -> None:
        record = ConnRecord(len(self.connections))
        self.connections.append(record)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            if self.tls is not None:
                stream = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
                await stream.do_handshake()
                record.alpn = stream.selected_alpn_protocol()
            await self._serve_requests(stream, record)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            record.saw_eof()
        finally:
            self.open -= 1
            record.server_closed.set()
            await stream.aclose()

    async def _serve_requests(self, stream: trio.abc.Stream, record: ConnRecord) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            seen = await self._read_request(stream, conn, record)
            if seen is None:
                return
            ex = Exchange(stream, conn, seen)
            await self.handler(ex)
            if ex.close_connection or conn.our_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(self, stream: trio.abc.Stream, conn: h11.Connection,
                            record: ConnRecord) -> Seen | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                record.requests += 1
                seen = Seen(request.method, request.target, list(request.headers), bytes(body), record)
                self.requests.append(seen)
                return seen
            elif isinstance(event, h11.ConnectionClosed):
                record.saw_eof()
                return None
            else:
                raise AssertionError(f"unexpected {event!r}")


async def start_server(nursery: trio.Nursery, tls: ssl.SSLContext | None = None) -> Server:
    server = Server(tls)
    listeners = await nursery.start(partial(trio.serve_tcp, server.serve, 0, host="127.0.0.1"))
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
async def server(nursery: trio.Nursery) -> Server:
    return await start_server(nursery)


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=TrioH11Transport(), base_url=server.url) as c:
        yield c


def sse(i: int) -> bytes:
    return f"data: {{\"i\": {i}}}\n\n".encode()


async def streaming_handler(ex: Exchange, chunks: int = 5) -> None:
    await ex.start()
    for i in range(chunks):
        await ex.send(sse(i))
    await ex.end()


async def endless_stream(ex: Exchange) -> None:
    """Send an event every 10 ms until the client goes away."""
    await ex.start()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ex.watch_for_eof, nursery.cancel_scope)
        try:
            while True:
                await ex.send(sse(0))
                await trio.sleep(0.01)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await trio.sleep_forever()  # let watch_for_eof record the EOF
    ex.close_connection = True


# -- round trips ---------------------------------------------------------------


async def test_get_round_trip(server: Server, client: httpx.AsyncClient) -> None:
    r = await client.get("/items?q=a%20b", headers={"X-Trace": "t-1"})

    assert r.status_code == 200
    assert r.text == "you asked for /items?q=a%20b"
    assert r.http_version == "HTTP/1.1"
    assert r.reason_phrase == "OK"
    assert r.headers["content-length"] == str(len(r.content))
    seen = server.requests[-1]
    assert (seen.method, seen.target, seen.body) == (b"GET", b"/items?q=a%20b", b"")
    assert (b"x-trace", b"t-1") in seen.headers
    assert (b"host", f"127.0.0.1:{server.port}".encode()) in seen.headers


async def test_post_json_round_trip(server: Server, client: httpx.AsyncClient) -> None:
    payload = {"model": "m-1", "input": "héllo ✓", "stream": True, "n": [1, 2, 3]}

    r = await client.post("/v1/responses", json=payload, headers={"Authorization": "Bearer k"})

    assert r.status_code == 200
    assert r.json() == payload
    seen = server.requests[-1]
    assert seen.method == b"POST"
    assert seen.target == b"/v1/responses"
    assert seen.body == r.request.content  # byte for byte what httpx encoded
    headers = dict(seen.headers)
    assert headers[b"content-length"] == str(len(seen.body)).encode()
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"authorization"] == b"Bearer k"


async def test_streamed_request_body_is_sent_chunked(server: Server, client: httpx.AsyncClient) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"alpha ", b"", b"beta"):
            yield part

    r = await client.post("/upload", content=body())

    assert r.text == "alpha beta"
    assert dict(server.requests[-1].headers)[b"transfer-encoding"] == b"chunked"


async def test_informational_responses_are_skipped(server: Server, client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        await ex.emit(h11.InformationalResponse(status_code=103, headers=[(b"link", b"</a>")]))
        await ex.respond(b"final")

    server.handler = handler
    r = await client.get("/")
    assert (r.status_code, r.text) == (200, "final")


async def test_without_timeouts(server: Server, client: httpx.AsyncClient) -> None:
    server.handler = streaming_handler
    async with client.stream("POST", "/sse", json={"a": 1}, timeout=None) as r:
        assert b"".join([chunk async for chunk in r.aiter_raw()]) == b"".join(sse(i) for i in range(5))


async def test_early_response_beats_our_write_error(nursery: trio.Nursery) -> None:
    async def rejects_before_reading_the_body(stream: trio.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER)
            while not isinstance(conn.next_event(), h11.Request):
                conn.receive_data(await stream.receive_some(65536))
            await stream.send_all(
                conn.send(h11.Response(status_code=413, headers=[(b"content-length", b"9")]))
                + conn.send(h11.Data(data=b"too large"))
                + conn.send(h11.EndOfMessage())
            )

    listeners = await nursery.start(partial(trio.serve_tcp, rejects_before_reading_the_body, 0,
                                            host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient(transport=TrioH11Transport()) as c:
        r = await c.post(f"http://127.0.0.1:{port}/", content=b"x" * (16 << 20))
    assert (r.status_code, r.text) == (413, "too large")


# -- streaming -----------------------------------------------------------------


async def test_streaming_response_arrives_chunk_by_chunk(server: Server, client: httpx.AsyncClient) -> None:
    n = 5
    delivered = [trio.Event() for _ in range(n)]

    async def handler(ex: Exchange) -> None:
        await ex.start()
        for i in range(n):
            await ex.send(sse(i))
            # The next event is only sent once the client holds this one.
            with trio.fail_after(5):
                await delivered[i].wait()
        await ex.end()

    server.handler = handler
    chunks: list[bytes] = []
    with trio.fail_after(5):
        async with client.stream("GET", "/sse") as r:
            async for chunk in r.aiter_raw():
                chunks.append(chunk)
                delivered[len(chunks) - 1].set()
    assert chunks == [sse(i) for i in range(n)]


async def test_buffered_events_are_joined_into_one_chunk(server: Server, client: httpx.AsyncClient) -> None:
    n = 50

    async def handler(ex: Exchange) -> None:
        await ex.start()
        for i in range(n):
            await ex.send(sse(i))  # one chunk per send
        await ex.end()

    server.handler = handler
    async with client.stream("GET", "/sse") as r:
        await trio.sleep(0.1)  # let everything arrive before reading
        chunks = [chunk async for chunk in r.aiter_raw()]
    assert b"".join(chunks) == b"".join(sse(i) for i in range(n))
    # What came in with the response head, then everything else in one piece.
    assert len(chunks) <= 2
    assert all(chunks)


# -- pooling -------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(server: Server, client: httpx.AsyncClient) -> None:
    for i in range(5):
        r = await client.get(f"/{i}")
        assert r.status_code == 200
    async with client.stream("GET", "/stream") as r:
        await r.aread()
    assert len(server.connections) == 1
    assert server.connections[0].requests == 6


async def _after_head(stream: trio.SocketStream, data: bytes) -> bytes | None:
    """Read up to the end of the next (bodiless) request's head; what followed it, or None at EOF."""
    while b"\r\n\r\n" not in data:
        more = await stream.receive_some(65536)
        if not more:
            return None
        data += more
    return data.split(b"\r\n\r\n", 1)[1]


async def test_connection_close_from_the_server_is_honoured(nursery: trio.Nursery) -> None:
    """A server that says ``Connection: close`` but leaves the socket open never gets a second request on it."""
    per_connection: list[int] = []

    async def says_close_but_stays(stream: trio.SocketStream) -> None:
        index = len(per_connection)
        per_connection.append(0)
        rest = b""
        async with stream:
            while (after := await _after_head(stream, rest)) is not None:
                rest = after
                per_connection[index] += 1
                await stream.send_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\nbye")

    listeners = await nursery.start(partial(trio.serve_tcp, says_close_but_stays, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient(transport=TrioH11Transport()) as c:
        for _ in range(3):
            r = await c.get(f"http://127.0.0.1:{port}/")
            assert (r.status_code, r.text) == (200, "bye")
    assert per_connection == [1, 1, 1]


def _chunked(body: bytes, size: int) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


@pytest.mark.parametrize("with_head", [True, False])
async def test_a_large_first_read_is_handed_over_in_two_pieces(nursery: trio.Nursery, with_head: bool) -> None:
    """A response's first body bytes -- those that came with its head, or its first read -- come as a first
    piece of ``FIRST_PIECE`` raw bytes, then the rest (decoded only when asked for); every byte, in order, and the
    connection is kept.  Later reads come whole."""
    body = bytes(range(48, 122)) * 100  # 7,400 bytes
    framed = _chunked(body, 100)
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    requests = 0

    async def answer(stream: trio.SocketStream) -> None:
        nonlocal requests
        rest = b""
        async with stream:
            while (after := await _after_head(stream, rest)) is not None:
                rest = after
                requests += 1
                if with_head:
                    await stream.send_all(head + framed)
                else:
                    await stream.send_all(head)
                    await trio.sleep(0.05)  # the head is read alone
                    await stream.send_all(framed)

    listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    transport = TrioH11Transport()
    async with httpx.AsyncClient(transport=transport) as c:
        for _ in range(2):
            async with c.stream("GET", f"http://127.0.0.1:{port}/") as r:
                stream = r.extensions[BODY_EXTENSION]
                first = await stream.__anext__()
                assert 0 < len(first) <= FIRST_PIECE and body.startswith(first)
                assert stream.buffered
                rest = stream.take_buffered()
                assert not stream.buffered and stream.take_buffered() == b""
                assert first + rest == body
                assert [chunk async for chunk in stream] == []  # the end: nothing more was sent
        assert requests == 2 and len(transport._connections) == 1  # kept, and used again


# the end within the rest; the end exactly at the end of the first piece (12: the framing of one chunk)
@pytest.mark.parametrize(("size", "chunk"), [(3000, 1000), (FIRST_PIECE - 12, FIRST_PIECE - 12)])
async def test_bytes_past_the_end_in_a_first_read_still_close_the_connection(nursery: trio.Nursery, size: int,
                                                                            chunk: int) -> None:
    """What follows the end of a response in its first read is not the next response: the connection is closed,
    even though that read was handed over in pieces."""
    framed = _chunked(b"x" * size, chunk)
    assert chunk == size or len(framed) > FIRST_PIECE
    assert chunk != size or len(framed) == FIRST_PIECE

    async def junk_after(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + framed
                                  + b"HTTP/1.1 200 OK\r\n")
            await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, junk_after, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    transport = TrioH11Transport()
    async with httpx.AsyncClient(transport=transport) as c:
        r = await c.get(f"http://127.0.0.1:{port}/")
        assert r.content == b"x" * size
        assert not transport._connections  # closed, not kept


async def test_a_head_in_many_reads(nursery: trio.Nursery) -> None:
    """A response head sent in pieces (cut inside a line, inside its last CRLF CRLF) reads as one."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
    cuts = [4, 20, len(head) - 3, len(head) - 1]

    async def in_pieces(stream: trio.SocketStream) -> None:
        async with stream:
            if await _after_head(stream, b"") is None:
                return
            start = 0
            for cut in [*cuts, len(head)]:
                await stream.send_all(head[start:cut])
                await trio.sleep(0.02)
                start = cut
            await stream.send_all(b"hello")
            await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, in_pieces, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient(transport=TrioH11Transport()) as c:
        r = await c.get(f"http://127.0.0.1:{port}/")
    assert (r.status_code, r.headers["content-type"], r.text) == (200, "text/plain", "hello")


async def test_raw_http10_body_until_close(nursery: trio.Nursery) -> None:
    """An HTTP/1.0 answer without Content-Length: the body is everything up to EOF."""
    async def old_server(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
            await trio.sleep(0.01)
            await stream.send_all(b"part two")

    listeners = await nursery.start(partial(trio.serve_tcp, old_server, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient(transport=TrioH11Transport()) as c:
        r = await c.get(f"http://127.0.0.1:{port}/")
    assert (r.status_code, r.text) == (200, "part one, part two")


async def test_64_concurrent_streams_then_pool_reuses_them(server: Server) -> None:
    n = 64
    arrived: list[Exchange] = []
    all_in = trio.Event()

    async def handler(ex: Exchange) -> None:
        # Hold every response until all n requests are in: they must be concurrent.
        arrived.append(ex)
        if len(arrived) == n:
            all_in.set()
        with trio.fail_after(5):
            await all_in.wait()
        await streaming_handler(ex, chunks=5)

    server.handler = handler
    bodies: list[bytes] = []

    async def one(c: httpx.AsyncClient) -> None:
        async with c.stream("GET", "/sse") as r:
            bodies.append(b"".join([chunk async for chunk in r.aiter_raw()]))

    async with httpx.AsyncClient(transport=TrioH11Transport(), base_url=server.url) as c:
        for round_ in range(2):
            arrived.clear()
            all_in = trio.Event()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one, c)
            assert len(bodies) == n * (round_ + 1)
            assert set(bodies) == {b"".join(sse(i) for i in range(5))}
            # All 64 are pooled, still open, and the second round reuses them.
            assert len(server.connections) == n
            assert all(conn.eof_at is None for conn in server.connections)
        assert [conn.requests for conn in server.connections] == [2] * n


async def test_max_connections_caps_open_connections(server: Server) -> None:
    async def handler(ex: Exchange) -> None:
        await trio.sleep(0.02)
        await ex.respond(b"ok")

    server.handler = handler
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=TrioH11Transport(max_connections=2), base_url=server.url) as c:

        async def one() -> None:
            statuses.append((await c.get("/")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
    assert statuses == [200] * 5
    assert server.max_open <= 2
    # Waiting requests were handed the released connections: none was re-opened.
    assert len(server.connections) == 2


async def test_pool_timeout(server: Server) -> None:
    server.handler = endless_stream
    async with httpx.AsyncClient(transport=TrioH11Transport(max_connections=1), base_url=server.url) as c:
        async with c.stream("GET", "/sse"):
            with pytest.raises(httpx.PoolTimeout):
                await c.get("/", timeout=httpx.Timeout(5, pool=0.05))


async def test_idle_connection_of_another_origin_is_evicted_at_the_cap(server: Server) -> None:
    async with httpx.AsyncClient(transport=TrioH11Transport(max_connections=1)) as c:
        assert (await c.get(f"http://127.0.0.1:{server.port}/a")).status_code == 200
        # Same server, different origin: the idle connection must make room.
        r = await c.get(f"http://localhost:{server.port}/b", timeout=httpx.Timeout(5, pool=1))
        assert r.status_code == 200
        with trio.fail_after(1):
            await server.connections[0].eof.wait()
    assert len(server.connections) == 2


async def test_expired_idle_connection_is_closed_not_reused(server: Server) -> None:
    async with httpx.AsyncClient(transport=TrioH11Transport(keepalive_expiry=0.05), base_url=server.url) as c:
        await c.get("/")
        await trio.sleep(0.1)
        await c.get("/")
        with trio.fail_after(1):
            await server.connections[0].eof.wait()
    assert len(server.connections) == 2


async def test_aclose_closes_idle_connections(server: Server) -> None:
    transport = TrioH11Transport()
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as c:
        await c.get("/")
    with trio.fail_after(1):  # TooSlowError if the idle connection stayed open
        await server.connections[0].eof.wait()
    assert server.connections[0].eof.is_set()


# -- stale keep-alive connections ----------------------------------------------


async def test_idle_connection_closed_by_server_is_detected(server: Server,
                                                            client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        await ex.respond(b"bye")
        ex.close_connection = True  # closes after a keep-alive response

    server.handler = handler
    assert (await client.get("/")).text == "bye"
    await server.connections[0].server_closed.wait()
    await trio.sleep(0.01)  # let the FIN arrive

    async def body() -> AsyncIterator[bytes]:
        yield b"streamed"  # a body that cannot be replayed: no retry possible

    assert (await client.post("/", content=body())).text == "bye"
    assert len(server.connections) == 2
    assert len(server.requests) == 2


async def test_request_on_stale_connection_is_retried_once_fresh(server: Server,
                                                                 client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        if ex.seen.conn.requests == 2:  # the race: server closes just as a request comes in
            ex.close_connection = True
            return
        await default_handler(ex)

    server.handler = handler
    await client.get("/")
    r = await client.post("/again", json={"x": 1})

    assert r.json() == {"x": 1}
    assert len(server.connections) == 2
    attempt, retry = server.requests[1:]
    assert (attempt.conn.index, retry.conn.index) == (0, 1)
    assert attempt.body == retry.body == b'{"x":1}'


async def test_stale_retry_happens_only_once(server: Server, client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        if len(server.requests) > 1:
            ex.close_connection = True
            return
        await default_handler(ex)

    server.handler = handler
    await client.get("/")
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/")
    assert len(server.requests) == 3
    assert len(server.connections) == 2


async def test_fresh_connection_closed_without_response_is_not_retried(server: Server,
                                                                       client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        ex.close_connection = True

    server.handler = handler
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/")
    assert len(server.requests) == 1


# -- errors and timeouts ---------------------------------------------------------


async def test_connection_refused_is_connect_error() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with httpx.AsyncClient(transport=TrioH11Transport()) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get(f"http://127.0.0.1:{port}/")


async def test_unsupported_scheme() -> None:
    async with httpx.AsyncClient(transport=TrioH11Transport()) as c:
        with pytest.raises(httpx.UnsupportedProtocol):
            await c.get("ftp://127.0.0.1/")


async def test_server_closing_mid_body_is_remote_protocol_error(server: Server,
                                                                client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        await ex.start(headers=[(b"content-length", b"100")])
        await ex.send(b"x" * 10)
        ex.close_connection = True

    server.handler = handler
    received = b""
    async with client.stream("GET", "/") as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in r.aiter_raw():
                received += chunk
    assert received == b"x" * 10


async def test_read_timeout_waiting_for_head(server: Server, client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        await trio.sleep_forever()

    server.handler = handler
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/", timeout=httpx.Timeout(5, read=0.05))


async def test_read_timeout_while_streaming(server: Server, client: httpx.AsyncClient) -> None:
    async def handler(ex: Exchange) -> None:
        await ex.start()
        await ex.send(sse(0))
        await trio.sleep_forever()

    server.handler = handler
    async with client.stream("GET", "/", timeout=httpx.Timeout(5, read=0.05)) as r:
        chunks: list[bytes] = []
        with pytest.raises(httpx.ReadTimeout):
            async for chunk in r.aiter_raw():
                chunks.append(chunk)
    assert chunks == [sse(0)]


async def test_write_timeout(nursery: trio.Nursery) -> None:
    async def never_reads(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    listeners = await nursery.start(partial(trio.serve_tcp, never_reads, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with httpx.AsyncClient(transport=TrioH11Transport()) as c:
        with pytest.raises(httpx.WriteTimeout):
            await c.post(f"http://127.0.0.1:{port}/", content=b"x" * (64 << 20),
                         timeout=httpx.Timeout(5, write=0.2))


# -- cancellation and early exit ------------------------------------------------


async def test_cancelled_stream_closes_upstream_at_once(server: Server, client: httpx.AsyncClient) -> None:
    server.handler = endless_stream
    chunks = 0
    with trio.move_on_after(0.1) as scope:
        async with client.stream("GET", "/sse") as r:
            async for _ in r.aiter_raw():
                chunks += 1
    assert scope.cancelled_caught
    assert chunks > 0
    conn = server.connections[0]
    with trio.fail_after(1):
        await conn.eof.wait()
    assert conn.eof_at is not None
    assert conn.eof_at - scope.deadline < 0.05

    server.handler = default_handler
    assert (await client.get("/")).status_code == 200
    assert len(server.connections) == 2  # the cancelled one was not pooled


async def test_cancelled_read_loses_nothing_and_can_resume(server: Server,
                                                            client: httpx.AsyncClient) -> None:
    go_on = trio.Event()

    async def handler(ex: Exchange) -> None:
        await ex.start()
        await ex.send(sse(0))
        await go_on.wait()
        await ex.send(sse(1))
        await ex.end()

    server.handler = handler
    async with client.stream("GET", "/sse") as r:
        body = r.extensions[BODY_EXTENSION]
        assert await body.__anext__() == sse(0)
        with trio.move_on_after(0.05) as idle:  # e.g. waiting with a heartbeat deadline
            await body.__anext__()
        assert idle.cancelled_caught
        go_on.set()
        assert [chunk async for chunk in body] == [sse(1)]
    assert (await client.get("/")).status_code == 200
    assert len(server.connections) == 1  # read to its end, so it was reused


# Breaking out of `aiter_raw()` leaves httpx's own async generators (`aiter_raw`,
# `BoundAsyncStream.__aiter__`) suspended; trio reports their collection with a
# ResourceWarning.  The transport's stream is not a generator and is closed by
# `client.stream(...)` on exit -- which is what this test checks.
@pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")
async def test_leaving_a_stream_early_closes_the_connection(server: Server,
                                                            client: httpx.AsyncClient) -> None:
    server.handler = endless_stream
    async with client.stream("GET", "/sse") as r:
        async for _ in r.aiter_raw():
            break
    with trio.fail_after(1):
        await server.connections[0].eof.wait()

    server.handler = default_handler
    assert (await client.get("/")).status_code == 200
    assert len(server.connections) == 2


# -- TLS -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_round_trip_and_reuse(nursery: trio.Nursery, ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = await start_server(nursery, tls=server_ctx)

    transport = TrioH11Transport(ssl_context=client_ctx)
    async with httpx.AsyncClient(transport=transport, base_url=server.url) as c:
        r = await c.post("/secure", json={"ok": True})
        assert r.json() == {"ok": True}
        server.handler = partial(streaming_handler, chunks=3)
        async with c.stream("GET", "/sse") as r:
            assert b"".join([chunk async for chunk in r.aiter_raw()]) == sse(0) + sse(1) + sse(2)
    assert len(server.connections) == 1
    assert server.connections[0].alpn == "http/1.1"


async def test_https_untrusted_certificate_is_connect_error(nursery: trio.Nursery, ca: trustme.CA) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server = await start_server(nursery, tls=server_ctx)

    async with httpx.AsyncClient(transport=TrioH11Transport(), base_url=server.url) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/")


# -- connecting to a given address ---------------------------------------------------


async def test_connect_to_overrides_the_address_but_not_the_host(server: Server) -> None:
    # Nothing listens on 127.0.0.2: the request only arrives if the transport connected to
    # the given address, and the server must still see the URL's host.
    transport = TrioH11Transport(max_keepalive_per_origin=0)
    request = httpx.Request("GET", f"http://127.0.0.2:{server.port}/x",
                            extensions={CONNECT_TO_EXTENSION: "127.0.0.1"})
    response = await transport.handle_async_request(request)
    await response.aread()
    await transport.aclose()
    assert response.status_code == 200
    [seen] = server.requests
    assert dict(seen.headers)[b"host"] == f"127.0.0.2:{server.port}".encode()


@pytest.mark.parametrize(("cert_for", "ok"), [("127.0.0.2", True), ("127.0.0.1", False)])
async def test_connect_to_checks_the_certificate_of_the_url_host(
    nursery: trio.Nursery, ca: trustme.CA, cert_for: str, ok: bool
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_for).configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    server = await start_server(nursery, tls=server_ctx)
    transport = TrioH11Transport(ssl_context=client_ctx)
    request = httpx.Request("GET", f"https://127.0.0.2:{server.port}/x",
                            extensions={CONNECT_TO_EXTENSION: "127.0.0.1"})
    try:
        if ok:
            response = await transport.handle_async_request(request)
            assert (await response.aread()).startswith(b"you asked for")
        else:  # a certificate for the address connected to is not one for the URL's host
            with pytest.raises(httpx.ConnectError):
                await transport.handle_async_request(request)
    finally:
        await transport.aclose()

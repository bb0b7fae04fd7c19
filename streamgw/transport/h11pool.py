"""A trio-native HTTP/1.1 transport for httpx, with an O(1) connection pool.

httpx stays the client API; this replaces httpcore underneath it.  Each socket is a
`trio.SocketStream` (wrapped in a `trio.SSLStream` for https); request and response heads
are written and parsed by ``streamgw.transport.http1head``, bodies framed by
``streamgw.transport.http1body`` (both sans-IO, with h11's grammar and checks).  Idle
connections wait in a per-origin LIFO stack; checking one out or in never scans other
requests or connections.

Two properties matter to the gateway:

* the read path is cheap per chunk: every body byte that has already arrived is
  parsed and handed over as ONE bytes object (never an empty one);
* closing is synchronous: closing an unfinished response closes its socket
  before anything awaits, so it works inside a cancelled scope and the upstream
  sees EOF at once;
* reading is cancellation-safe: a cancelled read loses no data and leaves the
  response usable (a caller may wait for the next chunk with a deadline, then
  wait again); a cancelled request is one whose response gets closed --
  ``client.stream(...)`` does that on the way out.

Every failure leaves this module as an ``httpx`` exception, translated once by
``streamgw.transport.errors`` (one ``map_exceptions`` per phase: connect, wait for a
slot, write, read); ``trio.Cancelled`` is never swallowed.
"""

from __future__ import annotations

import math
import socket as stdsocket
import ssl
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final, NoReturn, cast

import httpx
import trio

from streamgw.transport.errors import CONNECTING, READING, WAITING, WRITING, ProtocolViolation
from streamgw.transport.http1body import BodyDecoder, framing
from streamgw.transport.http1head import LocalHeadError, ResponseHead, parse_response_head, request_head
from streamgw.transport.meanwhile import meanwhile
from streamgw.transport.sockio import plain_socket, receive_plain, recv_now, wait_readable

__all__ = ["BODY_EXTENSION", "CONNECT_TO_EXTENSION", "TrioH11Transport"]

#: Response extension holding the body iterator itself (the object httpx wraps in
#: an async generator): ``response.extensions[BODY_EXTENSION]``.  Unlike httpx's
#: wrapper, its ``__anext__`` may be cancelled and called again without losing data.
BODY_EXTENSION: Final = "streamgw.body"

#: Request extension: the IP address (str) to connect to instead of resolving the URL's
#: host, which still names the server in the Host header, TLS SNI and the certificate
#: check.  Lets a caller connect to exactly the address it resolved and vetted.
CONNECT_TO_EXTENSION: Final = "streamgw.connect_to"

#: (scheme, host, port, address to connect to or "") -- connections are only shared within one origin.
Origin = tuple[bytes, bytes, int, str]

_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}
#: a response head bigger than this is refused
_MAX_HEAD_SIZE: Final = 64 * 1024
#: a response's first body bytes (those that came with its head, or its first read) are handed over in two
#: pieces when there are more: this many first, then the rest
FIRST_PIECE: Final = 1024
#: failures that, on a reused connection with no response byte yet, mean "stale"
_STALE_ERRORS: Final = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _asks_close(headers: Any) -> bool:
    """Whether a ``Connection`` header in ``headers`` ((name, value) byte pairs) says ``close``."""
    for name, value in headers:
        if name.lower() == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
            return True
    return False


def _deadline(seconds: float | None) -> float:
    return math.inf if seconds is None else trio.current_time() + seconds


def _buffered_body(request: httpx.Request) -> bytes | None:
    """The request body if httpx already holds it in memory (then it can be replayed)."""
    try:
        return request.content
    except httpx.RequestNotRead:
        return None


class _Outgoing:
    """A request as the connection writes it: method, target, every header (Host and framing included), body.

    ``body`` is the whole body when it is in memory (then the request can be replayed on a fresh
    connection), else ``None`` and ``stream`` yields it.
    """

    __slots__ = ("body", "head", "headers", "method", "stream", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes | None,
                 stream: object = None, head: bytes | None = None) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.stream = stream
        #: the request head's bytes when they are known already (``_Prepared``), else made from the rest
        self.head = head

    @classmethod
    def of(cls, request: httpx.Request) -> _Outgoing:
        """What httpx prepared (its Host and Content-Length or Transfer-Encoding are in ``request.headers``)."""
        return cls(request.method.encode("ascii"), request.url.raw_path, request.headers.raw,
                   _buffered_body(request), request.stream)


def _prepared_headers(url: httpx.URL, method: str, headers: Mapping[str, str], body: bytes
                      ) -> list[tuple[bytes, bytes]]:
    """The headers httpx.Request would send for ``body`` (bytes): ``Host`` first unless given, the given ones in
    order, then ``Content-Length`` unless given (none for an empty body but that of a POST, PUT or PATCH)."""
    raw = [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]
    names = {name.lower() for name in headers}
    if body and "content-length" not in names:
        raw.append((b"Content-Length", b"%d" % len(body)))
    auto: list[tuple[bytes, bytes]] = []
    if "host" not in names and url.raw_host:
        auto.append((b"Host", url.netloc))
    if not body and "content-length" not in names and "transfer-encoding" not in names \
            and method in ("POST", "PUT", "PATCH"):
        auto.append((b"Content-Length", b"0"))
    return auto + raw


class _Prepared:
    """What every request of one method to one URL with the same headers writes before its body's length: the
    request line, ``Host`` and the headers, checked once (``request_head``) and kept as bytes.

    The upstream side sends the same few heads over and over (a provider's endpoint, its key and content
    type): ``TrioH11Transport.send`` keeps them, so a request's head is one concatenation, not a check of every
    header and a join."""

    __slots__ = ("empty_length", "head", "headers", "method", "origin", "target")

    def __init__(self, method: str, url: httpx.URL, headers: Mapping[str, str]) -> None:
        self.method = method.encode("ascii")
        self.target = url.raw_path
        self.origin = _origin(url)
        self.headers = [(b"Host", url.netloc)] + [(name.encode("ascii"), value.encode("ascii"))
                                                   for name, value in headers.items()]
        head, _ = request_head(self.method, self.target, self.headers)
        self.head = head[:-2]  # up to the blank line: the body's length goes there
        #: an empty body still gets ``Content-Length: 0`` for these methods, after ``Host`` (as httpx writes it)
        self.empty_length = head.index(b"\r\n", head.index(b"\r\n") + 2) + 2 \
            if method in ("POST", "PUT", "PATCH") else 0

    @staticmethod
    def applies(url: httpx.URL, headers: Mapping[str, str]) -> bool:
        """Whether a head can be kept for these: ``Host`` and the framing are left to this class."""
        return bool(url.raw_host) and not any(name.lower() in _OWN_HEADERS for name in headers)

    def outgoing(self, body: bytes) -> _Outgoing:
        """The request with ``body``: the same bytes as ``_prepared_headers`` and ``request_head`` make."""
        if body:
            head = b"%bContent-Length: %d\r\n\r\n" % (self.head, len(body))
        elif self.empty_length:
            at = self.empty_length
            head = b"%bContent-Length: 0\r\n%b\r\n" % (self.head[:at], self.head[at:])
        else:
            head = self.head + b"\r\n"
        return _Outgoing(self.method, self.target, self.headers, body, head=head)


_PEEK: Final = stdsocket.MSG_PEEK | stdsocket.MSG_DONTWAIT
#: the headers a ``_Prepared`` head writes itself
_OWN_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})
#: how many prepared heads a transport keeps (a header that changes per request, such as ``traceparent``,
#: makes each of them new: the store starts over when full)
_PREPARED_MAX: Final = 256
#: the longest head kept (bytes)
_PREPARED_HEAD_MAX: Final = 4096


class _Connection:
    """One socket, the state of the response it reads, and the pool's bookkeeping for it."""

    __slots__ = ("body", "closed", "eof", "idle_since", "keep_alive", "later", "opening", "origin", "pending", "plain",
                 "read_chunk", "response_started", "reused", "socket", "stream")

    def __init__(self, origin: Origin, stream: trio.abc.Stream, socket: trio.socket.SocketType,
                 read_chunk: int) -> None:
        self.origin = origin
        self.stream = stream
        self.socket = socket
        #: the stdlib socket under a plain TCP stream (None with TLS): reads skip ``SocketStream``'s layers
        self.plain: stdsocket.socket | None = plain_socket(stream)
        self.read_chunk = read_chunk
        self.idle_since = 0.0
        self.reused = False  # True once it served a request and came back from the pool
        self.response_started = False  # a byte of the current response arrived
        self.body = BodyDecoder("none")  # the current response's body framing
        # Body bytes read and not decoded yet: a first piece (``pending``) and the rest (``later``).  A fast
        # upstream can send a whole answer with its head or in its first read; the first look at it should not
        # wait for all of it to be unframed (``take_buffered`` decodes the rest at once when asked).
        self.pending = b""
        self.later = b""
        self.opening = False  # no body byte of the current response handed over yet
        self.eof = False  # the peer closed its side
        self.keep_alive = False  # the connection may carry another request after this response
        self.closed = False

    def close(self) -> None:
        """Close the socket now.

        Deliberately synchronous: trio closes the fd (waking any task blocked on
        it) without a checkpoint, so this also works inside a cancelled scope.
        Neither stream needs anything else: `SSLStream` is used in
        ``https_compatible`` mode, which sends no close_notify.
        """
        self.closed = True
        self.socket.close()

    def peer_closed(self) -> bool:
        """Whether an idle connection is unusable, checked without blocking.

        An idle HTTP/1.1 connection has nothing to read: if its socket is readable
        the server closed it (EOF) or broke the protocol -- either way, drop it.  A plain socket is asked with
        one non-blocking peek (no ``poll`` object made and registered for the question).
        """
        plain = self.plain
        if plain is None:
            return self.socket.is_readable()
        try:
            plain.recv(1, _PEEK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return True

    async def exchange(self, request: _Outgoing, write_timeout: float | None,
                       read_timeout: float | None) -> ResponseHead:
        """Send ``request`` and read the response head, skipping 1xx responses."""
        self.response_started = False
        try:
            with WRITING:
                await self._send_request(request, write_timeout)
        except httpx.WriteError as exc:
            write_error = exc
        else:
            meanwhile()  # the upstream has the request: what does not need its answer is done now
            with READING:
                return self._body_follows(*await self._receive_head(read_timeout), request)
        # A server may answer early (413, 401...) and close without reading the
        # whole body: its response is more useful than our write error.
        try:
            with READING:
                head, leftover = await self._receive_head(read_timeout)
        except httpx.TransportError:
            raise write_error from None
        with READING:
            self._body_follows(head, leftover, request)
        self.keep_alive = False
        return head

    def _body_follows(self, head: ResponseHead, leftover: bytes, request: _Outgoing) -> ResponseHead:
        """Set up the body decoder for ``head``; ``leftover``: what arrived after it."""
        mode, length = framing(head.status_code, head.headers, request.method)
        self.body = decoder = BodyDecoder(mode, length)
        self.pending, self.later = leftover[:FIRST_PIECE], leftover[FIRST_PIECE:]
        self.opening = True
        self.keep_alive = (head.http_version == b"1.1" and not decoder.until_eof
                           and not _asks_close(head.headers) and not _asks_close(request.headers))
        return head

    async def _send_request(self, request: _Outgoing, write_timeout: float | None) -> None:
        body = request.body
        head = request.head
        if head is not None and body is not None:
            await self._send(head + body, write_timeout)
            return
        head, length = request_head(request.method, request.target, request.headers)
        if body is not None:
            # Head and body in one write: one syscall for a typical API call.
            if length is None:
                body = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if body else b"0\r\n\r\n"
            elif len(body) != length:
                raise LocalHeadError(f"the body is {len(body)} bytes, its Content-Length says {length}")
            await self._send(head + body, write_timeout)
            return
        await self._send(head, write_timeout)
        stream = request.stream
        if not isinstance(stream, httpx.AsyncByteStream):
            raise TypeError("TrioH11Transport needs an async request body")
        left = length
        async for part in stream:
            if not part:
                continue
            if left is None:
                part = b"%x\r\n%s\r\n" % (len(part), part)
            else:
                left -= len(part)
                if left < 0:
                    raise LocalHeadError(f"the body is longer than its Content-Length ({length})")
            await self._send(part, write_timeout)
        if left is None:
            await self._send(b"0\r\n\r\n", write_timeout)
        elif left:
            raise LocalHeadError(f"the body is shorter than its Content-Length ({length})")

    async def _receive_head(self, read_timeout: float | None) -> tuple[ResponseHead, bytes]:
        """The response head (1xx ones skipped) and the bytes that arrived after it.

        A head in one read is parsed from that read; one in several is collected in a ``bytearray`` and
        searched only where it is new (an upstream sending its head a byte at a time costs linear time).
        """
        buf: bytes | bytearray = b""
        searched = 0
        while True:
            parsed = parse_response_head(buf, _MAX_HEAD_SIZE, searched) if buf else None
            if parsed is None:
                searched = len(buf)
                data = await self._receive_raw(read_timeout)
                if not data:
                    raise ProtocolViolation("the server closed the connection in the middle of the response head"
                                            if buf else "the server closed the connection without sending a response")
                self.response_started = True
                if not buf:
                    buf = data
                else:
                    if type(buf) is bytes:
                        buf = bytearray(buf)
                    buf += data
                continue
            head, end = parsed
            buf, searched = bytes(buf[end:]), 0
            if head.status_code >= 200:
                return head, buf

    async def _send(self, data: bytes, write_timeout: float | None) -> None:
        plain = self.plain
        if plain is not None:
            # A request nearly always fits the socket's buffer: written at once, without the stream's layers
            # and without a trip through the scheduler (the wait for the response head comes next).  What the
            # socket does not take goes through ``send_all``; errors are the socket's ``OSError``.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = plain.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        with trio.CancelScope(deadline=_deadline(write_timeout)):
            await self.stream.send_all(data)
            return
        raise trio.TooSlowError("timed out sending the request")

    async def _receive_raw(self, read_timeout: float | None) -> bytes:
        """The next bytes from the socket (b"" at EOF)."""
        plain = self.plain
        if read_timeout is None:  # no cancel scope: entering one costs about as much as the receive
            data = await (receive_plain(plain, self.read_chunk) if plain is not None
                          else self.stream.receive_some(self.read_chunk))
        else:
            data = None
            with trio.CancelScope(deadline=trio.current_time() + read_timeout):
                data = await (receive_plain(plain, self.read_chunk) if plain is not None
                              else self.stream.receive_some(self.read_chunk))
            if data is None:  # the deadline cancelled the receive
                raise trio.TooSlowError("timed out waiting for the server")
        return data if type(data) is bytes else bytes(cast(bytearray, data))  # SSLStream gives a bytearray



class _ResponseStream(httpx.AsyncByteStream):
    """A response body read straight from the socket.

    An async iterator object rather than an async generator: it survives a
    cancelled ``__anext__``, and nothing is left for the garbage collector to
    finalise when a consumer stops early.
    """

    def __init__(self, transport: TrioH11Transport, conn: _Connection, read_timeout: float | None) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn  # None once finished or closed
        self._read_timeout = read_timeout

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    @property
    def buffered(self) -> bool:
        """Whether body bytes that came with the head are still to be handed over (no read needed for them)."""
        conn = self._conn
        return conn is not None and bool(conn.pending or conn.later)

    def take_buffered(self) -> bytes:
        """All the body bytes that came with the head and were not handed over yet, decoded now (``b""``: none
        left; the end of the body is for ``__anext__`` to tell).  A framing error fails as in ``__anext__``."""
        conn = self._conn
        if conn is None or not (conn.pending or conn.later):
            return b""
        raw = conn.pending + conn.later
        conn.pending = conn.later = b""
        try:
            return conn.body.feed(raw)
        except Exception as exc:
            self._fail(conn, exc)

    def _fail(self, conn: _Connection, exc: Exception) -> NoReturn:
        """Raise ``exc`` (raised while reading) as an httpx exception; the connection is unusable after it."""
        self._conn = None
        self._transport._discard(conn)
        mapped = READING.translate(exc)
        if mapped is exc:
            raise exc
        raise mapped from exc

    async def __anext__(self) -> bytes:
        """Body bytes, never an empty chunk: all those decodable from what was read, waiting for the socket
        only when there are none -- except that a response's first bytes (those that came with its head, or
        its first read) come in two pieces, ``FIRST_PIECE`` bytes, then the rest.

        It only awaits with nothing collected yet, and the decoder is fed only after a receive completed: a
        cancellation loses no data.  (The connection's reading is written out here rather than in a method
        of ``_Connection``: an open stream waits in it, and each coroutine frame it waits under it holds.)
        """
        conn = self._conn
        if conn is None:
            raise StopAsyncIteration
        decoder = conn.body
        data = b""
        try:
            while True:
                # Bytes read and not decoded yet, first piece first: those that came with the head, or the rest
                # of the response's first read.
                while not data and (conn.pending or conn.later):
                    if conn.pending:
                        raw, conn.pending = conn.pending, b""
                    else:
                        raw, conn.later = conn.later, b""
                    data = decoder.feed(raw)
                if data or decoder.done:
                    break
                if conn.eof:
                    decoder.eof()
                    break
                if self._read_timeout is not None or conn.plain is None:
                    raw = await conn._receive_raw(self._read_timeout)
                else:
                    # ``sockio.receive_plain``, written out: a quiet stream waits here, and one more
                    # coroutine frame would be held for all of it.  ``recv_now`` keeps an empty socket's
                    # BlockingIOError out of this frame (which would then keep a frame object as long).
                    plain = conn.plain
                    await trio.lowlevel.checkpoint_if_cancelled()
                    waited = False
                    while (got := recv_now(plain, conn.read_chunk)) is None:  # an OSError is mapped below
                        await wait_readable(plain)  # ClosedResourceError if closed meanwhile
                        waited = True
                    raw = got
                    if not waited and not conn.opening:
                        # A read that found its bytes waiting still lets other tasks run; not the response's
                        # first body read, which comes right after the wait for its head (and is on the way to
                        # the client's first event).
                        await trio.lowlevel.cancel_shielded_checkpoint()
                if not raw:
                    conn.eof = True
                elif conn.opening and len(raw) > FIRST_PIECE:
                    conn.pending, conn.later = raw[:FIRST_PIECE], raw[FIRST_PIECE:]
                else:
                    data = decoder.feed(raw)
            conn.opening = False
        except trio.Cancelled:
            # Cancelled only while waiting on the socket, before the decoder saw any new
            # byte, so nothing is lost: the body may still be read, or closed.
            raise
        except Exception as exc:
            # Errors (timeouts included) leave the connection unusable.  Mapped here, not
            # by a ``with READING`` around the read: this runs once per chunk.
            self._fail(conn, exc)
        except BaseException:
            self._conn = None
            self._transport._discard(conn)
            raise
        if decoder.done:
            self._conn = None
            self._transport._checkin(conn)
            if not data:
                raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        """Stop reading.  A body not read to its end makes the connection
        unusable, so its socket is closed (synchronously, no checkpoint)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._discard(conn)


class _Waiter:
    """A request waiting for a connection slot, or for a connection handed over."""

    __slots__ = ("conn", "scope")

    def __init__(self) -> None:
        self.conn: _Connection | None = None
        self.scope = trio.CancelScope()  # cancelled to wake the waiter for a hand-over


class TrioH11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over trio sockets, pooling keep-alive connections.

    Use it as ``httpx.AsyncClient(transport=TrioH11Transport())``.

    Args:
        max_connections: cap on open connections, in use or idle, over all origins (0: no cap).
            At the cap a request waits for a free slot, up to its ``pool`` timeout.
        max_keepalive_per_origin: idle connections kept per (scheme, host, port).
        keepalive_expiry: seconds an idle connection may wait before it is closed.
        ssl_context: for https; default ``ssl.create_default_context()``.  Its ALPN
            protocols are set to ``http/1.1``.
        connect_timeout: used when a request carries no connect timeout.
        read_chunk: bytes asked from the socket per receive.

    Timeouts come from httpx (``request.extensions["timeout"]``): ``pool`` for a
    free slot, ``connect`` for TCP+TLS, ``write`` per send, ``read`` per receive.
    A request that fails on a reused connection before any response byte arrives
    (the server closed it while idle) is sent once more on a fresh connection,
    if its body is in memory.
    """

    def __init__(
        self,
        *,
        max_connections: int = 0,
        max_keepalive_per_origin: int = 256,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float | None = 5.0,
        read_chunk: int = 65536,
    ) -> None:
        self._max_keepalive = max_keepalive_per_origin
        self._keepalive_expiry = keepalive_expiry
        # Loading the system CA store takes ~100 ms: done at the first https connection, not here.
        self._given_ssl_context = ssl_context
        self._tls: ssl.SSLContext | None = None
        self._connect_timeout = connect_timeout
        self._read_chunk = read_chunk
        # One token per open connection; a connection returns it when closed.  No cap: more tokens
        # than any process could hold sockets for.
        cap = max_connections if max_connections > 0 else sys.maxsize
        self._slots = trio.Semaphore(cap, max_value=cap)
        # Idle connections: per-origin LIFO stacks (dict.popitem() takes the newest)
        # plus one oldest-first view over all origins for expiry and eviction.
        self._idle: dict[Origin, dict[_Connection, None]] = {}
        self._idle_lru: OrderedDict[_Connection, None] = OrderedDict()
        # Requests waiting for a slot, per origin, oldest first.
        self._waiters: dict[Origin, OrderedDict[_Waiter, None]] = {}
        self._connections: set[_Connection] = set()  # every open one, for aclose()
        self._closed = False
        self._prepared: dict[tuple[str, httpx.URL, tuple[tuple[str, str], ...]], _Prepared] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the returned response's body streams from the socket."""
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        origin = _origin(request.url, request.extensions.get(CONNECT_TO_EXTENSION, ""))
        return await self._handle(origin, _Outgoing.of(request), timeouts)

    async def send(self, method: str, url: httpx.URL, headers: Mapping[str, str], body: bytes,
                   timeouts: Mapping[str, float | None]) -> httpx.Response:
        """``handle_async_request`` for a request whose body is in memory, without building an
        ``httpx.Request`` (its header normalisation and body stream cost more than the rest of the send):
        the same bytes on the wire (``Host``, the headers given, ``Content-Length``), the head made once for
        each method, URL and headers (``_Prepared``)."""
        key = (method, url, tuple(headers.items()))
        prepared = self._prepared.get(key)
        if prepared is None:
            if not _Prepared.applies(url, headers):
                raw = _prepared_headers(url, method, headers, body)
                outgoing = _Outgoing(method.encode("ascii"), url.raw_path, raw, body)
                return await self._handle(_origin(url), outgoing, timeouts)
            with WRITING:  # a header h11 would refuse fails here as it would once written: LocalProtocolError
                prepared = _Prepared(method, url, headers)
            if len(prepared.head) <= _PREPARED_HEAD_MAX:  # (a path may hold a client's model name: not kept long)
                if len(self._prepared) >= _PREPARED_MAX:
                    self._prepared.clear()
                self._prepared[key] = prepared
        return await self._handle(prepared.origin, prepared.outgoing(body), timeouts)

    async def _handle(self, origin: Origin, request: _Outgoing, timeouts: Mapping[str, Any]) -> httpx.Response:
        connect_timeout: float | None = timeouts.get("connect", self._connect_timeout)
        write_timeout: float | None = timeouts.get("write")
        read_timeout: float | None = timeouts.get("read")
        conn = await self._checkout(origin, timeouts.get("pool"), connect_timeout)
        while True:
            try:
                head = await conn.exchange(request, write_timeout, read_timeout)
                break
            except _STALE_ERRORS:
                if not conn.reused or conn.response_started or request.body is None:
                    self._discard(conn)
                    raise
                # The server closed this keep-alive connection while it sat idle,
                # so it never saw the request: replay it once, on a new connection
                # that takes over the old one's slot (reused=False: no 2nd retry).
                conn = await self._reconnect(conn, connect_timeout)
            except BaseException:
                self._discard(conn)
                raise
        body = _ResponseStream(self, conn, read_timeout)
        return httpx.Response(
            head.status_code,
            headers=head.raw,
            stream=body,
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason,
                        BODY_EXTENSION: body},
        )

    async def aclose(self) -> None:
        """Close every connection, idle or in use (synchronously, no checkpoint)."""
        self._closed = True
        for conn in list(self._connections):
            self._discard(conn)
        self._idle.clear()
        self._idle_lru.clear()

    # -- pool ---------------------------------------------------------------

    async def _checkout(self, origin: Origin, pool_timeout: float | None,
                        connect_timeout: float | None) -> _Connection:
        conn = self._pop_idle(origin)
        if conn is not None:
            return conn
        if self._slots.value == 0 and self._idle_lru:
            # All slots are held, some by idle connections to other origins.
            self._discard(self._take_idle(next(iter(self._idle_lru))))
        with WAITING:
            handed_over = await self._wait_for_slot(origin, pool_timeout)
        if handed_over is not None:
            return handed_over
        return await self._connect(origin, connect_timeout)

    def _pop_idle(self, origin: Origin) -> _Connection | None:
        self._close_expired()
        stack = self._idle.get(origin)
        while stack:
            conn, _ = stack.popitem()  # the most recently used: LIFO keeps few connections warm
            if not stack:
                del self._idle[origin]
            del self._idle_lru[conn]
            if not conn.peer_closed():
                return conn
            self._discard(conn)
        return None

    def _take_idle(self, conn: _Connection) -> _Connection:
        stack = self._idle[conn.origin]
        del stack[conn]
        if not stack:
            del self._idle[conn.origin]
        del self._idle_lru[conn]
        return conn

    def _close_expired(self) -> None:
        lru = self._idle_lru
        if lru:
            cutoff = time.monotonic() - self._keepalive_expiry
            while lru and (oldest := next(iter(lru))).idle_since < cutoff:
                self._discard(self._take_idle(oldest))

    async def _wait_for_slot(self, origin: Origin, pool_timeout: float | None) -> _Connection | None:
        """Take a slot, or a connection that another request hands over,
        whichever comes first.  Returns the latter, or None for a slot."""
        waiter = _Waiter()
        queue = self._waiters.setdefault(origin, OrderedDict())
        queue[waiter] = None
        got_slot = False
        try:
            with trio.CancelScope(deadline=_deadline(pool_timeout)), waiter.scope:
                await self._slots.acquire()
                got_slot = True
        except BaseException:
            if waiter.conn is not None:  # handed over, then we got cancelled: pass it on
                self._release(waiter.conn)
            raise
        finally:
            queue.pop(waiter, None)
            if not queue and self._waiters.get(origin) is queue:
                del self._waiters[origin]
        if waiter.conn is not None:
            if got_slot:  # both arrived in the same tick
                self._slots.release()
            return waiter.conn
        if not got_slot:
            raise trio.TooSlowError("timed out waiting for a free connection slot")
        return None

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        """Open a connection using a slot the caller holds (returned on failure)."""
        try:
            with CONNECTING:
                stream, sock = await self._open_stream(origin, connect_timeout)
        except BaseException:
            self._slots.release()
            raise
        conn = _Connection(origin, stream, sock, self._read_chunk)
        self._connections.add(conn)
        return conn

    async def _reconnect(self, conn: _Connection, connect_timeout: float | None) -> _Connection:
        conn.close()
        self._connections.discard(conn)
        return await self._connect(conn.origin, connect_timeout)  # inherits conn's slot

    async def _open_stream(self, origin: Origin, connect_timeout: float | None
                           ) -> tuple[trio.abc.Stream, trio.socket.SocketType]:
        scheme, host, port, address = origin
        hostname = host.decode("ascii")
        with trio.CancelScope(deadline=_deadline(connect_timeout)):
            tcp = await trio.open_tcp_stream(address or hostname, port)
            if scheme == b"http":
                return tcp, tcp.socket
            tls = trio.SSLStream(tcp, self._ssl_context(), server_hostname=hostname, https_compatible=True)
            try:
                await tls.do_handshake()
            except BaseException:
                tcp.socket.close()
                raise
            return tls, tcp.socket
        raise trio.TooSlowError(f"timed out connecting to {hostname}:{port}")

    def _ssl_context(self) -> ssl.SSLContext:
        if self._tls is None:
            context = self._given_ssl_context or ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._tls = context
        return self._tls

    def _checkin(self, conn: _Connection) -> None:
        """The response was read to its end: keep the connection if it can carry another request."""
        # Bytes past the end of the response would be misread as the next
        # response, so such a connection is closed too.
        if conn.keep_alive and conn.body.done and not conn.body.extra and not conn.eof \
                and not (conn.pending or conn.later):
            conn.reused = True
            self._release(conn)
        else:
            self._discard(conn)

    def _release(self, conn: _Connection) -> None:
        """Hand a reusable connection to a request waiting for its origin, or park it."""
        queue = self._waiters.get(conn.origin)
        if queue:
            waiter, _ = queue.popitem(last=False)
            if not queue:
                del self._waiters[conn.origin]
            waiter.conn = conn
            waiter.scope.cancel()
            return
        stack = self._idle.get(conn.origin, {})
        # When requests to other origins wait for a slot, closing this frees one.
        if self._waiters or self._closed or len(stack) >= self._max_keepalive:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        stack[conn] = None
        self._idle[conn.origin] = stack
        self._idle_lru[conn] = None

    def _discard(self, conn: _Connection) -> None:
        """Close a connection that is not idle, and return its slot (idempotent)."""
        if not conn.closed:
            conn.close()
            self._connections.discard(conn)
            self._slots.release()


def _origin(url: httpx.URL, address: str = "") -> Origin:
    scheme = url.raw_scheme
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None:
        raise httpx.UnsupportedProtocol(f"TrioH11Transport does not support {url.scheme!r} URLs")
    return scheme, url.raw_host, url.port or default_port, address

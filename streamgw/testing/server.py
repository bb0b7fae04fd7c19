"""A minimal, fast HTTP/1.1 server on bare trio + h11 for mock upstreams.

Handlers have the shape ``async def handler(req: MockRequest, send: Responder) -> None``.
A handler answers either in one piece (``await send.full(status, headers, body)``) or as a
chunked stream (``send.start`` / ``send.chunk`` ... / ``send.end``), or cuts the connection
mid-body (``send.abort``).  Each ``send.chunk`` is exactly one socket write.

While a handler runs, the server keeps reading the socket: when the client goes away before
the response is finished, the handler is cancelled (or its next send raises
``ClientDisconnected``) and ``MockServerStats.disconnects`` gets ``(request_id, time)``,
where ``time`` is ``trio.current_time()`` of the trio run serving the mock.

``serve_http`` runs inside a trio program; ``serving_in_thread`` / ``run_in_thread`` run a
server in a daemon thread with its own ``trio.run`` for synchronous tests.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from streamgw.timers import DueHeap

__all__ = [
    "ClientDisconnected",
    "Handler",
    "HeadersArg",
    "MockRequest",
    "MockServerStats",
    "Pacer",
    "Responder",
    "run_in_thread",
    "serve_http",
    "serving_in_thread",
]

logger = logging.getLogger(__name__)

_RECV_SIZE = 65536
_MAX_HEADER_BYTES = 64 * 1024
_FRAMING_HEADERS = (b"content-length", b"transfer-encoding")

#: Response headers: a mapping or a sequence of ``(name, value)`` pairs.
HeadersArg = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass
class MockRequest:
    """One fully received HTTP request."""

    method: str
    #: the request target without its query string (kept percent-encoded)
    path: str
    query: dict[str, str]
    #: header names are lower-case; repeated headers are joined with ``", "``
    headers: dict[str, str]
    body: bytes
    #: ``trio.current_time()`` when the whole request had arrived
    received_at: float = 0.0
    #: ordinal of this request on its server, starting at 1
    request_id: int = 0

    def json(self) -> Any:
        """Decode the body as JSON (raises ``ValueError`` when it is not JSON)."""
        return json.loads(self.body)


@dataclass
class MockServerStats:
    """Counters a server keeps; shared with the tests that drive it."""

    connections_opened: int = 0
    connections_open: int = 0
    #: requests fully received and handed to the handler
    requests_served: int = 0
    #: ``(request_id, trio.current_time())`` for requests whose client left mid-response
    disconnects: list[tuple[int, float]] = field(default_factory=list)


class ClientDisconnected(Exception):
    """Raised by ``Responder`` methods when the client has closed the connection."""


Handler = Callable[[MockRequest, "Responder"], Awaitable[None]]


def _encode_headers(headers: HeadersArg) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in items]
    return [(name, value) for name, value in out if name not in _FRAMING_HEADERS]


class Responder:
    """Sends the response to one request; handed to the handler."""

    def __init__(self, stream: trio.SocketStream, conn: h11.Connection, req: MockRequest,
                 stats: MockServerStats) -> None:
        self._stream = stream
        self._conn = conn
        self._stats = stats
        self._head_only = req.method == "HEAD"
        self.request_id = req.request_id
        self.started = False
        self.finished = False
        self.aborted = False
        self._ending = False  # the final write is in progress
        self.disconnected = False
        self._chunked = True

    async def full(self, status: int, headers: HeadersArg = (), body: bytes = b"") -> None:
        """Send a complete response with a ``content-length`` body, in one write."""
        self._require_not_started()
        hdrs = [*_encode_headers(headers), (b"content-length", b"%d" % len(body))]
        self.started = True
        parts = [self._h11(h11.Response(status_code=status, headers=hdrs))]
        if body and not self._head_only:
            parts.append(self._h11(h11.Data(data=body)))
        parts.append(self._h11(h11.EndOfMessage()))
        await self._write(b"".join(parts))
        self.finished = True

    async def start(self, status: int, headers: HeadersArg = ()) -> None:
        """Send the status line and headers of a chunked streaming response.

        Any ``content-length`` / ``transfer-encoding`` given is replaced by chunked framing
        (raw close-delimited body for HTTP/1.0 clients).
        """
        self._require_not_started()
        head = self._h11(h11.Response(status_code=status, headers=_encode_headers(headers)))
        self._chunked = self._conn.their_http_version != b"1.0"
        self.started = True
        await self._write(head)

    async def chunk(self, data: bytes) -> None:
        """Send one body chunk as exactly one socket write (empty data is ignored)."""
        self._require_streaming()
        if not data or self._head_only:
            return
        await self._write(self._frame(data))

    def chunk_nowait(self, data: bytes) -> bytes:
        """``chunk`` without waiting: write what the socket takes now and return the rest of the frame
        (empty when all of it went).  Raises ``ClientDisconnected`` when the connection is gone."""
        self._require_streaming()
        if not data or self._head_only:
            return b""
        if self.disconnected:
            raise ClientDisconnected("client went away")
        frame = self._frame(data)
        stream = self._stream
        if type(stream) is not trio.SocketStream:
            return frame
        try:
            sent = stream.socket._sock.send(frame)  # type: ignore[attr-defined]  # the stdlib socket
        except BlockingIOError:
            return frame
        except OSError as exc:
            self.mark_disconnected()
            raise ClientDisconnected("client went away") from exc
        return frame[sent:]

    async def write_rest(self, rest: bytes) -> None:
        """Write what ``chunk_nowait`` left over (waiting for room)."""
        await self._write(rest)

    def _frame(self, data: bytes) -> bytes:
        return b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data

    async def end(self, last: bytes = b"") -> None:
        """Finish a streamed body with the terminating zero-length chunk.

        A non-empty ``last`` is sent as a final chunk in the same socket write as the
        terminator, so a client that stops reading at its end-of-stream marker still
        receives a complete HTTP message.
        """
        self._require_streaming()
        frame = b"" if not last or self._head_only else self._frame(last)
        tail = frame + self._h11(h11.EndOfMessage())
        if tail:
            # A client that reads the terminator may close before this task is scheduled again:
            # an EOF seen meanwhile is a disconnect only if the write itself fails.
            self._ending = True
            try:
                await self._write(tail)
            except BaseException:
                self._ending = False
                self.mark_disconnected()
                raise
        self.finished = True

    async def abort(self, *, reset: bool = False) -> None:
        """Close the connection at once, without finishing the body.

        With ``reset=True`` the socket is closed with ``SO_LINGER`` 0 so the client sees a
        TCP RST instead of a FIN.
        """
        if self.aborted:
            return
        self.aborted = True
        if reset:
            self._stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self._stream.aclose()

    def mark_disconnected(self) -> None:
        """Record that the client went away (once, and only while the response is unfinished)."""
        if self.disconnected or self.finished or self.aborted or self._ending:
            return
        self.disconnected = True
        self._stats.disconnects.append((self.request_id, trio.current_time()))

    def _h11(self, event: h11.Response | h11.Data | h11.EndOfMessage) -> bytes:
        return self._conn.send(event) or b""

    def _require_not_started(self) -> None:
        if self.aborted:
            raise RuntimeError("response was aborted")
        if self.started:
            raise RuntimeError("response already started")

    def _require_streaming(self) -> None:
        if self.aborted:
            raise RuntimeError("response was aborted")
        if not self.started or self.finished:
            raise RuntimeError("no streamed response in progress")

    async def _write(self, data: bytes) -> None:
        if self.disconnected:
            raise ClientDisconnected("client went away")
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.mark_disconnected()
            raise ClientDisconnected("client went away") from exc


class _Paced:
    """One stream's timed chunks with the ``Pacer``."""

    __slots__ = ("done", "error", "events", "gone", "next", "rest", "send", "t0")

    def __init__(self, send: Responder, t0: float, events: Sequence[tuple[float, bytes]]) -> None:
        self.send = send
        self.t0 = t0
        self.events = events
        self.next = 0  # the index of the next chunk to write
        self.done = trio.Event()  # set when the stream's task has something to do: all written, a rest, an error
        self.rest = b""
        self.error: Exception | None = None
        self.gone = False  # the stream's task stopped waiting (cancelled)


class Pacer:
    """Writes the timed chunks of many streams from one task.

    A stream that sleeps until each chunk is due and then writes it costs a wake-up of its task (and
    trio's socket layers) per chunk; with thousands of slow streams open that is most of a core, which
    a load test's upstream cannot spend.  ``play`` hands a stream's chunks here: one task keeps them in
    a heap by due time (``DueHeap``) and writes every chunk that is due with one non-blocking ``send``.
    The stream's task wakes only when all its chunks went, when the socket took only part of one (it
    writes the rest itself, then hands the stream back), or when the client left.
    """

    def __init__(self) -> None:
        self.heap: DueHeap[_Paced] = DueHeap(_write_due, "mock pacer")

    async def play(self, send: Responder, t0: float, events: Sequence[tuple[float, bytes]]) -> None:
        """Write ``events`` (``(seconds after t0, chunk)``) on ``send`` on time; return when all went.

        Raises ``ClientDisconnected`` as ``send.chunk`` would.
        """
        paced = _Paced(send, t0, events)
        try:
            while paced.next < len(events):
                self.heap.add(t0 + events[paced.next][0], paced)
                await paced.done.wait()
                paced.done = trio.Event()
                if paced.error is not None:
                    raise paced.error
                if paced.rest:
                    rest, paced.rest = paced.rest, b""
                    await send.write_rest(rest)
        finally:
            paced.gone = True


def _write_due(paced: _Paced, now: float) -> float | None:
    """Write ``paced``'s chunks that are due; when its next one is (None: its task has something to do)."""
    if paced.gone:
        return None
    events = paced.events
    while paced.next < len(events) and paced.t0 + events[paced.next][0] <= now:
        data = events[paced.next][1]
        paced.next += 1
        try:
            rest = paced.send.chunk_nowait(data)
        except Exception as exc:  # ClientDisconnected, or a misuse: the stream's task raises it
            paced.error = exc
            paced.done.set()
            return None
        if rest:
            paced.rest = rest
            paced.done.set()
            return None
    if paced.next < len(events):
        return paced.t0 + events[paced.next][0]
    paced.done.set()
    return None


def _error_body(message: str) -> bytes:
    error = {"message": message, "type": "server_error", "param": None, "code": None}
    return json.dumps({"error": error}, separators=(",", ":")).encode()


def _header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name_b, value_b in raw:
        name, value = name_b.decode("latin-1"), value_b.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class _Connection:
    """Serves the requests of one client connection, one at a time."""

    def __init__(self, stream: trio.SocketStream, handler: Handler, stats: MockServerStats) -> None:
        self._stream = stream
        self._handler = handler
        self._stats = stats
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADER_BYTES)

    async def run(self) -> None:
        self._stats.connections_opened += 1
        self._stats.connections_open += 1
        try:
            await self._serve_requests()
        except h11.RemoteProtocolError:
            await self._reject_bad_request()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.exception("mock server: connection failed")
        finally:
            self._stats.connections_open -= 1
            await trio.aclose_forcefully(self._stream)

    async def _serve_requests(self) -> None:
        while True:
            req = await self._read_request()
            if req is None or not await self._dispatch(req):
                return

    async def _read_request(self) -> MockRequest | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(_RECV_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return self._make_request(head, bytes(body))
            else:
                return None

    def _make_request(self, head: h11.Request, body: bytes) -> MockRequest:
        self._stats.requests_served += 1
        target = urlsplit(head.target.decode("latin-1"))
        return MockRequest(
            method=head.method.decode("ascii"),
            path=target.path,
            query=dict(parse_qsl(target.query, keep_blank_values=True)),
            headers=_header_dict(list(head.headers)),
            body=body,
            received_at=trio.current_time(),
            request_id=self._stats.requests_served,
        )

    async def _dispatch(self, req: MockRequest) -> bool:
        """Run the handler for ``req``; return whether the connection can serve another one."""
        send = Responder(self._stream, self._conn, req, self._stats)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_client, send, nursery.cancel_scope)
            await self._run_handler(req, send)
            nursery.cancel_scope.cancel()
        if send.aborted or send.disconnected:
            return False
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
            return True
        return False

    async def _watch_client(self, send: Responder, scope: trio.CancelScope) -> None:
        """Notice the client closing the connection while the handler runs."""
        while True:
            try:
                data = await self._stream.receive_some(_RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if send.aborted:
                return
            if not data:
                send.mark_disconnected()
                scope.cancel()
                return
            self._conn.receive_data(data)  # a pipelined request: parsed after this one

    async def _run_handler(self, req: MockRequest, send: Responder) -> None:
        try:
            await self._handler(req, send)
        except ClientDisconnected:
            return
        except Exception as exc:
            logger.warning("mock server: handler failed on %s %s", req.method, req.path, exc_info=True)
            message = f"mock handler error: {type(exc).__name__}: {exc}"
            await self._guarded(self._after_failure(send, message), send)
            return
        await self._guarded(self._after_return(send), send)

    @staticmethod
    async def _after_failure(send: Responder, message: str) -> None:
        """A handler raised: answer 500 if nothing was sent yet, else cut the connection."""
        if not send.started:
            await send.full(500, {"content-type": "application/json"}, _error_body(message))
        elif not send.finished:
            await send.abort()

    @staticmethod
    async def _after_return(send: Responder) -> None:
        """A handler returned: finish a stream it left open; 500 if it sent nothing."""
        if not send.started:
            await _Connection._after_failure(send, "mock handler returned without responding")
        elif not send.finished and not send.aborted:
            await send.end()

    @staticmethod
    async def _guarded(action: Awaitable[None], send: Responder) -> None:
        try:
            await action
        except (ClientDisconnected, h11.LocalProtocolError):
            await send.abort()

    async def _reject_bad_request(self) -> None:
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = b"bad request\n"
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        try:
            events = (h11.Response(status_code=400, headers=headers), h11.Data(data=body), h11.EndOfMessage())
            await self._stream.send_all(b"".join(self._conn.send(ev) or b"" for ev in events))
        except (h11.LocalProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve_http(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stats: MockServerStats | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``handler`` over HTTP/1.1 with keep-alive until cancelled.

    Reports the bound port through ``task_status.started(port)`` (use a literal IP as
    ``host``).  Pass ``stats`` to observe the server's counters.
    """
    counters = stats if stats is not None else MockServerStats()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    task_status.started(bound)

    async def connection(stream: trio.SocketStream) -> None:
        await _Connection(stream, handler, counters).run()

    await trio.serve_listeners(connection, listeners)


class _ThreadedServer:
    """``serve_http`` in a daemon thread running its own ``trio.run``."""

    def __init__(self, factory: Callable[[], Handler], host: str, port: int,
                 stats: MockServerStats | None) -> None:
        self._serve = partial(serve_http, host=host, port=port, stats=stats)
        self._factory = factory
        self._ready: queue.Queue[int | BaseException] = queue.Queue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._thread = threading.Thread(target=self._run, name="mock-http-server", daemon=True)

    def start(self) -> int:
        self._thread.start()
        result = self._ready.get(timeout=30)
        if isinstance(result, BaseException):
            self._thread.join(timeout=5)
            raise result
        return result

    def stop(self) -> None:
        token, scope = self._token, self._scope
        if token is not None and scope is not None:
            try:
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
            except trio.RunFinishedError:
                pass
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to start(), or logged once serving
            if self._scope is None:
                self._ready.put(exc)
            else:
                logger.exception("mock server thread failed")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(partial(self._serve, self._factory()))
            self._scope = nursery.cancel_scope
            self._ready.put(port)


def run_in_thread(
    handler_factory: Callable[[], Handler],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stats: MockServerStats | None = None,
) -> tuple[int, Callable[[], None]]:
    """Start a server in a daemon thread; return ``(port, stop)``.

    ``handler_factory`` is called inside the server's trio run.  ``stop()`` cancels the
    server, closes its sockets and joins the thread; calling it twice is harmless.
    """
    server = _ThreadedServer(handler_factory, host, port, stats)
    return server.start(), server.stop


@contextmanager
def serving_in_thread(
    handler_factory: Callable[[], Handler],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    stats: MockServerStats | None = None,
) -> Iterator[int]:
    """Context manager form of ``run_in_thread``: yields the bound port, stops on exit."""
    bound, stop = run_in_thread(handler_factory, host=host, port=port, stats=stats)
    try:
        yield bound
    finally:
        stop()

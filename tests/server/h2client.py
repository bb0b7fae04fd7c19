"""A small HTTP/2 client on trio and the ``h2`` state machine, for tests that must steer the wire.

httpx cannot hold back one stream's flow-control window while reading the others, send GOAWAY with
streams in flight, or reset a stream at a chosen moment; this client can.  One ``H2Client`` is one
connection (h2c prior knowledge, or TLS with ALPN ``h2``); a reader task in the caller's nursery
dispatches frames to per-stream ``Reply`` objects.  Writes go through one lock, as they must.
"""

from __future__ import annotations

import array
import fcntl
import json
import ssl
import termios
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from streamgw.testing.invariants import check_events

_RECV = 65536


@dataclass
class Reply:
    """What one stream received."""

    stream_id: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    reset_code: int | None = None
    ended: trio.Event = field(default_factory=trio.Event)
    #: DATA bytes not yet handed back as flow-control window (the stream is paused)
    unacked: int = 0

    def events(self) -> list[dict[str, Any]]:
        """The JSON payloads of the SSE body (``[DONE]`` skipped)."""
        found = []
        for block in bytes(self.body).split(b"\n\n"):
            data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
            if data and data != [b"[DONE]"]:
                found.append(json.loads(b"\n".join(data)))
        return found

    def check(self) -> dict[str, Any]:
        """Assert a complete, valid Responses stream; return its final response."""
        assert self.ended.is_set() and self.reset_code is None, f"stream {self.stream_id} did not end cleanly"
        assert self.status == 200, (self.status, bytes(self.body[:300]))
        assert self.headers.get("content-type", "").startswith("text/event-stream"), self.headers
        return check_events(self.events())


class H2Client:
    """One HTTP/2 connection; ``open`` it inside a nursery that outlives it."""

    def __init__(self, stream: trio.abc.Stream, authority: str, scheme: str, initial_window: int) -> None:
        self.stream = stream
        self.authority = authority
        self.scheme = scheme
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window})
        self.replies: dict[int, Reply] = {}
        self.paused: set[int] = set()
        self.closed = trio.Event()
        #: set when the server sent GOAWAY (``last_stream_id`` holds its last stream)
        self.goaway = trio.Event()
        self.last_stream_id: int | None = None
        self.error: BaseException | None = None
        self._write_lock = trio.Lock()
        self._may_read = trio.Event()
        self._may_read.set()
        self._progress = trio.Event()

    @classmethod
    async def open(cls, nursery: trio.Nursery, port: int, *, tls: ssl.SSLContext | None = None,
                   initial_window: int = 2**20, connection_window: int = 2**30) -> H2Client:
        """Connect to 127.0.0.1:``port`` (TLS when ``tls`` is given), send the preface, start reading."""
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        if tls is not None:
            tls_stream = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
            await tls_stream.do_handshake()
            assert tls_stream.selected_alpn_protocol() == "h2"
            stream = tls_stream
        client = cls(stream, f"127.0.0.1:{port}", "https" if tls else "http", initial_window)
        client.conn.initiate_connection()
        if connection_window > 65535:
            client.conn.increment_flow_control_window(connection_window - 65535)
        await client.flush()
        nursery.start_soon(client._read)
        return client

    async def flush(self) -> None:
        """Write whatever the state machine has queued."""
        async with self._write_lock:
            data = self.conn.data_to_send()
            if data:
                await self.stream.send_all(data)

    async def post(self, path: str, body: dict[str, Any], *, paused: bool = False) -> Reply:
        """Send ``POST path`` with a JSON body on a new stream; return its (still filling) ``Reply``."""
        payload = json.dumps(body).encode()
        sid = self.conn.get_next_available_stream_id()
        reply = self.replies[sid] = Reply(sid)
        if paused:
            self.paused.add(sid)
        headers = [(":method", "POST"), (":scheme", self.scheme), (":authority", self.authority), (":path", path),
                   ("content-type", "application/json"), ("content-length", str(len(payload)))]
        self.conn.send_headers(sid, headers)
        self.conn.send_data(sid, payload, end_stream=True)
        await self.flush()
        return reply

    async def resume(self, reply: Reply) -> None:
        """Hand back the window a paused stream has used, and keep acknowledging its data from now on."""
        self.paused.discard(reply.stream_id)
        if reply.unacked and not reply.ended.is_set():
            self.conn.acknowledge_received_data(reply.unacked, reply.stream_id)
        reply.unacked = 0
        await self.flush()

    async def reset(self, reply: Reply) -> None:
        """RST_STREAM(CANCEL) on a stream."""
        self.conn.reset_stream(reply.stream_id, h2.errors.ErrorCodes.CANCEL)
        reply.reset_code = h2.errors.ErrorCodes.CANCEL
        reply.ended.set()
        await self.flush()

    def hold_reading(self) -> None:
        """Stop reading from the socket (after the read in progress), so the server's writes back up."""
        self._may_read = trio.Event()

    def release_reading(self) -> None:
        """Read again."""
        self._may_read.set()

    async def wait_until_backed_up(self) -> None:
        """Wait (reading held) until the socket's receive queue is full and stays so: the peer is blocked."""
        last, steady = -1, 0
        while steady < 3:
            await trio.sleep(0.05)
            queued = self.unread()
            steady = steady + 1 if queued == last and queued > 32768 else 0
            last = queued

    async def wait_received(self, nbytes: int, reply: Reply | None = None) -> None:
        """Wait until ``nbytes`` of DATA arrived (on ``reply``'s stream, or all), or the connection closed."""
        while (len(reply.body) if reply else self.received()) < nbytes and not self.closed.is_set():
            self._progress = trio.Event()
            await self._progress.wait()

    def unread(self) -> int:
        """Bytes waiting in the socket's receive queue."""
        count = array.array("i", [0])
        fcntl.ioctl(self.stream_socket().fileno(), termios.FIONREAD, count)
        return count[0]

    def stream_socket(self) -> trio.socket.SocketType:
        """The TCP socket under the (TLS) stream."""
        stream = self.stream.transport_stream if isinstance(self.stream, trio.SSLStream) else self.stream
        assert isinstance(stream, trio.SocketStream)
        return stream.socket

    def received(self) -> int:
        """DATA bytes received on every stream so far."""
        return sum(len(r.body) for r in self.replies.values())

    async def aclose(self) -> None:
        """Close the socket (no GOAWAY)."""
        with trio.CancelScope(shield=True):
            await self.stream.aclose()

    async def _read(self) -> None:
        try:
            while True:
                await self._may_read.wait()
                data = await self.stream.receive_some(_RECV)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._dispatch(event)
                self._progress.set()
                await self.flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h2.exceptions.ProtocolError) as exc:
            self.error = exc if isinstance(exc, h2.exceptions.ProtocolError) else None
        finally:
            self.closed.set()
            self._progress.set()
            for reply in self.replies.values():
                reply.ended.set()

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.last_stream_id = event.last_stream_id
            self.goaway.set()
        reply = self.replies.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.DataReceived):
            self._on_data(event, reply)
        if reply is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            reply.headers = {str(k): str(v) for k, v in event.headers or []}
            reply.status = int(reply.headers.get(":status", "0"))
        elif isinstance(event, h2.events.StreamEnded):
            reply.ended.set()
        elif isinstance(event, h2.events.StreamReset):
            reply.reset_code = event.error_code
            reply.ended.set()

    def _on_data(self, event: h2.events.DataReceived, reply: Reply | None) -> None:
        length = event.flow_controlled_length or 0
        if reply is not None:
            reply.body += event.data or b""
            if reply.stream_id in self.paused:
                reply.unacked += length
                return
        try:
            self.conn.acknowledge_received_data(length, event.stream_id or 0)
        except h2.exceptions.StreamClosedError:
            pass  # the stream ended in the same read


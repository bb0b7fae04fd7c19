"""A bare trio + h11 pass-through proxy: the floor the gateway is measured against.

    python -m bench.bareproxy --upstream http://127.0.0.1:8001 [--port 0] [--path /v1/chat/completions]

It prints ``LISTENING <port>`` and serves until SIGINT/SIGTERM.  Every request, whatever its path,
is forwarded to ``--path`` on the upstream with its body unchanged; the upstream's status,
``content-type`` and body chunks go back as they arrive (chunked), so a streamed Chat Completions
answer reaches the client chunk for chunk.  Nothing is parsed, translated, stored, logged or
counted: no framework, no ASGI, one task per client connection and upstream connections kept
alive in a pool.  When the client goes away mid-stream the upstream connection is closed as soon
as the next chunk cannot be written (the gateway notices at once: it also watches the client).

It is a reference, not a product: it trusts its clients and its upstream.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from functools import partial
from urllib.parse import urlsplit

import h11
import trio

__all__ = ["BareProxy", "main"]

_READ = 65536
_MAX_BODY = 16 * 1024 * 1024


class _Upstream:
    """One keep-alive HTTP/1.1 connection to the upstream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.stream.receive_some(_READ))

    def reusable(self) -> bool:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            try:
                self.conn.start_next_cycle()
            except h11.LocalProtocolError:
                return False
            return True
        return False


class BareProxy:
    """The proxy: ``serve`` runs it on a listener until cancelled."""

    def __init__(self, upstream: str, path: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--upstream must be an http:// URL, got {upstream!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authority = f"{self.host}:{self.port}".encode()
        self.path = path.encode()
        self._idle: list[_Upstream] = []

    async def _connect(self) -> _Upstream:
        if self._idle:
            return self._idle.pop()
        return _Upstream(await trio.open_tcp_stream(self.host, self.port))

    async def serve(self, port: int, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections on 127.0.0.1:``port`` (0: any free port); report the bound port."""
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
        task_status.started(listeners[0].socket.getsockname()[1])
        try:
            await trio.serve_listeners(self._client, listeners)
        finally:
            idle, self._idle = self._idle, []
            for upstream in idle:
                upstream.stream.socket.close()

    async def _client(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        try:
            while True:
                request, body = await self._read_request(conn, stream)
                if request is None:
                    return
                await self._forward(conn, stream, body)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(_READ)
                if not data:
                    return None, b""
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    return None, b""
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            else:  # ConnectionClosed, PAUSED
                return None, b""

    async def _forward(self, conn: h11.Connection, stream: trio.SocketStream, body: bytes) -> None:
        upstream = await self._connect()
        clean = False
        try:
            up = upstream.conn
            head = up.send(h11.Request(method="POST", target=self.path, headers=[
                (b"host", self.authority), (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()), (b"authorization", b"Bearer bare-proxy"),
            ]))
            await upstream.stream.send_all(head + (up.send(h11.Data(data=body)) or b"") + (
                up.send(h11.EndOfMessage()) or b""))
            response = await upstream.next_event()
            while isinstance(response, h11.InformationalResponse):
                response = await upstream.next_event()
            if not isinstance(response, h11.Response):
                raise h11.RemoteProtocolError("upstream closed before answering")
            kept = [(k, v) for k, v in response.headers if k == b"content-type"]
            await stream.send_all(conn.send(h11.Response(
                status_code=response.status_code, headers=[*kept, (b"transfer-encoding", b"chunked")])) or b"")
            while True:
                event = await upstream.next_event()
                if isinstance(event, h11.Data):
                    await stream.send_all(conn.send(h11.Data(data=event.data)) or b"")
                elif isinstance(event, h11.EndOfMessage):
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    clean = True
                    return
                else:
                    raise h11.RemoteProtocolError("upstream closed mid-body")
        finally:
            if clean and upstream.reusable():
                self._idle.append(upstream)
            else:
                with trio.CancelScope(shield=True):
                    await upstream.stream.aclose()


async def _run(args: argparse.Namespace) -> None:
    proxy = BareProxy(args.upstream, args.path)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(partial(proxy.serve, args.port))
            print(f"LISTENING {port}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.bareproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the upstream's base, e.g. http://127.0.0.1:8001")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/v1/chat/completions", help="the upstream path every request goes to")
    args = parser.parse_args(argv)
    from bench.loadgen import raise_fd_limit

    raise_fd_limit()  # thousands of open streams: two sockets each
    try:
        trio.run(_run, args)
    except ValueError as error:
        print(f"bareproxy: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Loopback upstreams that fail at the transport level, one way each, for the error-boundary tests.

Each ``FaultServer`` listens on 127.0.0.1 in a daemon thread and misbehaves the same way
for every connection.  ``unresponsive_port`` gives a port whose connects hang (its accept
queue is full), so a connect timeout can be tested without leaving loopback.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Final

__all__ = ["Fault", "FaultServer", "unresponsive_port"]

_HEAD_END: Final = b"\r\n\r\n"
_SSE_HEAD: Final = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n")


class Fault(Enum):
    """How a ``FaultServer`` answers a request."""

    #: close the connection after reading the request, without a response byte
    EOF_BEFORE_HEAD = "eof_before_head"
    #: answer with a head that is not HTTP
    MALFORMED_HEAD = "malformed_head"
    #: send a 200 head and the start of a chunk, then reset the connection (RST)
    RESET_MID_BODY = "reset_mid_body"
    #: answer a TLS ClientHello with plain text (the client's handshake fails)
    NOT_TLS = "not_tls"


def _reset(conn: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _read_request(conn: socket.socket) -> None:
    """Read one request head and its Content-Length body (enough for what a gateway sends)."""
    data = b""
    while _HEAD_END not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(_HEAD_END)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


class FaultServer:
    """A loopback server that fails every request with ``fault``."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"fault-{fault.value}")

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()  # accept() fails and the thread ends

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            try:
                self._answer(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        if self.fault is Fault.NOT_TLS:
            conn.recv(65536)  # the ClientHello
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        _read_request(conn)
        if self.fault is Fault.MALFORMED_HEAD:
            conn.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        elif self.fault is Fault.RESET_MID_BODY:
            conn.sendall(_SSE_HEAD + b"400\r\ndata: {\"id\"")  # a chunk of 1024 bytes, cut short
            _reset(conn)


@contextmanager
def unresponsive_port() -> Iterator[int]:
    """A loopback port whose new connections hang in the handshake until the block ends.

    The listener never accepts and its accept queue is full (backlog 0, taken by one
    connection made here), so the kernel drops further SYNs: a client's connect only
    ends by its own timeout.
    """
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port: int = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(2):  # the queue holds backlog + 1; one more is dropped or pending
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()

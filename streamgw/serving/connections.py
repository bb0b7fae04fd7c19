"""How many client connections one worker holds, and an accept loop that survives running out of them.

Every client connection costs the worker a file descriptor, and a proxied stream a second one for the
upstream.  When the open-file limit is reached ``accept()`` fails with ``EMFILE``; trio's own
``serve_listeners`` then logs a traceback per attempt and retries every 0.1 s, while every other
request of the worker (including its upstream connects) fails for the same reason.  So:

* ``ConnectionSlots`` caps the open connections of a worker (``[server] max_connections``, by default
  derived from the open-file limit).  At the cap the longest-idle connection — a keep-alive connection
  between requests, or one that has not sent a complete request yet — is closed to make room; when
  every connection has a request in progress, accepting pauses until one closes and the kernel's
  listen backlog holds the newcomers;
* ``accept_connections`` is the accept loop: it takes a slot before each ``accept()`` (at the cap, once a
  client waits in the backlog: a slot is not made for a client that may never come), backs off
  briefly when ``accept()`` fails for lack of resources (``EMFILE``, ``ENFILE``, ``ENOBUFS``,
  ``ENOMEM``), and reports such failures through ``EveryInterval`` — one line per interval with a
  count instead of one traceback per attempt;
* ``Listener`` drops a connection whose client closed before it was accepted, and ``first_bytes``
  one that closes before sending a byte, without building a hypercorn connection for either: 3,000
  connect-and-close probes cost the worker 0.1 s of CPU instead of 1.5 s.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

__all__ = [
    "CAPACITY_ERRNOS",
    "ConnectionSlots",
    "EveryInterval",
    "Listener",
    "accept_connections",
    "automatic_max_connections",
    "first_bytes",
]

log = logging.getLogger("streamgw")

#: ``accept()`` failures that mean "out of resources for now", not "this listener is broken"
CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: seconds between two log lines about the same kind of trouble
REPORT_INTERVAL = 10.0
#: the accept loop's pauses after a failed ``accept()``: from the first to the longest
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 0.5


def automatic_max_connections(open_files: int | None = None) -> int:
    """The connection cap for ``max_connections = 0``: what the open-file soft limit leaves room for.

    A reserve is kept for everything else a worker opens (listeners, store, log files, DNS); the rest
    is halved because a proxied stream holds two descriptors, the client's and the upstream's.
    """
    if open_files is None:
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files == resource.RLIM_INFINITY:
            open_files = 1 << 20
    reserve = min(1024, max(32, open_files // 10))
    return max(1, (open_files - reserve) // 2)


class EveryInterval:
    """A warning that repeats at most once per ``interval`` seconds, with how often it happened meanwhile."""

    def __init__(self, interval: float = REPORT_INTERVAL, level: int = logging.WARNING) -> None:
        self.interval = interval
        self.level = level
        self.count = 0  # occurrences not reported yet
        self._last: float | None = None

    def happened(self, message: str, *args: Any) -> None:
        """One occurrence: logged now if the last report is ``interval`` old, else counted for the next one."""
        self.count += 1
        now = trio.current_time()
        if self._last is not None and now - self._last < self.interval:
            return
        if self._last is None or self.count == 1:
            log.log(self.level, message, *args)
        else:
            log.log(self.level, message + " (%d times in the last %.0f s)", *args, self.count, now - self._last)
        self._last = now
        self.count = 0

    def ended(self, message: str) -> None:
        """The trouble is over: report the occurrences since the last line, if any."""
        if self._last is not None and self.count:
            log.log(self.level, "%s (%d more times since the last report)", message, self.count)
        self._last = None
        self.count = 0


class IdleTimer(Protocol):
    """An idle connection's keep-alive timer: ``cancel`` makes it run out now (the connection closes)."""

    def cancel(self) -> None: ...


class ConnectionSlots:
    """The open client connections of one worker, against ``limit``, and which of them are idle.

    The accept loop ``take``s a slot before it accepts and ``release``s it when the connection's
    handler is done; connections are known by their trio stream.  A connection is idle while
    hypercorn's keep-alive timer runs for it (``SerialisedTCPServer`` calls ``idle``/``busy``): closing
    it early is what that timer would do anyway, ``keep_alive_timeout`` later.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.open = 0
        self.evictions = 0  # idle connections closed to make room (for tests and logs)
        self._idle: dict[object, IdleTimer] = {}  # in the order they became idle
        self._closing: set[object] = set()  # closed to make room, not gone yet
        self._changed: trio.Event | None = None
        self._full = EveryInterval()
        self._evicting = EveryInterval(level=logging.INFO)

    def idle(self, connection: object, keep_alive: IdleTimer) -> None:
        """``connection`` waits for its next request; cancelling ``keep_alive`` closes it."""
        self._idle[connection] = keep_alive
        self._wake()

    def busy(self, connection: object) -> None:
        """``connection`` is serving a request (or closing): it may not be closed to make room."""
        self._idle.pop(connection, None)

    def release(self, connection: object | None) -> None:
        """The connection is closed (``None``: no connection came of the slot): its slot is free."""
        self.open -= 1
        self._idle.pop(connection, None)
        self._closing.discard(connection)
        self._wake()

    def close_idle(self) -> None:
        """Close every idle connection (the server is shutting down)."""
        while self._idle:
            self._evict_oldest(report=False)

    async def take(self) -> None:
        """Wait for a free slot and take it, closing the longest-idle connection if that makes one."""
        while self.open >= self.limit:
            if self.open - len(self._closing) >= self.limit and self._idle:
                self._evict_oldest()
                continue
            if not self._closing:
                self._full.happened("max_connections (%d) reached with every connection busy: "
                                    "new connections wait in the listen backlog", self.limit)
            self._changed = trio.Event()
            await self._changed.wait()
        self.open += 1

    def _evict_oldest(self, report: bool = True) -> None:
        connection = next(iter(self._idle))
        keep_alive = self._idle.pop(connection)
        self._closing.add(connection)
        if report:
            self.evictions += 1
            self._evicting.happened("max_connections (%d) reached: closing the longest-idle connection",
                                    self.limit)
        keep_alive.cancel()  # the keep-alive timer "expires" now: hypercorn closes the connection

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()


async def first_bytes(stream: trio.abc.Stream, slots: ConnectionSlots, within: float) -> bool:
    """Wait until the client sends its first bytes; False if it closed, stayed silent ``within`` seconds,
    or was closed to make room meanwhile.

    Before this, each connection that closed without sending a byte cost a whole hypercorn connection
    (three tasks, its protocol objects, a half-close) to find out; a flood of such probes kept the
    event loop busy for seconds.  Meanwhile the connection is idle: ``slots`` may close it early.
    """
    sock = _socket_of(stream)
    if sock is None:
        return True
    with trio.move_on_after(within) as waiting:
        slots.idle(stream, waiting)
        try:
            await trio.lowlevel.wait_readable(sock)
        finally:
            slots.busy(stream)
    if waiting.cancelled_caught:
        return False
    try:
        return bool(await sock.recv(1, socket.MSG_PEEK))  # b"": the client closed without a word
    except OSError:  # reset by the client
        return False


def _socket_of(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket if isinstance(stream, trio.SocketStream) else None


#: a connection's preamble; it returns what serves the connection from then on (``None``: nothing more to do)
Handler = Callable[[trio.abc.Stream], Awaitable[Awaitable[None] | None]]

#: ``accept()`` failures about one connection that went away meanwhile (trio's list): try the next one
_GONE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
    "EOPNOTSUPP", "ENETUNREACH", "EAGAIN", "EWOULDBLOCK", "EINTR") if hasattr(errno, name))


class Listener:
    """A listening socket that hands out trio streams, and drops the connections that closed already.

    ``trio.SocketListener`` would do, but a connection whose client has closed before it is accepted
    (a health check, a port scan, a flood of connect-and-close) is worth no task, no trio socket and
    no hypercorn connection: right after ``accept()`` a non-blocking peek sees the end of the stream
    and the socket is closed on the spot.
    """

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.ssl_context = ssl_context
        self.dropped = 0  # connections closed by their client before they were accepted

    async def accept(self) -> trio.abc.Stream:
        """The next connection with something to say (or nothing yet), as a trio stream."""
        while True:
            await trio.lowlevel.checkpoint()  # one connection per turn: the others get to run
            try:
                conn, _ = self.socket.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.socket)
                continue
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    continue
                raise
            if self._closed_already(conn):
                self.dropped += 1
                conn.close()
                continue
            stream: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            if self.ssl_context is not None:
                stream = trio.SSLStream(stream, self.ssl_context, server_side=True, https_compatible=True)
            return stream

    async def arrival(self) -> None:
        """Return once a connection waits to be accepted (or may: other workers accept from the same socket)."""
        await trio.lowlevel.wait_readable(self.socket)

    @staticmethod
    def _closed_already(conn: socket.socket) -> bool:
        conn.setblocking(False)
        try:
            return conn.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False  # open, nothing sent yet
        except OSError:
            return True  # reset already

    def close(self) -> None:
        """Stop listening (a task waiting in ``accept`` gets ``trio.ClosedResourceError``)."""
        trio.lowlevel.notify_closing(self.socket)
        self.socket.close()


async def accept_connections(listener: Listener, handler: Handler, nursery: trio.Nursery,
                             slots: ConnectionSlots) -> None:
    """Accept connections from ``listener`` until cancelled, each served by ``handler`` in ``nursery``.

    Like ``trio.serve_listeners``, the stream is closed when its handler returns, and the listener
    when this returns.
    """
    try:
        await _accept_forever(listener, handler, nursery, slots)
    finally:
        listener.close()  # new connections are refused


async def _accept_forever(listener: Listener, handler: Handler, nursery: trio.Nursery,
                          slots: ConnectionSlots) -> None:
    failures = EveryInterval()
    backoff = BACKOFF_FIRST
    while True:
        if slots.open >= slots.limit:
            # Full: an idle connection is closed for a client that is there, not for one that may come (the
            # newest connection, before its first bytes, counts as idle: it was closed while nobody waited).
            await listener.arrival()
        await slots.take()
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.release(None)
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            failures.happened("accept() failed: %s (%d connections open, pid %d); pausing new connections",
                              os.strerror(exc.errno or 0), slots.open, os.getpid())
            await trio.sleep(backoff)  # the connection waits in the backlog; retrying at once would spin
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        except BaseException:
            slots.release(None)
            raise
        if failures.count or backoff != BACKOFF_FIRST:
            failures.ended("accepting connections again after accept() failures")
            backoff = BACKOFF_FIRST
        nursery.start_soon(_serve_one, handler, stream, slots, name=_CONNECTION_TASK)


async def _serve_one(handler: Handler, stream: trio.abc.Stream, slots: ConnectionSlots) -> None:
    try:
        # Two steps, so that the handler's own frame is gone while the connection is served (for as long as
        # a stream lasts, every frame its task waits under is held).
        serving = await handler(stream)
        if serving is not None:
            await serving
    finally:
        try:
            await trio.aclose_forcefully(stream)
        finally:
            slots.release(stream)


#: the name of every connection's task, the one trio would make for each (one string, not one a connection)
_CONNECTION_TASK = f"{_serve_one.__module__}.{_serve_one.__qualname__}"

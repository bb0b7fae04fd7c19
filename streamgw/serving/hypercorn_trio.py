"""Fixes for hypercorn's trio worker under multiplexed HTTP/2, and a switch for cleartext HTTP/2.

Found with many concurrent streams on one HTTP/2 connection against hypercorn 0.18 (file and line
references are to that version); each is fixed by a subclass that ``install()`` puts in place.

1. A worker killed by ``trio.BusyResourceError`` (``hypercorn/trio/tcp_server.py``)
----------------------------------------------------------------------------------
One ``TCPServer`` owns one client connection, and every task of that connection writes to the same
trio stream: on HTTP/2 the connection's sender task (DATA frames), each request's ASGI task (HEADERS)
and the reader task (SETTINGS/WINDOW_UPDATE acks, GOAWAY).  Trio forbids two tasks from using the
send side of a ``SocketStream`` or ``SSLStream`` at once, so ``TCPServer.protocol_send`` takes
``self.send_lock`` around ``send_all``.  But ``TCPServer._close`` calls ``self.stream.send_eof()``
**without** the lock, and on a plain socket ``SocketStream.send_eof`` holds the stream's
send-conflict detector across a checkpoint: a task that reaches ``send_all`` during that checkpoint
gets ``BusyResourceError: another task is currently sending data on this SocketStream``.  ``_close``
runs from ``protocol_send(Closed())`` while the connection's other tasks are alive: on HTTP/2 when the
client sends GOAWAY (an HTTP/2 client closing a connection with streams in flight, ``h2load -D``) or a
frame that breaks the protocol.  If the sender task was between taking the lock and ``send_all`` (the
lock's own checkpoint) when the GOAWAY was read, trio picks it first half the time.  The error escapes
the connection's nursery, and hypercorn runs connection handlers in the server's nursery
(``serve_listeners(..., handler_nursery=server_nursery)``): the whole worker dies, with every stream of
every client.  TLS is not affected: ``SSLStream`` has no ``send_eof``, hypercorn skips it.

2. Frames lost when a request task is cancelled (same file)
-----------------------------------------------------------
``protocol_send`` shields ``send_all`` from cancellation but not the wait for ``send_lock``.  The bytes
were already taken out of the h2 state machine (``data_to_send()``), so a task cancelled while queued
for the lock drops frames the connection has accounted for: HEADERS whose HPACK table entries the
client never sees (its decoder is out of step from then on: "Invalid table index", COMPRESSION_ERROR
for the whole connection).  quart-trio cancels a request's handler exactly when its stream is reset
(``http.disconnect``), and handlers queue for the lock whenever the socket is full.

Fix for 1 and 2: ``SerialisedTCPServer`` makes ``send_lock`` the one gate of the send side.
``_close`` half-closes under the lock, and only if it is free (a write in flight is ended by the
``aclose`` that follows, with the ``ClosedResourceError`` hypercorn handles); a writer queued behind
the half-close gets ``ClosedResourceError``, never ``BusyResourceError``; the close is shielded, so a
cancelled connection still releases its socket.  ``protocol_send`` shields the lock wait together
with ``send_all``: bytes taken from the protocol are written, in order, or the connection is closed
(cancellation waits at most for the writes queued ahead, which hypercorn already shields).  As defence
in depth, an exception that still escapes a connection is logged and ends that connection only.
Upstream this is a few lines in ``TCPServer._close`` and ``TCPServer.protocol_send``.

A shielded write blocked on a client that stopped reading (its socket buffer full) also outlived the
cancellation of its connection: the server's hard shutdown deadline did not end such a connection, and
the process waited for the client to go away.  ``SerialisedTCPServer.run`` closes the socket when the
connection is cancelled from outside, which ends the blocked write.

3. Streams starved under a steady flow of new ones (``hypercorn/protocol/h2.py``)
---------------------------------------------------------------------------------
hypercorn's HTTP/2 sender picks the next stream to send from a ``priority.PriorityTree`` (RFC 7540
weights).  A stream joins the tree at the level of the stream scheduled last, and each scheduling
raises a stream's level; a stream that sends everything in one turn (a short response) leaves the
tree without raising the level the next newcomer gets.  Under a steady flow of short streams, a
stream that has already sent one frame sits one level higher than every newcomer and is not picked
again until the flow stops: on a busy connection some streams stalled for as long as the load lasted
(bench: 64 streams on one connection, p50 time to first event close to the whole stream's time, and
streams waiting out the load generator's 60 s timeout).  ``FairH2Protocol`` schedules with
``RoundRobinScheduler`` instead: the streams with data to send take turns.  RFC 9113 deprecates the
RFC 7540 priority scheme and lets servers ignore it.

4. A connection closed by its client held for the whole keep-alive timeout (``hypercorn/trio/tcp_server.py``)
------------------------------------------------------------------------------------------------------
A connection's keep-alive timer (``_idle_timeout``) runs in the connection's task group from the moment
it is accepted until a complete request arrives, and again between requests.  When the client closes
its side meanwhile (a port scanner, a load balancer's TCP check, a client that gives up), the read loop
ends but the task group waits for the timer: the socket stayed in CLOSE-WAIT for the whole
``keep_alive_timeout`` (75 s).  19,990 connect-and-close probes used up the worker's open-file limit;
``accept()`` failed with ``EMFILE`` and every request timed out until the timers ran out.
``SerialisedTCPServer._read_data`` stops the timer once the client's side is closed, so the connection
closes at once, and a request that ends after that closes the connection instead of starting it again.
The same timer is how ``streamgw.serving.connections.ConnectionSlots`` closes the longest-idle
connection when a worker is at its ``max_connections``.  (The worker replaces the timer's task per idle
period with ``streamgw.serving.worker.KeptAlive``, which closes through ``close_idle`` the same way.)

5. A request with both Content-Length and Transfer-Encoding (``hypercorn/protocol/h11.py``)
------------------------------------------------------------------------------------------
h11 frames such a request by its chunked encoding and ignores Content-Length; hypercorn served it and
kept the connection.  A proxy in front that frames it by Content-Length sees a different request
boundary — the classic request-smuggling setup.  RFC 9112 §6.3 lets a server reject it and requires
the connection to be closed after responding; ``H1OnlyCapableProtocol`` answers 400 (an error envelope
with ``param: "transfer-encoding"``) and closes.  HTTP/2 needs nothing: h2 rejects any
``transfer-encoding`` header in a request as malformed (RFC 9113 §8.2.2) and the connection is closed.

6. A request's task that waits on itself (``hypercorn/protocol/http_stream.py``)
------------------------------------------------------------------------------
When a response is complete, hypercorn queues ``http.disconnect`` for the application from inside the
application's own last ``send``, and waits for room in its inbox.  An application that answered without reading a
body that kept coming (its inbox full, ``max_app_queue_size`` messages) waited there on itself for good, and so did
the connection's reader, blocked queueing the next piece of the same body: the request stayed in flight (a drain
waited for it until its deadline) and the connection read nothing more, not even its client leaving.
``DirectBodyHTTPStream`` drops the body nobody read to make room (``_tell_ended``; the connection closes anyway,
the request not having been read to its end), and a returned application's inbox is emptied
(``AppInbox.discard``), which lets a reader waiting on it go on.

(hypercorn's ``keep_alive_max_requests`` is a seventh: after 1000 requests it sends GOAWAY, which also
stops every stream in flight on the connection, because h2 sends nothing after GOAWAY.
``streamgw.serving.main.hypercorn_config`` sets no limit.)

Upstream
--------
Each fix belongs in hypercorn; they are written against 0.18 only (pyproject pins ``hypercorn==0.18.*``
and ``streamgw.serving.versions`` refuses to start on another release line).  What matches:

- 5 is hypercorn issue #279 ("Incorrect Parsing When Both Content-Length and Transfer-Encoding Are
  Present", open at the time of writing);
- 4 is the trio side of the CLOSE-WAIT leak discussed on hypercorn PR #87 ("Fix handling of TCP EOF"):
  there the read loop missed the EOF; here it sees it but the keep-alive timer outlives it;
- the socket closed on outside cancellation (end of 2) is related to hypercorn issue #106 ("Hypercorn
  skip socket shutdown when cancelled with trio");
- 1, 2, 3 and 6 we found no report of: upstream, ``TCPServer._close`` would take ``send_lock`` around
  ``send_eof``, ``protocol_send`` would shield the lock wait with the write, and ``H2Protocol`` would
  schedule streams round-robin (RFC 9113 §5.3.2) instead of with ``priority.PriorityTree``.

Shorter paths for each write (performance, not fixes)
------------------------------------------------------
A stream's events are most of what a gateway writes, so the subclasses also shorten hypercorn's path
per event, keeping its behaviour: ``DirectBodyHTTPStream`` hands an HTTP/1.1 body chunk to
``H1OnlyCapableProtocol.write_body``, which frames it as h11's ``ChunkedWriter`` would (h11 changes no
state for it) instead of passing it through an ASGI message check, two event objects and h11;
``SerialisedTCPServer.send_raw`` writes to a plain socket at once when the send lock is free (no
cancel scope, lock round trip or scheduler trip) and falls back to the shielded, ordered write.  And
an open stream needs no watcher tasks: the stream calls the application back on disconnect
(``DisconnectNotice``, the ``streamgw.disconnect`` ASGI extension), and a plain-TCP write blocked on
a client that stopped reading checks for its connection's cancellation itself.

The usual HTTP/1.1 request takes a shorter way still: ``LeanH1Protocol`` reads its head with
``streamgw.serving.h1request`` (HTTP/1.1, a ``Host``, a body of a ``Content-Length`` or none, no upgrade or
``Expect``), makes its scope, starts the application and writes the response's bytes itself (``LeanExchange``),
the bytes h11 would write; h11's state machine and event objects, ``HTTPStream`` and hypercorn's stream events
are not on its way.  The first request it declines hands the connection to hypercorn's way (h11) for good, so
whatever is unusual (chunked bodies, ``Expect: 100-continue``, upgrades to WebSocket or h2c, HTTP/1.0, HEAD,
malformed heads and their 400s) is served as hypercorn always has.

Installing
----------
``install()`` points the names hypercorn looks up when it serves (``hypercorn.trio.run.TCPServer``,
``hypercorn.protocol.H11Protocol`` (``LeanH1Protocol``) and ``H2Protocol``, the ``HTTPStream`` of both protocol
modules) at the subclasses here; ``uninstall()`` puts
hypercorn's own classes back (tests use it to show each failure).  ``streamgw.serving.main.hypercorn_config``
installs, so ``streamgw serve``, its workers and the in-process test harness are covered; a config
pickled into a process hypercorn spawns installs there when it is loaded.

HTTP/2 on cleartext
-------------------
Hypercorn always accepts h2c on a cleartext bind: the prior-knowledge preface (``PRI * HTTP/2.0``)
and ``Upgrade: h2c`` on a request without a body.  ``GatewayHypercornConfig.http2 = False`` turns
that off (``H1OnlyCapableProtocol``): the upgrade header is ignored and the preface is answered
``505 HTTP Version Not Supported``; with TLS the same switch leaves ``h2`` out of ALPN.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import select
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from functools import partial
from itertools import chain
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

import h2.events
import h11
import hypercorn.trio.tcp_server as _tcp
import trio
from h11._connection import _body_framing
from h11._headers import Headers as H11Headers
from h11._headers import get_comma_header
from h11._writers import ChunkedWriter
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.events import Body, EndBody, Request, Response, StreamClosed
from hypercorn.protocol.events import Event as StreamEvent
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
from hypercorn.trio.task_group import TaskGroup, _handle
from hypercorn.trio.tcp_server import MAX_RECV, TCPServer
from hypercorn.trio.worker_context import EventWrapper, TrioSingleTask
from hypercorn.utils import UnexpectedMessageError, suppress_body
from priority.priority import DeadlockError, DuplicateStreamError, MissingStreamError, PriorityTree
from quart import Quart

from streamgw.errors import GatewayError, InvalidRequest
from streamgw.serving.connections import ConnectionSlots
from streamgw.serving.h1request import DECLINED, Framing, RequestHead, parse_request_head, response_head
from streamgw.timers import run_local
from streamgw.transport.sockio import plain_socket, recv_now, wait_readable

log = logging.getLogger("streamgw")

__all__ = [
    "ARRIVED_EXTENSION",
    "DISCONNECT_EXTENSION",
    "AppInbox",
    "DirectBodyHTTPStream",
    "DisconnectNotice",
    "FairH2Protocol",
    "GatewayHypercornConfig",
    "H1OnlyCapableProtocol",
    "InboxTaskGroup",
    "LazyEvent",
    "LeanExchange",
    "LeanH1Protocol",
    "LeanServerConnection",
    "LightLock",
    "RoundRobinScheduler",
    "SerialisedTCPServer",
    "install",
    "installed",
    "uninstall",
]

_H2_PREFACE_TARGET = (b"PRI", b"*", b"2.0")
#: ``scope["asgi"]`` as hypercorn 0.18 writes it (the same for every request)
_ASGI: dict[str, str] = {"spec_version": "2.1", "version": "3.0"}
#: the ASGI extension (``scope["extensions"]``) that carries a request's ``DisconnectNotice``
DISCONNECT_EXTENSION = "streamgw.disconnect"
#: the ASGI extension holding when the request's head had been read off the socket (``trio.current_time()``): the
#: application's clocks (time to first event, timeouts) start there, not when its task first runs
ARRIVED_EXTENSION = "streamgw.arrived"
#: seconds between two looks at a connection's cancellation while a write waits for its client to read
_BLOCKED_POLL = 0.25


class SerialisedTCPServer(TCPServer):
    """hypercorn's trio ``TCPServer`` with one gate for every write to the connection, closed as soon as
    its client closes, and idle connections known to the worker's ``ConnectionSlots`` (see the module doc).
    """

    #: the worker's connection cap (``streamgw.serving.worker`` sets it; None when hypercorn serves by itself)
    slots: ConnectionSlots | None = None
    #: the client's side of the connection is closed (or broken): nothing more will be read
    _read_done = False
    #: the nursery the connection's task runs in (its server's connections)
    _home: trio.Nursery | None = None
    #: when the last read from the client returned (``trio.current_time()``; ``_read_untimed`` notes it): a
    #: request's head is complete at the read that ended it, before h11, the stream and the application's task.
    #: ``None`` again once a response is over (``protocol_send``)
    read_at: float | None = None
    #: the read loop serves a request in its own task (``LeanH1Protocol``): this loop is ``_read_untimed`` on a plain
    #: socket, and ``inline`` is where the protocol leaves the request to serve (its application's coroutine)
    serves_inline = False
    inline: Coroutine[Any, Any, None] | None = None
    #: the connection's ``LeanH1Protocol`` (it takes up, after a request served here, one that came meanwhile)
    lean: LeanH1Protocol | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The connection's two locks (writes; the keep-alive timer's restarts) without trio's parking lots.
        self.send_lock: LightLock = LightLock()  # type: ignore[assignment]
        if type(self.idle_task) is TrioSingleTask:
            self.idle_task._lock = LightLock()  # type: ignore[assignment]

    def run(self) -> Coroutine[Any, Any, None]:
        """Serve the connection; a failure inside it ends this connection, not the worker.

        When the connection is cancelled from outside (a server's hard shutdown deadline), its socket is
        closed at once: a write blocked on a client that stopped reading is shielded and would
        otherwise hold the connection, and the server, for as long as the client keeps it open.  Over
        plain TCP the blocked write itself looks out for that (``_send_plain``); a TLS connection has a
        watcher task for it.  Not a coroutine function: it returns the coroutine that serves, so that the
        connection's task does not hold one more frame (this one) for as long as it is open.
        """
        return self._run_plain() if type(self.stream) is trio.SocketStream else self._run_watched()

    async def _run_watched(self) -> None:
        """``run`` for a stream that is not plain TCP (TLS): hypercorn's, with the watcher task."""
        self._home = trio.lowlevel.current_task().parent_nursery
        self._served = False
        try:
            async with trio.open_nursery() as watcher:
                watcher.start_soon(self._close_when_cancelled)
                try:
                    await super().run()
                finally:
                    self._served = True
                    watcher.cancel_scope.cancel()
        except* Exception:
            await self.config.log.exception("connection failed; it was closed, other connections go on")
        finally:
            self._ended()

    async def _run_plain(self) -> None:
        """``run`` for a plain TCP stream: ``TCPServer.run`` without its test for TLS.

        hypercorn finds out that a stream is not TLS by calling its ``do_handshake`` inside a ``fail_after``
        scope and catching the ``AttributeError``: a cancel scope per connection, and a traceback through the
        connection's coroutine, which then keeps a frame object (~0.3 KB) for as long as the connection lasts.
        The same steps otherwise (names looked up in hypercorn's module, where ``install`` puts ours).
        """
        self._home = trio.lowlevel.current_task().parent_nursery
        sock = self.stream.socket
        try:
            try:
                client = _tcp.parse_socket_addr(sock.family, sock.getpeername())
                server = _tcp.parse_socket_addr(sock.family, sock.getsockname())
                async with _tcp.TaskGroup() as task_group:
                    self._task_group = task_group
                    self.protocol = _tcp.ProtocolWrapper(
                        self.app, self.config, self.context, task_group, _tcp.ConnectionState(self.state), False,
                        client, server, self.protocol_send, "http/1.1",
                    )
                    await self.protocol.initiate()
                    await self.idle_task.restart(self._task_group, self._idle_timeout)
                    await self._read_data()
            except OSError:
                pass
            finally:
                await self._close()  # closes the stream, also when this raises
        except* Exception:
            await self.config.log.exception("connection failed; it was closed, other connections go on")
        finally:
            self._ended()

    def _ended(self) -> None:
        ended = getattr(self.idle_task, "ended", None)  # the worker's ``KeptAlive``: the connection is over
        if ended is not None:
            ended()

    async def _close_when_cancelled(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not self._served:  # cancelled from outside while the connection was still being served
                await trio.aclose_forcefully(self.stream)

    def _cancelled_from_outside(self) -> bool:
        """Whether a scope around this connection (its server's connection nursery, or one further out) is
        cancelled: what the watcher task of a TLS connection would see, without the request's own scopes."""
        nursery = self._home
        now = trio.current_time()
        while nursery is not None:
            scope = nursery.cancel_scope
            if scope.cancel_called or scope.deadline <= now:
                return True
            nursery = nursery.parent_task.parent_nursery
        return False

    def _read_data(self) -> Coroutine[Any, Any, None]:
        # Not a coroutine function: the reading coroutine is returned, so a connection's task does not hold
        # one more frame (this one) for as long as it is open.
        return self._read_timed() if self.config.read_timeout else self._read_untimed()

    async def _read_timed(self) -> None:
        await super()._read_data()
        await self._read_ended()

    async def _read_ended(self) -> None:
        # Nothing more will come from the client.  The keep-alive timer would hold the connection (and
        # its socket, in CLOSE-WAIT) for up to keep_alive_timeout: stop it so that the task group ends
        # and the connection closes now.  A request still in progress has had its http.disconnect.
        self._read_done = True
        await self.idle_task.stop()

    async def _read_untimed(self) -> None:
        """hypercorn's read loop without its per-read ``fail_after(inf)``: with no ``read_timeout`` (the
        default), that is a cancel scope made, entered and left for every read, and one held by every
        open connection while it waits, for nothing."""
        stream = self.stream
        protocol = self.protocol  # (its ``handle`` looked up per read: no bound method held while it waits)
        plain = self._raw_socket
        now = trio.current_time
        self.serves_inline = plain is not None
        fd = None if plain is None else plain.fileno()
        while True:
            data: bytes | bytearray | None
            if plain is not None:
                # The same, holding less while it waits: ``sockio.receive_plain`` written out (no SocketStream
                # layers, and not its frame either: a quiet connection waits here for as long as it streams).
                try:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    waited = False
                    while (data := recv_now(plain, MAX_RECV)) is None:
                        await wait_readable(plain)
                        waited = True
                    if not waited:  # a read that found its bytes waiting still lets other tasks run
                        await trio.lowlevel.cancel_shielded_checkpoint()
                except (OSError, trio.ClosedResourceError):  # reset, or closed by another task meanwhile
                    break
            else:
                try:
                    data = await stream.receive_some(MAX_RECV)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    break
            self.read_at = now()
            await protocol.handle(RawData(bytes(data)))
            if data == b"":
                break
            del data  # not held through the next wait (a request's head and body, for as long as it streams)
            while (serve := self.inline) is not None:  # a request served in this task (``LeanH1Protocol._start``)
                self.inline = None
                assert plain is not None and fd is not None
                try:
                    await serve
                finally:
                    client_watch().discard(fd, plain)
                del serve
                lean = self.lean
                if self._read_done or lean is None:
                    break
                await lean.resume()  # a request the client sent meanwhile
            if self._read_done:  # the client closed while a request was served here (``ClientWatch``)
                break
        await protocol.handle(Closed())
        await self._read_ended()

    @property
    def task_group(self) -> TaskGroup:
        """The connection's task group (hypercorn's, made in ``run``)."""
        group: TaskGroup = self._task_group
        return group

    async def close_idle(self) -> None:
        """Close the connection as its keep-alive timer does when it runs out (``streamgw.serving.worker``)."""
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def _idle_timeout(self) -> None:
        """hypercorn's keep-alive timer, which the worker's ``ConnectionSlots`` may cut short."""
        slots = self.slots
        with trio.move_on_after(self.config.keep_alive_timeout) as keep_alive:
            if slots is not None:
                slots.idle(self.stream, keep_alive)
            try:
                await self.context.terminated.wait()
            finally:
                if slots is not None:
                    slots.busy(self.stream)
        with trio.CancelScope(shield=True):
            await self._initiate_server_close()

    async def protocol_send(self, event: Event) -> None:
        """Write ``RawData`` with ``send_raw``; other events as hypercorn does (``Updated`` without its chain of
        ``isinstance`` checks against hypercorn's abstract event class: one comes with every request)."""
        kind = type(event)
        if kind is RawData:
            await self.send_raw(event.data)
            return
        if kind is Updated:
            if not event.idle:  # a request began: no keep-alive timeout while it is served
                await self.idle_task.stop()
                return
            # A response is over.  Whatever was read before belongs to it, or is a request the client sent before it
            # ended (pipelined), which waited for it: that one's clocks start when it is taken up, not when it came.
            self.read_at = None
            if not self._read_done:
                await self.idle_task.restart(self._task_group, self._idle_timeout)
                return
            event = Closed()  # idle again, but the client is gone: close rather than wait for it
        await super().protocol_send(event)

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` under ``send_lock``, the lock wait shielded along with the write.

        Nearly every write of a stream finds the lock free and the socket's buffer with room: then
        the bytes go to the socket at once, without a cancel scope, a lock round trip or a trip
        through the scheduler (the request's upstream read is its next checkpoint).  What the socket
        does not take goes through trio's ``send_all`` as before.
        """
        lock = self.send_lock
        if not lock.locked():
            # ``LightLock`` (like ``trio.Lock``) hands itself over to waiters on release, so a queue means ``locked()``
            # and FIFO order is kept; nothing yields between this check and the write.
            sock = self._raw_socket
            if sock is not None:
                try:
                    sent = sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError:  # reset by the client, or closed by another task (fileno -1)
                    await self.protocol.handle(Closed())
                    return
                if sent == len(data):
                    return
                data = data[sent:]
            lock.acquire_nowait()
            await self._locked_send(data, lock)
            return
        with trio.CancelScope(shield=True):
            await lock.acquire()
        await self._locked_send(data, lock)

    async def _locked_send(self, data: bytes, lock: LightLock) -> None:
        broken = False
        sock = self._raw_socket
        try:
            if sock is not None:
                broken = not await self._send_plain(sock, data)
            else:
                with trio.CancelScope(shield=True):
                    await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            broken = True
        finally:
            lock.release()
        if broken:
            await self.protocol.handle(Closed())

    async def _send_plain(self, sock: socket.socket, data: bytes) -> bool:
        """Write all of ``data`` to a plain TCP socket, waiting for room shielded; False if the connection broke.

        The wait is shielded (bytes taken from the protocol must all be written, in order), but wakes
        every ``_BLOCKED_POLL`` seconds: when the connection has been cancelled from outside meanwhile
        (a hard shutdown deadline) while its client does not read, the socket is closed and the write ends.
        """
        view = memoryview(data)
        while True:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                sent = 0
            except OSError:  # reset by the client, or closed by another task (fileno -1)
                return False
            view = view[sent:]
            if not view:
                return True
            if self._cancelled_from_outside():
                await trio.aclose_forcefully(self.stream)
                return False
            with trio.CancelScope(shield=True) as wait:
                wait.deadline = trio.current_time() + _BLOCKED_POLL
                await trio.lowlevel.wait_writable(sock)

    @property
    def _raw_socket(self) -> socket.socket | None:
        """The connection's non-blocking stdlib socket when it is plain TCP (None with TLS).

        Every write goes through ``send_lock``, so the send side of trio's ``SocketStream`` (whose
        conflict detector is bypassed here) is never in use while this writes.
        """
        return plain_socket(self.stream)

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            stream: trio.abc.Stream = self.stream
            # ``locked()`` is also true when this very task holds the lock (a close triggered from
            # inside a write): skipping the half-close is right then too, and avoids a re-acquire.
            if isinstance(stream, trio.abc.HalfCloseableStream) and not self.send_lock.locked():
                async with self.send_lock:  # free, and nothing yields before it is taken
                    with contextlib.suppress(
                        trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError
                    ):
                        await stream.send_eof()
            await stream.aclose()


_BLOCKED: Any = object()


async def _at_once(attempt: Callable[[], Any]) -> Any:
    """trio's way around an operation that may complete at once: a cancellation point first, then the
    attempt and, if it completed, a checkpoint (no cancel from here: it happened).  Its result, or
    ``_BLOCKED`` when it raised ``trio.WouldBlock`` (the caller then waits its own way)."""
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        result = attempt()
    except trio.WouldBlock:
        return _BLOCKED
    await trio.lowlevel.cancel_shielded_checkpoint()
    return result


class LightLock:
    """``trio.Lock`` for a connection's writes and its keep-alive timer, without a parking lot per lock.

    trio's lock keeps a ``ParkingLot`` (with an ``OrderedDict``) from the start: ~0.25 KB that every
    connection held twice, for queues that are nearly always empty.  The same behaviour where it is used
    (``SerialisedTCPServer``, hypercorn's ``TrioSingleTask``): ``acquire`` is a checkpoint, waiters are served
    first come, first served, and ``release`` hands the lock to the first of them, so ``locked()`` stays true
    while anyone queues; re-acquiring a held lock or releasing another task's is a ``RuntimeError``.
    """

    __slots__ = ("_owner", "_waiters")

    def __init__(self) -> None:
        self._owner: trio.lowlevel.Task | None = None
        self._waiters: dict[trio.lowlevel.Task, None] | None = None  # made when a task first has to wait

    def locked(self) -> bool:
        return self._owner is not None

    def acquire_nowait(self) -> None:
        task = trio.lowlevel.current_task()
        if self._owner is None and not self._waiters:
            self._owner = task
        elif self._owner is task:
            raise RuntimeError("attempt to re-acquire an already held Lock")
        else:
            raise trio.WouldBlock

    async def acquire(self) -> None:
        if await _at_once(self.acquire_nowait) is not _BLOCKED:
            return
        task = trio.lowlevel.current_task()
        if self._waiters is None:
            self._waiters = {}
        waiters = self._waiters
        waiters[task] = None

        def abort(_: Any) -> trio.lowlevel.Abort:
            del waiters[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)  # ``release`` made this task the owner

    def release(self) -> None:
        if trio.lowlevel.current_task() is not self._owner:
            raise RuntimeError("can't release a Lock you don't own")
        waiters = self._waiters
        if waiters:
            task = next(iter(waiters))
            del waiters[task]
            self._owner = task
            trio.lowlevel.reschedule(task)
        else:
            self._owner = None

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class AppInbox:
    """A request's ASGI ``receive`` queue: trio's memory channel (as hypercorn opens one per request), in less.

    hypercorn's ``TaskGroup.spawn_app`` opens a ``trio.open_memory_channel(max_app_queue_size)`` per
    request: a channel state, its deque (a 64-slot block from the start), a send and a receive channel,
    and their statistics, about 1.4 KB that an open stream holds for the one message (``http.disconnect``)
    it may still get.  This has the same behaviour for hypercorn's use (``send`` waits while ``limit``
    messages are queued; both sides checkpoint as trio's do; senders and receivers are served first come,
    first served; ``receive_nowait`` raises ``trio.WouldBlock``) and is never closed, like hypercorn's.
    """

    __slots__ = ("_items", "_limit", "_receivers", "_senders")

    #: ``receive_nowait`` is trio's (``streamgw.app.streaming`` takes a queued body without a checkpoint)
    nowait_raises_would_block = True

    def __init__(self, limit: int) -> None:
        self._items: list[Any] = []
        self._limit = limit
        self._receivers: dict[trio.lowlevel.Task, list[Any]] = {}  # waiting (with a box for the message), in order
        self._senders: dict[trio.lowlevel.Task, Any] = {}  # waiting with their message, in order

    def send_nowait(self, message: Any) -> None:
        receivers = self._receivers
        if receivers:
            task = next(iter(receivers))
            receivers.pop(task).append(message)
            trio.lowlevel.reschedule(task)
        elif len(self._items) < self._limit:
            self._items.append(message)
        else:
            raise trio.WouldBlock

    def push(self, message: Any) -> None:
        """``send_nowait`` past the limit if need be: for the last message a request gets (``http.disconnect``)."""
        try:
            self.send_nowait(message)
        except trio.WouldBlock:
            self._items.append(message)

    async def send(self, message: Any) -> None:
        if await _at_once(partial(self.send_nowait, message)) is not _BLOCKED:
            return
        task = trio.lowlevel.current_task()
        senders = self._senders
        senders[task] = message

        def abort(_: Any) -> trio.lowlevel.Abort:
            del senders[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def receive_nowait(self) -> Any:
        items, senders = self._items, self._senders
        if items:
            message = items.pop(0)
            if senders:  # room for the first waiting sender's message
                task = next(iter(senders))
                items.append(senders.pop(task))
                trio.lowlevel.reschedule(task)
            return message
        if senders:  # no room at all (limit 0): straight from the sender
            task = next(iter(senders))
            message = senders.pop(task)
            trio.lowlevel.reschedule(task)
            return message
        raise trio.WouldBlock

    def discard(self) -> None:
        """Drop what is queued, and what waiting senders bring (the application has returned: nobody will read it).

        A connection's reader that waited here to queue more of a request's body for an application that stopped
        reading it, then answered and returned, would otherwise wait for good, and with it the connection, which
        reads nothing more from its client, not even that it left.
        """
        with contextlib.suppress(trio.WouldBlock):
            while True:
                self.receive_nowait()

    async def receive(self) -> Any:
        message = await _at_once(self.receive_nowait)
        if message is not _BLOCKED:
            return message
        task = trio.lowlevel.current_task()
        receivers = self._receivers
        box: list[Any] = []
        receivers[task] = box

        def abort(_: Any) -> trio.lowlevel.Abort:
            del receivers[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return box[0]


class InboxTaskGroup(TaskGroup):
    """hypercorn's per-connection ``TaskGroup`` that gives each request an ``AppInbox`` and runs an ASGI
    application without the ``ASGIWrapper`` layer.

    A request's task waits, for as long as its response streams, under every coroutine between trio and the
    application; hypercorn's ``_handle`` calls ``ASGIWrapper.__call__``, which only calls the application,
    and a Quart application's ``__call__`` only calls its ``asgi_app``.  ``_serve_asgi`` is ``_handle`` with
    the innermost of those calls made directly (a WSGI application still takes hypercorn's way).
    """

    async def spawn_app(self, app: Any, config: HypercornConfig, scope: Any,
                        send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        inbox = AppInbox(config.max_app_queue_size)
        assert self._nursery is not None
        if type(app) is ASGIWrapper:
            asgi, ended = _direct(app)
            self._nursery.start_soon(_serve_asgi, asgi, config, scope, inbox.receive, send, ended, name=_REQUEST_TASK)
        else:
            self._nursery.start_soon(_handle, app, config, scope, inbox.receive, send, trio.to_thread.run_sync,
                                     trio.from_thread.run)
        return inbox.send


def _direct(app: ASGIWrapper) -> tuple[Any, Callable[[], None] | None]:
    """The ASGI application inside hypercorn's wrapper, called directly, and what to call when it returns."""
    asgi = app.app
    if isinstance(asgi, Quart) and type(asgi).__call__ is Quart.__call__:
        asgi = asgi.asgi_app  # all that ``Quart.__call__`` does, without its frame
    ended: Callable[[], None] | None = None
    begin = getattr(asgi, "begin_request", None)
    if begin is not None:  # a wrapper that counts requests (the worker's ``InFlight``), without its frame
        asgi, ended = begin()
    return asgi, ended


async def _serve_asgi(app: Any, config: HypercornConfig, scope: Any, receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]], ended: Callable[[], None] | None = None) -> None:
    """hypercorn's ``_handle`` (``hypercorn.trio.task_group``) for an ASGI application called directly;
    ``ended`` is called when the application returns (or fails).  This frame lets go of the scope once the
    application has it (an application that is done with it need not have it kept for the request's length)."""
    try:
        call = app(scope, receive, send)
        del scope
        await call
    except trio.Cancelled:
        raise
    except BaseExceptionGroup as error:
        _, others = error.split(trio.Cancelled)
        if others is None:
            raise
        await config.log.exception("Error in ASGI Framework")
        await send(None)
    except Exception:
        await config.log.exception("Error in ASGI Framework")
    finally:
        if ended is not None:
            ended()
        inbox = getattr(receive, "__self__", None)
        if type(inbox) is AppInbox:
            inbox.discard()
        await send(None)


#: the name of every request's task, the one trio would make for each (one string, not one a request)
_REQUEST_TASK = f"{_serve_asgi.__module__}.{_serve_asgi.__qualname__}"


class RoundRobinScheduler(PriorityTree):
    """Which HTTP/2 stream of a connection sends its next frame: the streams with data, in turn.

    Drop-in for the ``priority.PriorityTree`` hypercorn's ``H2Protocol`` schedules with (the methods it
    calls: ``insert_stream``, ``block``, ``unblock``, ``remove_stream``, ``reprioritize``, ``next``).
    A stream that gets data joins the back of the line; each ``next`` serves the front one and moves it
    to the back.  RFC 7540 priority signals are ignored, as RFC 9113 §5.3.2 allows.
    """

    def __init__(self) -> None:
        super().__init__()
        self._known: set[int] = set()
        self._ready: dict[int, None] = {}  # insertion order is the turn order

    def insert_stream(self, stream_id: int, depends_on: int | None = None, weight: int = 16,
                      exclusive: bool = False) -> None:
        """A new stream, ready to send (hypercorn blocks it until the application writes)."""
        if stream_id in self._known:
            raise DuplicateStreamError(f"Stream {stream_id} already in tree")
        self._known.add(stream_id)
        self._ready[stream_id] = None

    def reprioritize(self, stream_id: int, depends_on: int | None = None, weight: int = 16,
                     exclusive: bool = False) -> None:
        """PRIORITY frames change nothing (and never add streams)."""

    def remove_stream(self, stream_id: int) -> None:
        """The stream is done."""
        self._require(stream_id)
        self._known.discard(stream_id)
        self._ready.pop(stream_id, None)

    def block(self, stream_id: int) -> None:
        """The stream has nothing to send (or no flow-control window)."""
        self._require(stream_id)
        self._ready.pop(stream_id, None)

    def unblock(self, stream_id: int) -> None:
        """The stream has something to send: it joins the line unless it is in it already."""
        self._require(stream_id)
        self._ready.setdefault(stream_id, None)

    def __next__(self) -> int:
        for stream_id in self._ready:
            del self._ready[stream_id]
            self._ready[stream_id] = None  # to the back of the line
            return stream_id
        raise DeadlockError("No unblocked streams to schedule.")

    def _require(self, stream_id: int) -> None:
        if stream_id not in self._known:
            raise MissingStreamError(f"Stream {stream_id} not in tree")


class FairH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol with streams sending in turn (``RoundRobinScheduler``), and request
    body frames that arrive after their stream's response ended taken in, not fatal to the connection.

    hypercorn forgets a stream once its response is complete, and looks up every DATA frame's
    stream without a guard (its END_STREAM lookup has one): a response that ends before the
    client sent all of its body (an answer that needs no body, a 401 or 413, or a short stream
    answered once Content-Length bytes are in while the client's empty END_STREAM frame is still
    on its way) raised ``KeyError`` and closed the connection with every other stream on it.  Such
    a frame is now acknowledged (the connection's flow-control window is given back) and dropped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.priority = RoundRobinScheduler()

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        if not any(isinstance(event, h2.events.DataReceived) for event in events):
            await super()._handle_events(events)
            return
        # one at a time: handling an earlier event of the batch can end a later DATA frame's stream
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                await self._flush()
                continue
            await super()._handle_events([event])


class DisconnectNotice:
    """The ``streamgw.disconnect`` ASGI extension: callbacks run the moment the request's stream closes.

    An ASGI application learns that its client left from an ``http.disconnect`` message, so it needs a
    task waiting in ``receive()`` for the whole response — a task per open stream, for a message that
    comes once.  With this extension the server calls the application back instead (synchronously,
    from the task that saw the close); ``http.disconnect`` is still queued as ASGI says.
    """

    __slots__ = ("_callbacks", "closed")

    def __init__(self) -> None:
        self._callbacks: tuple[Callable[[], None], ...] = ()  # (usually one: a tuple holds it in less)
        self.closed = False

    def on_disconnect(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` when the stream closes; False (and no call) if it has closed already."""
        if self.closed:
            return False
        self._callbacks += (callback,)
        return True

    def forget(self, callback: Callable[[], None]) -> None:
        """No call for ``callback`` any more (the application is done with the response)."""
        callbacks = list(self._callbacks)
        with contextlib.suppress(ValueError):
            callbacks.remove(callback)
        self._callbacks = tuple(callbacks)

    def fire(self) -> None:
        """The stream closed: every callback, once."""
        self.closed = True
        callbacks, self._callbacks = self._callbacks, ()
        for callback in callbacks:
            callback()


class DirectBodyHTTPStream(HTTPStream):
    """hypercorn's ASGI HTTP stream with a disconnect callback, and the body chunks of an HTTP/1.1 stream
    handed straight to the protocol.

    Each ``http.response.body`` message with more to come goes to ``H1OnlyCapableProtocol.write_body``
    instead of through ``HTTPStream.app_send``'s checks and a ``Body`` event; the first and the last
    message of a response and every other message still take hypercorn's way.  The request's scope
    carries a ``DisconnectNotice`` as ``scope["extensions"]["streamgw.disconnect"]``.
    """

    _write_body: Callable[[bytes, bool], Awaitable[None]] | None = None
    _notice: DisconnectNotice | None = None

    async def handle(self, event: StreamEvent) -> None:
        if not self.closed:
            if isinstance(event, Body):
                if self._queued({"type": "http.request", "body": bytes(event.data), "more_body": True}):
                    return
            elif type(event) is EndBody:
                if self._queued({"type": "http.request", "body": b"", "more_body": False}):
                    return
            elif type(event) is StreamClosed:
                if self._notice is not None:
                    self._notice.fire()
                # The usual end (the response complete, its access logged): hypercorn's steps, less the checkpoint.
                if self.state is ASGIHTTPState.CLOSED and _tell_ended(getattr(self, "app_put", None)):
                    self.closed = True
                    return
        await super().handle(event)
        if type(event) is Request and getattr(self, "app_put", None) is not None:
            # The application task has been started (``start_soon``) but has not run yet.
            self._notice = DisconnectNotice()
            extensions: dict[str, Any] = self.scope["extensions"]
            extensions[DISCONNECT_EXTENSION] = self._notice
            arrived = _read_at(self.send)
            if arrived is not None:
                extensions[ARRIVED_EXTENSION] = arrived
            if self.scope["asgi"] == _ASGI:
                self.scope["asgi"] = _ASGI  # one shared dict, not one per request for as long as it lasts

    def _queued(self, message: dict[str, Any]) -> bool:
        """Queue a request-body message for the application without a checkpoint, if there is room.

        hypercorn's ``app_put`` is the channel's ``send``, a schedule point even when the message goes
        straight into the buffer: the connection's task then took two more turns of the scheduler (one
        per body message) before it read again, and a request's handler, started in the same turn,
        shared them.  A full channel (an application that does not read its body) still waits as before.
        """
        # the channel's non-blocking twin of ``send`` (trio's ``send_nowait``: ``trio.WouldBlock`` when full)
        put_nowait = getattr(getattr(getattr(self, "app_put", None), "__self__", None), "send_nowait", None)
        if put_nowait is None:
            return False
        try:
            put_nowait(message)
        except trio.WouldBlock:
            return False
        return True

    async def app_send(self, message: Any) -> None:
        write = self._write_body
        if (write is not None and message is not None and message["type"] == "http.response.body"
                and self.state is ASGIHTTPState.RESPONSE):
            body = message.get("body", b"")
            if message.get("more_body", False):
                if body:
                    await write(bytes(body), False)
                return
            if body and not self.response.get("trailers", False):
                # The last chunk waits for the end of the body, which follows at once: one write for both.
                await write(bytes(body), True)
                message = {"type": "http.response.body", "body": b"", "more_body": False}
        await super().app_send(message)
        if self.state is ASGIHTTPState.RESPONSE and message is not None and message["type"] == "http.response.start":
            if getattr(self.config.log, "access_logger", None) is None:
                self.response = _sent_head(message)
            if not suppress_body(self.scope["method"], int(self.response["status"])):
                protocol = getattr(self.send, "__self__", None)
                if isinstance(protocol, H1OnlyCapableProtocol):
                    self._write_body = protocol.write_body


def _tell_ended(put: Callable[[Any], Awaitable[None]] | None) -> bool:
    """Queue ``http.disconnect`` for an application whose response is complete, without waiting; False if its
    inbox is not an ``AppInbox``.

    This runs in the application's own task (its last ``send``).  hypercorn waits for room in the inbox: an
    application that answered without reading a body that kept coming (its inbox full) then waited on itself
    for good, and so did the connection's reader, blocked on the same inbox.  The body it did not read is no use
    once the response is complete (the connection closes, as the request was not read to its end): it is dropped
    to make room.
    """
    inbox = getattr(put, "__self__", None)
    if type(inbox) is not AppInbox:
        return False
    try:
        inbox.send_nowait(_DISCONNECT)
    except trio.WouldBlock:
        inbox.discard()
        with contextlib.suppress(trio.WouldBlock):  # a limit of 0 and nobody receiving: nothing to wait for either
            inbox.send_nowait(_DISCONNECT)
    return True


#: what an application's ``receive`` gives once its client has gone (or its response is complete)
_DISCONNECT: Mapping[str, str] = MappingProxyType({"type": "http.disconnect"})


def _read_at(stream_send: Callable[..., Any]) -> float | None:
    """When the connection under a stream (its protocol's server: ``SerialisedTCPServer``) last read from the
    client; ``None`` when another server reads (hypercorn's own read loop, with a ``read_timeout``)."""
    protocol = getattr(stream_send, "__self__", None)
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    return server.read_at if isinstance(server, SerialisedTCPServer) else None


#: what hypercorn reads of a response's start message once it went out, for the usual one: ``_sent_head``
_SENT_200: Mapping[str, Any] = MappingProxyType({"type": "http.response.start", "status": 200})


def _sent_head(message: Mapping[str, Any]) -> Mapping[str, Any]:
    """The part of a sent ``http.response.start`` that hypercorn reads later (its status, ``trailers``).

    hypercorn keeps the message for as long as the response lasts, headers and all, for its access log;
    with no access log the headers need not stay (a list, a tuple and a request id each open stream).
    """
    status, trailers = message["status"], message.get("trailers", False)
    if status == 200 and not trailers:
        return _SENT_200
    return {"type": "http.response.start", "status": status, "trailers": trailers}


class LazyEvent:
    """hypercorn's trio ``EventWrapper`` with its ``trio.Event`` made only when a task waits.

    Each HTTP/1.1 connection has one (``H11Protocol.can_read``), waited for only when a client sends its next
    request before the response to the last one is complete; the event and its set of waiters (~0.3 KB)
    are made then, not for every connection.  The same behaviour: ``clear`` starts a new event (a task
    still waiting for the old one keeps waiting for it), ``wait`` on a set event returns after a checkpoint.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._event: trio.Event | None = None
        self._set = False

    async def clear(self) -> None:
        self._event = None
        self._set = False

    async def wait(self) -> None:
        event = self._event
        if event is None:
            event = self._event = trio.Event()
            if self._set:
                event.set()
        await event.wait()

    async def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._set


class LeanServerConnection(h11.Connection):
    """h11's server side, with a response's framing headers set up in one pass instead of four.

    Before it writes a response head, h11 (0.16, ``Connection._clean_up_response_headers_for_sending``)
    drops ``Content-Length`` and sets ``Transfer-Encoding`` for a body of unknown length, and sets
    ``Connection: close`` when the connection will not be kept: each change copies and validates every
    header again (``set_comma_header``), and the cleaned response is built and validated once more.
    A streamed response's head was validated four times over, regex by regex, on the way to its
    first event.  Here the same decisions build the cleaned headers from the ones the ``Response``
    event already validated; the only headers added are h11's own constants.
    """

    def _clean_up_response_headers_for_sending(self, response: h11.Response) -> h11.Response:
        method = self._request_method
        framing, _ = _body_framing(b"GET" if method == b"HEAD" else method, response)  # type: ignore[arg-type]
        drop: set[bytes] = set()
        added: list[tuple[bytes, bytes, bytes]] = []
        need_close = False
        if framing in ("chunked", "http/1.0"):
            drop.add(b"content-length")
            drop.add(b"transfer-encoding")
            if self.their_http_version is None or self.their_http_version < b"1.1":
                need_close = method != b"HEAD"
            else:
                added.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
        if not self._cstate.keep_alive or need_close:
            connection = set(get_comma_header(response.headers, b"connection"))
            connection.discard(b"keep-alive")
            connection.add(b"close")
            drop.add(b"connection")
            # h11 appends the headers it sets after the others, in the order it sets them
            added.extend((b"Connection", b"connection", value) for value in sorted(connection))
        if not drop:
            return response
        items = response.headers._full_items
        kept = [item for item in items if item[1] not in drop]
        # h11 keeps a Transfer-Encoding it sets after the Content-Length it removed, before Connection
        return h11.Response(headers=H11Headers(kept + added), status_code=response.status_code,
                            http_version=response.http_version, reason=response.reason)


class H1OnlyCapableProtocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol that refuses h2c when the config says ``http2 = False``, and writes
    a response's head together with its first body bytes.

    hypercorn writes the status line and headers as soon as the application sends
    ``http.response.start``, then the first body chunk with a second ``send``.  On a stream the two
    always follow each other, and each ``send`` on a TCP socket costs a system call (tens of
    microseconds on loopback, where the kernel runs the receiver's side in it) and a trip through the
    scheduler, on the way to the first event.  The head is held until the next event of the stream
    and goes out in the same write; any other event flushes it first.  Likewise a body's last chunk
    (``write_body(..., last=True)``) waits for the end of the body (the chunked terminator), which
    follows at once: a stream's last events and its end are one write, and a response that fits in
    one message (head, events, end) is written in one.
    """

    #: bytes taken from h11 (a head, a last chunk) that go out with the next event's
    _held: bytes | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self.can_read) is EventWrapper:
            self.can_read = LazyEvent()
        if type(self.connection) is h11.Connection:  # nothing was read yet: the same state, leaner heads
            self.connection = LeanServerConnection(
                h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size)
        server = getattr(self.send, "__self__", None)
        self._server: SerialisedTCPServer | None = server if isinstance(server, SerialisedTCPServer) else None

    def _send_raw(self, data: bytes) -> Awaitable[None]:
        # Looked up per write rather than kept as a bound method: one object fewer held by every connection.
        server = self._server
        return server.send_raw(data) if server is not None else self._send_raw_event(data)

    async def _send_raw_event(self, data: bytes) -> None:
        await self.send(RawData(data=data))

    async def write_body(self, data: bytes, last: bool = False) -> None:
        """One non-empty chunk of a response body: what ``stream_send(Body(...))`` writes, by a shorter way.

        hypercorn's way is an ASGI message, a ``Body`` event, an ``h11.Data`` event through h11's
        state machine, and a ``RawData`` event to the connection.  While the response is in its body
        and chunked (h11's ``ChunkedWriter``), h11 only frames the chunk and changes no state, so the
        frame is built here and written directly; anything else takes hypercorn's way.  A ``last`` chunk
        is held (with anything held before it) until the next event: the end of the body.
        """
        connection = self.connection
        if connection.our_state is h11.SEND_BODY and type(getattr(connection, "_writer", None)) is ChunkedWriter:
            frame = b"%x\r\n%b\r\n" % (len(data), data)
            held, self._held = self._held, None
            if held is not None:
                frame = held + frame
            if last:
                self._held = frame
            else:
                await self._send_raw(frame)
        else:
            await self.stream_send(Body(stream_id=STREAM_ID, data=data))

    async def stream_send(self, event: StreamEvent) -> None:
        if type(event) is StreamClosed:
            # The response is complete.  hypercorn keeps the connection only if the request is complete
            # too, and closes it otherwise (without a ``connection: close`` the client could have seen).
            # A response refused before its body was read (401) is complete within one turn now that
            # writes need no checkpoint; let the connection's reader take in the rest of a body that has
            # arrived, as the writes' checkpoints used to (a few turns: it reads, then queues the body).
            for _ in range(4):
                if self.connection.their_state is not h11.SEND_BODY:
                    break
                await trio.lowlevel.checkpoint()
        elif type(event) is Response and event.status_code >= 200:
            headers = list(chain(event.headers, self.config.response_headers("h11")))
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            head = self._h11_bytes(h11.Response(headers=headers, status_code=event.status_code))
            if head is not None:
                self._held = head
            return
        head, self._held = self._held, None
        if type(event) is EndBody or (head is not None and isinstance(event, Body)):
            rest = self._h11_bytes(h11.Data(data=event.data) if isinstance(event, Body) else h11.EndOfMessage())
            data = (head or b"") + (rest or b"")
            if data:  # the end of a body with a Content-Length is no bytes: no write (hypercorn made an empty one)
                await self._send_raw(data)
            return
        if head is not None:
            await self._send_raw(head)
        await super().stream_send(event)

    def _h11_bytes(self, event: h11.Response | h11.Data | h11.EndOfMessage) -> bytes | None:
        """What ``_send_h11_event`` would write (None where it writes nothing)."""
        try:
            return self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return None

    async def _check_protocol(self, event: h11.Request) -> None:
        if http2_enabled(self.config):
            await super()._check_protocol(event)
        # else: ``Upgrade: h2c`` is ignored (RFC 9110 §7.8 lets a server decline an upgrade) and the
        # prior-knowledge preface goes on to ``_create_stream``, which refuses it.

    async def _create_stream(self, request: h11.Request) -> None:
        if _framed_twice(request):
            # RFC 9112 §6.3: possibly an attempt at request smuggling; answer, then close the connection.
            error = InvalidRequest("The request has both Content-Length and Transfer-Encoding.",
                                   param="transfer-encoding", code="invalid_framing")
            await self._send_envelope(error)
            await self.send(Closed())  # no stream: the rest of the request is never read
            return
        preface = (request.method, request.target, request.http_version) == _H2_PREFACE_TARGET
        if preface and not http2_enabled(self.config):
            await self._send_error_response(505)
            # No stream is created: the request's EndOfMessage then ends hypercorn's event loop
            # (``self.stream is None``) and the closed socket ends the read loop.
            await self.send(Closed())
            return
        await super()._create_stream(request)


    async def _send_envelope(self, error: GatewayError) -> None:
        """``error`` as a JSON error envelope, with ``connection: close``."""
        body = json.dumps(error.envelope(), separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                   (b"connection", b"close"), *self.config.response_headers("h11")]
        await self._send_h11_event(h11.Response(status_code=error.status, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


class LeanH1Protocol(H1OnlyCapableProtocol):
    """hypercorn's HTTP/1.1 protocol with a short way for the usual request (``streamgw.serving.h1request``).

    A request whose head ``parse_request_head`` accepts (HTTP/1.1, a ``Host``, a body of a ``Content-Length`` or
    none, no upgrade, ``Expect`` or ``Transfer-Encoding``) is served here: its ASGI scope made from the head, its
    body queued for the application, and the response written from the application's messages (``LeanExchange``),
    with the bytes h11 would write.  When the head and the whole body came (nearly always: an API call's body is a
    few KB) and the connection's read loop is ``SerialisedTCPServer._read_untimed`` on a plain socket, that loop
    runs the application itself (``inline``), and ``ClientWatch`` reads the client meanwhile; otherwise the
    application gets a task of its own in the connection's task group (``InboxTaskGroup.spawn_app``) and the loop
    goes on reading the body for it.  That is the whole of what the request's way through h11 (its reader, event
    objects and state machine, both ways), hypercorn's ``HTTPStream`` and its stream events does for such a
    request, in one layer: about a third of a millisecond less before a stream's first event on the bench machine.

    The first head it declines (or a server with ``server_names`` or an access log, which it does not do) hands the
    connection to hypercorn's way for good: the bytes read so far go to h11, which has been idle (nothing else
    touched it) and starts from a request's first byte, as after any complete exchange.
    """

    #: hypercorn's way serves this connection from now on
    _hypercorn = False
    #: bytes read that no request has taken yet: a head still arriving, or a request sent before the last response ended
    _pending = b""
    #: how much of ``_pending`` was seen to hold no complete head
    _searched = 0
    #: the request being served
    _exchange: LeanExchange | None = None
    #: the connection is closing: nothing more is served
    _done = False
    #: the server under the connection when it is ours (it notes when each read came)
    _server: SerialisedTCPServer | None = None

    def __init__(self, app: Any, config: HypercornConfig, context: Any, task_group: Any, connection_state: Any,
                 ssl: bool, client: tuple[str, int] | None, server: tuple[str, int] | None,
                 send: Callable[[Event], Awaitable[None]]) -> None:
        if config.server_names or getattr(config.log, "access_logger", None) is not None:
            super().__init__(app, config, context, task_group, connection_state, ssl, client, server, send)
            self._hypercorn = True
            return
        # ``H11Protocol.__init__``'s attributes, without its h11 connection (~1 KB a connection holds, and two made
        # and validated on the way: h11's, then ours): ``_hand_over`` makes one if a request needs it.
        self.app = app
        self.client = client
        self.config = config
        self.context = context
        self.keep_alive_requests = 0
        self.send = send
        self.server = server
        self.ssl = ssl
        self.stream = None
        self.task_group = task_group
        self.connection_state = connection_state
        can_read = context.event_class()
        self.can_read = LazyEvent() if type(can_read) is EventWrapper else can_read
        owner = getattr(send, "__self__", None)
        self._server = owner if isinstance(owner, SerialisedTCPServer) else None
        if self._server is not None:
            self._server.lean = self

    async def handle(self, event: Event) -> None:
        if self._hypercorn:
            await super().handle(event)
            return
        exchange = self._exchange
        if type(event) is RawData:
            data = event.data
            if exchange is not None:
                await exchange.received(data)  # returns once the exchange is over if a request came behind it
                data = b""
            await self._serve(data)
            # else: the client closed between requests; the read loop ends and with it the connection
        elif type(event) is Closed and exchange is not None:
            await exchange.client_closed()

    async def resume(self) -> None:
        """A request served in the connection's task is over: take up the one the client sent meanwhile, if any."""
        if not self._hypercorn:
            await self._serve(b"")

    async def _serve(self, data: bytes) -> None:
        """Start the requests in what was read (with ``data``), one after the other."""
        while not self._done and self._exchange is None and (data or self._pending):
            await self._take(data)
            data = b""
            exchange = self._exchange
            if exchange is None:  # a head still arriving, or hypercorn's way from now on
                break
            server = self._server
            if server is not None and server.inline is not None:
                break  # the read loop serves it, then comes back here (``resume``)
            if self._pending:
                # The next request came with this one: it waits for this one's response to end (as h11's
                # PAUSED makes hypercorn's reader wait), and the client is not read meanwhile.
                await exchange.over()

    async def _take(self, data: bytes) -> None:
        """Start the request at the front of what was read (with ``data``), if its head is complete."""
        pending = self._pending
        buffered = pending + data if pending else data
        self._pending = b""
        parsed = parse_request_head(buffered, self.config.h11_max_incomplete_size, self._searched)
        self._searched = 0
        if parsed is None:
            self._pending = buffered
            self._searched = len(buffered)
        elif parsed is DECLINED:
            await self._hand_over(buffered)
        elif isinstance(parsed, tuple):
            head, end = parsed
            await self._start(head, buffered, end)

    async def _hand_over(self, buffered: bytes) -> None:
        """Serve the connection hypercorn's way from here on, starting with ``buffered`` (a request's first byte on)."""
        self._hypercorn = True
        limit = self.config.h11_max_incomplete_size
        self.connection = LeanServerConnection(h11.SERVER, max_incomplete_event_size=limit)
        self.connection.receive_data(buffered)
        await self._handle_events()

    async def _start(self, head: RequestHead, buffered: bytes, end: int) -> None:
        notice = DisconnectNotice()
        extensions: dict[str, Any] = {DISCONNECT_EXTENSION: notice}
        arrived = None if self._server is None else self._server.read_at
        if arrived is not None:
            extensions[ARRIVED_EXTENSION] = arrived
        path, _, query_string = head.target.partition(b"?")
        scope: Any = {
            "type": "http",
            "http_version": "1.1",
            "asgi": _ASGI,
            "method": head.method.decode("ascii").upper(),
            "scheme": "https" if self.ssl else "http",
            "path": unquote(path.decode("ascii")),
            "raw_path": path,
            "query_string": query_string,
            "root_path": self.config.root_path,
            "headers": head.headers,
            "client": self.client,
            "server": self.server,
            "state": self.connection_state.copy(),
            "extensions": extensions,
        }
        length = head.content_length
        body = buffered[end:end + length]
        rest = buffered[end + length:]
        exchange = self._exchange = LeanExchange(self, head.keep_alive, notice, length - len(body))
        self._pending = rest  # a request sent behind this one waits for its response to end
        await self.send(Updated(idle=False))
        server = self._server
        # The whole request is here: served in the connection's task (by its read loop, once this returns), with no
        # task of its own (its spawn, and the scheduler's turn before it starts, are on the way to the first event);
        # the client is watched meanwhile by the worker's ``ClientWatch``.
        inline = server is not None and server.serves_inline and len(body) == length and type(self.app) is ASGIWrapper
        inbox = AppInbox(self.config.max_app_queue_size) if inline else None
        if inbox is not None:
            exchange.put = inbox.send
        else:
            exchange.put = await self.task_group.spawn_app(self.app, self.config, scope, exchange.app_send)
        await exchange.queue(body)
        self.keep_alive_requests += 1
        await self.context.mark_request()
        if inbox is not None:
            assert server is not None
            plain = server._raw_socket
            assert plain is not None
            client_watch().add(plain, exchange)
            asgi, ended = _direct(self.app)  # (last: nothing here fails once the request is counted in flight)
            server.inline = _serve_asgi(asgi, self.config, scope, inbox.receive, exchange.app_send, ended)

    async def recycle(self, exchange: LeanExchange, keep_alive: bool) -> None:
        """``exchange`` is over: the connection waits for its next request (the reader takes up one that came
        meanwhile), or closes."""
        self._exchange = None
        if not keep_alive or self.context.terminated.is_set():
            self._done = True
            exchange.finish()
            await self.send(Closed())
            return
        await self.send(Updated(idle=True))
        exchange.finish()


class LeanExchange:
    """One request and its response on ``LeanH1Protocol``'s short way: the application's ``send``, and where the
    request's body and the client's going away reach it."""

    __slots__ = ("closed", "ended", "finished", "framing", "held", "keep_alive", "notice", "protocol", "put",
                 "remaining", "state")

    def __init__(self, protocol: LeanH1Protocol, keep_alive: bool, notice: DisconnectNotice, remaining: int) -> None:
        self.protocol = protocol
        self.notice = notice
        #: request-body bytes still to come
        self.remaining = remaining
        #: the application's inbox (``InboxTaskGroup.spawn_app``'s ``AppInbox.send``)
        self.put: Callable[[Any], Awaitable[None]] | None = None
        #: 0: no response yet; 1: its body is being sent; 2: complete (or the application returned)
        self.state = 0
        self.held: bytes | None = None
        self.framing: Framing | None = None
        self.keep_alive = keep_alive
        #: the client went away (or the connection broke)
        self.closed = False
        #: the exchange is over; ``ended`` is set then, made only when a task waits for it
        self.finished = False
        self.ended: trio.Event | None = None

    async def queue(self, body: bytes) -> None:
        """Give the application a piece of the request's body (dropped once it has returned, or has answered)."""
        if self.state != 2:
            await self._put({"type": "http.request", "body": body, "more_body": self.remaining > 0})

    async def _put(self, message: Any) -> None:
        """Queue ``message`` for the application: at once when its inbox has room, else waiting for room."""
        put = self.put
        assert put is not None
        inbox = getattr(put, "__self__", None)
        if type(inbox) is AppInbox:
            try:
                inbox.send_nowait(message)
                return
            except trio.WouldBlock:
                pass
        await put(message)

    async def received(self, data: bytes) -> None:
        if not data:  # the client closed its side; ``client_closed`` follows once the read loop ends
            return
        remaining = self.remaining
        if remaining:
            body = data[:remaining]
            data = data[remaining:]
            self.remaining = remaining - len(body)
            await self.queue(body)
        if data:
            # The next request, sent before this one's response ended: the reader waits for that end (as h11's
            # PAUSED makes hypercorn's reader wait), then takes it up.
            self.protocol._pending += data
            await self.over()

    async def over(self) -> None:
        """Wait until the exchange is over (its response complete, or the connection closing)."""
        if self.finished:
            await trio.lowlevel.checkpoint()
            return
        if self.ended is None:
            self.ended = trio.Event()
        await self.ended.wait()

    def finish(self) -> None:
        self.finished = True
        if self.ended is not None:
            self.ended.set()

    async def client_closed(self) -> None:
        if self._close_seen() and self.put is not None:
            await self._put(_DISCONNECT)

    def _close_seen(self) -> bool:
        """The client is gone: its disconnect notice fires (once); whether this was the first time."""
        if self.closed:
            return False
        self.closed = True
        self.notice.fire()
        return True

    def readable(self, sock: socket.socket) -> bool:
        """The client's socket is readable while this request is served in the connection's task
        (``ClientWatch``): read what came, once.  The next request, sent before this one's answer ended, waits for
        that end (as it would in the read loop, which reads nothing more meanwhile); the client's close ends the
        request's work (its ``streamgw.disconnect`` notice and ``http.disconnect``) and, after it, the connection.
        Whether the socket is to be watched still (it was not: nothing to read after all)."""
        try:
            data = recv_now(sock, MAX_RECV)
        except OSError:  # reset
            data = b""
        if data is None:
            return True
        protocol = self.protocol
        if data:
            protocol._pending += data
            return False
        server = protocol._server
        if server is not None:
            server._read_done = True  # the read loop ends once this request is over
        if self._close_seen():
            inbox = getattr(self.put, "__self__", None)
            if type(inbox) is AppInbox:
                inbox.push(_DISCONNECT)
        return False

    async def app_send(self, message: Any) -> None:
        protocol = self.protocol
        if message is None:  # the application returned: no more body for it
            state, self.state = self.state, 2
            if state == 0 and not self.closed:  # no response: hypercorn's 500
                headers = [(b"content-length", b"0"), (b"connection", b"close"),
                           *protocol.config.response_headers("h11")]
                head, _, _ = response_head(500, headers, self.keep_alive)
                await protocol._send_raw(head)
                await protocol.recycle(self, False)
            elif state == 1:  # a response cut short: the client must not wait for the rest of it
                await protocol.recycle(self, False)
            return
        kind = message["type"]
        if kind == "http.response.start" and self.state == 0:
            headers = list(chain(message.get("headers", ()), protocol.config.response_headers("h11")))
            if protocol.keep_alive_requests >= protocol.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            head, self.framing, self.keep_alive = response_head(int(message["status"]), headers, self.keep_alive)
            self.held = head
            self.state = 1
        elif kind == "http.response.body" and self.state == 1:
            await self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise UnexpectedMessageError(ASGIHTTPState.CLOSED if self.state == 2 else (
                ASGIHTTPState.REQUEST if self.state == 0 else ASGIHTTPState.RESPONSE), kind)

    async def _body(self, body: bytes, more: bool) -> None:
        framing = self.framing
        assert framing is not None
        data = b""
        if body and not framing.none:
            if framing.chunked:
                data = b"%x\r\n%b\r\n" % (len(body), body)
            else:
                if len(body) > framing.length:
                    self.state = 2
                    await self.protocol.recycle(self, False)
                    raise ValueError("Too much data for declared Content-Length")
                framing.length -= len(body)
                data = bytes(body)
        held, self.held = self.held, None
        if held is not None:
            data = held + data
        if not more:
            self.state = 2
            if framing.chunked:
                data += b"0\r\n\r\n"
            elif framing.length:
                if data and not self.closed:
                    await self.protocol._send_raw(data)
                await self.protocol.recycle(self, False)
                raise ValueError("Too little data for declared Content-Length")
        if data and not self.closed:
            await self.protocol._send_raw(data)
        if not more:
            await self._ended()

    async def _ended(self) -> None:
        """The response is complete: the application hears of it (``http.disconnect``), the connection goes on."""
        protocol = self.protocol
        self.notice.fire()
        if not self.closed:
            _tell_ended(self.put)
        # A response refused before its body was read (401): let the reader take in the rest that has arrived
        for _ in range(4):
            if not self.remaining:
                break
            await trio.lowlevel.checkpoint()
        await protocol.recycle(self, self.keep_alive and not self.remaining and not self.closed)


class ClientWatch:
    """The clients of the requests served in their connections' own tasks, watched by one task for the worker.

    ``LeanH1Protocol`` serves a request whose head and body came whole in the connection's task: no task is
    spawned for it, and the scheduler has no turn to take between its head and its application.  That task is then
    busy with the request and does not read its client, as it otherwise would while a response streams (to see the
    client leave, or send its next request early).  Those sockets are in one epoll set instead, and one trio system
    task waits for it: a socket that becomes readable leaves the set and its exchange reads it once
    (``LeanExchange.readable``).  A socket is in the set from the request's start until its application returns.
    """

    __slots__ = ("_epoll", "_exchanges")

    #: seconds the watch's task (and its epoll set) stays once nothing is watched
    LINGER = 2.0

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None  # and the task waiting on it: both made on first use
        self._exchanges: dict[int, tuple[socket.socket, LeanExchange]] = {}

    def add(self, sock: socket.socket, exchange: LeanExchange) -> None:
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
            trio.lowlevel.spawn_system_task(self._watch, epoll, name="streamgw client watch")
        fd = sock.fileno()
        epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._exchanges[fd] = (sock, exchange)

    def discard(self, fd: int, sock: socket.socket) -> None:
        """Stop watching ``sock``, which was ``fd`` when it was added (if it is still watched; it may be closed)."""
        watched = self._exchanges.get(fd)
        if watched is not None and watched[0] is sock:
            del self._exchanges[fd]
            if self._epoll is not None:
                with contextlib.suppress(OSError):  # closed: the kernel has left it out of the set already
                    self._epoll.unregister(fd)

    def __len__(self) -> int:
        return len(self._exchanges)

    async def _watch(self, epoll: select.epoll) -> None:
        """Wait for the set; end (closing it) once nothing was watched for ``LINGER`` seconds."""
        exchanges = self._exchanges
        try:
            while True:
                with trio.move_on_after(self.LINGER) as lingered:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                if lingered.cancelled_caught:
                    if not exchanges:
                        return
                    continue
                for fd, _ in epoll.poll(0):
                    watched = exchanges.get(fd)
                    if watched is None:
                        continue
                    sock, exchange = watched
                    try:
                        keep = exchange.readable(sock)
                    except Exception:  # a system task must not fail: the request goes on, unwatched
                        log.exception("watching a client failed")
                        keep = False
                    if not keep:
                        self.discard(fd, sock)
        finally:
            self._epoll = None
            epoll.close()
            exchanges.clear()  # (closed with the trio run: what was watched is gone too)


_CLIENT_WATCH: trio.lowlevel.RunVar[ClientWatch] = trio.lowlevel.RunVar("streamgw_client_watch")


def client_watch() -> ClientWatch:
    """This trio run's ``ClientWatch``."""
    return run_local(_CLIENT_WATCH, ClientWatch)


def _framed_twice(request: h11.Request) -> bool:
    """Whether ``request`` has both a Content-Length and a Transfer-Encoding header."""
    names = {name for name, _ in request.headers}  # h11 lower-cases header names
    return b"content-length" in names and b"transfer-encoding" in names


def http2_enabled(config: HypercornConfig) -> bool:
    """Whether ``config`` allows HTTP/2 (a plain hypercorn ``Config`` does, as hypercorn always has)."""
    return bool(getattr(config, "http2", True))


class GatewayHypercornConfig(HypercornConfig):
    """hypercorn's ``Config`` plus streamgw's HTTP/2 switch.

    hypercorn's own ``run()`` pickles its config into each worker process it spawns; unpickling this
    class there runs ``install()`` before the worker serves, so such workers get the fixes too.
    """

    #: accept HTTP/2: h2c (prior knowledge, ``Upgrade: h2c``) on cleartext, ALPN ``h2`` with TLS
    http2: bool = True
    #: open client connections per worker (``streamgw.serving.worker``; 0: from the open-file limit)
    max_connections: int = 0
    #: ``response_headers`` by protocol, with the second (``int(time.time())``) they were made in
    _made_headers: dict[str, tuple[int, list[tuple[bytes, bytes]]]] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        install()
        self.__dict__.update(state)

    def response_headers(self, protocol: str) -> list[tuple[bytes, bytes]]:
        """hypercorn's headers of every response (``date``, ``server``), made once a second, not per response.

        ``date`` has a resolution of one second; formatting it (``wsgiref``'s ``format_date_time``) was
        a few microseconds of every response's head, on the way to a stream's first event.
        """
        second = int(time.time())
        made = self._made_headers
        if made is None:
            made = self._made_headers = {}
        found = made.get(protocol)
        if found is None or found[0] != second:
            found = made[protocol] = (second, super().response_headers(protocol))
        return list(found[1])  # callers may extend it


#: the names hypercorn's trio worker looks up when it serves, and what ``install()`` puts there
_PATCHES: tuple[tuple[str, str, type], ...] = (
    ("hypercorn.trio.run", "TCPServer", SerialisedTCPServer),
    ("hypercorn.trio.tcp_server", "TaskGroup", InboxTaskGroup),
    ("hypercorn.protocol", "H11Protocol", LeanH1Protocol),
    ("hypercorn.protocol", "H2Protocol", FairH2Protocol),
    ("hypercorn.protocol.h11", "HTTPStream", DirectBodyHTTPStream),
    ("hypercorn.protocol.h2", "HTTPStream", DirectBodyHTTPStream),
)
_ORIGINALS: dict[tuple[str, str], Any] = {}


def install() -> None:
    """Make hypercorn's trio worker serve connections with the classes above (idempotent).

    Affects servers started after the call, in this process.
    """
    for module_name, name, replacement in _PATCHES:
        module = importlib.import_module(module_name)
        current = getattr(module, name)
        if current is not replacement:
            _ORIGINALS[module_name, name] = current
            setattr(module, name, replacement)


def uninstall() -> None:
    """Put hypercorn's own classes back (for tests that show what the fix prevents)."""
    for (module_name, name), original in list(_ORIGINALS.items()):
        setattr(importlib.import_module(module_name), name, original)
        del _ORIGINALS[module_name, name]


def installed() -> bool:
    """Whether hypercorn's trio worker currently uses ``SerialisedTCPServer``."""
    module_name, name, replacement = _PATCHES[0]
    return getattr(importlib.import_module(module_name), name) is replacement

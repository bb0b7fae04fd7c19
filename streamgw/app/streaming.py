"""``POST /v1/responses`` as a plain ASGI endpoint: the hot path, without a framework in the way.

Every Responses request costs the gateway its share of one core, and with short streams the
fixed cost per request dominates.  Quart would add a request object, hooks, two tasks and a
nursery per request and an extra layer per body chunk; this endpoint talks ASGI directly:

* the handler task reads the body, validates it, picks the plan and runs it: it reads the
  upstream and writes each batch of events with one ``send`` — no task hand-off per event;
* a client that leaves cancels the work and so closes the upstream at once: our hypercorn
  calls back on disconnect (the ``streamgw.disconnect`` extension), other ASGI servers get a
  watcher task per request that waits for ``http.disconnect``;
* streams get the ``: keepalive`` comment whenever nothing was written for the keepalive
  interval — before the first delta (which commits the response to 200) and mid-stream — from
  one timer task per worker (``KeepaliveTimer``), or from the watcher task where there is one.
  Upstream reads are never cancelled for a keepalive (``trio.SSLStream`` is unusable after a
  cancelled receive);
* an error before anything was sent is an ordinary HTTP error envelope; after the 200 went
  out it becomes a complete ``response.failed`` stream.

Every other route stays in the Quart app (``routes.py``).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from streamgw.core.emitter import Event
from streamgw.core.request import ResponsesRequest, parse_request
from streamgw.core.sse import encode_comment, encode_event
from streamgw.core.tracecontext import parse_traceparent
from streamgw.engine.lifecycle import LiveResponse, RequestEntry, open_response, request_id
from streamgw.errors import GatewayError, PayloadTooLarge, RequestTimeout, ServerBusy
from streamgw.timers import prune

if TYPE_CHECKING:
    from streamgw.app.gateway import Gateway

log = logging.getLogger("streamgw")

#: the ASGI extension through which the server calls back on disconnect (``streamgw.serving``'s hypercorn)
DISCONNECT_EXTENSION = "streamgw.disconnect"
#: the ASGI extension with the time (``trio.current_time()``) the server had read the request's head: the
#: request's clocks start there (``streamgw.serving``'s hypercorn; other servers: when the application starts)
ARRIVED_EXTENSION = "streamgw.arrived"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # ask nginx-like proxies not to buffer the stream
}
KEEPALIVE = encode_comment("keepalive")
_SSE_RAW = [(k.encode(), v.encode()) for k, v in SSE_HEADERS.items()]
_JSON_TYPE = (b"content-type", b"application/json")


def encode_events(events: list[Event]) -> bytes:
    """Several events as one write."""
    if len(events) == 1:
        return encode_event(events[0])
    return b"".join([encode_event(e) for e in events])


def json_body(payload: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def arrival(scope: Scope, now: float) -> float:
    """When the request arrived (``ARRIVED_EXTENSION``), or ``now`` where the server does not say.

    A request's time to first event, its logged duration and its timeouts count from there: the server's
    share (parsing the head, making the stream and the task that runs the application) is time its client
    waits too.
    """
    arrived = scope.get("extensions", {}).get(ARRIVED_EXTENSION)
    return arrived if type(arrived) is float and arrived <= now else now


class _ClientGone(Exception):
    """The client disconnected before the request body was complete."""


class BodyBudget:
    """The bytes of request bodies one worker is receiving or parsing, against ``cap`` (0: no cap).

    Each body claims its Content-Length before a byte is read, or what has arrived so far when it is
    chunked, and gives it back once it is parsed.  A claim that would go over the cap while other
    bodies are in flight is refused with ``ServerBusy``; a body alone is always let through, so a cap
    below ``max_body_bytes`` cannot make a request impossible.
    """

    __slots__ = ("cap", "used")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0

    def grow(self, held: int, size: int) -> int:
        """Grow a claim of ``held`` bytes to ``size`` (if larger); return the claim now held."""
        if size <= held:
            return held
        if self.cap and self.used > held and self.used - held + size > self.cap:
            raise ServerBusy("The gateway is receiving too many request bodies at once; retry shortly.",
                             headers={"retry-after": "1"})
        self.used += size - held
        return size


class _Exchange:
    """One request's response side: who has written what, and the client's presence.

    The handler task writes events; the watcher task writes keepalives.  They never send at
    the same time: ``busy`` marks a send in progress and the other side waits for it.
    """

    __slots__ = ("_send", "_waiter", "busy", "committed", "ended", "entry", "gone", "headers", "last_write", "live",
                 "request_id", "sent", "status", "work")

    def __init__(self, send: Send, request_id: str, now: float) -> None:
        self._send = send
        self.request_id = request_id
        self.entry: RequestEntry | None = None  # the request-log entry, once the lifecycle has one
        self.sent = 0  # body bytes written
        self.committed = False  # the response start went out
        self.ended = False  # the last body message went out
        self.status = 0
        self.busy = False
        self._waiter: trio.Event | None = None
        self.last_write = now  # (no write yet: the request's start)
        self.gone = False
        #: headers every answer carries besides the usual ones (the admission's rate-limit state)
        self.headers: Mapping[str, str] = {}
        self.live: LiveResponse | None = None  # the response, once the lifecycle has begun
        #: what a disconnect cancels (``client_left``), while the response is being served
        self.work: trio.CancelScope | None = None

    # ``client_left`` and ``deliver`` are methods rather than closures made per request: an open stream holds
    # them for its whole life, and a closure costs a function and a cell per captured name.

    def client_left(self) -> None:
        """The ``streamgw.disconnect`` callback: the work ends, unless the last bytes went out already."""
        if not self.ended:  # after the last bytes a close changes nothing
            self.gone = True
            if self.work is not None:
                self.work.cancel()

    async def deliver(self, events: list[Any]) -> None:
        """The SSE sink: each batch as one write; the batch with the terminal event ends the body."""
        live = self.live
        assert live is not None
        await self.write(encode_events(events), more=not live.done)
        live.entry.wrote(self.last_write)

    async def _idle(self) -> None:
        while self.busy:
            if self._waiter is None:
                self._waiter = trio.Event()
            await self._waiter.wait()

    def _release(self) -> None:
        self.busy = False
        self.last_write = trio.current_time()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.set()

    async def write(self, data: bytes, more: bool = True) -> None:
        """Send SSE bytes, committing the stream to ``200`` first if that has not happened."""
        if self.busy:
            await self._idle()
        if self.ended:
            return
        self.ended = not more
        self.busy = True
        try:
            if not self.committed:
                await self._start(200, _SSE_RAW)
            self._count(len(data))  # before: hypercorn may end the exchange (a cancel) as the last bytes go
            await self._send({"type": "http.response.body", "body": data, "more_body": more})
        finally:
            self._release()

    async def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """A whole non-streamed response (JSON)."""
        if self.busy:
            await self._idle()
        if self.ended:
            return
        self.ended = True
        self.busy = True
        try:
            await self._start(status, [_JSON_TYPE, (b"content-length", str(len(body)).encode()), *headers])
            self._count(len(body))
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
        finally:
            self._release()

    def _count(self, size: int) -> None:
        self.sent += size
        if self.entry is not None:
            self.entry.bytes_out += size

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.committed = True
        self.status = status
        if self.entry is not None:
            self.entry.committed = True  # an error from now on ends the stream with response.failed
            self.entry.mark("head")  # the first events are encoded: the server writes from here
        extra = [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await self._send({"type": "http.response.start", "status": status,
                          "headers": [*headers, *extra, (b"x-request-id", self.request_id.encode())]})

    def keepalive_due(self, interval: float) -> bool:
        return not (self.busy or self.ended) and trio.current_time() - self.last_write >= interval


#: the values of a request's scope that are the same for nearly every request to this endpoint: ``_share_constants``
_CONSTANTS: dict[str | bytes, str | bytes] = {v: v for v in ("POST", "/v1/responses", b"/v1/responses", "1.1", "2")}


def _share_constants(scope: Scope) -> None:
    """Swap the scope's own copies of the method, path and HTTP version for equal shared ones.

    The server makes them for each request and keeps the scope for as long as the response lasts: ~0.2 KB of
    strings an open stream, which are the same for every request here.
    """
    for key in ("method", "path", "raw_path", "http_version"):
        shared = _CONSTANTS.get(scope.get(key))  # type: ignore[arg-type]
        if shared is not None:
            scope[key] = shared


class ResponsesEndpoint:
    """The ASGI application for ``POST /v1/responses``."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.bodies = BodyBudget(gw.config.server.max_body_bytes_in_flight)
        self.keepalives = KeepaliveTimer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request: ``_begin`` (authenticate, read, parse, open the lifecycle), then the response.

        Serving is written out here rather than in a method of its own: this frame waits for as long as the
        response lasts, and so would every frame below it (an open stream holds each of them).
        """
        now = trio.current_time()
        exchange = _Exchange(send, request_id(_header(scope, b"x-request-id")), now)
        live = await self._begin(scope, receive, exchange, now)
        if live is None:
            return
        # Every header the response needs has been read (key, request id, trace context, body length): the
        # server holds this scope for as long as the response lasts, and a client's headers (an SDK sends a
        # dozen or more) need not stay with it (~2 KB an open stream; the server's access log is off).
        scope["headers"] = ()
        _share_constants(scope)
        notice: _DisconnectNotice | None = scope.get("extensions", {}).get(DISCONNECT_EXTENSION)
        del scope  # nor need this frame keep the scope (~1 KB with its dicts; our HTTP/1.1 short way keeps none)
        try:
            if notice is None:
                await self._serve_watched(live, exchange, receive)
                return
            # With a server that calls back on disconnect (``streamgw.disconnect``, our hypercorn), the request
            # needs no task of its own to look out for the client, and its keepalives come from the worker's
            # one ``KeepaliveTimer``; any other ASGI server gets a watcher task (``_serve_watched``).
            failure: Exception | None = None
            exchange.live = live
            left = exchange.client_left
            with trio.CancelScope() as work:
                exchange.work = work
                if not notice.on_disconnect(left):
                    left()  # the client left before the work began
                ticket = self.keepalives.add(exchange, live, work) if live.request.stream else None
                try:
                    async with live:
                        if live.request.stream:
                            rest = await live.begin_stream(exchange.deliver)  # the first events written
                            await rest  # awaited here: an open stream holds no lifecycle frame (``begin_stream``)
                        else:
                            final = await live.collect()
                            await exchange.respond(200, json_body(final), [])
                except Exception as exc:
                    failure = exc
                finally:
                    notice.forget(left)
                    exchange.work = None
                    if ticket is not None:
                        self.keepalives.release(ticket)
            if failure is not None:
                raise failure
        except GatewayError as error:  # the lifecycle mapped everything else to internal_error
            if not exchange.gone:
                await _render(exchange, error, live)
        finally:
            live.release()

    async def _begin(self, scope: Scope, receive: Receive, exchange: _Exchange, now: float) -> LiveResponse | None:
        """Authenticate, read and parse the body, and open the lifecycle; None when the request was answered."""
        gw = self.gw
        started = arrival(scope, now)
        trace = parse_traceparent(_header(scope, b"traceparent"))
        try:
            caller = await gw.authenticate(_header(scope, b"authorization"))
        except GatewayError as error:
            try:
                await _render(exchange, error, None)
            finally:
                gw.responses.refused("sse", exchange.request_id, error, trace=trace, started=started,
                                     http_version=str(scope.get("http_version", "")), bytes_out=exchange.sent)
            return None
        try:
            req = await self._request(scope, receive)
        except _ClientGone:
            return None
        except GatewayError as error:
            try:
                if gw.responses.admission and caller.key is not None:
                    exchange.headers = await gw.responses.headers(caller)
                await _render(exchange, error, None)
            finally:
                gw.responses.refused("sse", exchange.request_id, error, caller, trace=trace, started=started,
                                     http_version=str(scope.get("http_version", "")), bytes_out=exchange.sent)
            return None
        live = open_response(gw.responses, caller, req, door="sse" if req.stream else "json",
                             request_id=exchange.request_id, started=started, trace=trace)
        live.entry.http_version = str(scope.get("http_version", ""))
        if live.entry.phases is not None:
            live.entry.phases["began"] = now  # the end of ``intake``: the server's share
        live.hold = True  # logged once the error below is written too
        exchange.entry = live.entry
        exchange.headers = live.headers  # filled by admission (or, for a refusal before it, when the block ends)
        return live

    async def _request(self, scope: Scope, receive: Receive) -> ResponsesRequest:
        """Read and parse the body within the worker's ``BodyBudget``.

        The raw bytes are claimed until they are parsed and are not referenced after this returns: a
        request that streams for minutes holds its parsed form only, not the body as well.
        """
        server = self.gw.config.server
        claim = _Claim(self.bodies, _closing_headers(scope))
        try:
            body = await _read_body(scope, receive, server.max_body_bytes, server.body_timeout, claim)
            return parse_request(body)
        finally:
            claim.release()

    async def _serve_watched(self, live: LiveResponse, exchange: _Exchange, receive: Receive) -> None:
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, receive, exchange, nursery.cancel_scope, live)
            try:
                await _run(live, exchange)
            except Exception as exc:  # raised below, outside the nursery (no exception group)
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure


async def _run(live: LiveResponse, exchange: _Exchange) -> None:
    async with live:
        if live.request.stream:
            exchange.live = live
            await live.stream(exchange.deliver)
        else:
            final = await live.collect()
            await exchange.respond(200, json_body(final), [])


class _DisconnectNotice(Protocol):
    """What the ``streamgw.disconnect`` extension offers (``streamgw.serving.hypercorn_trio.DisconnectNotice``)."""

    def on_disconnect(self, callback: Callable[[], None]) -> bool: ...

    def forget(self, callback: Callable[[], None]) -> None: ...


class _Ticket:
    """One stream's place with the ``KeepaliveTimer``."""

    __slots__ = ("exchange", "live", "work")

    def __init__(self, exchange: _Exchange, live: LiveResponse, work: trio.CancelScope) -> None:
        self.exchange: _Exchange | None = exchange
        self.live: LiveResponse | None = live
        self.work: trio.CancelScope | None = work

    def open(self) -> bool:
        """Whether the response is still going (not ``close``d)."""
        return self.exchange is not None

    def close(self) -> None:
        """The response is over: no more keepalives, and nothing of it kept alive by the timer."""
        self.exchange = self.live = self.work = None

    def interval(self) -> float:
        live = self.live
        return live.keepalive if live is not None and live.keepalive > 0 else math.inf

    async def send(self) -> None:
        exchange = self.exchange
        if exchange is None or not exchange.keepalive_due(self.interval()):
            return
        try:
            await exchange.write(KEEPALIVE)
        except Exception:  # the watcher task's failure would have ended the request: so does this
            log.debug("a keepalive write failed; the response ends", exc_info=True)
            if self.work is not None:
                self.work.cancel()


class KeepaliveTimer:
    """Every stream's ``: keepalive`` comments from one task per worker, instead of a task per stream.

    Streams are kept in a heap by when their next keepalive is due (last write + interval).  An event
    written meanwhile moves that time on without touching the heap: when the entry comes up, the due
    time is worked out again and the entry goes back.  Each keepalive is written by a short-lived task
    of its own (a child of the timer task), so a client that does not read holds up no other stream's
    keepalives.  The timer task is a trio system task (the worker has no nursery for the application),
    started in the trio run that serves; nothing in it or its children may raise (``_Ticket.send``
    turns a failed write into the end of that one response).
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Ticket]] = []
        self._order = itertools.count()
        self._wake: trio.CancelScope | None = None
        self._run: object = None  # the trio run the timer task serves (its root task)
        self._released = 0  # tickets released since the last sweep (``release``)

    def add(self, exchange: _Exchange, live: LiveResponse, work: trio.CancelScope) -> _Ticket:
        """Keep ``exchange`` alive while it lasts (``live.keepalive``; 0: off); ``work`` ends if a write fails."""
        ticket = _Ticket(exchange, live, work)
        due = exchange.last_write + ticket.interval()
        if due == math.inf:
            return ticket  # keepalives off: the interval is known once the route is, and stays off
        root = trio.lowlevel.current_root_task()
        if self._run is not root:  # the first stream of this trio run (a test may serve the app in several)
            self._run, self._wake = root, None
            self._heap.clear()  # tickets of an earlier run, timed by its clock
            trio.lowlevel.spawn_system_task(self._tick, name="streamgw keepalives")
        elif self._wake is not None and due < self._wake.deadline:
            self._wake.deadline = due
        heapq.heappush(self._heap, (due, next(self._order), ticket))
        return ticket

    def release(self, ticket: _Ticket) -> None:
        """The response is over: close its ticket; once released tickets are half the heap, drop them.

        A released ticket's entry would otherwise stay until its next keepalive was due (an interval after
        the response's last write, 15 s by default): short responses at a high rate would keep thousands
        of them, and the collector would walk them again and again.
        """
        ticket.close()
        self._released += 1
        if self._released * 2 >= len(self._heap):
            prune(self._heap, _Ticket.open)
            self._released = 0

    async def _tick(self) -> None:
        heap = self._heap
        async with trio.open_nursery() as writes:  # the keepalive writes are this task's children
            while True:
                with trio.CancelScope() as wake:
                    wake.deadline = heap[0][0] if heap else math.inf
                    self._wake = wake
                    await trio.sleep_forever()
                self._wake = None
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, _, ticket = heapq.heappop(heap)
                    exchange = ticket.exchange
                    if exchange is None:
                        continue
                    interval = ticket.interval()
                    due = exchange.last_write + interval
                    if due <= now:
                        if exchange.keepalive_due(interval):
                            writes.start_soon(ticket.send, name="streamgw keepalive")
                        due = now + interval  # the write moves last_write on; a busy stream waits a round
                    if due < math.inf:
                        heapq.heappush(heap, (due, next(self._order), ticket))


async def _render(exchange: _Exchange, error: GatewayError, live: LiveResponse | None) -> None:
    """The one error renderer of this door: an HTTP error envelope before commit, ``response.failed`` after."""
    if not exchange.committed:
        if live is not None:
            exchange.headers = {**live.headers, **error.headers}  # the error's own (retry-after, ...) win
            headers = []
        else:
            headers = [(k.encode(), v.encode()) for k, v in error.headers.items()]
        await exchange.respond(error.status, json_body(error.envelope()), headers)
    elif live is not None and live.request.stream and not exchange.ended:
        await exchange.write(encode_events(live.failure_events(error)), more=False)


async def _watch(receive: Receive, exchange: _Exchange, work: trio.CancelScope, live: LiveResponse) -> None:
    """Cancel ``work`` when the client disconnects; send keepalives when the stream has been quiet.

    The interval is the lifecycle's (global < provider < route), re-read each round: before the
    first delta it is the plan's, then the winning target's.
    """
    while True:
        interval = live.keepalive if live.keepalive > 0 else math.inf
        with trio.move_on_at(exchange.last_write + interval):
            message = await receive()
            if message["type"] == "http.disconnect":
                exchange.gone = True
                work.cancel()
                return
            continue
        if exchange.keepalive_due(interval):
            await exchange.write(KEEPALIVE)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class _Claim:
    """One request body's share of the ``BodyBudget``."""

    __slots__ = ("budget", "close", "held")

    def __init__(self, budget: BodyBudget, close: dict[str, str]) -> None:
        self.budget = budget
        self.close = close  # headers of an answer sent before the body was read
        self.held = 0

    def grow(self, size: int) -> None:
        try:
            self.held = self.budget.grow(self.held, size)
        except ServerBusy as busy:
            busy.headers.update(self.close)
            raise

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0


async def _read_body(scope: Scope, receive: Receive, limit: int, within: float, claim: _Claim) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes (checked against Content-Length first).

    The client has ``within`` seconds (0: no limit) to send it all; a 408, 413 or 503 raised here is
    answered without reading the rest, and hypercorn then closes the connection (HTTP/1.1: the unread
    rest of the body cannot be told from a next request).
    """
    close = claim.close
    declared = _header(scope, b"content-length")
    expected = -1  # chunked: the end is the message without ``more_body``
    if declared is not None and declared.isdigit():
        expected = int(declared)
        if expected > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes", headers=close)
        claim.grow(expected)
    parts: list[bytes] = []
    size = 0
    done = False
    queued = _queued(receive)
    while queued is not None and not done:  # what is queued already needs no timer (nor a checkpoint)
        try:
            message = queued()
        except trio.WouldBlock:
            break  # not all here yet: wait for the rest as usual
        size, done = _take(message, parts, size, expected, limit, claim)
    if not done:
        with trio.move_on_after(within or math.inf) as timer:
            while not done:
                size, done = _take(await receive(), parts, size, expected, limit, claim)
        if timer.cancelled_caught:
            raise RequestTimeout(f"The request body was not received within {within:g} s.", headers=close)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _take(message: Message, parts: list[bytes], size: int, expected: int, limit: int,
          claim: _Claim) -> tuple[int, bool]:
    """One ASGI message of the request body into ``parts``: the body's size so far, and whether it is complete."""
    if message["type"] == "http.disconnect":
        raise _ClientGone
    chunk = message.get("body", b"")
    if chunk:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes", headers=claim.close)
        claim.grow(size)  # chunked: counted as it arrives
        parts.append(chunk)
    # With a Content-Length the body is whole once that many bytes came (the server's parser
    # enforces the length): the empty closing message is left to the watcher, not waited for.
    return size, size == expected or not message.get("more_body", False)


def _queued(receive: Receive) -> Callable[[], Message] | None:
    """The non-blocking twin of ``receive`` when the server's is a trio memory channel's (hypercorn's), or a
    queue that says its ``receive_nowait`` raises ``trio.WouldBlock`` as trio's does (our hypercorn's ``AppInbox``).

    A body that came in the same packets as the head is already queued when the handler starts;
    taking it without a checkpoint saves a trip through the scheduler on the way to the first event.
    """
    channel = getattr(receive, "__self__", None)
    if isinstance(channel, trio.MemoryReceiveChannel) or getattr(channel, "nowait_raises_would_block", False):
        nowait: Callable[[], Message] = channel.receive_nowait  # type: ignore[union-attr]
        return nowait
    return None


def _closing_headers(scope: Scope) -> dict[str, str]:
    """``connection: close`` for an HTTP/1.x answer sent before the body was read (HTTP/2 forbids the header)."""
    return {"connection": "close"} if str(scope.get("http_version", "1.1")).startswith("1") else {}

"""WebSocket mode on ``/v1/responses``: ``response.create`` frames in, one event a frame out.

OpenAI's WebSocket mode: https://developers.openai.com/api/docs/guides/websocket-mode.

The same path as ``POST /v1/responses`` and the same engine: a frame is validated by
``parse_request`` (after ``type`` and the implicit ``stream`` are taken off), routed,
expanded and run exactly as a streamed POST, and every event the SSE stream would carry
after ``data:`` goes out as one text frame.  Differences from SSE, all from the protocol:

* auth is checked on the upgrade request: a bad key gets an HTTP 401 with the JSON error
  envelope and the connection is never upgraded; the key's tenant is the connection's, and
  ``previous_response_id`` and ``item_reference`` reach only that tenant's stored responses.
  The key is checked again for every ``response.create`` (from this worker's memory): once it
  is disabled, deleted or expired, each one gets the 401 as an error frame;
* what would be an HTTP error before the first byte (bad input, unknown model, upstream
  4xx/5xx before the first delta, ...) is an error frame
  ``{"type":"error","status":N,"error":{"type","code","message","param"}}`` and the
  connection stays open; a failure after output started ends with ``response.failed``;
* one response at a time: a ``response.create`` while one runs gets
  ``response_already_in_flight`` and the running one continues, so frames are read by the
  handler while the response runs in a task of its own;
* the connection keeps its last finished response in memory for ``previous_response_id``
  (even with ``store: false`` or no store at all), consulted before the store;
* ``[server] websocket_max_age``: when the connection reaches it, new responses are no
  longer started, a response in flight is left to finish (its own timeouts bound it), then
  the error frame ``websocket_connection_limit_reached`` goes out and the socket closes with
  code 1000.

Lifetimes: the handler owns one nursery for the connection (the response task, the age
timer).  When the client leaves, quart-trio cancels the handler, the nursery cancels the
response task, and its ``finally`` closes the upstream under a shield — the same path as
an SSE client that disconnects.  Sends go through one lock: with permessage-deflate the
order in which frames are compressed must be the order in which they are written.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, g
from quart.globals import websocket_ctx
from quart.wrappers import Websocket
from quart_trio import QuartTrio

from streamgw.core.emitter import Event
from streamgw.core.relay import RelayedEvent
from streamgw.core.request import ResponsesRequest, load_object, request_from_object
from streamgw.core.sse import event_json
from streamgw.core.tracecontext import TraceParent, parse_traceparent
from streamgw.engine.lifecycle import Caller, LiveResponse, open_response
from streamgw.errors import AuthenticationFailed, GatewayError, InvalidRequest, PayloadTooLarge
from streamgw.store.base import StoredResponse

if TYPE_CHECKING:
    from streamgw.app.gateway import Gateway

__all__ = ["ResponseSocket", "error_frame", "event_text", "install_websocket", "parse_create"]

log = logging.getLogger("streamgw")

CREATE = "response.create"
#: envelope fields of a ``response.create`` frame that are no ``POST /v1/responses`` body field
_ENVELOPE = ("type", "stream", "generate")
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class ConnectionLimitReached(InvalidRequest):
    """The connection reached ``[server] websocket_max_age``: the client opens a new one."""

    default_code = "websocket_connection_limit_reached"


class ResponseInFlight(InvalidRequest):
    """A ``response.create`` arrived while the connection's response was still running."""

    default_code = "response_already_in_flight"


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' is not supported in WebSocket mode: {why}.", param=param,
                          code="unsupported_parameter")


def parse_create(data: str | bytes) -> ResponsesRequest:
    """The request a ``response.create`` frame asks for; ``InvalidRequest`` (param set) if it is wrong.

    The frame holds every ``POST /v1/responses`` body field at top level, plus ``type``;
    ``stream`` is implicit (whatever the frame says, the response streams) and
    ``generate: true`` is the default.  Lanes (``stream_id``), ``background`` and
    ``generate: false`` are refused rather than silently ignored.
    """
    # The same checks as a POST body (Unicode, nesting), parsed once: the frame is not re-encoded.
    frame = load_object(data, "frame")
    kind = frame.get("type")
    if kind != CREATE:
        what = "has no 'type'" if kind is None else f"has the unknown type {json.dumps(kind)}"
        raise InvalidRequest(f"The frame {what}: this endpoint accepts '{CREATE}' frames.", param="type",
                             code="unknown_event_type")
    if "stream_id" in frame:
        raise _unsupported("stream_id", "this gateway runs one response at a time per connection, without lanes")
    if frame.get("background") is True:
        raise _unsupported("background", "open a WebSocket per concurrent response instead")
    if frame.get("generate", True) is not True:
        raise _unsupported("generate", "every response.create generates a response")
    body = {key: value for key, value in frame.items() if key not in _ENVELOPE}
    body["stream"] = True
    return request_from_object(body)


def event_text(event: Event | RelayedEvent) -> str:
    """The text frame of one event: exactly the JSON an SSE ``data:`` line would carry."""
    if isinstance(event, RelayedEvent):
        return event.data  # relayed unchanged from a native Responses upstream, no JSON work
    return event_json(event)


def error_frame(error: GatewayError) -> str:
    """The WebSocket error frame for ``error`` (the nested shape, with the HTTP-like status)."""
    detail: dict[str, Any] = {"type": error.type, "code": error.code, "message": error.message,
                              "param": error.param}
    if error.headers:
        detail["headers"] = dict(error.headers)
    return _compact({"type": "error", "status": error.status, "error": detail})


class ResponseSocket:
    """One accepted WebSocket-mode connection: reads frames, runs one response at a time."""

    def __init__(self, gw: Gateway, ws: Websocket, caller: Caller, request_id: str,
                 trace: TraceParent | None = None, http_version: str = "") -> None:
        self._gw = gw
        self._http_version = http_version  # of the handshake: for the request log
        self._ws = ws
        self._caller = caller  # authenticated on the upgrade: the connection's caller (and tenant)
        #: checked again for every response.create: a key disabled, deleted or expired meanwhile stops here too
        self._authorization = ws.headers.get("authorization")
        self._request_id = request_id
        self._trace = trace  # the handshake's traceparent: every response of the connection joins that trace
        self._max_age = gw.config.server.websocket_max_age
        self._send_lock = trio.Lock()
        self._busy = False  # a response.create is being served (from its frame to its last event)
        self._free = trio.Event()  # set while nothing is in flight
        self._free.set()
        self._expired = False  # the age limit was reached or the gateway drains: no new response starts
        self._last: dict[str, StoredResponse] = {}  # the connection's last finished response, by id

    async def serve(self) -> None:
        """Read frames until the client leaves or the connection reaches its age limit."""
        metrics = self._gw.metrics
        metrics.websocket_connections.inc()
        try:
            async with trio.open_nursery() as nursery:
                if 0 < self._max_age < math.inf:
                    nursery.start_soon(self._expire, trio.current_time() + self._max_age, nursery.cancel_scope)
                nursery.start_soon(self._going_away, nursery.cancel_scope)
                await self._read(nursery)
        finally:
            metrics.websocket_connections.dec()

    async def _read(self, nursery: trio.Nursery) -> None:
        limit = self._gw.config.server.max_body_bytes
        while True:
            data = await self._ws.receive()
            started = trio.current_time()
            try:
                if len(data) > limit or (isinstance(data, str) and len(data.encode()) > limit):
                    raise PayloadTooLarge(f"the frame is larger than {limit} bytes ([server] max_body_bytes)")
                request = parse_create(data)
                if self._busy:
                    raise ResponseInFlight("A response is already in flight on this connection: wait for its "
                                           "terminal event before sending the next response.create.")
            except InvalidRequest as error:
                await self._refuse(error, started)
                continue
            if self._expired:
                continue  # the limit error frame and the close follow at once
            self._busy = True
            self._free = trio.Event()
            nursery.start_soon(self._respond, request, started)

    async def _refuse(self, error: GatewayError, started: float) -> None:
        """An error frame for a ``response.create`` refused before the lifecycle, and its request-log entry."""
        sent = 0
        try:
            sent = await self.send_error(error)
        finally:
            self._gw.responses.refused("websocket", self._request_id, error, self._caller, self._trace,
                                       started=started, http_version=self._http_version, bytes_out=sent)

    async def _respond(self, request: ResponsesRequest, started: float) -> None:
        """One ``response.create``: the lifecycle runs it, this sink sends frames."""
        try:  # a cached key costs no round trip; its policy (limits, models) may have changed since the upgrade
            self._caller = await self._gw.authenticate(self._authorization)
        except GatewayError as error:
            self._release()
            await self._refuse(error, started)
            return
        live = open_response(self._gw.responses, self._caller, request, door="websocket",
                             request_id=self._request_id, started=started, local=self._last, trace=self._trace)
        entry = live.entry
        entry.http_version = self._http_version
        live.hold = True  # logged once the error below is sent too
        try:
            async with live:
                await live.stream(self._frames(live))
        except GatewayError as error:  # the lifecycle mapped everything else to internal_error
            self._release()  # before the frame: a client may retry as soon as it reads it
            if live.run is None:
                entry.bytes_out += await self.send_error(error)  # before commit: the connection stays open
            elif not live.done:
                entry.bytes_out += await self.send_events(live.failure_events(error))
        finally:
            self._release()
            live.release()

    def _frames(self, live: LiveResponse) -> Callable[[list[Any]], Awaitable[None]]:
        entry = live.entry

        async def deliver(events: list[Any]) -> None:
            if live.done:  # the terminal event is in this batch: kept and released before it goes
                self._last = {(record := live.record()).id: record}
                self._release()
            entry.bytes_out += await self.send_events(events)
            entry.wrote(trio.current_time())

        return deliver

    def _release(self) -> None:
        if self._busy:
            self._busy = False
            self._free.set()

    async def _expire(self, deadline: float, scope: trio.CancelScope) -> None:
        """At the age limit: let the response in flight finish, then say why and close (1000)."""
        await trio.sleep_until(deadline)
        self._expired = True
        await self._free.wait()
        age = self._max_age
        limit = f"{age / 60:g} minutes" if age >= 60 and age % 60 == 0 else f"{age:g} seconds"
        await self.send_error(ConnectionLimitReached(
            f"Responses WebSocket connection limit reached ({limit}). Create a new WebSocket connection to continue."))
        async with self._send_lock:
            await self._ws.close(1000, "websocket_connection_limit_reached")
        scope.cancel()

    async def _going_away(self, scope: trio.CancelScope) -> None:
        """The gateway drains: no new response starts, the one in flight ends (by the drain deadline at the
        latest), then the connection closes with 1001 so that the client reconnects elsewhere."""
        await self._gw.drain.wait()
        self._expired = True
        await self._free.wait()
        async with self._send_lock:
            await self._ws.close(1001, "the gateway is shutting down")
        scope.cancel()

    async def send_events(self, events: Sequence[Event | RelayedEvent]) -> int:
        """Each event as one text frame, in order; the number of payload bytes sent."""
        ws = self._ws
        sent = 0
        async with self._send_lock:
            for event in events:
                text = event_text(event)
                await ws.send(text)
                sent += len(text) if text.isascii() else len(text.encode())
        return sent

    async def send_error(self, error: GatewayError) -> int:
        """One error frame; its payload bytes."""
        text = error_frame(error)
        async with self._send_lock:
            await self._ws.send(text)
        return len(text.encode())


def _rejection(gw: Gateway, error: GatewayError, rid: str, trace: TraceParent | None, http_version: str) -> Response:
    body = json.dumps(error.envelope(), separators=(",", ":"), ensure_ascii=False)
    gw.responses.refused("websocket", rid, error, trace=trace, started=g.get("started"), http_version=http_version,
                         bytes_out=len(body.encode()))
    headers = {**error.headers, "x-request-id": rid}
    if isinstance(error, AuthenticationFailed):
        headers["www-authenticate"] = "Bearer"
    return Response(body, status=error.status, content_type="application/json", headers=headers)


def install_websocket(app: QuartTrio, gw: Gateway) -> None:
    """Serve WebSocket mode on ``/v1/responses`` (next to the ``POST`` route of the same path)."""

    @app.websocket("/v1/responses")
    async def responses_websocket() -> Response | None:
        ws = websocket_ctx.websocket
        rid: str = g.request_id
        trace = parse_traceparent(ws.headers.get("traceparent"))
        http_version = str(ws.http_version)
        try:
            caller = await gw.authenticate(ws.headers.get("authorization"))
        except GatewayError as error:  # a bad key (401), or the key store down (503)
            # Returned before accepting: Quart sends it as the handshake's HTTP answer.
            return _rejection(gw, error, rid, trace, http_version)
        limits = await gw.responses.headers(caller) if gw.responses.admission else {}
        await ws.accept({**limits, "x-request-id": rid})  # the key's rate-limit state, as at any answer
        await ResponseSocket(gw, ws, caller, rid, trace, http_version).serve()
        return None

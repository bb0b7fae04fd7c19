"""The SSE pump: one task per streamed request reads the upstream; the response body sends what it reads.

The pump task runs in the request's own nursery (``RequestScope``): it opens the plan
(fallback, hedging, ...), then drives the run, handing encoded bytes to the response
body over a zero-capacity channel — so a slow client slows the upstream read, and
memory per stream stays bounded.  The body waits on that channel with a timeout and
sends a ``: keepalive`` comment whenever the upstream has been silent that long,
before the first token and mid-stream.  Reads are never cancelled for a keepalive
(``trio.SSLStream`` is unusable after a cancelled receive).  The body is a plain async
iterator with ``aclose`` (no async generator), and the pump always closes its upstream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

from streamgw.app.recording import Recorder
from streamgw.core.emitter import Event, ResponseEmitter
from streamgw.core.request import ResponsesRequest, echo_fields
from streamgw.core.sse import encode_comment, encode_event
from streamgw.engine.attempt import EngineContext
from streamgw.engine.routing import Plan
from streamgw.engine.run import ResponseRun
from streamgw.errors import GatewayError

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # ask nginx-like proxies not to buffer the stream
}
KEEPALIVE = encode_comment("keepalive")

Item = bytes | ResponseRun | GatewayError


def encode_events(events: list[Event]) -> bytes:
    """Several events as one write."""
    if len(events) == 1:
        return encode_event(events[0])
    return b"".join([encode_event(e) for e in events])


class StreamPump:
    """Opens the plan and streams the run; the handler and the body read what it produces."""

    def __init__(self, request: ResponsesRequest, plan: Plan, ctx: EngineContext, started_at: float,
                 recorder: Recorder | None = None) -> None:
        self.request = request
        self._plan = plan
        self._ctx = ctx
        self._started_at = started_at
        self._recorder = recorder  # stores the response: snapshot first, final object before its terminal event
        self._send, self.receive = trio.open_memory_channel[Item](0)
        self.run: ResponseRun | None = None

    async def pump(self) -> None:
        """The task: first the run (or the error that prevented it), then bytes until the end."""
        async with self._send:
            try:
                run = await ResponseRun.open(self.request, self._plan, self._ctx, started_at=self._started_at)
            except GatewayError as error:
                await self._send.send(error)
                return
            self.run = run
            recorder = self._recorder
            try:
                if recorder is not None:
                    await recorder.started(run)
                await self._send.send(run)
                await self._send.send(encode_events(run.initial))
                while not run.done:
                    events = await run.next_events()
                    if recorder is not None and run.done:
                        await recorder.finish(run)  # stored before the client can see the terminal event
                    if events:
                        await self._send.send(encode_events(events))
            except trio.BrokenResourceError:
                pass  # the body is gone (client left): stop reading
            finally:
                with trio.CancelScope(shield=True):
                    await run.aclose()
                if recorder is not None:
                    recorder.finished(run)


class SSEBody:
    """Async iterator of SSE bytes for one response, fed by a ``StreamPump``."""

    def __init__(
        self,
        pump: StreamPump,
        first: ResponseRun | None,
        keepalive: float,
        on_close: Callable[[ResponseRun | None], None],
    ) -> None:
        self._pump = pump
        # Committed without a run means the keepalive interval passed before the first delta.
        self._pending: bytes | None = None if first is not None else KEEPALIVE
        self._interval = keepalive if keepalive > 0 else math.inf
        self._on_close: Callable[[ResponseRun | None], None] | None = on_close

    def __aiter__(self) -> SSEBody:
        return self

    async def __anext__(self) -> bytes:
        if self._pending is not None:
            data, self._pending = self._pending, None
            return data
        receive = self._pump.receive
        while True:
            try:
                item = receive.receive_nowait()  # the pump is usually already waiting: no timeout scope
            except trio.WouldBlock:
                pass
            except trio.EndOfChannel:
                raise StopAsyncIteration from None
            else:
                if type(item) is bytes:
                    return item
                if isinstance(item, GatewayError):
                    return encode_events(failed_stream(self._pump.request, item))
                continue
            with trio.move_on_after(self._interval):
                try:
                    item = await receive.receive()
                except trio.EndOfChannel:
                    raise StopAsyncIteration from None
                if type(item) is bytes:
                    return item
                if isinstance(item, GatewayError):
                    # Headers are out: the failure becomes a complete, honest stream of its own.
                    return encode_events(failed_stream(self._pump.request, item))
                continue  # the run itself: its bytes come next
            return KEEPALIVE

    async def aclose(self) -> None:
        """Stop the pump (closing the channel ends it) and report the outcome once."""
        try:
            await self._pump.receive.aclose()
        finally:
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback(self._pump.run)


def failed_stream(request: ResponsesRequest, error: GatewayError, provider: str = "none") -> list[Event]:
    """``response.created``, ``in_progress`` and ``failed`` for an error found after the 200 went out."""
    emitter = ResponseEmitter(model=request.model, provider=provider, echo=echo_fields(request))
    events: list[dict[str, Any]] = emitter.start()
    return events + emitter.fail(error.code or error.stream_code, error.message)

"""The SSE pump: a response body that drains a ``ResponseRun`` into bytes, with keepalives.

It is a plain async iterator with ``aclose`` (no async generator), so Quart always
closes it — and with it the upstream connection — however the response ends:
completed, client gone, or cancelled.  While the upstream is silent it sends
``: keepalive`` comments so proxies do not cut a slow but healthy stream.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import trio

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


def encode_events(events: list[Event]) -> bytes:
    """Several events as one write."""
    if len(events) == 1:
        return encode_event(events[0])
    return b"".join([encode_event(e) for e in events])


class Opening:
    """Runs a plan to its first delta in the request's nursery, so the wait can outlive the handler."""

    def __init__(self, request: ResponsesRequest, plan: Plan, ctx: EngineContext, started_at: float) -> None:
        self.request = request
        self._plan = plan
        self._ctx = ctx
        self._started_at = started_at
        self.ready = trio.Event()
        self._run: ResponseRun | None = None
        self._error: GatewayError | None = None
        self._taken = False

    async def run(self) -> None:
        """Open the plan; the outcome is kept for ``result``."""
        try:
            self._run = await ResponseRun.open(self.request, self._plan, self._ctx, started_at=self._started_at)
        except GatewayError as error:
            self._error = error
        finally:
            self.ready.set()

    def result(self) -> ResponseRun:
        """The opened run (ownership passes to the caller), or the ``GatewayError`` that prevented it."""
        if self._error is not None:
            raise self._error
        assert self._run is not None, "result() before ready"
        self._taken = True
        return self._run

    async def aclose(self) -> None:
        """Close a run nobody took (the client left before it could be streamed)."""
        if self._run is not None and not self._taken:
            await self._run.aclose()


class SSEBody:
    """Async iterator of SSE bytes for one response; ``aclose`` closes the upstream."""

    def __init__(
        self,
        source: ResponseRun | Opening,
        keepalive: float,
        on_close: Callable[[ResponseRun | None], None],
    ) -> None:
        self._run: ResponseRun | None = source if isinstance(source, ResponseRun) else None
        self._opening = source if isinstance(source, Opening) else None
        # A body built on a pending Opening was committed because the keepalive interval passed.
        self._pending: bytes | None = encode_events(self._run.initial) if self._run is not None else KEEPALIVE
        self._interval = keepalive if keepalive > 0 else math.inf
        self._failed_early: list[Event] | None = None
        self._on_close: Callable[[ResponseRun | None], None] | None = on_close

    def __aiter__(self) -> SSEBody:
        return self

    async def __anext__(self) -> bytes:
        if self._pending is not None:
            data, self._pending = self._pending, None
            return data
        if self._run is None:
            return await self._wait_for_opening()
        run = self._run
        while not run.done:
            with trio.move_on_after(self._interval):
                events = await run.next_events()
                if events:
                    return encode_events(events)
                continue
            return KEEPALIVE
        raise StopAsyncIteration

    async def _wait_for_opening(self) -> bytes:
        if self._failed_early is not None:
            raise StopAsyncIteration
        opening = self._opening
        assert opening is not None
        with trio.move_on_after(self._interval):
            await opening.ready.wait()
        if not opening.ready.is_set():
            return KEEPALIVE
        try:
            self._run = opening.result()
        except GatewayError as error:
            # Headers are out: the failure becomes a complete, honest stream of its own.
            self._failed_early = failed_stream(opening.request, error)
            return encode_events(self._failed_early)
        return encode_events(self._run.initial)

    async def aclose(self) -> None:
        """Close the upstream and report the outcome once."""
        try:
            if self._run is not None:
                await self._run.aclose()
            elif self._opening is not None:
                await self._opening.aclose()
        finally:
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback(self._run)


def failed_stream(request: ResponsesRequest, error: GatewayError, provider: str = "none") -> list[Event]:
    """``response.created``, ``in_progress`` and ``failed`` for an error found after the 200 went out."""
    emitter = ResponseEmitter(model=request.model, provider=provider, echo=echo_fields(request))
    events: list[dict[str, Any]] = emitter.start()
    return events + emitter.fail(error.stream_code if error.code is None else error.code, error.message)

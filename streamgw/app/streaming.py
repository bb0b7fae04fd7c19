"""The SSE pump: a response body that drains a ``ResponseRun`` into bytes.

It is a plain async iterator with ``aclose`` (no async generator), so Quart
always closes it — and with it the upstream connection — however the response
ends: completed, client gone, or cancelled.
"""

from __future__ import annotations

from collections.abc import Callable

from streamgw.core.emitter import Event
from streamgw.core.sse import encode_event
from streamgw.engine.run import ResponseRun

SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # ask nginx-like proxies not to buffer the stream
}


def encode_events(events: list[Event]) -> bytes:
    """Several events as one write."""
    if len(events) == 1:
        return encode_event(events[0])
    return b"".join([encode_event(e) for e in events])


class SSEBody:
    """Async iterator of SSE bytes for one response; ``aclose`` closes the upstream."""

    def __init__(self, run: ResponseRun, on_close: Callable[[ResponseRun], None]) -> None:
        self._run = run
        self._pending: list[Event] | None = run.initial
        self._on_close: Callable[[ResponseRun], None] | None = on_close

    def __aiter__(self) -> SSEBody:
        return self

    async def __anext__(self) -> bytes:
        if self._pending is not None:
            events, self._pending = self._pending, None
            return encode_events(events)
        run = self._run
        while not run.done:
            events = await run.next_events()
            if events:
                return encode_events(events)
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Close the upstream and report the outcome once."""
        try:
            await self._run.aclose()
        finally:
            callback, self._on_close = self._on_close, None
            if callback is not None:
                callback(self._run)

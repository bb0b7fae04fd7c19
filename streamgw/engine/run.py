"""One response: an upstream delta source driven under deadlines into the emitter.

``ResponseRun.open`` does everything that can still fail with an HTTP status: it
resolves nothing (the caller passes a ``Target``), connects, checks the upstream
status and waits for the first delta.  Only then does the caller commit to a
200 and stream ``initial`` followed by ``next_events()`` until ``done``.  Every
wait has a deadline; nothing here spans a ``yield`` with a cancel scope.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import httpx
import trio

from streamgw.config import Timeouts
from streamgw.core.deltas import Delta, ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart, UpstreamFailure
from streamgw.core.emitter import Event, ResponseEmitter
from streamgw.core.request import ResponsesRequest, echo_fields
from streamgw.engine.routing import Target
from streamgw.errors import GatewayError, RateLimited, UpstreamError, UpstreamTimeout, redact
from streamgw.providers import demo
from streamgw.providers.base import NO_ASSETS, Dialect, StreamTranslator
from streamgw.transport.fetch import fetch_images, remote_image_urls
from streamgw.transport.upstream import UpstreamClients, open_stream, raw_chunks


class DeltaSource(Protocol):
    """Where deltas come from: ``receive`` returns a batch, ``None`` once the source is exhausted."""

    async def receive(self) -> list[Delta] | None: ...

    async def aclose(self) -> None: ...


class DemoSource:
    """Plays the demo provider's script with its configured pacing."""

    def __init__(self, request: ResponsesRequest, first_delay: float, tokens_per_second: float) -> None:
        self._deltas = demo.script(request)
        self._pos = 0
        self._delay = first_delay
        self._gap = 1.0 / tokens_per_second if tokens_per_second > 0 else 0.0

    async def receive(self) -> list[Delta] | None:
        if self._pos >= len(self._deltas):
            return None
        await trio.sleep(self._delay)
        self._delay = self._gap
        batch = [self._deltas[self._pos]]
        self._pos += 1
        # Bookkeeping deltas (end of call, finish, usage) ride with the token before them.
        while self._pos < len(self._deltas) and not _is_token(self._deltas[self._pos]):
            batch.append(self._deltas[self._pos])
            self._pos += 1
        return batch

    async def aclose(self) -> None:
        self._pos = len(self._deltas)


def _is_token(delta: Delta) -> bool:
    return isinstance(delta, TextDelta | ReasoningDelta | ToolCallArgs | ToolCallStart)


class HttpSource:
    """An upstream HTTP response body fed through a dialect translator."""

    def __init__(self, response: httpx.Response, translator: StreamTranslator, secrets: Sequence[str]) -> None:
        self._response = response
        self._chunks: AsyncIterator[bytes] = raw_chunks(response)
        self._translator = translator
        self._secrets = secrets
        self._ended = False

    async def receive(self) -> list[Delta] | None:
        if self._ended:
            return None
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ended = True
            return self._translator.finish()
        except httpx.TransportError as exc:
            self._ended = True
            detail = redact(f"{type(exc).__name__}: {exc}", self._secrets)
            return [UpstreamFailure("server_error", f"upstream connection failed mid-stream ({detail})")]
        return self._translator.feed(chunk)

    async def aclose(self) -> None:
        self._ended = True
        await self._response.aclose()


class _DeadlineExpired(Exception):
    """Internal: a receive ran past its deadline."""


class ResponseRun:
    """The emitter plus its upstream source, with first-token, idle and total deadlines."""

    def __init__(self, emitter: ResponseEmitter, source: DeltaSource, timeouts: Timeouts) -> None:
        self.emitter = emitter
        self._source = source
        self._timeouts = timeouts
        self._started_at = trio.current_time()
        self._total_deadline = self._started_at + timeouts.total if timeouts.total > 0 else math.inf
        self.initial: list[Event] = []
        self.first_delta_at: float | None = None
        self._closed = False

    @property
    def done(self) -> bool:
        """True once the terminal event has been produced."""
        return self.emitter.done

    @classmethod
    async def open(
        cls,
        request: ResponsesRequest,
        target: Target,
        *,
        clients: UpstreamClients,
        dialects: dict[str, Dialect],
        timeouts: Timeouts,
        secrets: Sequence[str],
        new_emitter: Callable[..., ResponseEmitter] = ResponseEmitter,
    ) -> ResponseRun:
        """Connect and wait for the first delta; raise ``GatewayError`` if that fails."""
        dialect = dialects.get(target.provider.type)
        if dialect is not None and dialect.relays_events:
            # The upstream speaks Responses events itself: relay them instead of re-emitting.
            new_emitter = importlib.import_module("streamgw.core.relay").RelayEmitter
        emitter = new_emitter(
            model=request.model, provider=target.provider.name, echo=echo_fields(request)
        )
        started = trio.current_time()
        source = await _open_source(request, target, clients, dialects, timeouts, secrets)
        run = cls(emitter, source, timeouts)
        run._started_at = started
        try:
            await run._first(request)
        except BaseException:
            await run.aclose()
            raise
        return run

    async def _first(self, request: ResponsesRequest) -> None:
        events = self.emitter.start()
        deadline = self._started_at + (self._timeouts.first_token or math.inf)
        while True:
            try:
                batch = await self._receive(min(deadline, self._total_deadline))
            except _DeadlineExpired:
                raise UpstreamTimeout(
                    f"no response from upstream within {self._timeouts.first_token:g} s (first_token timeout)",
                    code="first_token_timeout",
                ) from None
            out = self.emitter.feed(batch) if batch is not None else self.emitter.finish()
            if out:
                break
        self.first_delta_at = trio.current_time()
        if self.emitter.done and self.emitter.response["status"] == "failed" and not self.emitter.output_started:
            raise _failure_before_output(self.emitter.response["error"])
        self.initial = events + out

    async def next_events(self) -> list[Event]:
        """The next events to send; the terminal event comes last, then ``done`` is true."""
        while not self.emitter.done:
            deadline = trio.current_time() + self._timeouts.idle if self._timeouts.idle > 0 else math.inf
            try:
                batch = await self._receive(min(deadline, self._total_deadline))
            except _DeadlineExpired:
                await self.aclose()
                return self._deadline_failure()
            out = self.emitter.feed(batch) if batch is not None else self.emitter.finish()
            if out:
                return out
        return []

    async def collect(self) -> dict[str, Any]:
        """Run to the end (non-streamed requests) and return the final response object."""
        while not self.emitter.done:
            await self.next_events()
        await self.aclose()
        response = self.emitter.response
        if response["status"] == "failed":
            raise _failure_before_output(response["error"])
        return response

    async def aclose(self) -> None:
        """Close the upstream (idempotent; effective even when cancelled)."""
        if not self._closed:
            self._closed = True
            await self._source.aclose()

    async def _receive(self, deadline: float) -> list[Delta] | None:
        with trio.move_on_at(deadline):
            return await self._source.receive()
        raise _DeadlineExpired

    def _deadline_failure(self) -> list[Event]:
        now = trio.current_time()
        if now >= self._total_deadline:
            return self.emitter.fail("upstream_total_timeout",
                                     f"the response exceeded the total timeout of {self._timeouts.total:g} s")
        return self.emitter.fail("upstream_idle_timeout",
                                 f"no data from upstream for {self._timeouts.idle:g} s (idle timeout)")


def _failure_before_output(error: dict[str, str] | None) -> GatewayError:
    error = error or {"code": "server_error", "message": "upstream failed"}
    code, message = error.get("code", "server_error"), error.get("message", "upstream failed")
    if code == "rate_limit_exceeded":
        return RateLimited(message)
    if "timeout" in code:
        return UpstreamTimeout(message, code=code)
    return UpstreamError(message, code=code)


async def _open_source(
    request: ResponsesRequest,
    target: Target,
    clients: UpstreamClients,
    dialects: dict[str, Dialect],
    timeouts: Timeouts,
    secrets: Sequence[str],
) -> DeltaSource:
    provider = target.provider
    if provider.type == "demo":
        return DemoSource(request, provider.demo.first_token_delay, provider.demo.tokens_per_second)
    dialect = dialects.get(provider.type)
    if dialect is None:
        raise UpstreamError(f"provider type {provider.type!r} is not supported", code="unsupported_provider")
    assets = NO_ASSETS
    if dialect.needs_image_bytes:
        assets = await fetch_images(clients.fetcher(), remote_image_urls(request))
    upstream = dialect.build_request(request, provider, target.model, assets)
    client = clients.get(provider, timeouts)
    deadline = trio.current_time() + (timeouts.first_token or math.inf)
    with trio.move_on_at(deadline) as scope:
        response = await open_stream(client, upstream, dialect, provider.name, secrets)
    if scope.cancelled_caught:
        raise UpstreamTimeout(
            f"upstream {provider.name!r} sent no response headers within {timeouts.first_token:g} s",
            code="first_token_timeout",
        )
    return HttpSource(response, dialect.new_translator(request, provider, secrets), secrets)

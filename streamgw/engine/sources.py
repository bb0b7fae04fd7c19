"""Where deltas come from: an in-process provider's script (the demo), or an upstream HTTP body through a dialect."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import AsyncGeneratorType
from typing import Any, Protocol

import httpx
import trio

from streamgw.config import ProviderConfig, Timeouts
from streamgw.core.deltas import Delta, ReasoningDelta, TextDelta, ToolCallArgs, ToolCallStart, UpstreamFailure, Usage
from streamgw.core.request import ResponsesRequest
from streamgw.errors import UpstreamError, redact, sanitize_upstream
from streamgw.providers.base import NO_ASSETS, Dialect, StreamTranslator, UpstreamRequest
from streamgw.providers.errors import transport_failure
from streamgw.providers.registry import local_providers
from streamgw.transport.fetch import RemoteImage
from streamgw.transport.upstream import Upstream, UpstreamClients, raw_chunks, read_error_body


class DeltaSource(Protocol):
    """Where deltas come from: ``receive`` returns a batch, ``None`` once the source is exhausted.

    ``drain`` is called before ``aclose`` when the response ended cleanly: an HTTP source reads
    what little is left of the body (the chunked terminator after ``[DONE]``), so its connection
    can go back to the pool instead of being closed.
    """

    async def receive(self) -> list[Delta] | None: ...

    @property
    def ready(self) -> bool:
        """Whether ``receive`` has a batch without waiting (bytes read already, not yet translated)."""
        ...

    async def drain(self) -> None: ...

    async def aclose(self) -> None: ...


class ScriptSource:
    """Plays an in-process provider's script (``LocalProvider``) with its configured pacing."""

    ready = False

    def __init__(self, deltas: list[Delta], first_delay: float, tokens_per_second: float) -> None:
        self._deltas = deltas
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

    async def drain(self) -> None:
        return None

    async def aclose(self) -> None:
        self._pos = len(self._deltas)


def _decides(batch: list[Delta]) -> bool:
    """Whether ``batch`` holds a delta other than usage (the first one says: output, or a failure)."""
    for delta in batch:
        if type(delta) is not Usage:
            return True
    return False


def _is_token(delta: Delta) -> bool:
    return isinstance(delta, TextDelta | ReasoningDelta | ToolCallArgs | ToolCallStart)


def remote_images(request: ResponsesRequest) -> list[RemoteImage]:
    """Every http(s) ``image_url`` in the request's input (messages and tool outputs), deduplicated."""
    found: dict[str, RemoteImage] = {}
    for i, item in enumerate(request.input):
        field = "content" if item.get("type") == "message" else "output"
        parts: Any = item.get(field)
        if not isinstance(parts, list):
            continue
        for j, part in enumerate(parts):
            url = part.get("image_url") if isinstance(part, dict) and part.get("type") == "input_image" else None
            if isinstance(url, str) and url.startswith(("http://", "https://")) and url not in found:
                found[url] = RemoteImage(url, f"input[{i}].{field}[{j}]")
    return list(found.values())


#: how much of a cleanly finished body we read to keep its connection (the terminator is 5 bytes)
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 0.5


_NO_HEADERS = httpx.Headers()

#: until its first delta, a source translates a large read in slices this long, then twice as long, ...
FIRST_SLICE = 512


class HttpSource:
    """An upstream HTTP response body fed through a dialect translator.

    Until the first delta, a read is translated in growing slices (``FIRST_SLICE`` bytes, then twice as many,
    ...): a fast upstream can send a whole answer in one read, and the first event should not wait for all of
    it to be decoded.  What follows the slice that gave the first delta is translated by the next ``receive``,
    without reading.  Every translator takes its body in pieces split anywhere (the network splits it so too).
    """

    # one per open stream: slots, not a per-instance dict
    __slots__ = ("_chunks", "_ended", "_opening", "_pending", "_response", "_secrets", "_translator")

    def __init__(self, response: httpx.Response, translator: StreamTranslator, secrets: Sequence[str]) -> None:
        # Its headers were read (``open_stream``: a 2xx); from here only the body is: an answer that streams
        # for minutes need not hold them (a shared empty set, never written to).
        response.headers = _NO_HEADERS
        self._chunks: AsyncIterator[bytes] = raw_chunks(response)
        # Our transport's body closes itself (``raw_chunks`` hands it over): the ``httpx.Response`` around it (its
        # extensions, history and state, ~0.5 KB) need not be kept for as long as the answer streams.
        self._response: httpx.Response | None = None if isinstance(self._chunks, httpx.AsyncByteStream) else response
        self._translator = translator
        self._secrets = secrets
        self._ended = False
        self._opening = True  # nothing but usage translated yet
        self._pending = b""  # read, not yet translated: what followed the first delta's slice

    async def receive(self) -> list[Delta] | None:
        if self._pending:
            pending, self._pending = self._pending, b""
            return self._translator.feed(pending)
        if self._ended:
            return None
        try:
            chunk = await self._chunks.__anext__()
            if self._opening:
                return self._first(chunk)
        except StopAsyncIteration:
            self._ended = True
            return self._translator.finish()
        except httpx.TransportError as exc:
            self._ended = True
            detail = redact(f"{type(exc).__name__}: {exc}", self._secrets)
            return [UpstreamFailure("server_error", f"upstream connection failed mid-stream ({detail})")]
        return self._translator.feed(chunk)

    @property
    def ready(self) -> bool:
        """Whether ``receive`` has bytes to translate without reading: the rest of a first read."""
        return bool(self._pending) or getattr(self._chunks, "buffered", False)

    def _first(self, chunk: bytes) -> list[Delta]:
        """Translate ``chunk`` slice by slice up to its first delta that is not usage; keep the rest in ``_pending``.

        Usage alone decides nothing (``first_failure``): a failure after it in the same read is still a failure
        before any output, so the slices go on until something else came, through the rest of what arrived
        (our transport hands over the body bytes that came with the head in two pieces, undecoded until
        asked for: ``take_buffered``).
        """
        feed = self._translator.feed
        out: list[Delta] = []
        size = FIRST_SLICE
        while chunk:
            start, end = 0, len(chunk)
            while end - start > size:
                out += feed(chunk[start:start + size])
                start += size
                size *= 2
                if _decides(out):
                    self._opening = False
                    self._pending = chunk[start:]
                    return out
            out += feed(chunk[start:] if start else chunk)
            if _decides(out):
                self._opening = False
                return out
            take = getattr(self._chunks, "take_buffered", None)
            chunk = take() if take is not None else b""
        return out

    async def drain(self) -> None:
        """Read the rest of a finished body (bounded), so the connection can be reused."""
        if self._ended:
            return
        left = DRAIN_BYTES
        with trio.move_on_after(DRAIN_SECONDS):
            try:
                while left > 0:
                    left -= len(await self._chunks.__anext__())
            except StopAsyncIteration:
                self._ended = True
            except httpx.TransportError:
                pass

    async def aclose(self) -> None:
        self._ended = True
        self._pending = b""
        chunks = self._chunks
        try:
            if isinstance(chunks, AsyncGeneratorType):
                await chunks.aclose()  # httpx's wrapper: finalise it here, not in the garbage collector
        finally:
            if self._response is not None:
                await self._response.aclose()
            elif isinstance(chunks, httpx.AsyncByteStream):
                await chunks.aclose()


async def open_stream(
    client: Upstream, upstream: UpstreamRequest, dialect: Dialect, provider: str, secrets: Sequence[str]
) -> httpx.Response:
    """Send ``upstream`` and return the streaming response once it answered 2xx.

    The engine side of the transport boundary: a transport failure becomes the gateway
    error ``transport_failure`` maps it to; a non-2xx answer is read (bounded), closed and
    raised as the dialect's ``GatewayError``.
    """
    try:
        response = await client.send(upstream.method, upstream.url, upstream.headers, upstream.body)
    except httpx.TransportError as exc:
        raise transport_failure(exc, provider, secrets) from None
    if 200 <= response.status_code < 300:
        return response
    body = await read_error_body(response)
    # Each dialect cleans its own errors; this pass holds for any dialect (idempotent, cheap).
    raise sanitize_upstream(dialect.parse_error(response.status_code, response.headers, body, secrets), secrets)


async def open_source(
    request: ResponsesRequest,
    provider: ProviderConfig,
    model: str,
    *,
    clients: UpstreamClients,
    dialects: Mapping[str, Dialect],
    secrets: Sequence[str],
    timeouts: Timeouts,
    traceparent: str | None = None,
) -> DeltaSource:
    """Connect to ``provider`` and return its source once it answered 2xx (the caller bounds the wait: the
    attempt's first-token deadline covers this and the first delta).

    ``traceparent`` (tracing on): sent upstream as that header, in place of any configured one.
    """
    local = local_providers().get(provider.type)
    if local is not None:
        return ScriptSource(local.script(request), *local.pacing(provider))
    dialect = dialects.get(provider.type)
    if dialect is None:
        raise UpstreamError(f"provider type {provider.type!r} is not supported", code="unsupported_provider")
    assets = NO_ASSETS
    if dialect.needs_image_bytes:
        assets = await clients.fetcher().fetch(remote_images(request))
    upstream = dialect.build_request(request, provider, model, assets)
    if traceparent is not None:
        upstream.headers["traceparent"] = traceparent
    response = await open_stream(clients.get(provider, timeouts), upstream, dialect, provider.name, secrets)
    return HttpSource(response, dialect.new_translator(request, provider, secrets), secrets)

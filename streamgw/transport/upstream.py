"""One shared connection pool per provider, and the one boundary where httpx errors become ours.

Upstream calls are ``httpx.Request`` -> ``httpx.Response`` through ``TrioH11Transport``
(trio + h11, an O(1) pool) instead of httpcore's pool, whose cost grows with the number
of concurrent requests.  The hot path talks to the transport directly rather than
through ``httpx.AsyncClient.send``: the client's auth flow, redirect loop, cookie jar and
stream wrapper cost about a sixth of the gateway's CPU on short streams, and the
gateway uses none of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast

import httpx

from streamgw.config import FetchConfig, ProviderConfig, Timeouts
from streamgw.errors import GatewayError, UpstreamError, UpstreamTimeout, redact, sanitize_upstream
from streamgw.providers.base import Dialect, UpstreamRequest
from streamgw.transport.fetch import MediaFetcher
from streamgw.transport.h11pool import BODY_EXTENSION, TrioH11Transport

#: the most of an upstream error body we read to build the envelope
MAX_ERROR_BODY = 64 * 1024


class Upstream:
    """A provider's transport and the timeouts its requests carry."""

    __slots__ = ("_urls", "timeouts", "transport")

    def __init__(self, transport: TrioH11Transport, timeouts: Timeouts) -> None:
        self.transport = transport
        self._urls: dict[str, httpx.URL] = {}  # parsing a URL costs more than the rest of the request
        connect = timeouts.connect or None
        # Reads are bounded by our own first-token/idle deadlines, not by the transport; so is the
        # wait for a free connection when ``max_connections`` is reached: a busy pool makes a
        # request wait its turn, it does not fail it after the connect timeout.
        self.timeouts = {"connect": connect, "read": None, "write": 30.0, "pool": None}

    async def send(self, upstream: UpstreamRequest) -> httpx.Response:
        """Send one request; the response body is left to stream."""
        url = self._urls.get(upstream.url)
        if url is None:
            if len(self._urls) >= 1024:  # model ids in the path (Gemini) could grow it without end
                self._urls.clear()
            url = self._urls[upstream.url] = httpx.URL(upstream.url)
        request = httpx.Request(upstream.method, url, headers=upstream.headers, content=upstream.body,
                                extensions={"timeout": self.timeouts})
        # The response does not keep the request: its body (the whole conversation, often) would
        # otherwise stay in memory for as long as the answer streams.
        return await self.transport.handle_async_request(request)


class UpstreamClients:
    """Lazily created upstream pools, one per provider name, and the image fetcher."""

    def __init__(self, fetch: FetchConfig | None = None) -> None:
        self._upstreams: dict[str, Upstream] = {}
        self._fetch_config = fetch or FetchConfig()
        self._fetcher: MediaFetcher | None = None

    def get(self, provider: ProviderConfig, timeouts: Timeouts) -> Upstream:
        """The pool for ``provider``, created on first use."""
        upstream = self._upstreams.get(provider.name)
        if upstream is None:
            # 0: no cap (the open-file limit and the server connection cap are the real ones)
            transport = TrioH11Transport(max_connections=provider.max_connections,
                                         connect_timeout=timeouts.connect or None)
            upstream = self._upstreams[provider.name] = Upstream(transport, timeouts)
        return upstream

    def fetcher(self) -> MediaFetcher:
        """The SSRF-guarded downloader of remote images for dialects that need bytes."""
        if self._fetcher is None:
            self._fetcher = MediaFetcher(self._fetch_config)
        return self._fetcher

    async def aclose(self) -> None:
        """Close every pool and the fetcher with their connections."""
        upstreams, self._upstreams = list(self._upstreams.values()), {}
        fetcher, self._fetcher = self._fetcher, None
        for upstream in upstreams:
            await upstream.transport.aclose()
        if fetcher is not None:
            await fetcher.aclose()


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def map_transport_error(exc: httpx.TransportError, provider: str, secrets: Sequence[str]) -> GatewayError:
    """An httpx transport failure before the first byte, as a gateway error."""
    detail = redact(_describe(exc), secrets)
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"upstream {provider!r} timed out ({detail})", code="upstream_timeout")
    if isinstance(exc, httpx.ConnectError):
        return UpstreamError(f"could not connect to upstream {provider!r} ({detail})", code="upstream_unreachable")
    return UpstreamError(f"upstream {provider!r} failed ({detail})", code="upstream_connection_error")


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


async def open_stream(
    client: Upstream,
    upstream: UpstreamRequest,
    dialect: Dialect,
    provider: str,
    secrets: Sequence[str],
) -> httpx.Response:
    """Send ``upstream`` and return the streaming response once it answered 2xx.

    A non-2xx answer is read (up to ``MAX_ERROR_BODY``), closed and raised as the
    dialect's ``GatewayError``; transport failures raise mapped errors.
    """
    try:
        response = await client.send(upstream)
    except httpx.TransportError as exc:
        raise map_transport_error(exc, provider, secrets) from None
    if 200 <= response.status_code < 300:
        return response
    try:
        body = await _read_limited(response, MAX_ERROR_BODY)
    except httpx.TransportError:
        body = b""
    finally:
        await response.aclose()
    # Each dialect cleans its own errors; this pass holds for any dialect (idempotent, cheap).
    raise sanitize_upstream(dialect.parse_error(response.status_code, response.headers, body, secrets), secrets)


def raw_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body bytes as the transport yields them: no decoders, no re-chunking.

    We ask upstreams for ``accept-encoding: identity``, so there is nothing to decode.
    ``TrioH11Transport`` hands its own body iterator over in the response's extensions:
    a class-based iterator whose ``__anext__`` may be cancelled and called again without
    losing data, and each chunk it yields holds every frame that was buffered when it was
    read. httpx's wrapper around it is an async generator, which a cancellation would end.
    """
    body = response.extensions.get(BODY_EXTENSION)
    if body is not None:
        return cast(AsyncIterator[bytes], body)
    stream = response.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    return stream.__aiter__()

"""One shared connection pool per provider.

Upstream calls are ``httpx.Request`` -> ``httpx.Response`` through ``TrioH11Transport``
(trio + h11, an O(1) pool) instead of httpcore's pool, whose cost grows with the number
of concurrent requests.  The hot path talks to the transport directly rather than
through ``httpx.AsyncClient.send``: the client's auth flow, redirect loop, cookie jar and
stream wrapper cost about a sixth of the gateway's CPU on short streams, and the
gateway uses none of them.

This module speaks plain HTTP: it knows neither dialects nor gateway errors.  Failures
leave it as the httpx exceptions ``streamgw.transport.errors`` maps them to; the engine
decides what they mean for a client (``streamgw.providers.errors.transport_failure``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import cast

import httpx

from streamgw.config import FetchConfig, ProviderConfig, Timeouts
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

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> httpx.Response:
        """Send one request, whatever its status; the response body is left to stream."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 1024:  # model ids in the path (Gemini) could grow it without end
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        # The response does not keep the request: its body (the whole conversation, often) would
        # otherwise stay in memory for as long as the answer streams.
        return await self.transport.send(method, parsed, headers, body, self.timeouts)


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


async def read_error_body(response: httpx.Response, limit: int = MAX_ERROR_BODY) -> bytes:
    """At most ``limit`` bytes of a (non-2xx) response's body, then close it.

    What an error body says is a bonus: a transport failure while reading it gives ``b""``
    (the status alone then speaks) rather than a second error.
    """
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except httpx.TransportError:
        parts = []
    finally:
        await response.aclose()
    return b"".join(parts)[:limit]


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

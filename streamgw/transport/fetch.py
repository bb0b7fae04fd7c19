"""Fetch remote images for dialects that only take bytes (Gemini, Ollama).

A client's URL makes the gateway open connections, so every fetch is guarded:

* only ``http``/``https``; the host is resolved once, every address it resolves to must
  be public (``netguard``) unless the operator allow-listed it, and the connection goes to
  exactly that vetted address (no second lookup for DNS rebinding to answer);
* redirects are followed here, at most ``max_redirects``, each hop vetted like the first;
* URL userinfo is dropped: never sent (no ``Authorization`` from it), never logged;
* per request: at most ``max_urls`` URLs, ``concurrency`` at once, ``max_bytes`` each,
  ``max_total_bytes`` together, all within ``timeout`` -- reading stops at the first
  byte past a cap, and a ``Content-Length`` over it is refused before the body;
* every refusal and failure gives the client the same 400, whatever the cause (not
  resolving, a closed port, an internal address, a 404, not an image): anything finer
  would make the gateway a port scanner.  The cause is logged, without userinfo or query.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

import httpx
import trio

from streamgw.config import FetchConfig
from streamgw.errors import InvalidRequest
from streamgw.transport.h11pool import BODY_EXTENSION, CONNECT_TO_EXTENSION, TrioH11Transport
from streamgw.transport.netguard import AllowList, IPAddress

log = logging.getLogger("streamgw.fetch")

#: longer URLs are refused without a lookup (no image host needs more)
MAX_URL_LENGTH: Final = 8192
#: resolved addresses tried in turn when connecting fails (all of them are vetted)
MAX_ADDRESSES_TRIED: Final = 3
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_HEADERS: Final = {"user-agent": "streamgw-image-fetch", "accept": "image/*", "accept-encoding": "identity"}
#: the request's one ``timeout`` scope bounds everything; a connect attempt gets a share of it,
#: so that an unreachable first address leaves time for the next
_CONNECT_SHARE: Final = 1 / MAX_ADDRESSES_TRIED


@dataclass(frozen=True, slots=True)
class RemoteImage:
    """An http(s) ``image_url`` to fetch, and where the request first mentions it (the engine finds them)."""

    url: str
    where: str  # e.g. "input[0].content[1]"


class _Refused(Exception):
    """Why one URL was not fetched: logged for the operator, never shown to the client."""


def _failure(image: RemoteImage) -> InvalidRequest:
    """The one answer for every refused or failed fetch (see the module docstring)."""
    return InvalidRequest(f"could not fetch image at {image.where}: the URL is not reachable or not allowed",
                          param="input", code="failed_to_download_image")


def _for_log(url: httpx.URL) -> str:
    """``url`` without userinfo and query (either may carry credentials), truncated."""
    path = url.raw_path.partition(b"?")[0].decode("ascii", "replace")[:200]
    return f"{url.scheme}://{url.raw_host.decode('ascii', 'replace')}:{url.port or ''}{path}"


class _Budget:
    """Bytes left for all images of one request."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def exceeded(self) -> InvalidRequest:
        return InvalidRequest(f"the images of this request are larger than {self.total} bytes together",
                              param="input", code="images_too_large")

    def take(self, size: int) -> None:
        self.used += size
        if self.used > self.total:
            raise self.exceeded()


async def resolve(host: bytes, port: int) -> list[IPAddress]:
    """The addresses ``host`` stands for, parsed the way the system resolver parses it
    (``2130706433``, ``0x7f.1`` and ``127.1`` are 127.0.0.1), in the resolver's order."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise _Refused(f"does not resolve ({exc})") from None
    addresses: dict[IPAddress, None] = {}
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            addresses[ipaddress.ip_address(cast(str, sockaddr[0]))] = None
    if not addresses:
        raise _Refused("resolves to no IP address")
    return list(addresses)


class MediaFetcher:
    """Downloads the remote images of requests under one ``FetchConfig`` (shared by all requests)."""

    def __init__(self, config: FetchConfig, transport: TrioH11Transport | None = None) -> None:
        self.config = config
        self.allow = AllowList.parse(config.allow_hosts)
        # No keep-alive: a pooled connection would be keyed and vetted for one request's
        # lookup, and images are rarely fetched twice from one host in a row.
        self.transport = transport or TrioH11Transport(max_connections=64, max_keepalive_per_origin=0)

    async def aclose(self) -> None:
        """Close the transport and any connection still open."""
        await self.transport.aclose()

    async def fetch(self, images: Sequence[RemoteImage]) -> dict[str, tuple[str, str]]:
        """Download ``images`` (URL -> (mime type, base64)); any failure or exceeded cap is a 400."""
        config = self.config
        if not images:
            return {}
        if len(images) > config.max_urls:
            raise InvalidRequest(f"the input has {len(images)} image URLs to fetch; at most {config.max_urls} "
                                 "are allowed per request (send the others as data URLs)",
                                 param="input", code="too_many_images")
        out: dict[str, tuple[str, str]] = {}
        limiter = trio.CapacityLimiter(config.concurrency)
        budget = _Budget(config.max_total_bytes)
        with trio.move_on_after(config.timeout):
            try:
                async with trio.open_nursery() as nursery:
                    for image in images:
                        nursery.start_soon(self._fetch_one, image, limiter, budget, out)
            except BaseExceptionGroup as group:
                first = group.subgroup(InvalidRequest)
                if first is not None:
                    raise first.exceptions[0] from None
                raise
            return out
        image = next(image for image in images if image.url not in out)
        log.info("image fetch for %s failed: not done within %g s", image.where, config.timeout)
        raise _failure(image)

    async def _fetch_one(self, image: RemoteImage, limiter: trio.CapacityLimiter, budget: _Budget,
                         out: dict[str, tuple[str, str]]) -> None:
        async with limiter:
            try:
                out[image.url] = await self._download(image, budget)
            except _Refused as reason:
                raise _failure(image) from reason
            except (ValueError, UnicodeError, httpx.HTTPError) as exc:
                # Whatever else odd input makes the parsers raise is a failed fetch too, not a 500.
                log.info("image fetch for %s failed: %s", image.where, type(exc).__name__)
                raise _failure(image) from None

    async def _download(self, image: RemoteImage, budget: _Budget) -> tuple[str, str]:
        try:
            url = httpx.URL(image.url) if len(image.url) <= MAX_URL_LENGTH else None
        except httpx.InvalidURL:
            url = None
        if url is None:
            log.info("image fetch for %s refused: not a valid URL of at most %d characters",
                     image.where, MAX_URL_LENGTH)
            raise _Refused("invalid URL")
        for hop in range(self.config.max_redirects + 1):
            url = url.copy_with(userinfo=b"")  # never sent on, never logged
            try:
                response = await self._get(url)
                try:
                    if response.status_code not in _REDIRECTS:
                        return await self._read_image(image, response, budget)
                    url = _next_hop(url, response)
                finally:
                    await response.aclose()
            except _Refused as reason:
                log.info("image fetch for %s refused at hop %d: %s (%s)", image.where, hop, reason, _for_log(url))
                raise
        log.info("image fetch for %s refused: more than %d redirects (%s)",
                 image.where, self.config.max_redirects, _for_log(url))
        raise _Refused("too many redirects")

    async def _get(self, url: httpx.URL) -> httpx.Response:
        """GET ``url`` from one of its vetted addresses; the body is left to stream."""
        port = url.port or _DEFAULT_PORTS.get(url.scheme)
        if port is None or not url.raw_host:
            raise _Refused("not an http(s) URL with a host")
        addresses = await resolve(url.raw_host, port)
        if not self.allow.allows_host(url.host):
            for address in addresses:
                if not self.allow.permits(address):
                    raise _Refused(f"{address} is not a public address and not in fetch.allow_hosts")
        failure: Exception | None = None
        timeouts = {"connect": self.config.timeout * _CONNECT_SHARE, "read": None, "write": None, "pool": None}
        for address in addresses[:MAX_ADDRESSES_TRIED]:
            request = httpx.Request("GET", url, headers=_HEADERS,
                                    extensions={"timeout": timeouts, CONNECT_TO_EXTENSION: str(address)})
            try:
                return await self.transport.handle_async_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = exc  # the next address may answer
            except httpx.HTTPError as exc:
                raise _Refused(f"{type(exc).__name__}: {exc}") from None
        raise _Refused(f"could not connect ({failure})")

    async def _read_image(self, image: RemoteImage, response: httpx.Response, budget: _Budget) -> tuple[str, str]:
        """The body of a final response as (mime type, base64), within the caps."""
        if response.status_code != 200:
            raise _Refused(f"HTTP {response.status_code}")
        mime = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not mime.startswith("image/"):
            raise _Refused(f"content-type {mime[:80]!r} is not an image")
        if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise _Refused("the body is content-encoded")  # we asked for identity; no decompression bombs
        limit = self.config.max_bytes
        too_large = InvalidRequest(f"the image at {image.where} is larger than {limit} bytes",
                                   param="input", code="image_too_large")
        length = response.headers.get("content-length", "")
        if length.isascii() and length.isdigit():  # refuse before the body when it says it is too big
            if int(length) > limit:
                raise too_large
            if budget.used + int(length) > budget.total:
                raise budget.exceeded()
        data = bytearray()
        body = response.extensions[BODY_EXTENSION]
        try:
            async for chunk in body:
                if len(data) + len(chunk) > limit:
                    raise too_large
                budget.take(len(chunk))
                data += chunk
        except httpx.HTTPError as exc:
            raise _Refused(f"{type(exc).__name__}: {exc}") from None
        return mime, base64.b64encode(data).decode("ascii")


def _next_hop(url: httpx.URL, response: httpx.Response) -> httpx.URL:
    """Where a redirect points (relative to ``url``); vetted again by the next ``_get``."""
    location = response.headers.get("location", "")
    if not location or len(location) > MAX_URL_LENGTH:
        raise _Refused("a redirect without a usable Location")
    try:
        target = url.join(location)
    except httpx.InvalidURL:
        raise _Refused("a redirect to an invalid URL") from None
    if target.scheme not in _DEFAULT_PORTS:
        raise _Refused(f"a redirect to a {target.scheme[:20]!r} URL")
    return target

"""Fetch remote images for dialects that only take bytes (Gemini, Ollama): size-capped, time-boxed, concurrent."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import httpx
import trio

from streamgw.core.request import ResponsesRequest
from streamgw.errors import InvalidRequest
from streamgw.providers.base import Assets

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT = 15.0


def remote_image_urls(request: ResponsesRequest) -> list[str]:
    """Every http(s) ``image_url`` in the request's input (messages and tool outputs), deduplicated."""
    urls: dict[str, None] = {}
    for item in request.input:
        parts: Any = item.get("content") if item.get("type") == "message" else item.get("output")
        if not isinstance(parts, list):
            continue
        for part in parts:
            url = part.get("image_url") if isinstance(part, dict) and part.get("type") == "input_image" else None
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                urls[url] = None
    return list(urls)


async def _fetch_one(client: httpx.AsyncClient, url: str, max_bytes: int, out: dict[str, tuple[str, str]]) -> None:
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise InvalidRequest(f"could not fetch image {url!r}: HTTP {response.status_code}",
                                     param="input", code="failed_to_download_image")
            mime = response.headers.get("content-type", "").split(";")[0].strip() or "application/octet-stream"
            if not mime.startswith("image/"):
                raise InvalidRequest(f"{url!r} is not an image (content-type {mime!r})",
                                     param="input", code="invalid_image_format")
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise InvalidRequest(f"image {url!r} is larger than {max_bytes} bytes",
                                         param="input", code="image_too_large")
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"could not fetch image {url!r}: {type(exc).__name__}",
                             param="input", code="failed_to_download_image") from None
    out[url] = (mime, base64.b64encode(bytes(data)).decode())


async def fetch_images(
    client: httpx.AsyncClient, urls: Iterable[str], *, max_bytes: int = MAX_IMAGE_BYTES,
    time_limit: float = FETCH_TIMEOUT,
) -> Assets:
    """Download ``urls`` concurrently; any failure is a 400 naming the URL."""
    out: dict[str, tuple[str, str]] = {}
    urls = list(urls)
    if not urls:
        return out
    with trio.move_on_after(time_limit) as scope:
        try:
            async with trio.open_nursery() as nursery:
                for url in urls:
                    nursery.start_soon(_fetch_one, client, url, max_bytes, out)
        except BaseExceptionGroup as group:
            first = group.subgroup(InvalidRequest)
            if first is not None:
                raise first.exceptions[0] from None
            raise
    if scope.cancelled_caught:
        raise InvalidRequest(f"fetching images timed out after {time_limit:g} s", param="input",
                             code="failed_to_download_image")
    return out

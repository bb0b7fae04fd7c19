"""What every upstream dialect module provides.

A dialect module exports three things (see ``Dialect``): a request builder that
turns a validated Responses request into one upstream HTTP request, a stream
translator (bytes in, neutral deltas out, with its own framing decoder), and an
error parser that turns a non-2xx upstream answer into a ``GatewayError``.
Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from streamgw.core.deltas import Delta
from streamgw.errors import GatewayError

if TYPE_CHECKING:
    from streamgw.config import ProviderConfig
    from streamgw.core.request import ResponsesRequest


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One HTTP request to send upstream."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)


class StreamTranslator(Protocol):
    """Upstream body bytes in, neutral deltas out.

    ``feed`` may be called with any split of the body; ``finish`` is called once
    at EOF and reports a stream cut before its proper end as an ``UpstreamFailure``.
    """

    def feed(self, chunk: bytes) -> list[Delta]: ...

    def finish(self) -> list[Delta]: ...


#: fetched bytes of remote images, ``url -> (mime type, base64 data)``
Assets = Mapping[str, tuple[str, str]]
NO_ASSETS: Assets = MappingProxyType({})


class Dialect(Protocol):
    """A wire dialect: request builder, translator factory and error parser.

    ``needs_image_bytes``: the upstream cannot take an http(s) image URL, so the engine
    fetches those (size-capped) and hands them to ``build_request`` as ``assets``.
    ``relays_events``: the upstream already speaks Responses events; the engine relays
    them (``streamgw.core.relay``) instead of running the emitter on deltas.
    """

    name: str
    needs_image_bytes: bool
    relays_events: bool

    def build_request(
        self, request: ResponsesRequest, provider: ProviderConfig, model: str, assets: Assets = ...
    ) -> UpstreamRequest: ...

    def new_translator(
        self, request: ResponsesRequest, provider: ProviderConfig, secrets: Sequence[str] = ()
    ) -> StreamTranslator:
        """A translator for one response body; ``secrets`` are redacted from upstream messages."""
        ...

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()
    ) -> GatewayError:
        """The error for a non-2xx answer, upstream message kept but ``secrets`` redacted."""
        ...


class LocalProvider(Protocol):
    """A provider type answered in-process, with no upstream: the built-in demo.

    It registers in ``streamgw.providers.registry`` like a dialect; the engine plays its
    ``script`` with the ``pacing`` the provider's config gives, and never names the type.
    """

    name: str
    #: the model id ``GET /v1/models`` lists for such a provider (it answers any id)
    listed_model: str

    def script(self, request: ResponsesRequest) -> list[Delta]:
        """Every delta of the answer to ``request``, in order (pure)."""
        ...

    def pacing(self, provider: ProviderConfig) -> tuple[float, float]:
        """Seconds before the first token, and tokens per second (0: no pause)."""
        ...


@dataclass(slots=True)
class WireDialect:
    """The ``Dialect`` every dialect module exports: its three functions, bound under one name.

    Not frozen: the ``Dialect`` protocol declares plain attributes.  The methods only forward
    (once per request, never per event), filling in the protocol's defaults.
    """

    name: str
    build: Callable[[ResponsesRequest, ProviderConfig, str, Assets], UpstreamRequest]
    translator: Callable[[ResponsesRequest, ProviderConfig, Sequence[str]], StreamTranslator]
    errors: Callable[[int, Mapping[str, str], bytes, Sequence[str]], GatewayError]
    needs_image_bytes: bool = False
    relays_events: bool = False

    def build_request(
        self, request: ResponsesRequest, provider: ProviderConfig, model: str, assets: Assets = NO_ASSETS
    ) -> UpstreamRequest:
        """The upstream request for ``request`` (``assets``: fetched image bytes, if needed)."""
        return self.build(request, provider, model, assets)

    def new_translator(
        self, request: ResponsesRequest, provider: ProviderConfig, secrets: Sequence[str] = ()
    ) -> StreamTranslator:
        """A fresh translator for one upstream response body; ``secrets`` are redacted."""
        return self.translator(request, provider, secrets)

    def parse_error(
        self, status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()
    ) -> GatewayError:
        """The error for a non-2xx answer, upstream message kept but ``secrets`` redacted."""
        return self.errors(status, headers, body, secrets)

"""The native OpenAI Responses dialect (``POST {base_url}/responses``), relayed, not translated.

The upstream already speaks the API the gateway serves (OpenAI's Responses API), so the
request goes up as the client sent it and the upstream's events come back event
for event (``streamgw.core.relay``).  This is the one dialect whose translator
yields ``RelayedEvent``s instead of neutral deltas (``relays_events = True``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from streamgw.config import ProviderConfig
from streamgw.core.blobs import PREFIX as BLOB_PREFIX
from streamgw.core.deltas import UpstreamFailure
from streamgw.core.relay import (
    SNAPSHOT_EVENTS,
    RelayedEvent,
    RelayItem,
    decode_event,
    error_event_failure,
    failed_event_failure,
)
from streamgw.core.request import ResponsesRequest
from streamgw.core.sse import SSEDecoder, TruncatedStream
from streamgw.errors import GatewayError, redact, sanitize_error_object
from streamgw.providers import chat_completions
from streamgw.providers.base import Dialect, StreamTranslator, UpstreamRequest, WireDialect
from streamgw.providers.common import json_post, upstream_headers

# --- request builder ---------------------------------------------------------------------------


def _headers(provider: ProviderConfig) -> dict[str, str]:
    return upstream_headers(provider, accept="text/event-stream")


def _foreign_reasoning(item: object) -> bool:
    """A reasoning item carrying one of our ``gw1:`` blobs: minted for another provider's upstream.

    A native upstream's reasoning items carry its own ``encrypted_content``, relayed as is, so
    a blob of ours always belongs to some other provider and is never forwarded.
    """
    if not isinstance(item, dict) or item.get("type") != "reasoning":
        return False
    content = item.get("encrypted_content")
    return isinstance(content, str) and content.startswith(BLOB_PREFIX)


def _body(request: ResponsesRequest, model: str) -> dict[str, Any]:
    """The client's body with every field it sent, ``provider`` dropped and ``model`` replaced.

    The upstream is always asked to stream: a non-streamed client request is aggregated
    from the terminal event's ``response``.  ``stream_options`` (``include_obfuscation``)
    only means something to a client that streams, so it is kept only for those.
    Reasoning items minted for other providers are left out of ``input``.
    """
    body = {key: value for key, value in request.raw.items() if key != "provider"}
    body["model"] = model
    body["stream"] = True
    if not request.stream:
        body.pop("stream_options", None)
    items = body.get("input")
    if isinstance(items, list) and any(_foreign_reasoning(item) for item in items):
        body["input"] = [item for item in items if not _foreign_reasoning(item)]
    return body


def build_request(request: ResponsesRequest, provider: ProviderConfig, model: str) -> UpstreamRequest:
    """The upstream ``POST {base_url}/responses`` for ``request``; ``model`` is the upstream model id.

    Unknown fields are forwarded untouched: the upstream is the judge of what it
    accepts (an unknown parameter comes back as its own 400, naming the ``param``).
    """
    return json_post(f"{provider.base_url.rstrip('/')}/responses", _headers(provider), _body(request, model))


# --- relay translator ----------------------------------------------------------------------------

_ENDED_BEFORE_OUTPUT = "upstream stream ended before any output"


class ResponsesRelayTranslator:
    """Responses SSE body bytes → ``RelayedEvent``s, one per upstream event, JSON parsed once.

    The opening snapshots (``response.created``, ``queued``, ``in_progress``) are held
    back until the first other event, so the engine's first batch is the first real
    output: its first-token deadline, hedging and fallback judge output, not headers.
    A failure before that (a bare ``error`` event, ``response.failed``, malformed data,
    a stream that ends) is reported as one ``UpstreamFailure`` instead, which the engine
    turns into an HTTP error.  Later, a bare ``error`` event, malformed data or a cut is
    an ``UpstreamFailure`` for ``RelayEmitter`` to end the stream with.  Comments
    (keepalives) and events without data are dropped.
    """

    __slots__ = ("_decoder", "_ended", "_held", "_secrets", "_started")

    def __init__(self, *, secrets: Sequence[str] = ()) -> None:
        """``secrets`` are redacted from upstream error messages (key-shaped text always is)."""
        self._decoder = SSEDecoder()
        self._secrets = tuple(secret for secret in secrets if secret)
        self._held: list[RelayItem] = []
        self._started = False  # the first event after the opening snapshots went out
        self._ended = False  # a failure was reported: the rest of the body is ignored

    def feed(self, chunk: bytes) -> list[RelayItem]:
        """Consume body bytes; return the items of every event they complete."""
        if self._ended:
            return []
        out: list[RelayItem] = []
        for event in self._decoder.feed(chunk):
            if event.data:
                self._on_data(event.data, out)
                if self._ended:
                    break
        return out

    def finish(self) -> list[RelayItem]:
        """End of body: a cut, or an end before any output, is a failure; a missing terminal is the relay's."""
        out: list[RelayItem] = []
        if self._ended:
            return out
        try:
            self._decoder.finish()
        except TruncatedStream as exc:
            self._fail(UpstreamFailure("server_error", f"upstream stream was cut off ({exc})"), out)
            return out
        if not self._started:
            self._fail(UpstreamFailure("server_error", _ENDED_BEFORE_OUTPUT), out)
        return out

    def _on_data(self, data: str, out: list[RelayItem]) -> None:
        if self._secrets and any(secret in data for secret in self._secrets):
            # Events are relayed verbatim, unknown types included: a configured secret an
            # upstream echoed anywhere is redacted in the text before it is parsed.
            data = redact(data, self._secrets)
        item = decode_event(data)
        if not isinstance(item, RelayedEvent):
            self._fail(item, out)
        elif item.type == "error":
            self._fail(error_event_failure(item.payload, self._secrets), out)
        elif self._started:
            if item.type == "response.failed":
                self._redact_failed(item)
            out.append(item)
        elif item.type in SNAPSHOT_EVENTS:
            self._held.append(item)
        elif item.type == "response.failed":
            self._fail(failed_event_failure(item.payload, self._secrets), out)
        else:
            self._started = True
            out.extend(self._held)
            self._held.clear()
            out.append(item)

    def _fail(self, failure: UpstreamFailure, out: list[RelayItem]) -> None:
        """Report ``failure`` and stop; before any output it replaces the held snapshots."""
        self._held.clear()  # before any output the engine answers with an HTTP error instead
        self._ended = True
        out.append(failure)

    def _redact_failed(self, item: RelayedEvent) -> None:
        """A relayed ``response.failed``'s error made safe, configured secrets included (the relay re-serialises it)."""
        response = item.payload.get("response")
        if isinstance(response, dict) and response.get("error") is not None:
            response["error"] = sanitize_error_object(response["error"], self._secrets)


# --- error parser --------------------------------------------------------------------------------


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()
) -> GatewayError:
    """A non-2xx Responses answer → ``GatewayError``.

    OpenAI's Responses endpoint answers errors with the same envelope as Chat
    Completions (https://platform.openai.com/docs/guides/error-codes), so this is ``chat_completions.parse_error``.
    """
    return chat_completions.parse_error(status, headers, body, secrets)


#: the native Responses dialect (``type = "openai"`` providers).  Its translator yields
#: ``RelayItem``s, not deltas: the engine feeds them to a ``RelayEmitter`` because
#: ``relays_events`` is set (the ``StreamTranslator`` protocol names deltas only).
DIALECT: Dialect = WireDialect(
    name="openai",
    build=lambda request, provider, model, assets: build_request(request, provider, model),
    translator=lambda request, provider, secrets: cast(StreamTranslator, ResponsesRelayTranslator(secrets=secrets)),
    errors=parse_error,
    relays_events=True,
)

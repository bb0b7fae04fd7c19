"""OpenTelemetry traces (``[tracing] enabled``, the ``otel`` extra): a server span per request, a child per attempt.

Imported only when tracing is on (``streamgw.app.gateway``): off, no OpenTelemetry module is
loaded and a request mints no id.  On, a request gets its trace when it enters the lifecycle
(``start``: the client's ``traceparent`` continued, or a new trace; the sampler decides there,
so the ``traceparent`` each upstream request carries says whether the trace is recorded),
a span id of its own and one per upstream attempt (minted by the engine as the attempt starts,
since the upstream's ``traceparent`` must name it).

The spans themselves are built after the fact, once the request is over, from its
``RequestEntry``: start and end times are the ones the lifecycle recorded, the ids the ones
it minted (handed to the SDK through its ``IdGenerator`` hook).  That is one batch of SDK
calls per request, none on the streaming path; ``BatchSpanProcessor`` queues the spans and
its own thread exports them (OTLP/HTTP), never the event loop.

Everything else is the SDK's own environment handling: ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``
(+ ``_ARG``), ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` defaults
to ``streamgw``), ``OTEL_BSP_*``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import trio
from opentelemetry import trace as otel
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from streamgw import __version__
from streamgw.config import Config, ProviderConfig
from streamgw.core.tracecontext import TraceParent, new_trace_id
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.lifecycle import RequestEntry, RequestObserver
from streamgw.store.calls import StoreCall

__all__ = ["Tracing"]

log = logging.getLogger("streamgw")

#: ``gen_ai.provider.name`` of the dialects that have a well-known value; any other provider is named
#: by its configured name (an OpenAI-compatible vendor's preset name is the semconv value, e.g. ``groq``)
_GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}
#: attempt outcomes that are not failures (anything else is the error code it failed with)
_ATTEMPT_OK = frozenset({"", "served", "opened", "lost", "cancelled"})
#: store-call outcomes that are not failures
_STORE_OK = frozenset({"found", "not_found", "written", "queued", "cancelled"})
_SERVER_NAMES = {"sse": "POST /v1/responses", "json": "POST /v1/responses", "websocket": "response.create"}
_CLIENT_LEFT = "client_disconnected"


class _ChosenIds(IdGenerator):
    """The SDK's id source: the ids the gateway minted while the request ran, else random ones."""

    def __init__(self) -> None:
        self.span_id = 0
        self.trace_id = 0
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        chosen, self.span_id = self.span_id, 0
        return chosen or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        chosen, self.trace_id = self.trace_id, 0
        return chosen or self._random.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        return True  # ours come from os.urandom too


def _provider_attributes(provider: ProviderConfig) -> dict[str, Any]:
    """The attributes every attempt span of ``provider`` has: its GenAI name and server address."""
    attributes: dict[str, Any] = {"gen_ai.provider.name": _GENAI_PROVIDERS.get(provider.type, provider.name),
                                  "streamgw.provider": provider.name}
    if provider.base_url:
        url = urlsplit(provider.base_url)
        if url.hostname:
            attributes["server.address"] = url.hostname
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    return attributes


def _usage(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """The ``gen_ai.usage.*`` attributes of a Responses ``usage`` object (only the counts it has)."""
    if not usage:
        return {}
    found: dict[str, int] = {}
    for key, value in (("gen_ai.usage.input_tokens", usage.get("input_tokens")),
                       ("gen_ai.usage.output_tokens", usage.get("output_tokens")),
                       ("gen_ai.usage.cache_read.input_tokens",
                        _detail(usage, "input_tokens_details", "cached_tokens")),
                       ("gen_ai.usage.reasoning.output_tokens",
                        _detail(usage, "output_tokens_details", "reasoning_tokens"))):
        if isinstance(value, int) and not isinstance(value, bool):
            found[key] = value
    return found


def _detail(usage: Mapping[str, Any], table: str, key: str) -> Any:
    details = usage.get(table)
    return details.get(key) if isinstance(details, dict) else None


def _winner(entry: RequestEntry) -> AttemptRecord | None:
    """The attempt that served the response (it produced the first delta and was not a hedge that lost)."""
    for record in entry.attempts:
        if record.first_delta_at is not None and record.outcome != "lost":
            return record
    return None


def _server_error(entry: RequestEntry, winner: AttemptRecord | None) -> tuple[str, bool] | None:
    """The request's ``error.type`` and whether its span is an error, or ``None`` when it went well.

    As the HTTP semantic conventions have it, a 4xx answer is the client's doing: ``error.type``
    says which, the status stays unset.  A 5xx, a stream that ended in ``response.failed``, and
    a client that left before the end are errors.
    """
    error = entry.error
    if error is not None:
        return error.code or error.type, not 400 <= entry.status < 500
    if entry.terminal == "failed":
        outcome = winner.outcome if winner is not None else ""
        return (outcome if outcome not in _ATTEMPT_OK else "failed"), True
    if entry.client_left or (entry.status == 0 and not entry.finished):
        return _CLIENT_LEFT, True
    return None


class Tracing:
    """The tracer of one gateway process: the lifecycle's ``TraceStarter`` and a ``RequestObserver``.

    As an observer it hands every entry on to ``inner`` (metrics, the request log) first, then
    turns it into spans.
    """

    def __init__(self, config: Config, inner: RequestObserver) -> None:
        self._inner = inner
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "streamgw"}))
        self._ids = _ChosenIds()
        self.provider = TracerProvider(resource=resource, id_generator=self._ids, shutdown_on_exit=False)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._sampler = self.provider.sampler
        self._tracer = self.provider.get_tracer("streamgw", __version__)
        self._providers = {name: _provider_attributes(p) for name, p in config.providers.items()}
        self._store = {"db.system.name": config.store.backend}
        self._failed = False

    # -- TraceStarter ------------------------------------------------------------------------------

    def start(self, trace: TraceParent | None) -> TraceParent:
        """The trace a request joins: the client's (``sampled`` as our sampler decides), or a new one."""
        if trace is None:
            trace = TraceParent(new_trace_id())
        decision = self._sampler.should_sample(self._parent(trace), int(trace.trace_id, 16), "POST /v1/responses",
                                               SpanKind.SERVER).decision
        sampled = decision is Decision.RECORD_AND_SAMPLE
        return trace if sampled == trace.sampled else TraceParent(trace.trace_id, trace.parent_id, sampled)

    # -- RequestObserver ---------------------------------------------------------------------------

    def opened(self, entry: RequestEntry) -> None:
        self._inner.opened(entry)

    def ended(self, entry: RequestEntry) -> None:
        """Hand the entry on, then export its spans (unless its trace is not sampled)."""
        self._inner.ended(entry)
        if entry.span_id and entry.trace is not None and not entry.trace.sampled:
            return
        try:
            self._spans(entry)
        except Exception:  # a tracing bug must not fail the request that is ending; said once
            self._ids.span_id = self._ids.trace_id = 0
            if not self._failed:
                self._failed = True
                log.exception("could not build the spans of a request (further failures are not logged)")

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter (blocking: run it in a thread)."""
        self.provider.shutdown()

    # -- building the spans ------------------------------------------------------------------------

    def _parent(self, trace: TraceParent) -> Context:
        """The context a request's server span starts in: under the client's span, or a new trace's root."""
        if not trace.parent_id:
            return Context()
        flags = TraceFlags(TraceFlags.SAMPLED if trace.sampled else TraceFlags.DEFAULT)
        remote = SpanContext(int(trace.trace_id, 16), int(trace.parent_id, 16), is_remote=True, trace_flags=flags)
        return otel.set_span_in_context(NonRecordingSpan(remote), Context())

    def _spans(self, entry: RequestEntry) -> None:
        offset = time.time_ns() - int(trio.current_time() * 1e9)  # trio's clock -> Unix nanoseconds
        end = entry.ended_at if entry.ended_at is not None else trio.current_time()

        def ns(at: float | None) -> int:
            return int((end if at is None else at) * 1e9) + offset

        trace = entry.trace
        context = self._parent(trace) if trace is not None else Context()
        if trace is not None and not trace.parent_id:
            self._ids.trace_id = int(trace.trace_id, 16)  # a trace of our own: its id is the one we sent upstream
        winner = _winner(entry)
        self._ids.span_id = int(entry.span_id, 16) if entry.span_id else 0
        server = self._tracer.start_span(_SERVER_NAMES.get(entry.door, "POST /v1/responses"), context,
                                         SpanKind.SERVER, self._server_attributes(entry, winner),
                                         start_time=ns(entry.started))
        self._ids.trace_id = 0
        failure = _server_error(entry, winner)
        if failure is not None:
            server.set_attribute("error.type", failure[0])
            if failure[1]:
                server.set_status(Status(StatusCode.ERROR, failure[0]))
        if server.is_recording():
            inside = otel.set_span_in_context(server, Context())
            for call in entry.store_calls or ():
                self._store_span(call, inside, ns)
            for record in entry.attempts:
                self._attempt_span(entry, record, record is winner, inside, ns)
        server.end(ns(end))

    def _server_attributes(self, entry: RequestEntry, winner: AttemptRecord | None) -> dict[str, Any]:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "streamgw.request_id": entry.request_id,
                                      "streamgw.door": entry.door, "streamgw.attempts": len(entry.attempts)}
        if entry.door != "websocket":
            attributes |= {"http.request.method": "POST", "http.route": "/v1/responses"}
            if entry.status:
                attributes["http.response.status_code"] = entry.status
        if entry.model:
            attributes["gen_ai.request.model"] = entry.model
        if entry.streamed:
            attributes["gen_ai.request.stream"] = True
        caller = entry.caller
        if caller is not None and caller.key is not None:
            attributes["streamgw.key"] = caller.key.name
        if entry.provider:
            attributes |= self._providers.get(entry.provider, {"streamgw.provider": entry.provider})
            attributes.pop("server.address", None)
            attributes.pop("server.port", None)
        if entry.upstream_model:
            attributes["gen_ai.response.model"] = entry.upstream_model
        if entry.terminal:
            attributes["streamgw.terminal"] = entry.terminal
        if entry.first_delta_at is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = entry.first_delta_at - entry.started
        return attributes | _usage(entry.usage)

    def _attempt_span(self, entry: RequestEntry, record: AttemptRecord, won: bool, context: Context,
                      ns: Callable[[float | None], int]) -> None:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": record.model,
                                      **self._providers.get(record.provider, {"streamgw.provider": record.provider}),
                                      "streamgw.attempt.kind": record.kind,
                                      "streamgw.attempt.outcome": record.outcome or "cancelled"}
        if record.headers_at is not None:
            attributes["streamgw.attempt.time_to_headers"] = record.headers_at - record.started
        if record.first_delta_at is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = record.first_delta_at - record.started
        if won:
            attributes["gen_ai.response.model"] = record.model
            attributes |= _usage(entry.usage)
        self._ids.span_id = int(record.span_id, 16) if record.span_id else 0
        span = self._tracer.start_span(f"chat {record.model}", context, SpanKind.CLIENT, attributes,
                                       start_time=ns(record.started))
        if record.outcome not in _ATTEMPT_OK:
            span.set_attribute("error.type", record.outcome)
            span.set_status(Status(StatusCode.ERROR, record.outcome))
        span.end(ns(record.ended))

    def _store_span(self, call: StoreCall, context: Context, ns: Callable[[float | None], int]) -> None:
        outcome = call.outcome or "cancelled"
        attributes = {**self._store, "db.operation.name": call.op, "streamgw.store.outcome": outcome}
        span = self._tracer.start_span(f"store {call.op}", context, SpanKind.CLIENT, attributes,
                                       start_time=ns(call.started))
        if outcome not in _STORE_OK:
            span.set_attribute("error.type", outcome)
            span.set_status(Status(StatusCode.ERROR, outcome))
        span.end(ns(call.ended))

"""OpenTelemetry traces (``[tracing] enabled``, the ``otel`` extra): a server span per request, a child per attempt.

Imported only when tracing is on (``streamgw.app.gateway``): off, no OpenTelemetry module is
loaded and a request mints no id.  On, a request gets its trace when it enters the lifecycle
(``start``: the client's ``traceparent`` continued, or a new trace; the sampler decides there,
so the ``traceparent`` each upstream request carries says whether the trace is recorded),
a span id of its own and one per upstream attempt (minted by the engine as the attempt starts,
since the upstream's ``traceparent`` must name it).

The spans themselves are built after the fact, once the request is over, from its
``RequestEntry``: start and end times are the ones the lifecycle recorded, the ids the ones
it minted.  They are the SDK's ``ReadableSpan``s (what its own spans become when they end),
handed straight to the ``BatchSpanProcessor``: nothing on the streaming path, and a fraction
of what live SDK spans cost (measured: about a fifth).  The processor's own thread exports
them (OTLP/HTTP), never the event loop.

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
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from streamgw import __version__
from streamgw.config import Config, ProviderConfig
from streamgw.core.tracecontext import TraceParent, new_span_id, new_trace_id
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.lifecycle import RequestEntry
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
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)


class _Resource(Resource):
    """A ``Resource`` that hashes once: the exporter groups each span by its resource, and the SDK's
    ``Resource.__hash__`` serialises every attribute to JSON on each call (a fifth of the encoding)."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other is self or super().__eq__(other)


def _provider_attributes(provider: ProviderConfig) -> dict[str, Any]:
    """The attributes every attempt span of ``provider`` has: its GenAI name and server address."""
    genai = _GENAI_PROVIDERS.get(provider.type, provider.name)
    attributes: dict[str, Any] = {"gen_ai.provider.name": genai}
    if genai != provider.name:
        attributes["streamgw.provider"] = provider.name
    if provider.base_url:
        url = urlsplit(provider.base_url)
        if url.hostname:
            attributes["server.address"] = url.hostname
            attributes["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    return attributes


def _add_usage(attributes: dict[str, Any], usage: Mapping[str, Any]) -> None:
    """Add the ``gen_ai.usage.*`` attributes of a Responses ``usage`` object (cached and reasoning: when not 0)."""
    for key, value in (("gen_ai.usage.input_tokens", usage.get("input_tokens")),
                       ("gen_ai.usage.output_tokens", usage.get("output_tokens"))):
        if type(value) is int:
            attributes[key] = value
    for key, table, name in (("gen_ai.usage.cache_read.input_tokens", "input_tokens_details", "cached_tokens"),
                             ("gen_ai.usage.reasoning.output_tokens", "output_tokens_details", "reasoning_tokens")):
        details = usage.get(table)
        value = details.get(name) if isinstance(details, dict) else None
        if type(value) is int and value:
            attributes[key] = value


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
    if entry.client_left:
        return _CLIENT_LEFT, True
    return None


class Tracing:
    """The tracer of one gateway process: the lifecycle's ``TraceStarter``, and a ``RequestObserver``
    (one of ``Gateway.observers``) that turns each request's entry into spans."""

    def __init__(self, config: Config) -> None:
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "streamgw"}))
        self._resource = _Resource(resource)
        #: the provider reads OTEL_TRACES_SAMPLER and owns the processor (its shutdown flushes it)
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self._processor = BatchSpanProcessor(OTLPSpanExporter())
        self.provider.add_span_processor(self._processor)
        self._sampler = self.provider.sampler
        self._scope = InstrumentationScope("streamgw", __version__)
        self._providers = {name: _provider_attributes(p) for name, p in config.providers.items()}
        self._store = {"db.system.name": config.store.backend}

    # -- TraceStarter ------------------------------------------------------------------------------

    def start(self, trace: TraceParent | None) -> TraceParent:
        """The trace a request joins: the client's (``sampled`` as our sampler decides), or a new one."""
        if trace is None:
            trace = TraceParent(new_trace_id())
        context = Context()
        if trace.parent_id:
            context = otel.set_span_in_context(NonRecordingSpan(self._remote(trace)), context)
        decision = self._sampler.should_sample(context, int(trace.trace_id, 16), "POST /v1/responses",
                                               SpanKind.SERVER).decision
        sampled = decision is Decision.RECORD_AND_SAMPLE
        return trace if sampled == trace.sampled else TraceParent(trace.trace_id, trace.parent_id, sampled)

    # -- RequestObserver ---------------------------------------------------------------------------

    def opened(self, entry: RequestEntry) -> None:
        """Nothing yet: the spans are made when the request ended."""

    def ended(self, entry: RequestEntry) -> None:
        """Export the request's spans (unless its trace is not sampled); ``Observers`` logs a failure once."""
        self._spans(entry)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter (blocking: run it in a thread)."""
        self.provider.shutdown()

    # -- building the spans ------------------------------------------------------------------------
    #
    # ``ReadableSpan``s handed to the batch processor, as the SDK's own spans are when they end: the
    # request is over, its times and ids are known, and the SDK's live-span machinery (contexts,
    # locks, attribute cleaning, a sampler call per span) would cost several times more per request.

    @staticmethod
    def _remote(trace: TraceParent) -> SpanContext:
        flags = TraceFlags(TraceFlags.SAMPLED if trace.sampled else TraceFlags.DEFAULT)
        return SpanContext(int(trace.trace_id, 16), int(trace.parent_id, 16), is_remote=True, trace_flags=flags)

    def _spans(self, entry: RequestEntry) -> None:
        trace = entry.trace
        if not entry.span_id:  # refused before the lifecycle: its trace was not started yet
            trace = self.start(trace)
        if trace is None or not trace.sampled:
            return
        trace_id = int(trace.trace_id, 16)
        parent = self._remote(trace) if trace.parent_id else None
        server = SpanContext(trace_id, int(entry.span_id or new_span_id(), 16), is_remote=False, trace_flags=_SAMPLED)
        offset = time.time_ns() - int(trio.current_time() * 1e9)  # trio's clock -> Unix nanoseconds
        end = entry.ended_at if entry.ended_at is not None else trio.current_time()

        def ns(at: float | None) -> int:
            return int((end if at is None else at) * 1e9) + offset

        winner = _winner(entry)
        attributes = self._server_attributes(entry, winner)
        status = _UNSET
        failure = _server_error(entry, winner)
        if failure is not None:
            attributes["error.type"] = failure[0]
            if failure[1]:
                status = Status(StatusCode.ERROR, failure[0])
        on_end = self._processor.on_end
        for call in entry.store_calls or ():
            on_end(self._store_span(call, trace_id, server, ns))
        for record in entry.attempts:
            on_end(self._attempt_span(record, trace_id, server, ns))
        on_end(ReadableSpan(_SERVER_NAMES.get(entry.door, "POST /v1/responses"), server, parent, self._resource,
                            attributes, kind=SpanKind.SERVER, status=status, start_time=ns(entry.started),
                            end_time=ns(end), instrumentation_scope=self._scope))

    def _server_attributes(self, entry: RequestEntry, winner: AttemptRecord | None) -> dict[str, Any]:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "streamgw.request_id": entry.request_id}
        if entry.door != "websocket":
            attributes["http.request.method"] = "POST"
            attributes["http.route"] = "/v1/responses"
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
            named = self._providers.get(entry.provider, {"gen_ai.provider.name": entry.provider})
            attributes["gen_ai.provider.name"] = named["gen_ai.provider.name"]
            if "streamgw.provider" in named:
                attributes["streamgw.provider"] = named["streamgw.provider"]
        if entry.upstream_model:
            attributes["gen_ai.response.model"] = entry.upstream_model
        if entry.response_id:
            attributes["gen_ai.response.id"] = entry.response_id
        if entry.terminal:
            attributes["streamgw.terminal"] = entry.terminal
        if entry.first_delta_at is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = entry.first_delta_at - entry.started
        if entry.usage:
            _add_usage(attributes, entry.usage)
        return attributes

    def _attempt_span(self, record: AttemptRecord, trace_id: int,
                      server: SpanContext, ns: Callable[[float | None], int]) -> ReadableSpan:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": record.model,
                                      **self._providers.get(record.provider, {"gen_ai.provider.name": record.provider}),
                                      "streamgw.attempt.kind": record.kind,
                                      "streamgw.attempt.outcome": record.outcome or "cancelled"}
        if record.headers_at is not None:
            attributes["streamgw.attempt.time_to_headers"] = record.headers_at - record.started
        if record.first_delta_at is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = record.first_delta_at - record.started
        status = _UNSET
        if record.outcome not in _ATTEMPT_OK:
            attributes["error.type"] = record.outcome
            status = Status(StatusCode.ERROR, record.outcome)
        context = SpanContext(trace_id, int(record.span_id or new_span_id(), 16), is_remote=False,
                              trace_flags=_SAMPLED)
        return ReadableSpan(f"chat {record.model}", context, server, self._resource, attributes, kind=SpanKind.CLIENT,
                            status=status, start_time=ns(record.started), end_time=ns(record.ended),
                            instrumentation_scope=self._scope)

    def _store_span(self, call: StoreCall, trace_id: int, server: SpanContext,
                    ns: Callable[[float | None], int]) -> ReadableSpan:
        if call.op == "write" and call.ended is None:  # submitted as the client left: written later, unwaited
            call.ended, call.outcome = call.started, "queued"
        outcome = call.outcome or "cancelled"
        attributes = {**self._store, "db.operation.name": call.op, "streamgw.store.outcome": outcome}
        status = _UNSET
        if outcome not in _STORE_OK:
            attributes["error.type"] = outcome
            status = Status(StatusCode.ERROR, outcome)
        context = SpanContext(trace_id, int(new_span_id(), 16), is_remote=False, trace_flags=_SAMPLED)
        return ReadableSpan(f"store {call.op}", context, server, self._resource, attributes, kind=SpanKind.CLIENT,
                            status=status, start_time=ns(call.started), end_time=ns(call.ended),
                            instrumentation_scope=self._scope)

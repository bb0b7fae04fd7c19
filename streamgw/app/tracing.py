"""OpenTelemetry traces (``[tracing] enabled``, the ``otel`` extra): a server span per request, a child per attempt.

Imported only when tracing is on (``streamgw.app.gateway``): off, no OpenTelemetry module is
loaded and a request mints no id.  On, a request gets its trace when it enters the lifecycle
(``start``: the client's ``traceparent`` continued, or a new trace; the sampler decides there,
so the ``traceparent`` each upstream request carries says whether the trace is recorded),
a span id of its own and one per upstream attempt (minted by the engine as the attempt starts,
since the upstream's ``traceparent`` must name it).

The spans themselves are built after the fact, once the request is over, from its
``RequestEntry``: start and end times are the ones the lifecycle recorded, the ids the ones
it minted.  Nothing happens on the streaming path.  What a request costs is then mostly the
standard OTLP exporter's protobuf encoding (in its thread, but in this process): some 20 k
instructions per attribute and 50 k per span (the SDK's own span objects cost 25 k more each).
Hence:

- ``_Span``: a finished span with exactly what the exporter's encoder reads of a
  ``ReadableSpan`` (plain slots instead of properties, no ``SpanContext`` validation, no
  trace-state or unset-status messages to encode);
- ``_Batcher``: the batch processor, taking a request's spans in one call (the SDK's takes
  them one by one) and exporting from its own thread, never the event loop;
- attributes that only restate the common case are left out (an attempt's kind ``first`` and
  outcome ``served``, a store call's expected outcome, a response's terminal ``completed``):
  their absence says it; an attempt's time to headers is in the request log only;
- a store call is a span when the request waited for it: its lookups, and its final record's
  write with ``confirm_writes`` (the default); without (or once the client left), the record is
  handed to the store's writer, a queue in this process, and a span would time nothing.

Everything else is the SDK's own environment handling: ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_TRACES_SAMPLER``
(+ ``_ARG``), ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` defaults
to ``streamgw``); ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE`` and
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` are read here, with the SDK's defaults and meaning.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlsplit

import trio
from opentelemetry import trace as otel
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, Context, attach, detach, set_value
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from streamgw import __version__
from streamgw.config import Config, ProviderConfig
from streamgw.core.tracecontext import TraceParent, new_span_id, new_trace_id
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.lifecycle import RequestEntry

__all__ = ["Tracing"]

log = logging.getLogger("streamgw")

#: ``gen_ai.provider.name`` of the dialects that have a well-known value; any other provider is named
#: by its configured name (an OpenAI-compatible vendor's preset name is the semconv value, e.g. ``groq``)
_GENAI_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}
#: attempt outcomes that are not failures (anything else is the error code it failed with)
_ATTEMPT_OK = frozenset({"", "served", "opened", "lost", "cancelled"})
#: store-call outcomes that are not failures
_STORE_OK = frozenset({"found", "not_found", "written", "cancelled"})
#: store-call outcomes that are the expected case, and so not an attribute
_STORE_USUAL = frozenset({"found", "written"})
_SERVER_NAMES = {"sse": "POST /v1/responses", "json": "POST /v1/responses", "websocket": "response.create"}
_CLIENT_LEFT = "client_disconnected"


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


class _Scope(InstrumentationScope):
    """An ``InstrumentationScope`` that hashes once (the exporter groups each span by it, too)."""

    def __init__(self, name: str, version: str) -> None:
        super().__init__(name, version)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return other is self or super().__eq__(other)


class _Context:
    """A span's ids as the OTLP encoder reads a ``SpanContext``: an SDK one validates both ids as it is made,
    and its (empty) trace state is encoded as a field of every span; ``None`` is not."""

    __slots__ = ("is_remote", "span_id", "trace_id")
    trace_state = None

    def __init__(self, trace_id: int, span_id: int, is_remote: bool = False) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.is_remote = is_remote


class _Span:
    """A finished span: what the standard OTLP encoder reads of a ``ReadableSpan``, as plain slots.

    The SDK's ``ReadableSpan`` answers each through a property (``attributes`` wraps the dict in a
    new proxy, ``events`` and ``links`` copy into tuples) and is made of an SDK ``SpanContext``;
    this costs a fraction, on the event loop and in the exporter.  ``status`` ``None``: unset (the
    encoder then writes no status message, which a receiver reads as code ``UNSET``).  Only the
    exporter sees these (``_Batcher``), never the SDK's processors.
    """

    __slots__ = ("attributes", "context", "end_time", "instrumentation_scope", "kind", "name", "parent",
                 "resource", "start_time", "status")
    events: tuple[()] = ()
    links: tuple[()] = ()
    dropped_attributes = dropped_events = dropped_links = 0

    def __init__(self, name: str, context: _Context, parent: _Context | None, kind: SpanKind,
                 attributes: dict[str, Any], status: Status | None, start_time: int, end_time: int,
                 resource: Resource, scope: InstrumentationScope) -> None:
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.status = status
        self.start_time = start_time
        self.end_time = end_time
        self.resource = resource
        self.instrumentation_scope = scope

    def get_span_context(self) -> _Context:
        return self.context


def _env_count(name: str, default: int) -> int:
    """A positive ``OTEL_BSP_*`` setting; anything else is the SDK's default (and a warning, as the SDK gives)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("%s=%r is not a positive whole number: using %d", name, text, default)
        return default
    return value


class _Batcher:
    """The batch span processor: each request's spans are queued in one call, and a thread of its own
    exports them through the (standard) exporter in batches of ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``
    (default 512) — as soon as a batch is full, else every ``OTEL_BSP_SCHEDULE_DELAY`` ms (5000) —
    and what is left at shutdown.  Beyond ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048) queued spans, a request's
    spans are dropped (a warning when it starts), as the SDK's processor drops them.
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter
        self._delay = _env_count("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._size = _env_count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self._limit = _env_count("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        if self._size > self._limit:
            log.warning("OTEL_BSP_MAX_EXPORT_BATCH_SIZE=%d is over OTEL_BSP_MAX_QUEUE_SIZE: using %d",
                        self._size, self._limit)
            self._size = self._limit
        self._queue: collections.deque[_Span] = collections.deque()  # append and popleft are thread-safe
        self._wake = threading.Event()
        self._stopping = False
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name="streamgw-otel-export", daemon=True)
        self._thread.start()

    def add(self, spans: Sequence[_Span]) -> None:
        """Queue one request's spans (the event loop's only part: never blocks)."""
        queue = self._queue
        if self._stopping:
            return
        if len(queue) + len(spans) > self._limit:
            if not self._dropping:
                self._dropping = True
                log.warning("tracing: %d spans wait for export (OTEL_BSP_MAX_QUEUE_SIZE): dropping spans", len(queue))
            return
        self._dropping = False
        queue.extend(spans)
        if len(queue) >= self._size and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            full = self._wake.wait(self._delay)
            self._wake.clear()
            self._export(everything=not full)  # woken by a full batch: export the full ones only
        self._export(everything=True)

    def _export(self, everything: bool) -> None:
        queue, size = self._queue, self._size
        while len(queue) >= size or (everything and queue):
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))  # its HTTP post is not traced itself
            try:
                self._exporter.export(cast(Sequence[ReadableSpan], batch))
            except Exception:
                log.exception("tracing: exporting %d spans failed", len(batch))
            finally:
                detach(token)

    def shutdown(self, timeout: float = 30) -> None:
        """Export what is queued, then stop the exporter (blocking: run it in a thread)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._exporter.shutdown()


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
        #: the SDK's provider reads OTEL_TRACES_SAMPLER (+ _ARG); its sampler decides each trace
        self._sampler = TracerProvider(resource=resource, shutdown_on_exit=False).sampler
        #: the default sampler (``parentbased_always_on``) follows the client's decision and samples a new
        #: trace: no need to ask it (a context, a span and a sampling result made per request)
        default = ParentBased(ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]
        self._follows = self._sampler.get_description() == default
        self._batcher = _Batcher(OTLPSpanExporter())
        self._scope = _Scope("streamgw", __version__)
        self._providers = {name: _provider_attributes(p) for name, p in config.providers.items()}
        self._store = config.store.backend

    # -- TraceStarter ------------------------------------------------------------------------------

    def start(self, trace: TraceParent | None) -> TraceParent:
        """The trace a request joins: the client's (``sampled`` as our sampler decides), or a new one."""
        if trace is None:
            trace = TraceParent(new_trace_id())
        if self._follows:
            return trace
        context = Context()
        if trace.parent_id:
            flags = TraceFlags(TraceFlags.SAMPLED if trace.sampled else TraceFlags.DEFAULT)
            remote = SpanContext(int(trace.trace_id, 16), int(trace.parent_id, 16), is_remote=True, trace_flags=flags)
            context = otel.set_span_in_context(NonRecordingSpan(remote), context)
        decision = self._sampler.should_sample(context, int(trace.trace_id, 16), "POST /v1/responses",
                                               SpanKind.SERVER).decision
        sampled = decision is Decision.RECORD_AND_SAMPLE
        return trace if sampled == trace.sampled else TraceParent(trace.trace_id, trace.parent_id, sampled)

    # -- RequestObserver ---------------------------------------------------------------------------

    def opened(self, entry: RequestEntry) -> None:
        """Nothing yet: the spans are made when the request ended."""

    def ended(self, entry: RequestEntry) -> None:
        """Export the request's spans (unless its trace is not sampled); ``Observers`` logs a failure once."""
        spans = self.spans(entry)
        if spans:
            self._batcher.add(spans)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter (blocking: run it in a thread)."""
        self._batcher.shutdown()

    # -- building the spans ------------------------------------------------------------------------

    def spans(self, entry: RequestEntry) -> list[_Span]:
        """The spans of a request that ended (its store calls', its attempts', then its own); none unsampled."""
        trace = entry.trace
        if not entry.span_id:  # refused before the lifecycle: its trace was not started yet
            trace = self.start(trace)
        if trace is None or not trace.sampled:
            return []
        trace_id = int(trace.trace_id, 16)
        parent = _Context(trace_id, int(trace.parent_id, 16), True) if trace.parent_id else None
        server = _Context(trace_id, int(entry.span_id or new_span_id(), 16))
        offset = time.time_ns() - int(trio.current_time() * 1e9)  # trio's clock -> Unix nanoseconds
        end = entry.ended_at if entry.ended_at is not None else trio.current_time()
        end_ns = int(end * 1e9) + offset
        resource, scope = self._resource, self._scope
        spans = []
        for call in entry.store_calls or ():
            if call.op == "write" and (call.outcome == "queued" or call.ended is None):
                continue  # handed to the store's writer, not waited for (no confirm_writes, or the client left)
            outcome = call.outcome or "cancelled"
            attributes = {"db.system.name": self._store, "db.operation.name": call.op}
            status = None
            if outcome not in _STORE_USUAL:
                attributes["streamgw.store.outcome"] = outcome
                if outcome not in _STORE_OK:
                    attributes["error.type"] = outcome
                    status = Status(StatusCode.ERROR, outcome)
            spans.append(_Span(f"store {call.op}", _Context(trace_id, int(new_span_id(), 16)), server,
                               SpanKind.CLIENT, attributes, status, int(call.started * 1e9) + offset,
                               end_ns if call.ended is None else int(call.ended * 1e9) + offset, resource, scope))
        for record in entry.attempts:
            spans.append(self._attempt_span(record, trace_id, server, offset, end_ns))
        winner = _winner(entry)
        attributes = self._server_attributes(entry)
        status = None
        failure = _server_error(entry, winner)
        if failure is not None:
            attributes["error.type"] = failure[0]
            if failure[1]:
                status = Status(StatusCode.ERROR, failure[0])
        spans.append(_Span(_SERVER_NAMES.get(entry.door, "POST /v1/responses"), server, parent, SpanKind.SERVER,
                           attributes, status, int(entry.started * 1e9) + offset, end_ns, resource, scope))
        return spans

    def _server_attributes(self, entry: RequestEntry) -> dict[str, Any]:
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
        if entry.terminal and entry.terminal != "completed":  # no terminal status, and no error: completed
            attributes["streamgw.terminal"] = entry.terminal
        if entry.first_delta_at is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = entry.first_delta_at - entry.started
        if entry.usage:
            _add_usage(attributes, entry.usage)
        return attributes

    def _attempt_span(self, record: AttemptRecord, trace_id: int, server: _Context, offset: int,
                      end_ns: int) -> _Span:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": record.model,
                                      **self._providers.get(record.provider, {"gen_ai.provider.name": record.provider})}
        if record.kind != "first":
            attributes["streamgw.attempt.kind"] = record.kind
        if record.outcome != "served":
            attributes["streamgw.attempt.outcome"] = record.outcome or "cancelled"
        if record.first_delta_at is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = record.first_delta_at - record.started
        status = None
        if record.outcome not in _ATTEMPT_OK:
            attributes["error.type"] = record.outcome
            status = Status(StatusCode.ERROR, record.outcome)
        return _Span(f"chat {record.model}", _Context(trace_id, int(record.span_id or new_span_id(), 16)), server,
                     SpanKind.CLIENT, attributes, status, int(record.started * 1e9) + offset,
                     end_ns if record.ended is None else int(record.ended * 1e9) + offset, self._resource, self._scope)

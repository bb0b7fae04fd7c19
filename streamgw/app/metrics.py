"""Prometheus metrics: updated once per request or per failure, never per event.

Every label value comes from a fixed set, so that no client or upstream can grow the number of
series (``/metrics`` may be public): ``provider`` is a configured provider or route name, or
``none``; ``kind``/``code``/``outcome`` one of ``ERROR_KINDS`` (or a word of their own) or
``other``; ``status`` a three-digit HTTP status; ``model`` a configured model, route or
``provider/model``, else ``other``; ``key`` one of the first ``KEY_LABELS`` key names seen
(configured ones first), else ``other``.

With ``--workers N`` every worker writes its values into memory-mapped files of one directory
the supervisor creates per run (``PROMETHEUS_MULTIPROC_DIR``, prometheus_client's multiprocess
mode), and ``/metrics`` sums every worker's files, whichever worker answers the scrape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from streamgw.errors import upstream_failure

if TYPE_CHECKING:
    from streamgw.engine.lifecycle import RequestEntry

#: the environment variable of prometheus_client's multiprocess mode (set by the supervisor for its workers)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: distinct ``key`` label values at most (the rest count as ``other``)
KEY_LABELS = 100
#: distinct ``model`` label values at most, even with a longer model list
MODEL_LABELS = 500

#: the ``kind`` label values of ``streamgw_upstream_errors``: the gateway's own error codes (and the
#: error types it falls back to); any other code, e.g. one an upstream made up, counts as ``other``
ERROR_KINDS = frozenset({
    "client_disconnected", "timeout", "first_token_timeout", "total_timeout", "upstream_timeout",
    "upstream_idle_timeout", "upstream_total_timeout", "upstream_unreachable", "upstream_connection_error",
    "upstream_empty", "upstream_5xx", "upstream_unexpected_status", "upstream_auth_failed", "upstream_error",
    "upstream_rejected", "unsupported_provider", "route_exhausted", "overloaded", "internal_error",
    "rate_limit_exceeded", "insufficient_quota", "server_error", "invalid_prompt", "provider_error",
    "rate_limit_error",
    # refused by the gateway itself (before or instead of an upstream)
    "invalid_api_key", "request_too_large", "request_timeout", "server_busy", "model_not_found",
    "budget_exhausted", "concurrency_limit_exceeded",
})
#: the ``outcome`` label values of ``streamgw_attempts`` besides error kinds
ATTEMPT_OUTCOMES = frozenset({"served", "opened", "lost", "cancelled", "running"})
#: the ``terminal`` label values of ``streamgw_responses``
TERMINALS = ("completed", "incomplete", "failed", "error", "cancelled")
TOKEN_TYPES = ("input", "output", "cached", "reasoning")
OTHER = "other"
NONE = "none"

M = TypeVar("M", Counter, Histogram)


def error_kind(code: str | None) -> str:
    """The ``kind`` label for an error ``code``: itself when it is one of ``ERROR_KINDS``, else ``other``."""
    return code if code in ERROR_KINDS else OTHER


def _status(value: str) -> str:
    return value if len(value) == 3 and value.isdigit() else OTHER


def _outcome(value: str) -> str:
    return value if value in ATTEMPT_OUTCOMES else error_kind(value) if value else "running"


def _fixed(*values: str) -> Callable[[str], str]:
    allowed = frozenset(values)
    return lambda value: value if value in allowed else OTHER


class CappedLabel:
    """Label values from a known list, then the first ones seen up to ``cap``; every other as ``other``.

    For key names: configured keys are known at start, managed keys appear while the gateway runs.
    """

    __slots__ = ("_cap", "_seen")

    def __init__(self, known: Iterable[str] = (), cap: int = KEY_LABELS) -> None:
        self._cap = cap
        self._seen: set[str] = set()
        for name in known:
            self(name)

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not value:
            return NONE
        if len(self._seen) >= self._cap or len(value) > 128:
            return OTHER
        self._seen.add(value)
        return value


#: raw label-value tuples whose child ``Bounded`` remembers (values are untrusted: the cache is capped)
_CHILDREN = 4096


class Bounded(Generic[M]):
    """A labelled metric whose label values are mapped into fixed sets before they are used.

    The child of each raw tuple of values is remembered (up to ``_CHILDREN`` tuples), so that a request's
    updates cost a dictionary lookup each rather than the maps and prometheus_client's own ``labels``.  A
    map's answer for a value never changes once given (``CappedLabel`` only ever admits more), so the
    remembered child is the one the maps would choose again.
    """

    __slots__ = ("_children", "_maps", "metric")

    def __init__(self, metric: M, *maps: Callable[[str], str]) -> None:
        self.metric: M = metric
        self._maps = maps
        self._children: dict[tuple[str, ...], M] = {}

    def labels(self, *values: str) -> M:
        """The child for ``values``, each mapped by its label's map."""
        child = self._children.get(values)
        if child is None:
            child = self.metric.labels(*[mapped(value) for mapped, value in zip(self._maps, values, strict=True)])
            if len(self._children) < _CHILDREN:
                self._children[values] = child
        return child


_ADDED_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_GAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


#: why a stored-response record was not written (every label exists from the start, at 0)
STORE_DROP_REASONS = ("queue_full", "shutdown", "too_large", "unencodable", "unavailable", "error")
#: the store's background tasks, restarted when one crashes
STORE_TASKS = ("writer", "purge", "health")


class Metrics:
    """The gateway's metrics in their own registry (one per app instance)."""

    def __init__(self, providers: Iterable[str] = (), models: Iterable[str] = (), keys: Iterable[str] = ()) -> None:
        """``providers``: the configured provider and route names, the only ``provider`` labels besides ``none``;
        ``models``: the model names a ``model`` label may show (configured models, routes, ``provider/model``);
        ``keys``: the configured key names (the first ``key`` labels)."""
        self.registry = CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or ""
        known = frozenset(providers)
        known_models = frozenset(list(dict.fromkeys(models))[:MODEL_LABELS])

        def provider(name: str) -> str:
            return name if name in known else NONE

        def model(name: str) -> str:
            return name if name in known_models else OTHER if name else NONE

        self.key_label = key = CappedLabel(keys)
        self.provider_label, self.model_label = provider, model

        self.requests = Bounded(Counter(
            "streamgw_requests", "Responses requests by provider and HTTP status",
            ["provider", "status"], registry=self.registry,
        ), provider, _status)
        self.in_flight = Gauge(
            "streamgw_streams_in_flight", "Streamed responses currently open", registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.ttft = Bounded(Histogram(
            "streamgw_time_to_first_token_seconds", "Request start to the first upstream delta",
            ["provider"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        ), provider)
        self.duration = Bounded(Histogram(
            "streamgw_response_duration_seconds", "Request start to the terminal event",
            ["provider"], buckets=_DURATION_BUCKETS, registry=self.registry,
        ), provider)
        self.upstream_errors = Bounded(Counter(
            "streamgw_upstream_errors", "Upstream failures by provider and kind (the gateway's error code, "
            "or 'other')", ["provider", "kind"], registry=self.registry,
        ), provider, error_kind)
        self.websocket_connections = Gauge(
            "streamgw_websocket_connections", "WebSocket-mode connections currently open", registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.websocket_responses = Bounded(Counter(
            "streamgw_websocket_responses", "Responses requested over WebSocket mode by provider and status "
            "(200: the response streamed; otherwise the status of its error frame)",
            ["provider", "status"], registry=self.registry,
        ), provider, _status)
        self.store_errors = Counter(
            "streamgw_store_errors", "Response store failures by operation (open, write, read, delete, purge, "
            "check, queue_full, too_large, unencodable)", ["op"], registry=self.registry,
        )
        self.store_dropped = Counter(
            "streamgw_store_records_dropped", "Stored-response records whose content was not written, by reason "
            "(" + ", ".join(STORE_DROP_REASONS) + ")", ["reason"], registry=self.registry,
        )
        for reason in STORE_DROP_REASONS:
            self.store_dropped.labels(reason)
        self.store_task_restarts = Counter(
            "streamgw_store_task_restarts", "Store background tasks restarted after they crashed, by task",
            ["task"], registry=self.registry,
        )
        for task in STORE_TASKS:
            self.store_task_restarts.labels(task)
        self.store_writable = Gauge(
            "streamgw_store_writable", "1 while the response store takes writes, 0 while /readyz reports it "
            "unwritable", registry=self.registry, multiprocess_mode="livemin",
        )
        self.store_write_seconds = Histogram(
            "streamgw_store_write_seconds", "Time the writer task took for one batch of stored responses",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )

        self.control_unavailable = Counter(
            "streamgw_control_unavailable", "Operations on the control backend that failed (unreachable, timed out); "
            "with on_unavailable = open each such admission let the request in unchecked", registry=self.registry,
        )
        self.usage_dropped = Counter(
            "streamgw_usage_dropped", "Requests whose usage was not recorded (too many pending usage rows)",
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "streamgw_store_seconds", "Time one response store operation took, by operation (read, delete, "
            "write, purge, check)", ["op"], buckets=_STORE_BUCKETS, registry=self.registry,
        )
        #: limiter and key lookups (``[control]``): the rate-limit and key code observes into it by ``op``
        self.control_seconds = Histogram(
            "streamgw_control_seconds", "Time one operation on the [control] backend (keys, limits, usage) took, "
            "by operation", ["op"], buckets=_STORE_BUCKETS, registry=self.registry,
        )
        self.responses = Bounded(Counter(
            "streamgw_responses", "Responses requests by the provider that served (none: none did), model asked, "
            "key name, terminal status (completed, incomplete, failed, error: an HTTP error or error frame "
            "instead of a response, cancelled: the client left first) and error code",
            ["provider", "model", "key", "terminal", "code"], registry=self.registry,
        ), provider, model, key, _fixed(*TERMINALS), lambda code: error_kind(code) if code else NONE)
        self.attempts = Bounded(Counter(
            "streamgw_attempts", "Upstream attempts by provider, kind (first, retry, fallback, hedge) and outcome "
            "(served, lost, cancelled, or the error kind)", ["provider", "kind", "outcome"], registry=self.registry,
        ), provider, _fixed("first", "retry", "fallback", "hedge"), _outcome)
        self.fallbacks = Bounded(Counter(
            "streamgw_fallbacks", "Attempts on a route's next target after a failure, by route",
            ["route"], registry=self.registry,
        ), provider)
        self.retries = Bounded(Counter(
            "streamgw_retries", "Attempts on the same target again after a failure, by route",
            ["route"], registry=self.registry,
        ), provider)
        self.hedges = Bounded(Counter(
            "streamgw_hedges", "Hedge attempts by route: started, and won (they served the response)",
            ["route", "result"], registry=self.registry,
        ), provider, _fixed("started", "won"))
        self.cooldowns = Bounded(Counter(
            "streamgw_cooldowns", "Times a provider key entered its cooldown after consecutive failures, by provider",
            ["provider"], registry=self.registry,
        ), provider)
        self.tokens = Bounded(Counter(
            "streamgw_tokens", "Tokens by provider, model asked, key name and type (input, output, cached: "
            "input tokens read from a cache, reasoning: output tokens spent reasoning)",
            ["provider", "model", "key", "type"], registry=self.registry,
        ), provider, model, key, _fixed(*TOKEN_TYPES))
        self.client_disconnects = Bounded(Counter(
            "streamgw_client_disconnects", "Requests whose client left before the end, by provider that served",
            ["provider"], registry=self.registry,
        ), provider)
        self.added_ttfe = Bounded(Histogram(
            "streamgw_added_time_to_first_event_seconds", "Time the gateway added to the client's time to first "
            "event: request arrival to the first events written, minus the winning attempt's own start to first "
            "delta", ["provider"], buckets=_ADDED_BUCKETS, registry=self.registry,
        ), provider)
        self.delta_gap = Bounded(Histogram(
            "streamgw_max_delta_gap_seconds", "Per streamed response, the longest pause between two writes of "
            "events to the client", ["provider"], buckets=_GAP_BUCKETS, registry=self.registry,
        ), provider)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (every worker's, in multiprocess mode)."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, self.multiprocess_dir)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsObserver:
    """The response lifecycle's ``RequestObserver``: each request's entry as metric updates.

    The one place that counts requests, upstream errors and client disconnects, for every front door.
    """

    __slots__ = ("metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def opened(self, entry: RequestEntry) -> None:
        """A response opened: a streamed one is now in flight."""
        if entry.streamed:
            self.metrics.in_flight.inc()

    def ended(self, entry: RequestEntry) -> None:
        """Requests by status and outcome, attempts, errors by kind, tokens, and the request's latencies."""
        metrics, label = self.metrics, entry.label
        opened = entry.first_delta_at is not None
        if opened and entry.streamed:
            metrics.in_flight.dec()
        if entry.status:
            status = str(entry.status)
            metrics.requests.labels(label, status).inc()
            if entry.door == "websocket":
                metrics.websocket_responses.labels(label, status).inc()
        error = entry.error
        if error is not None and upstream_failure(error):
            metrics.upstream_errors.labels(label, error.code or error.type).inc()
        elif opened and error is None and not entry.finished:
            metrics.upstream_errors.labels(label, "client_disconnected").inc()
        if entry.first_delta_at is not None:
            metrics.ttft.labels(label).observe(entry.first_delta_at - entry.started)
            if entry.finished and entry.ended_at is not None:
                metrics.duration.labels(label).observe(entry.ended_at - entry.started)
        self._outcome(entry)

    def _outcome(self, entry: RequestEntry) -> None:
        """The series of the request log's fields: outcome, attempts, tokens, added time to first event."""
        metrics = self.metrics
        served = entry.provider or NONE
        caller = entry.caller
        key = caller.key.name if caller is not None and caller.key is not None else ""
        terminal, code = outcome(entry)
        metrics.responses.labels(served, entry.model, key, terminal, code).inc()
        route = entry.route
        for attempt in entry.attempts:
            metrics.attempts.labels(attempt.provider, attempt.kind, attempt.outcome).inc()
            kind = attempt.kind
            if route and kind != "first":
                if kind == "fallback":
                    metrics.fallbacks.labels(route).inc()
                elif kind == "retry":
                    metrics.retries.labels(route).inc()
                elif kind == "hedge":
                    metrics.hedges.labels(route, "started").inc()
                    if attempt.first_delta_at is not None and attempt.outcome != "lost":
                        metrics.hedges.labels(route, "won").inc()
        if entry.client_left:
            metrics.client_disconnects.labels(served).inc()
        usage = entry.usage
        if usage:
            counts = usage_tokens(usage)
            for kind, count in zip(TOKEN_TYPES, counts, strict=True):
                if count:
                    metrics.tokens.labels(served, entry.model, key, kind).inc(count)
        if entry.first_write_at is not None:
            added = added_seconds(entry)
            if added is not None:
                metrics.added_ttfe.labels(served).observe(added)
            if entry.streamed and entry.finished:
                metrics.delta_gap.labels(served).observe(entry.max_gap)


def outcome(entry: RequestEntry) -> tuple[str, str]:
    """The ``terminal`` and ``code`` labels of a request that ended."""
    error = entry.error
    terminal = entry.terminal
    if terminal in ("completed", "incomplete"):
        return terminal, ""
    if terminal == "failed":
        if error is not None:
            return terminal, error.code or error.type
        response = entry.response
        failure = response.get("error") if response is not None else None
        code = failure.get("code") if isinstance(failure, dict) else None
        return terminal, code if isinstance(code, str) else OTHER
    if error is not None:
        return "error", error.code or error.type
    return "cancelled", ""


def _count(value: object) -> int:
    return value if type(value) is int and value > 0 else 0  # not a bool, a float or a string


def usage_tokens(usage: dict[str, object]) -> tuple[int, int, int, int]:
    """input, output, cached input and reasoning output tokens of a Responses ``usage`` object (0: absent)."""
    cached = usage.get("input_tokens_details")
    reasoning = usage.get("output_tokens_details")
    return (_count(usage.get("input_tokens")), _count(usage.get("output_tokens")),
            _count(cached.get("cached_tokens")) if type(cached) is dict else 0,
            _count(reasoning.get("reasoning_tokens")) if type(reasoning) is dict else 0)


def added_seconds(entry: RequestEntry) -> float | None:
    """The time the gateway added to the client's time to first event, in seconds (``None``: not known).

    The client's time to first event is request arrival to the door's first write of events; the
    winning attempt's own share is its start to its first delta.  What remains is the gateway's:
    reading and checking the body, admission, stored context, failed attempts and backoff before
    the winner, and writing the first events.
    """
    if entry.first_write_at is None:
        return None
    for attempt in reversed(entry.attempts):
        if attempt.first_delta_at is not None and attempt.outcome != "lost":  # the winner
            ttfe = entry.first_write_at - entry.started
            return max(0.0, ttfe - (attempt.first_delta_at - attempt.started))
    return None

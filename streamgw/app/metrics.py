"""Prometheus metrics: updated once per request or per failure, never per event.

Every label value comes from a fixed set, so that no client or upstream can grow the number of
series (``/metrics`` may be public): ``provider`` is a configured provider or route name, or
``none``; ``kind`` is one of ``ERROR_KINDS`` or ``other``; ``status`` a three-digit HTTP status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamgw.errors import upstream_failure

if TYPE_CHECKING:
    from streamgw.engine.lifecycle import RequestEntry

#: the ``kind`` label values of ``streamgw_upstream_errors``: the gateway's own error codes (and the
#: error types it falls back to); any other code, e.g. one an upstream made up, counts as ``other``
ERROR_KINDS = frozenset({
    "client_disconnected", "timeout", "first_token_timeout", "total_timeout", "upstream_timeout",
    "upstream_idle_timeout", "upstream_total_timeout", "upstream_unreachable", "upstream_connection_error",
    "upstream_empty", "upstream_5xx", "upstream_unexpected_status", "upstream_auth_failed", "upstream_error",
    "upstream_rejected", "unsupported_provider", "route_exhausted", "overloaded", "internal_error",
    "rate_limit_exceeded", "insufficient_quota", "server_error", "invalid_prompt", "provider_error",
    "rate_limit_error",
})
OTHER = "other"
NONE = "none"

M = TypeVar("M", Counter, Histogram)


def error_kind(code: str | None) -> str:
    """The ``kind`` label for an error ``code``: itself when it is one of ``ERROR_KINDS``, else ``other``."""
    return code if code in ERROR_KINDS else OTHER


def _status(value: str) -> str:
    return value if len(value) == 3 and value.isdigit() else OTHER


class Bounded(Generic[M]):
    """A labelled metric whose label values are mapped into fixed sets before they are used."""

    __slots__ = ("_maps", "metric")

    def __init__(self, metric: M, *maps: Callable[[str], str]) -> None:
        self.metric: M = metric
        self._maps = maps

    def labels(self, *values: str) -> M:
        """The child for ``values``, each mapped by its label's map."""
        child: M = self.metric.labels(*[mapped(value) for mapped, value in zip(self._maps, values, strict=True)])
        return child


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


#: why a stored-response record was not written (every label exists from the start, at 0)
STORE_DROP_REASONS = ("queue_full", "shutdown", "too_large", "unencodable", "unavailable", "error")
#: the store's background tasks, restarted when one crashes
STORE_TASKS = ("writer", "purge", "health")


class Metrics:
    """The gateway's metrics in their own registry (one per app instance)."""

    def __init__(self, providers: Iterable[str] = ()) -> None:
        """``providers``: the configured provider and route names, the only ``provider`` labels besides ``none``."""
        self.registry = CollectorRegistry()
        known = frozenset(providers)

        def provider(name: str) -> str:
            return name if name in known else NONE

        self.requests = Bounded(Counter(
            "streamgw_requests", "Responses requests by provider and HTTP status",
            ["provider", "status"], registry=self.registry,
        ), provider, _status)
        self.in_flight = Gauge(
            "streamgw_streams_in_flight", "Streamed responses currently open", registry=self.registry
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
            "streamgw_websocket_connections", "WebSocket-mode connections currently open", registry=self.registry
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
            "unwritable", registry=self.registry,
        )
        self.store_write_seconds = Histogram(
            "streamgw_store_write_seconds", "Time the writer task took for one batch of stored responses",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )

        self.control_seconds = Histogram(
            "streamgw_control_seconds", "Time one operation on the shared control backend (limits, budgets, usage) "
            "took, by op (admit, peek, settle, refresh, usage)", ["op"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.control_unavailable = Counter(
            "streamgw_control_unavailable", "Operations on the control backend that failed (unreachable, timed out); "
            "with on_unavailable = open each such admission let the request in unchecked", registry=self.registry,
        )
        self.usage_dropped = Counter(
            "streamgw_usage_dropped", "Requests whose usage was not recorded (too many pending usage rows)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
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
        """Requests by status, errors by kind, time to first delta and duration."""
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

"""Prometheus metrics: updated once per request or per failure, never per event."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


#: why a stored-response record was not written (every label exists from the start, at 0)
STORE_DROP_REASONS = ("queue_full", "shutdown", "too_large", "unencodable", "unavailable", "error")
#: the store's background tasks, restarted when one crashes
STORE_TASKS = ("writer", "purge", "health")


class Metrics:
    """The gateway's metrics in their own registry (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streamgw_requests", "Responses requests by provider and HTTP status",
            ["provider", "status"], registry=self.registry,
        )
        self.in_flight = Gauge(
            "streamgw_streams_in_flight", "Streamed responses currently open", registry=self.registry
        )
        self.ttft = Histogram(
            "streamgw_time_to_first_token_seconds", "Request start to the first upstream delta",
            ["provider"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.duration = Histogram(
            "streamgw_response_duration_seconds", "Request start to the terminal event",
            ["provider"], buckets=_DURATION_BUCKETS, registry=self.registry,
        )
        self.upstream_errors = Counter(
            "streamgw_upstream_errors", "Upstream failures by provider and kind",
            ["provider", "kind"], registry=self.registry,
        )
        self.websocket_connections = Gauge(
            "streamgw_websocket_connections", "WebSocket-mode connections currently open", registry=self.registry
        )
        self.websocket_responses = Counter(
            "streamgw_websocket_responses", "Responses requested over WebSocket mode by provider and status "
            "(200: the response streamed; otherwise the status of its error frame)",
            ["provider", "status"], registry=self.registry,
        )
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

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

"""A small OTLP/HTTP trace receiver on 127.0.0.1, for the tracing tests and the bench.

It accepts ``POST /v1/traces`` (protobuf, optionally gzip), decodes each
``ExportTraceServiceRequest`` with the OpenTelemetry proto package and keeps the spans as
``ReceivedSpan``s (``decode=False``: it only counts requests and bytes, for the bench).  It
answers 200 with an empty ``ExportTraceServiceResponse``, as a collector does.

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}
        ...
        spans = receiver.wait_for(lambda spans: len(spans) >= 3)

``python -m streamgw.testing.otlp_receiver --port 0`` serves until SIGTERM, printing
``LISTENING <port>`` once bound and the counts when it stops.
"""

from __future__ import annotations

import argparse
import gzip
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = ["OtlpReceiver", "ReceivedSpan"]

#: one export request's body at most (the SDK's batches are far smaller)
MAX_BODY = 32 * 1024 * 1024
#: ``kind`` values (``opentelemetry.proto.trace.v1.Span.SpanKind``)
SERVER, CLIENT = 2, 3
#: ``status_code`` values (``Status.StatusCode``)
UNSET, OK, ERROR = 0, 1, 2


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, ids in lower-case hex (``parent_id`` ``""``: a root)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    resource: dict[str, Any] = field(default_factory=dict)
    #: ``SpanFlags``: 0x100 whether the parent is remote is known, 0x200 it is
    flags: int = 0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        found[pair.key] = _value(pair.value)
    return found


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one ``ExportTraceServiceRequest``."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.name, span.kind,
                    span.start_time_unix_nano, span.end_time_unix_nano, _attributes(span.attributes),
                    span.status.code, span.status.message, resource, span.flags))
    return spans


class OtlpReceiver:
    """The receiver, served from a daemon thread while the ``with`` block runs."""

    def __init__(self, *, port: int = 0, decode: bool = True) -> None:
        self.decode = decode
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.bytes = 0
        self.errors = 0
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def endpoint(self) -> str:
        """The URL for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def __enter__(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0) -> list[ReceivedSpan]:
        """Wait until ``done(spans)`` holds; the spans so far (raises ``TimeoutError`` with them otherwise)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the receiver got {len(self.spans)} span(s): "
                                       f"{[s.name for s in self.spans]}")
                self._changed.wait(left)
            return list(self.spans)

    def _received(self, body: bytes) -> None:
        spans = decode(body) if self.decode else []
        with self._changed:
            self.requests += 1
            self.bytes += len(body)
            self.spans.extend(spans)
            self._changed.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if self.path != "/v1/traces" or not 0 <= length <= MAX_BODY:
                    self._answer(404 if self.path != "/v1/traces" else 413, b"")
                    return
                body = self.rfile.read(length)
                try:
                    if self.headers.get("content-encoding", "").lower() == "gzip":
                        body = gzip.decompress(body)
                    receiver._received(body)
                except Exception:
                    receiver.errors += 1
                    self._answer(400, b"")
                    return
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; print ``LISTENING <port>``, then ``SPANS <requests> <bytes> <spans>``."""
    parser = argparse.ArgumentParser(prog="python -m streamgw.testing.otlp_receiver", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count-only", action="store_true", help="count export requests, do not decode them")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stopping)
    signal.signal(signal.SIGINT, stopping)
    with OtlpReceiver(port=args.port, decode=not args.count_only) as receiver:
        print(f"LISTENING {receiver.port}", flush=True)
        stop.wait()
        print(f"SPANS {receiver.requests} {receiver.bytes} {len(receiver.spans)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

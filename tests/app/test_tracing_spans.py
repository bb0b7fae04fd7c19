"""A request's spans as ``streamgw.app.tracing`` builds and batches them, encoded by the standard OTLP encoder.

The spans are not the SDK's ``ReadableSpan``s but ``_Span``s (cheaper to build and to encode): the first
test checks that the exporter's encoder makes of one exactly the span the SDK's own object gives.  The
batcher is driven with a recording exporter (the SDK's ``SpanExporter`` interface, the one point where
the standard OTLP exporter plugs in).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PB2Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from streamgw.app.tracing import Tracing, _Batcher, _Context, _Resource, _Scope, _Span
from streamgw.config import Config
from streamgw.config_loader import load_config
from streamgw.core.tracecontext import TraceParent, new_span_id, new_trace_id
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.lifecycle import RequestEntry
from streamgw.store.calls import StoreCall
from streamgw.testing.otlp_receiver import ReceivedSpan, decode


def encoded(spans: Sequence[Any]) -> list[PB2Span]:
    """What the standard exporter sends of ``spans`` (its encoder, serialised and parsed back)."""
    request = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializePartialToString())
    return [span for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans]


@pytest.mark.parametrize("remote", [True, False])
@pytest.mark.parametrize("status", [None, Status(StatusCode.ERROR, "upstream_5xx")])
def test_a_span_encodes_as_the_sdks_own_span_does(remote: bool, status: Status | None) -> None:
    resource = _Resource(Resource({"service.name": "streamgw"}))
    scope = _Scope("streamgw", "9.9")
    trace_id, span_id, parent_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 0x00F067AA0BA902B7
    attributes = {"gen_ai.operation.name": "chat", "server.port": 443, "t": 0.25, "gen_ai.request.stream": True}
    sdk = ReadableSpan("chat m", SpanContext(trace_id, span_id, False, TraceFlags(1)),
                       SpanContext(trace_id, parent_id, remote, TraceFlags(1)), resource, dict(attributes),
                       kind=SpanKind.CLIENT, status=status or Status(StatusCode.UNSET), start_time=10, end_time=20,
                       instrumentation_scope=scope)
    ours = _Span("chat m", _Context(trace_id, span_id), _Context(trace_id, parent_id, remote), SpanKind.CLIENT,
                 dict(attributes), status, 10, 20, resource, scope)
    [expected], [got] = encoded([sdk]), encoded([ours])
    if status is None:  # unset: the SDK's object encodes an empty status message, ours none; both read as UNSET
        assert expected.status.code == got.status.code == PB2Span().status.code
        expected.ClearField("status")
    assert got == expected
    assert got.flags == (0x300 if remote else 0x100)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = tmp_path / "streamgw.toml"
    path.write_text('[store]\nbackend = "sqlite"\npath = "x.db"\n[tracing]\nenabled = true\n'
                    '[providers.oai]\ntype = "openai"\nbase_url = "https://api.example.com/v1"\n')
    return load_config(path, env={})


@pytest.fixture
def tracing(config: Config, monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracing]:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")  # nothing is sent
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    tracing = Tracing(config)
    yield tracing
    tracing.shutdown()


def spans_of(tracing: Tracing, **fields: Any) -> list[ReceivedSpan]:
    """The spans of a request that started at 0 and ended at 1 s (trio's clock), decoded, in start order."""
    async def build() -> list[_Span]:
        return tracing.spans(RequestEntry("req_1", "sse", None, 0.0, span_id=new_span_id(), ended_at=1.0, **fields))

    return sorted(decode(encode_spans(trio.run(build)).SerializePartialToString()), key=lambda s: s.start_ns)


def test_the_common_case_is_said_by_leaving_attributes_out(tracing: Tracing) -> None:
    trace = TraceParent(new_trace_id())
    served = AttemptRecord("oai", "gpt-x", 0.1, headers_at=0.2, first_delta_at=0.3, ended=0.9, outcome="served",
                           span_id=new_span_id())
    spans = {s.name: s for s in spans_of(
        tracing, trace=trace, status=200, finished=True, first_delta_at=0.35, model="m", provider="oai",
        upstream_model="gpt-x-1", terminal="completed", attempts=[served], response_id="resp_1",
        usage={"input_tokens": 3, "output_tokens": 5},
        store_calls=[StoreCall("get", 0.01, 0.02, "found"), StoreCall("write", 0.95, 0.97, "written")])}
    server, attempt = spans["POST /v1/responses"], spans["chat gpt-x"]
    assert server.attributes == {
        "gen_ai.operation.name": "chat", "streamgw.request_id": "req_1", "http.request.method": "POST",
        "http.route": "/v1/responses", "http.response.status_code": 200, "gen_ai.request.model": "m",
        "gen_ai.request.stream": True, "gen_ai.provider.name": "openai", "streamgw.provider": "oai",
        "gen_ai.response.model": "gpt-x-1", "gen_ai.response.id": "resp_1",
        "gen_ai.response.time_to_first_chunk": 0.35, "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5}
    assert attempt.attributes == {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-x", "gen_ai.provider.name": "openai",
        "streamgw.provider": "oai", "server.address": "api.example.com", "server.port": 443,
        "gen_ai.response.time_to_first_chunk": pytest.approx(0.2)}
    assert spans["store get"].attributes == {"db.system.name": "sqlite", "db.operation.name": "get"}
    write = spans["store write"]  # waited for (confirm_writes)
    assert write.attributes == {"db.system.name": "sqlite", "db.operation.name": "write"}
    assert write.end_ns - write.start_ns == pytest.approx(0.02e9, abs=1e3)
    assert len(spans) == 4 and {s.trace_id for s in spans.values()} == {trace.trace_id} and server.parent_id == ""
    assert {s.parent_id for s in spans.values() if s is not server} == {server.span_id}
    assert attempt.span_id == served.span_id
    assert server.end_ns - server.start_ns == pytest.approx(1e9, abs=1e3)
    assert all(s.status_code == 0 for s in spans.values())


def test_what_is_not_the_common_case_is_named(tracing: Tracing) -> None:
    parent = new_span_id()
    failed = AttemptRecord("oai", "gpt-x", 0.1, ended=0.2, outcome="upstream_5xx")
    retry = AttemptRecord("oai", "gpt-x", 0.3, kind="retry", headers_at=0.4, first_delta_at=0.5, ended=0.9,
                          outcome="served")
    hedge = AttemptRecord("other", "m2", 0.35, kind="hedge", ended=0.5, outcome="cancelled")
    server, get, item, first, second, third = spans_of(
        tracing, trace=TraceParent(new_trace_id(), parent), status=200, finished=True, first_delta_at=0.5, model="m",
        provider="oai", terminal="incomplete", attempts=[failed, retry, hedge],
        store_calls=[StoreCall("get", 0.01, 0.02, "not_found"), StoreCall("item", 0.02, 0.03, "timeout")])
    assert server.parent_id == parent and server.attributes["streamgw.terminal"] == "incomplete"
    assert first.attributes["streamgw.attempt.outcome"] == first.attributes["error.type"] == "upstream_5xx"
    assert first.status_code == 2 and "streamgw.attempt.kind" not in first.attributes
    assert second.attributes["streamgw.attempt.kind"] == "retry" and "streamgw.attempt.outcome" not in second.attributes
    assert third.attributes["streamgw.attempt.kind"] == "hedge"
    assert third.attributes["streamgw.attempt.outcome"] == "cancelled" and third.status_code == 0
    assert third.attributes["gen_ai.provider.name"] == "other"
    assert get.attributes["streamgw.store.outcome"] == "not_found" and get.status_code == 0
    assert item.attributes["streamgw.store.outcome"] == item.attributes["error.type"] == "timeout"
    assert item.status_code == 2


@pytest.mark.parametrize("write", [StoreCall("write", 0.9, 0.9, "queued"),  # no confirm_writes
                                   StoreCall("write", 0.9, None, "")])  # the client left before it was written
def test_a_write_the_request_did_not_wait_for_has_no_span(tracing: Tracing, write: StoreCall) -> None:
    spans = spans_of(tracing, trace=TraceParent(new_trace_id()), status=200, store_calls=[write])
    assert [s.name for s in spans] == ["POST /v1/responses"]


def test_an_unsampled_request_has_no_spans(tracing: Tracing) -> None:
    assert spans_of(tracing, trace=TraceParent(new_trace_id(), new_span_id(), sampled=False), status=200) == []


class Recorder(SpanExporter):
    """Records each batch it is asked to export; ``gate`` (when set) holds every export until it is set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.gate = gate
        self.shut = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append([s.name for s in spans])
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.shut = True


def request(n: int) -> list[_Span]:
    context = _Context(1, 1)
    scope = _Scope("streamgw", "0")
    return [_Span(f"r{n}.{i}", context, None, SpanKind.CLIENT, {}, None, 0, 1, Resource({}), scope) for i in range(3)]


def wait_until(done: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def test_the_batcher_exports_full_batches_at_once_and_the_rest_at_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # ten minutes: only a full batch or shutdown export
    recorder = Recorder()
    batcher = _Batcher(recorder)
    for n in range(3):
        batcher.add(request(n))
    wait_until(lambda: len(recorder.batches) == 2)
    assert recorder.batches == [["r0.0", "r0.1", "r0.2", "r1.0"], ["r1.1", "r1.2", "r2.0", "r2.1"]]
    batcher.shutdown()
    assert recorder.batches[2:] == [["r2.2"]] and recorder.shut
    batcher.add(request(9))  # after shutdown: ignored
    assert len(recorder.batches) == 3


def test_the_batcher_exports_what_it_has_after_the_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    recorder = Recorder()
    batcher = _Batcher(recorder)
    try:
        batcher.add(request(0))  # 3 spans, far from a full batch of 512
        wait_until(lambda: bool(recorder.batches))
        assert recorder.batches == [["r0.0", "r0.1", "r0.2"]]
        assert not recorder.shut  # exported by the delay, not by the shutdown below
    finally:
        batcher.shutdown()


def test_a_full_queue_drops_whole_requests(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "7")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3")
    gate = threading.Event()
    recorder = Recorder(gate)
    batcher = _Batcher(recorder)
    try:
        batcher.add(request(0))  # taken by the exporter, which waits at the gate
        wait_until(lambda: not batcher._queue)
        batcher.add(request(1))
        batcher.add(request(2))
        batcher.add(request(3))  # 6 queued + 3 > 7: dropped, all three
        assert "dropping spans" in caplog.text
        gate.set()
        wait_until(lambda: len(recorder.batches) == 3)
    finally:
        gate.set()
        batcher.shutdown()
    assert [b[0][:2] for b in recorder.batches] == ["r0", "r1", "r2"]


def test_a_wrong_batch_setting_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "lots")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "-1")
    batcher = _Batcher(Recorder())
    try:
        assert (batcher._size, batcher._limit, batcher._delay) == (512, 2048, 5.0)
        assert "OTEL_BSP_MAX_EXPORT_BATCH_SIZE='lots'" in caplog.text and "OTEL_BSP_MAX_QUEUE_SIZE='-1'" in caplog.text
    finally:
        batcher.shutdown()


@pytest.mark.parametrize(("sampler", "new", "sampled_parent", "unsampled_parent"), [
    ("", True, True, False),  # the default, parentbased_always_on: the client's decision, and new traces sampled
    ("always_off", False, False, False),
    ("always_on", True, True, True),
    ("parentbased_traceidratio", False, True, False),  # ratio 0 for new traces
])
def test_the_sampler_decides_each_trace(config: Config, monkeypatch: pytest.MonkeyPatch, sampler: str, new: bool,
                                        sampled_parent: bool, unsampled_parent: bool) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    tracing = Tracing(config)
    try:
        trace_id, parent = new_trace_id(), new_span_id()
        assert tracing.start(None).sampled is new and tracing.start(None).parent_id == ""
        started = tracing.start(TraceParent(trace_id, parent, True))
        assert (started.trace_id, started.parent_id, started.sampled) == (trace_id, parent, sampled_parent)
        assert tracing.start(TraceParent(trace_id, parent, False)).sampled is unsampled_parent
    finally:
        tracing.shutdown()

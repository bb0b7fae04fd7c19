"""OpenTelemetry traces end to end: a gateway process with ``[tracing] enabled`` exports real OTLP/HTTP to a
receiver on 127.0.0.1 (decoded with the OpenTelemetry proto package), a mock upstream records what it was sent.

Checked: the span tree (server span → attempt spans and store spans), the GenAI attributes, the trace
continued from the client's ``traceparent`` and carried on to the upstream request (naming the attempt
span), fallbacks, failures, a client that leaves mid-stream, unsampled traces; and that with tracing off
nothing of OpenTelemetry is loaded, and that turning it on without the extra is a config error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from streamgw.core.tracecontext import new_span_id, new_trace_id
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.otlp_receiver import CLIENT, ERROR, SERVER, UNSET, OtlpReceiver, ReceivedSpan
from streamgw.testing.process import free_port, start_gateway, stop_process
from streamgw.testing.server import MockRequest, serving_in_thread

KEY = "sk-gw-tracing-key"
#: a span's ``flags`` (``SpanFlags``): whether its parent is remote is known (0x100), and it is (0x200)
LOCAL_PARENT, REMOTE_PARENT = 0x100, 0x300


@dataclass
class Stack:
    url: str
    mock: ChatCompletionsMock
    mock_port: int
    receiver: OtlpReceiver
    log: Path

    def post(self, body: dict[str, Any], traceparent: str | None = None) -> httpx.Response:
        headers = {"authorization": f"Bearer {KEY}"}
        if traceparent is not None:
            headers["traceparent"] = traceparent
        return httpx.post(self.url + "/v1/responses", json=body, headers=headers, timeout=20)

    def trace(self, trace_id: str, count: int) -> list[ReceivedSpan]:
        """The spans of ``trace_id`` once ``count`` of them arrived."""
        return [s for s in self.receiver.wait_for(lambda spans: sum(s.trace_id == trace_id for s in spans) >= count)
                if s.trace_id == trace_id]

    def sent(self, marker: str) -> MockRequest:
        """The upstream request whose body carries ``marker``."""
        found = [r for r in self.mock.requests if marker.encode() in r.body]
        assert len(found) == 1, f"{len(found)} upstream requests carry {marker!r}"
        return found[0]


def config(mock_port: int, closed_port: int) -> str:
    return f"""
[auth]
keys = ["{KEY}"]

[store]
backend = "memory"

[tracing]
enabled = true

[providers.mock]
type = "chat"
base_url = "http://127.0.0.1:{mock_port}/v1"

[providers.down]
type = "chat"
base_url = "http://127.0.0.1:{closed_port}/v1"

[routes.fallback]
targets = ["down/text:tokens=2", "mock/text:tokens=2"]
strategy = "fallback"
retries = 0
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("tracing")
    mock = ChatCompletionsMock()
    with serving_in_thread(lambda: mock.handle, stats=mock.stats) as port, OtlpReceiver() as receiver:
        path = tmp / "streamgw.toml"
        path.write_text(config(port, free_port()))
        with pytest.MonkeyPatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("OTEL_")]:
                patch.delenv(name)
            patch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
            patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms, not 5 s
            proc, url = start_gateway(path, tmp / "gateway.log")
        try:
            yield Stack(url, mock, port, receiver, tmp / "gateway.log")
        finally:
            assert stop_process(proc) == 0


def tree(spans: list[ReceivedSpan]) -> tuple[ReceivedSpan, list[ReceivedSpan], list[ReceivedSpan]]:
    """The one server span, its attempt spans (in start order) and its store spans; every span is its child."""
    servers = [s for s in spans if s.kind == SERVER]
    assert len(servers) == 1, [s.name for s in spans]
    server = servers[0]
    children = sorted((s for s in spans if s is not server), key=lambda s: s.start_ns)
    assert all(s.parent_id == server.span_id and s.kind == CLIENT for s in children)
    assert all(server.start_ns <= s.start_ns <= s.end_ns <= server.end_ns for s in children)
    attempts = [s for s in children if s.name.startswith("chat ")]
    stores = [s for s in children if s.name.startswith("store ")]
    assert len(attempts) + len(stores) == len(children)
    return server, attempts, stores


def traceparent(trace_id: str, parent: str, sampled: bool = True) -> str:
    return f"00-{trace_id}-{parent}-{'01' if sampled else '00'}"


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_a_stream_continues_the_clients_trace_to_the_upstream(stack: Stack) -> None:
    trace_id, parent = new_trace_id(), new_span_id()
    response = stack.post({"model": "mock/text:tokens=3", "input": "marker-traced", "stream": True},
                          traceparent(trace_id, parent))
    assert response.status_code == 200
    assert sse_events(response.text)[-1]["type"] == "response.completed"
    server, attempts, stores = tree(stack.trace(trace_id, 3))

    assert server.parent_id == parent  # the client's span is the server span's parent
    assert server.name == "POST /v1/responses"
    assert server.status_code == UNSET
    assert server.resource["service.name"] == "streamgw"
    a = server.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "mock/text:tokens=3"
    assert a["gen_ai.response.model"] == "text:tokens=3"
    assert a["gen_ai.provider.name"] == "mock"
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.usage.output_tokens"] == 3 and a["gen_ai.usage.input_tokens"] > 0
    assert a["http.request.method"] == "POST" and a["http.response.status_code"] == 200
    assert "streamgw.provider" not in a  # the same as gen_ai.provider.name
    assert "streamgw.terminal" not in a  # completed: the common case is no attribute (nor an error.type)
    assert a["streamgw.request_id"] == response.headers["x-request-id"]
    assert a["gen_ai.response.id"] == sse_events(response.text)[-1]["response"]["id"]
    assert "error.type" not in a

    [attempt] = attempts
    assert attempt.name == "chat text:tokens=3"
    b = attempt.attributes
    assert b["gen_ai.operation.name"] == "chat" and b["gen_ai.provider.name"] == "mock"
    assert b["gen_ai.request.model"] == "text:tokens=3"
    assert b["server.address"] == "127.0.0.1" and b["server.port"] == stack.mock_port
    # the first attempt, and it served: the common case, said by leaving both attributes out
    assert "streamgw.attempt.kind" not in b and "streamgw.attempt.outcome" not in b
    # what the response was (model, id, usage) is on the server span only: no duplicate to encode, nor to count twice
    assert not {"gen_ai.response.model", "gen_ai.response.id", "gen_ai.usage.output_tokens"} & set(b)
    assert 0 < b["gen_ai.response.time_to_first_chunk"] < a["gen_ai.response.time_to_first_chunk"]
    assert "streamgw.attempt.time_to_headers" not in b  # the request log has it
    assert attempt.status_code == UNSET

    [write] = stores  # the final record's, waited for (confirm_writes, the default)
    assert write.name == "store write"
    assert write.attributes == {"db.system.name": "memory", "db.operation.name": "write"}  # written: as usual
    assert write.status_code == UNSET

    # the server span's parent is the client's (remote) span; the children's is ours
    assert server.flags == REMOTE_PARENT and attempt.flags == write.flags == LOCAL_PARENT

    # the upstream request names the attempt span, in the client's trace
    assert stack.sent("marker-traced").headers["traceparent"] == traceparent(trace_id, attempt.span_id)


def test_a_fallback_has_two_attempt_spans_the_first_failed(stack: Stack) -> None:
    response = stack.post({"model": "fallback", "input": "marker-fallback", "stream": True})
    assert response.status_code == 200
    sent = stack.sent("marker-fallback").headers["traceparent"]
    trace_id = sent.split("-")[1]  # no traceparent from the client: the gateway started the trace
    server, attempts, _ = tree(stack.trace(trace_id, 3))
    assert server.parent_id == ""
    assert server.attributes["gen_ai.request.model"] == "fallback"
    first, second = attempts
    assert first.attributes["gen_ai.provider.name"] == "down" and "streamgw.attempt.kind" not in first.attributes
    assert first.status_code == ERROR
    assert first.attributes["error.type"] == first.attributes["streamgw.attempt.outcome"] == first.status_message
    assert first.attributes["error.type"].startswith("upstream_")
    assert second.attributes["gen_ai.provider.name"] == "mock"
    assert second.attributes["streamgw.attempt.kind"] == "fallback"
    assert second.status_code == UNSET and "error.type" not in second.attributes
    assert "streamgw.attempt.outcome" not in second.attributes  # it served
    assert server.flags == LOCAL_PARENT  # a root: no remote parent
    assert sent == traceparent(trace_id, second.span_id)


def test_store_lookups_are_spans(stack: Stack) -> None:
    first = stack.post({"model": "mock/text:tokens=2", "input": "one"})
    assert first.status_code == 200
    trace_id, parent = new_trace_id(), new_span_id()
    second = stack.post({"model": "mock/text:tokens=2", "input": "two", "previous_response_id": first.json()["id"]},
                        traceparent(trace_id, parent))
    assert second.status_code == 200
    _, _, stores = tree(stack.trace(trace_id, 4))
    assert [s.name for s in stores] == ["store get", "store write"]
    assert stores[0].attributes == {"db.system.name": "memory", "db.operation.name": "get"}  # found: as usual


def test_a_client_error_names_its_code_without_an_error_status(stack: Stack) -> None:
    trace_id = new_trace_id()
    response = stack.post({"model": "mock/text", "input": "x", "previous_response_id": "resp_nowhere"},
                          traceparent(trace_id, new_span_id()))
    assert response.status_code == 404
    server, attempts, stores = tree(stack.trace(trace_id, 2))
    assert attempts == []
    assert server.attributes["error.type"] == "previous_response_not_found"
    assert server.attributes["http.response.status_code"] == 404
    assert server.status_code == UNSET  # a 4xx is the client's doing (HTTP semantic conventions)
    [get] = stores
    assert get.name == "store get" and get.attributes["streamgw.store.outcome"] == "not_found"


def test_an_upstream_failure_is_an_error_span(stack: Stack) -> None:
    trace_id = new_trace_id()
    response = stack.post({"model": "mock/status-500", "input": "x"}, traceparent(trace_id, new_span_id()))
    assert response.status_code >= 500
    code = response.json()["error"]["code"]
    server, [attempt], _ = tree(stack.trace(trace_id, 2))
    assert server.status_code == ERROR and server.attributes["error.type"] == code
    assert attempt.status_code == ERROR and attempt.attributes["error.type"] == code


@pytest.mark.parametrize(("model", "terminal", "error"), [("mock/length", "incomplete", None),
                                                          ("mock/error-mid", "failed", "server_error")])
def test_a_stream_that_does_not_complete_names_its_terminal_status(stack: Stack, model: str, terminal: str,
                                                                   error: str | None) -> None:
    trace_id = new_trace_id()
    response = stack.post({"model": model, "input": "x", "stream": True}, traceparent(trace_id, new_span_id()))
    assert response.status_code == 200
    assert sse_events(response.text)[-1]["type"] == f"response.{terminal}"
    server, [attempt], _ = tree(stack.trace(trace_id, 3))
    assert server.attributes["streamgw.terminal"] == terminal
    assert attempt.attributes.get("error.type") == error
    assert server.attributes.get("error.type") == error
    assert server.status_code == (ERROR if error else UNSET)


def test_a_client_that_leaves_mid_stream_ends_its_spans(stack: Stack) -> None:
    trace_id = new_trace_id()
    body = {"model": "mock/text:tokens=200,token_delay=0.05", "input": "marker-leaves", "stream": True}
    headers = {"authorization": f"Bearer {KEY}", "traceparent": traceparent(trace_id, new_span_id())}
    with httpx.Client(timeout=20) as client, client.stream("POST", stack.url + "/v1/responses", json=body,
                                                           headers=headers) as response:
        for line in response.iter_lines():
            if "output_text.delta" in line:
                break  # and leave: the connection closes with the block
    server, [attempt], stores = tree(stack.trace(trace_id, 2))
    assert stores == []  # the final record was left to the store's writer: no call the request waited for
    assert server.status_code == ERROR and server.attributes["error.type"] == "client_disconnected"
    assert "streamgw.terminal" not in server.attributes
    assert attempt.attributes["streamgw.attempt.outcome"] == "cancelled" and attempt.status_code == UNSET
    assert attempt.end_ns - attempt.start_ns < 5e9  # cut at once, not after the 10 s the stream would take


def test_an_unsampled_trace_is_propagated_but_not_exported(stack: Stack) -> None:
    unsampled, sampled = new_trace_id(), new_trace_id()
    parent = new_span_id()
    assert stack.post({"model": "mock/text:tokens=1", "input": "marker-unsampled"},
                      traceparent(unsampled, parent, sampled=False)).status_code == 200
    header = stack.sent("marker-unsampled").headers["traceparent"]
    assert header.startswith(f"00-{unsampled}-") and header.endswith("-00") and parent not in header
    assert stack.post({"model": "mock/text:tokens=1", "input": "y"}, traceparent(sampled, parent)).status_code == 200
    spans = stack.trace(sampled, 3)  # exported after the unsampled request's would have been
    time.sleep(0.2)
    assert not [s for s in stack.receiver.spans if s.trace_id == unsampled]
    assert spans


def test_spans_still_queued_are_exported_on_graceful_shutdown(tmp_path: Path) -> None:
    """The batch would wait ten minutes: only the flush at shutdown can deliver the span."""
    path = tmp_path / "streamgw.toml"
    path.write_text('[store]\nbackend = "none"\n\n[tracing]\nenabled = true\n')
    trace_id = new_trace_id()
    with OtlpReceiver() as receiver, pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("OTEL_", "STREAMGW_"))]:
            patch.delenv(name)
        patch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
        patch.setenv("OTEL_SERVICE_NAME", "gw-under-test")
        proc, url = start_gateway(path, tmp_path / "gateway.log")
        try:
            response = httpx.post(url + "/v1/responses", json={"model": "demo/x", "input": "hi"},
                                  headers={"traceparent": traceparent(trace_id, new_span_id())}, timeout=20)
            assert response.status_code == 200
            time.sleep(0.3)
            assert receiver.spans == []
        finally:
            assert stop_process(proc) == 0
        spans = receiver.wait_for(lambda spans: len(spans) >= 2, timeout=5)
    server, [attempt], _ = tree(spans)
    assert server.trace_id == trace_id and server.resource["service.name"] == "gw-under-test"
    assert attempt.attributes["gen_ai.provider.name"] == "demo"


def test_tracing_off_loads_no_opentelemetry_module() -> None:
    """Off by default: building the gateway and serving a request imports nothing of OpenTelemetry."""
    code = """
import sys, httpx
from streamgw.config_loader import load_config
from streamgw.testing.harness import running_gateway
import trio

async def main():
    config = load_config(None)
    assert not config.tracing.enabled
    async with running_gateway(config) as port:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"http://127.0.0.1:{port}/v1/responses", json={"model": "demo/x", "input": "hi"})
            assert r.status_code == 200, r.text
    print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))

trio.run(main)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMGW_", "OTEL_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**env, "STREAMGW_STORE_BACKEND": "none"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("how", ["file", "env"])
def test_tracing_on_without_the_extra_is_a_config_error(tmp_path: Path, how: str) -> None:
    shadow = tmp_path / "shadow" / "opentelemetry"  # a package of that name without the SDK in it
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    path = tmp_path / "streamgw.toml"
    path.write_text("[tracing]\nenabled = true\n" if how == "file" else "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGW_")}
    env["PYTHONPATH"] = str(tmp_path / "shadow")
    if how == "env":
        env["STREAMGW_TRACING"] = "1"
    out = subprocess.run([sys.executable, "-m", "streamgw", "serve", "--config", str(path), "--port", "1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2
    where = "[tracing] enabled" if how == "file" else "STREAMGW_TRACING"
    assert where in out.stderr
    assert ("tracing needs the otel extra: pip install 'streamgw[otel]' (opentelemetry-sdk, "
            "opentelemetry-exporter-otlp-proto-http not installed)") in out.stderr
    assert "Traceback" not in out.stderr

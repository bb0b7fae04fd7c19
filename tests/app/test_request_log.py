"""The request log against a real hypercorn gateway: one JSON line per request, with the fields README documents.

Each test serves a mock Chat Completions upstream in its trio run, a gateway writing its request
log as JSON to a file, and reads the lines back.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import RejectConnection, RejectData, Request

from streamgw.app.routes import create_app
from streamgw.config import Config, LoggingConfig, ProviderConfig, RouteConfig, Secret, Timeouts
from streamgw.core.request import ResponsesRequest
from streamgw.engine.lifecycle import Caller
from streamgw.engine.routing import Plan
from streamgw.errors import RateLimited
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import RawClient, post_sse, running_gateway

UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
async def upstream_port(nursery: trio.Nursery) -> AsyncIterator[int]:
    mock = ChatCompletionsMock()
    yield await nursery.start(mock.serve)


def make_config(port: int, log: Path, *, routes: tuple[RouteConfig, ...] = (), keys: tuple[str, ...] = (),
                logging: LoggingConfig | None = None, **timeouts: float) -> Config:
    providers = {name: ProviderConfig(name=name, type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                      api_key=Secret(UPSTREAM_KEY)) for name in ("a", "b", "c")}
    return Config(
        auth_keys=tuple(Secret(k) for k in keys), providers=providers, routes={r.name: r for r in routes},
        timeouts=replace(Timeouts(), **timeouts),
        logging=logging or LoggingConfig(format="json", file=str(log)),
    )


def lines_of(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def responses(log: Path) -> list[dict[str, Any]]:
    return [line for line in lines(log) if line["kind"] == "response"]


async def eventually(log: Path, count: int, kind: str = "response") -> list[dict[str, Any]]:
    """The log's lines of ``kind`` once there are ``count`` (the line follows the client's last byte)."""
    with trio.fail_after(10):
        while True:
            found = [line for line in lines(log) if line["kind"] == kind]
            if len(found) >= count:
                return found
            await trio.sleep(0.01)


async def eventually_text(log: Path) -> None:
    with trio.fail_after(10):
        while True:
            if lines_of(log):
                return
            await trio.sleep(0.01)


async def rejected_upgrade(port: int, rid: str) -> tuple[int, str]:
    """A WebSocket upgrade without a key: the status of its refusal and the ``x-request-id`` it carries."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        conn = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(conn.send(Request(host="gateway", target="/v1/responses",
                                                extra_headers=[(b"x-request-id", rid.encode())])))
        status, head = 0, {}
        with trio.fail_after(5):
            while True:
                conn.receive_data(await stream.receive_some(65536) or None)
                for event in conn.events():
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        head = {name.decode().lower(): value.decode() for name, value in event.headers}
                        if not event.has_body:
                            return status, head["x-request-id"]
                    elif isinstance(event, RejectData) and event.body_finished:
                        return status, head["x-request-id"]
    finally:
        await stream.aclose()


async def test_a_completed_stream(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    config = make_config(upstream_port, log)
    async with running_gateway(config) as port:
        result = await post_sse(port, {"model": "a/text:tokens=4", "input": "hello", "stream": True},
                                {"x-request-id": "client-id.42", "traceparent": TRACEPARENT})
    assert result.status == 200 and result.headers["x-request-id"] == "client-id.42"
    [line] = await eventually(log, 1)
    assert line["request_id"] == "client-id.42"
    assert (line["door"], line["http"], line["model"], line["route"], line["provider"], line["upstream_model"]) == (
        "sse", "1.1", "a/text:tokens=4", None, "a", "text:tokens=4")
    assert (line["status"], line["terminal"], line["error_code"], line["client_left"]) == (200, "completed", None,
                                                                                            False)
    assert line["key"] is None and line["tenant"] is None
    [attempt] = line["attempts"]
    assert (attempt["provider"], attempt["kind"], attempt["outcome"]) == ("a", "first", "served")
    assert 0 <= attempt["headers_ms"] <= attempt["first_delta_ms"] <= attempt["duration_ms"]
    assert 0 <= line["added_ttfe_ms"] <= line["ttfe_ms"] <= line["duration_ms"]
    assert line["ttfe_ms"] >= attempt["first_delta_ms"]
    assert line["max_gap_ms"] >= 0
    assert line["tokens_out"] == 4 and line["tokens_in"] >= 1 and line["tokens_cached"] == 0
    assert line["bytes_out"] == len(result.body)
    assert line["trace_id"] == TRACE_ID
    assert re.fullmatch(r"resp_\w+", line["response_id"]) and line["response_id"] == result.events[0]["response"]["id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert "input" not in line and "output" not in line  # bodies: never without an opt-in


async def test_a_fallback_lists_every_attempt(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    route = RouteConfig("r", ("a/status-503", "b/text:tokens=2"), backoff=0.01)
    async with running_gateway(make_config(upstream_port, log, routes=(route,))) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answer = await client.post("/v1/responses", json={"model": "r", "input": "hi"})
        [line] = await eventually(log, 1)
        metrics = (await client.get("/metrics")).text
    assert answer.status_code == 200
    assert (line["door"], line["model"], line["route"], line["provider"], line["status"], line["terminal"]) == (
        "json", "r", "r", "b", 200, "completed")
    seen = [(a["provider"], a["kind"], a["outcome"], a["status"]) for a in line["attempts"]]
    assert seen == [("a", "first", "upstream_5xx", 502), ("b", "fallback", "served", None)]
    assert line["attempts"][1]["start_ms"] >= line["attempts"][0]["duration_ms"]
    # the failed target's attempt is counted, and the fallback
    assert 'streamgw_attempts_total{kind="first",outcome="upstream_5xx",provider="a"} 1.0' in metrics
    assert 'streamgw_attempts_total{kind="fallback",outcome="served",provider="b"} 1.0' in metrics
    assert 'streamgw_fallbacks_total{route="r"} 1.0' in metrics


class Refuse:
    """An admission rule that refuses every request with 429, as a rate limit does."""

    async def admit(self, caller: Caller, request: ResponsesRequest, plan: Plan) -> None:
        raise RateLimited("too many requests", code="rate_limit_exceeded", headers={"retry-after": "3"})


async def test_a_429_from_admission(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    config = make_config(upstream_port, log)
    app = create_app(config)
    app.extensions["streamgw"].responses.admission = (Refuse(),)
    async with running_gateway(config, app) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answer = await client.post("/v1/responses", json={"model": "a/text", "input": "hi", "stream": True},
                                   headers={"x-request-id": "rl-1"})
        [line] = await eventually(log, 1)
        metrics = (await client.get("/metrics")).text
    assert answer.status_code == 429 and answer.headers["x-request-id"] == "rl-1"
    assert (line["request_id"], line["status"], line["terminal"], line["error_code"]) == (
        "rl-1", 429, "error", "rate_limit_exceeded")
    assert line["attempts"] == [] and line["provider"] is None and line["bytes_out"] == len(answer.content)
    assert ('streamgw_responses_total{code="rate_limit_exceeded",key="none",model="other",provider="none",'
            'terminal="error"} 1.0') in metrics


async def test_a_client_that_leaves_mid_stream(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    async with running_gateway(make_config(upstream_port, log)) as port:
        client = await RawClient.connect(port)
        await client.send_json("/v1/responses", {"model": "a/text:tokens=500,token_delay=0.02", "input": "hi",
                                                 "stream": True})
        head = await client.response_head()
        await client.next_event()  # the first events
        await client.aclose()
        [line] = await eventually(log, 1)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            metrics = (await http.get("/metrics")).text
    assert head.status_code == 200
    assert (line["status"], line["terminal"], line["client_left"], line["provider"]) == (200, "cancelled", True, "a")
    assert line["attempts"][0]["outcome"] == "cancelled"
    assert line["bytes_out"] > 0 and line["tokens_out"] is None
    assert 'streamgw_client_disconnects_total{provider="a"} 1.0' in metrics


async def test_a_stream_that_ends_with_response_failed(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    async with running_gateway(make_config(upstream_port, log)) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        result = await post_sse(port, {"model": "a/error-mid", "input": "hi", "stream": True})
        [line] = await eventually(log, 1)
        metrics = (await client.get("/metrics")).text
    assert result.status == 200 and result.events[-1]["type"] == "response.failed"
    code = result.events[-1]["response"]["error"]["code"]
    assert (line["status"], line["terminal"], line["error_code"], line["client_left"]) == (200, "failed", code, False)
    # counted as failed, not as a plain 200
    failed = [s for s in metrics.splitlines() if s.startswith("streamgw_responses_total{") and 'terminal="failed"' in s]
    assert len(failed) == 1 and failed[0].endswith(" 1.0") and 'provider="a"' in failed[0]


async def test_a_stream_committed_by_a_keepalive_then_failing(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    config = make_config(upstream_port, log, keepalive=0.05, first_token=0.4)
    async with running_gateway(config) as port:
        result = await post_sse(port, {"model": "a/text:ttft=3", "input": "hi", "stream": True})
        [line] = await eventually(log, 1)
    assert result.status == 200 and result.comments >= 1 and result.events[-1]["type"] == "response.failed"
    assert (line["status"], line["terminal"], line["error_code"]) == (200, "failed", "first_token_timeout")
    assert line["attempts"][0]["outcome"] == "first_token_timeout"


async def test_refused_requests_and_other_routes_keep_the_clients_request_id(upstream_port: int,
                                                                           tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    config = make_config(upstream_port, log, keys=("gw-key",))
    async with running_gateway(config) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        unauthorised = await client.post("/v1/responses", json={"model": "a/text", "input": "hi"},
                                         headers={"x-request-id": "mine-401"})
        bad = await client.post("/v1/responses", content=b"{", headers={"x-request-id": "mine-400",
                                                                       "authorization": "Bearer gw-key"})
        models = await client.get("/v1/models", headers={"x-request-id": "mine-models",
                                                         "authorization": "Bearer gw-key"})
        missing = await client.get("/v1/responses/resp_nope", headers={"x-request-id": "mine-404",
                                                                       "authorization": "Bearer gw-key"})
        minted = await client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
        ws_status, ws_request_id = await rejected_upgrade(port, "mine-ws")
        await eventually(log, 3)
        http = await eventually(log, 3, "http")
    assert [a.headers["x-request-id"] for a in (unauthorised, bad, models, missing)] == [
        "mine-401", "mine-400", "mine-models", "mine-404"]
    assert minted.headers["x-request-id"].startswith("req_")
    assert (ws_status, ws_request_id) == (401, "mine-ws")
    refused = {line["request_id"]: line for line in responses(log)}
    assert (refused["mine-401"]["status"], refused["mine-401"]["error_code"]) == (401, "invalid_api_key")
    assert (refused["mine-400"]["status"], refused["mine-400"]["terminal"]) == (400, "error")
    assert (refused["mine-ws"]["door"], refused["mine-ws"]["status"]) == ("websocket", 401)
    routes = {line["request_id"]: line for line in http}
    assert (routes["mine-models"]["method"], routes["mine-models"]["path"], routes["mine-models"]["status"]) == (
        "GET", "/v1/models", 200)
    assert routes["mine-models"]["bytes_out"] == len(models.content)
    assert routes["mine-404"]["status"] == 404 and routes["mine-404"]["path"] == "/v1/responses/resp_nope"
    assert routes[minted.headers["x-request-id"]]["path"] == "/healthz"


async def test_websocket_responses_are_logged_with_their_door(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    async with running_gateway(make_config(upstream_port, log)) as port:
        async with open_websocket_url(f"ws://127.0.0.1:{port}/v1/responses",
                                      extra_headers=[("x-request-id", "ws-conn-1")]) as ws:
            await ws.send_message(json.dumps({"type": "response.create", "model": "a/text:tokens=3", "input": "x"}))
            sent = 0
            while True:
                frame = await ws.get_message()
                sent += len(frame.encode())
                if json.loads(frame)["type"] == "response.completed":
                    break
        [line] = await eventually(log, 1)
    assert (line["request_id"], line["door"], line["http"], line["status"], line["terminal"]) == (
        "ws-conn-1", "websocket", "1.1", 200, "completed")
    assert line["bytes_out"] == sent and line["tokens_out"] == 3


async def test_bodies_only_for_the_callers_an_operator_named(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    logging = LoggingConfig(format="json", file=str(log), bodies=("tenant:team-a",), body_max_chars=60)
    config = replace(make_config(upstream_port, log, keys=("key-a", "key-b"), logging=logging),
                     auth_tenants=("team-a", "team-b"))
    secret_input = f"my key is {UPSTREAM_KEY} " + "x" * 200
    async with running_gateway(config) as port:
        for key in ("key-a", "key-b"):
            result = await post_sse(port, {"model": "a/echo", "input": secret_input, "stream": True},
                                    {"authorization": f"Bearer {key}"})
            assert result.status == 200
        first, second = await eventually(log, 2)
    by_tenant = {line["tenant"]: line for line in (first, second)}
    logged = by_tenant["t:team-a"]
    assert UPSTREAM_KEY not in log.read_text()
    assert logged["input"].startswith("my key is [redacted] xxx") and len(logged["input"]) == 61
    assert logged["output"] and len(logged["output"]) <= 61
    assert "input" not in by_tenant["t:team-b"] and "output" not in by_tenant["t:team-b"]


async def test_text_format_is_one_line_of_key_value_pairs(upstream_port: int, tmp_path: Path) -> None:
    log = tmp_path / "requests.log"
    config = make_config(upstream_port, log, logging=LoggingConfig(format="text", file=str(log)))
    async with running_gateway(config) as port:
        await post_sse(port, {"model": "a/text:tokens=2", "input": "hi", "stream": True}, {"x-request-id": "t-1"})
        await eventually_text(log)
    [line] = log.read_text().splitlines()
    assert " request_id=t-1 kind=response door=sse http=1.1 " in line
    assert " status=200 terminal=completed " in line and " attempts=a:first:served:" in line
    assert 'model="a/text:tokens=2"' in line and "client_left=false" in line


def test_logging_config_from_toml_and_environment(tmp_path: Path) -> None:
    from streamgw.config_loader import load_config

    path = tmp_path / "gw.toml"
    path.write_text('[logging]\nformat = "json"\nfile = "/tmp/x.log"\nbodies = ["key:bot", "tenant:team-a"]\n')
    loaded = load_config(path, env={}).logging
    assert (loaded.format, loaded.file, loaded.bodies, loaded.requests) == (
        "json", "/tmp/x.log", ("key:bot", "tenant:team-a"), True)
    env = {"STREAMGW_LOG_FORMAT": "text", "STREAMGW_LOG_FILE": "/tmp/y.log"}
    assert (load_config(path, env=env).logging.format, load_config(path, env=env).logging.file) == ("text",
                                                                                                   "/tmp/y.log")
    assert load_config(None, env={}).logging == LoggingConfig()
    path.write_text('[logging]\nformat = "xml"\nbodies = ["everyone"]\nbody_max_chars = -1\nlevel = 1\n')
    with pytest.raises(ValueError) as problems:
        load_config(path, env={"STREAMGW_LOG_FORMAT": "yaml"})
    text = str(problems.value)
    for where in ("[logging] format", "[logging] bodies[0]", "[logging] body_max_chars", "[logging] level",
                  "STREAMGW_LOG_FORMAT"):
        assert where in text, text


def test_text_values_are_quoted_exactly_when_they_need_it() -> None:
    from streamgw.app.requestlog import format_line

    fields = {"time": "T", "a": "plain-value_1.2:x", "b": "", "c": "two words", "d": 'q"uote', "e": "k=v",
              "f": "back\\slash", "g": "tab\there", "h": "nl\nx", "i": "zero\u200bwidth", "j": "é", "k": 3,
              "l": 1.5, "m": True, "n": None, "attempts": []}
    line = format_line(fields, "text")
    assert line == ('T a=plain-value_1.2:x b="" c="two words" d="q\\"uote" e="k=v" f="back\\\\slash" '
                    'g="tab\\there" h="nl\\nx" i="zero\u200bwidth" j=é k=3 l=1.5 m=true')
    assert "\n" not in line

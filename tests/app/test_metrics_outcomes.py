"""Metrics that are true: outcomes, attempts, hedges and cooldowns counted; label sets bounded.

The bounded-label test feeds the gateway's own ``MetricsObserver`` 1,000 request entries with a
new model name, key name, upstream error code and attempt outcome each; the others run a real
gateway against the mock upstream.
"""

from __future__ import annotations

import re

import httpx
import pytest
import trio

from streamgw.app.metrics import ERROR_KINDS, KEY_LABELS, Metrics, MetricsObserver
from streamgw.app.routes import create_app
from streamgw.config import Config, KeyPolicy, ProviderConfig, RouteConfig, Secret, StoreConfig
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.lifecycle import Caller, RequestEntry
from streamgw.errors import UpstreamError
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import running_gateway

DISTINCT = 1000


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def label_values(lines: list[str], label: str) -> set[str]:
    return {m[1] for line in lines if (m := re.search(rf'{label}="([^"]*)"', line))}


def test_label_sets_stay_bounded_under_a_thousand_models_keys_and_codes() -> None:
    metrics = Metrics(["up", "r"], ["up/known", "r"])
    observer = MetricsObserver(metrics)
    for i in range(DISTINCT):
        entry = RequestEntry(f"req_{i}", "sse", Caller("t", key=KeyPolicy(f"key-{i}", "t")), 0.0,
                             model=f"made-up-model-{i}" if i % 2 else "up/known", provider="up", route="r")
        entry.attempts = [AttemptRecord(f"p{i}", f"m{i}", 0.0, "first", ended=0.1, outcome=f"code_{i}", status=502),
                          AttemptRecord("up", "known", 0.1, "fallback", 0.2, 0.3, 0.5, outcome="served")]
        entry.first_delta_at, entry.status, entry.finished = 0.3, 200, i % 3 != 0
        entry.terminal = "completed" if entry.finished else "failed"  # as the lifecycle sets it
        entry.error = None if entry.finished else UpstreamError("boom", code=f"upstream_code_{i}")
        entry.usage = {"input_tokens": 3, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 1}}
        entry.first_write_at = 0.35
        entry.ended_at = 1.0
        observer.opened(entry)
        observer.ended(entry)
    text = metrics.render().decode()
    responses = series(text, "streamgw_responses_total")
    assert label_values(responses, "model") == {"up/known", "other"}
    keys = label_values(responses, "key")
    assert len(keys) == KEY_LABELS + 1 and "other" in keys
    assert label_values(responses, "code") <= ERROR_KINDS | {"other", "none"}
    assert label_values(responses, "terminal") == {"completed", "failed"}
    assert sum(float(line.rsplit(" ", 1)[1]) for line in responses) == DISTINCT
    attempts = series(text, "streamgw_attempts_total")
    assert label_values(attempts, "provider") == {"none", "up"}
    assert label_values(attempts, "outcome") == {"other", "served"}
    assert len(series(text, "streamgw_tokens_total")) <= 2 * (KEY_LABELS + 1) * 3
    assert len(text.splitlines()) < 3000, "a series per distinct value would be far more"


def test_a_failed_stream_counts_as_failed_not_as_a_plain_200() -> None:
    metrics = Metrics(["up"], ["up/m"])
    entry = RequestEntry("req_1", "sse", None, 0.0, model="up/m", provider="up", status=200, terminal="failed",
                         first_delta_at=0.1, finished=True, ended_at=0.5)
    entry.response = {"status": "failed", "error": {"code": "upstream_idle_timeout", "message": "..."}}
    MetricsObserver(metrics).ended(entry)
    text = metrics.render().decode()
    assert ('streamgw_responses_total{code="upstream_idle_timeout",key="none",model="up/m",provider="up",'
            'terminal="failed"} 1.0') in text


@pytest.fixture
async def upstream_port(nursery: trio.Nursery) -> int:
    port: int = await nursery.start(ChatCompletionsMock().serve)
    return port


def config(port: int, *routes: RouteConfig) -> Config:
    providers = {name: ProviderConfig(name=name, type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                      api_key=Secret("sk-up")) for name in ("a", "b")}
    return Config(providers=providers, routes={r.name: r for r in routes}, store=StoreConfig(backend="none"))


async def test_hedges_cooldowns_and_retries_are_counted(upstream_port: int) -> None:
    hedge = RouteConfig("h", ("a/text:ttft=3", "b/text:tokens=2"), strategy="hedge", hedge_delay=0.05)
    flaky = RouteConfig("f", ("a/status-500", "b/text:tokens=2"), retries=1, backoff=0.01, cooldown_failures=2)
    cfg = config(upstream_port, hedge, flaky)
    app = create_app(cfg)
    async with running_gateway(cfg, app) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        assert (await client.post("/v1/responses", json={"model": "h", "input": "hi"})).status_code == 200
        assert (await client.post("/v1/responses", json={"model": "f", "input": "hi"})).status_code == 200
        text = (await client.get("/metrics")).text
    assert 'streamgw_hedges_total{result="started",route="h"} 1.0' in text
    assert 'streamgw_hedges_total{result="won",route="h"} 1.0' in text
    assert 'streamgw_retries_total{route="f"} 1.0' in text
    assert 'streamgw_fallbacks_total{route="f"} 1.0' in text
    assert 'streamgw_cooldowns_total{provider="a"} 1.0' in text
    assert 'streamgw_attempts_total{kind="retry",outcome="upstream_5xx",provider="a"} 1.0' in text
    assert 'streamgw_attempts_total{kind="first",outcome="cancelled",provider="a"} 1.0' in text
    assert 'streamgw_tokens_total{key="none",model="h",provider="b",type="output"} 2.0' in text
    assert re.search(r'streamgw_store_seconds_count\{op="read"\}', text) is None  # no store: nothing timed


def test_an_observer_that_fails_stops_neither_the_others_nor_the_request() -> None:
    from streamgw.app.observers import Observers

    class Broken:
        def opened(self, entry: RequestEntry) -> None:
            raise RuntimeError("bug")

        def ended(self, entry: RequestEntry) -> None:
            raise RuntimeError("bug")

    metrics = Metrics(["up"])
    observers = Observers(Broken(), MetricsObserver(metrics))
    entry = RequestEntry("req_1", "json", None, 0.0, status=200, provider="up", terminal="completed",
                         finished=True, ended_at=0.1)
    observers.opened(entry)
    observers.ended(entry)
    assert metrics.registry.get_sample_value("streamgw_requests_total", {"provider": "none", "status": "200"}) == 1


def test_remembered_children_are_capped_and_map_as_before() -> None:
    from streamgw.app.metrics import _CHILDREN, Metrics

    metrics = Metrics(["up"], ["up/m"], ["alice"])
    for i in range(_CHILDREN + 500):
        metrics.tokens.labels("up", f"model-{i}", "alice", "input").inc()
    metrics.tokens.labels("up", "up/m", "alice", "input").inc(5)
    assert len(metrics.tokens._children) == _CHILDREN
    text = metrics.render().decode()
    series = [line for line in text.splitlines() if line.startswith("streamgw_tokens_total{")]
    assert 'streamgw_tokens_total{key="alice",model="other",provider="up",type="input"} ' + \
        f"{float(_CHILDREN + 500)}" in series
    assert 'streamgw_tokens_total{key="alice",model="up/m",provider="up",type="input"} 5.0' in series
    assert len(series) == 2

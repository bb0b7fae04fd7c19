"""The response lifecycle: admission refuses before any upstream is contacted; the entry records every attempt."""

from __future__ import annotations

import httpx

from streamgw.app.routes import create_app
from streamgw.config import RouteConfig
from streamgw.core.request import ResponsesRequest
from streamgw.engine.lifecycle import Caller, RequestEntry, RequestObserver
from streamgw.engine.routing import Plan
from streamgw.errors import RateLimited
from streamgw.testing.harness import post_sse, running_gateway

from .conftest import Upstream, make_config


class Budget:
    """Admits ``left`` requests, then refuses with 429."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.seen: list[str] = []

    async def admit(self, caller: Caller, request: ResponsesRequest, plan: Plan) -> None:
        self.seen.append(request.model)
        if self.left <= 0:
            raise RateLimited("budget spent", code="budget_exhausted")
        self.left -= 1


async def test_an_admission_rule_refuses_before_the_upstream(upstream: Upstream) -> None:
    app = create_app(make_config([upstream.provider("up")]))
    budget = Budget(1)
    app.extensions["streamgw"].responses.admission = (budget,)
    body = {"model": "up/text:tokens=2", "input": "hi"}
    async with running_gateway(make_config([upstream.provider("up")]), app) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            first = await client.post("/v1/responses", json=body)
            second = await client.post("/v1/responses", json=body)
            streamed = await post_sse(port, {**body, "stream": True})
            metrics = (await client.get("/metrics")).text
    assert first.status_code == 200 and first.json()["status"] == "completed"
    assert second.status_code == 429 and second.json()["error"]["code"] == "budget_exhausted"
    assert streamed.status == 429
    assert len(upstream.mock.requests) == 1 and len(budget.seen) == 3
    assert 'streamgw_requests_total{provider="up",status="429"} 2.0' in metrics


class Entries:
    """A ``RequestObserver`` that keeps every ended entry, besides the gateway's own metrics observer."""

    def __init__(self, inner: RequestObserver) -> None:
        self.inner = inner
        self.ended_entries: list[RequestEntry] = []

    def opened(self, entry: RequestEntry) -> None:
        self.inner.opened(entry)

    def ended(self, entry: RequestEntry) -> None:
        self.inner.ended(entry)
        self.ended_entries.append(entry)


async def _entries_for(upstream: Upstream, routes: list[RouteConfig], bodies: list[dict[str, object]]) -> list[
        RequestEntry]:
    providers = [upstream.provider(name) for name in ("a", "b", "c")]
    config = make_config(providers, routes)
    app = create_app(config)
    responses = app.extensions["streamgw"].responses
    entries = responses.observer = Entries(responses.observer)
    async with running_gateway(config, app) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for body in bodies:
                await client.post("/v1/responses", json=body)
    return entries.ended_entries


async def test_the_entry_records_every_attempt_of_a_fallback(upstream: Upstream) -> None:
    route = RouteConfig("r", ("a/status-500", "b/status-500", "c/text:tokens=3"), retries=1, backoff=0.01)
    [entry] = await _entries_for(upstream, [route], [{"model": "r", "input": "hi"}])
    seen = [(a.provider, a.kind, a.outcome, a.status) for a in entry.attempts]
    assert seen == [("a", "first", "upstream_5xx", 502), ("a", "retry", "upstream_5xx", 502),
                    ("b", "fallback", "upstream_5xx", 502), ("b", "retry", "upstream_5xx", 502),
                    ("c", "fallback", "served", 0)]
    assert all(a.ended is not None and a.ended >= a.started for a in entry.attempts)
    served = entry.attempts[-1]
    assert served.headers_at is not None and served.first_delta_at is not None
    assert served.started <= served.headers_at <= served.first_delta_at <= (served.ended or 0)
    assert (entry.provider, entry.upstream_model, entry.model, entry.terminal) == ("c", "text:tokens=3", "r",
                                                                                 "completed")
    assert entry.usage is not None and entry.usage["output_tokens"] == 3


async def test_the_entry_records_a_hedge_and_its_loser(upstream: Upstream) -> None:
    route = RouteConfig("h", ("a/text:ttft=3", "b/text:tokens=2"), strategy="hedge", hedge_delay=0.1)
    [entry] = await _entries_for(upstream, [route], [{"model": "h", "input": "hi"}])
    seen = [(a.provider, a.kind, a.outcome) for a in entry.attempts]
    assert seen == [("a", "first", "cancelled"), ("b", "hedge", "served")]
    assert entry.attempts[0].first_delta_at is None and entry.provider == "b"


async def test_an_unserved_request_has_failed_attempts_and_no_terminal_status(upstream: Upstream) -> None:
    [entry] = await _entries_for(upstream, [], [{"model": "a/status-500", "input": "hi"}])
    assert [(a.provider, a.kind, a.outcome) for a in entry.attempts] == [("a", "first", "upstream_5xx")]
    assert (entry.terminal, entry.provider, entry.usage, entry.status) == ("", "", None, 502)

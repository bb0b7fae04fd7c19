"""The response lifecycle's admission step: a rule refuses before any upstream is contacted, on every door."""

from __future__ import annotations

import httpx

from streamgw.app.routes import create_app
from streamgw.core.request import ResponsesRequest
from streamgw.engine.lifecycle import Caller
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

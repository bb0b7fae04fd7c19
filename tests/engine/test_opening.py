"""A response's opening (``response.created``, ``response.in_progress``) is made while the upstream works on the
request, and it names the provider that answered.

The run makes its opening for the plan's first target once that target's upstream has the request
(``streamgw.transport.meanwhile``): by the time the first delta comes, the snapshot both events carry is
encoded already.  When another provider answers (a fallback, a hedge), the opening is made for that one.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from streamgw.app.gateway import Gateway
from streamgw.config import RouteConfig
from streamgw.core.jsontext import Snapshot, dumps_compact
from streamgw.core.request import parse_request
from streamgw.core.sse import encode_event
from streamgw.engine.run import ResponseRun
from streamgw.testing.harness import post_sse, running_gateway
from streamgw.testing.invariants import check_events

from .conftest import Upstream, make_config


def _request(model: str, stream: bool = True) -> Any:
    return parse_request(json.dumps({"model": model, "input": "hello", "stream": stream}).encode())


async def _opened(upstream: Upstream, model: str, stream: bool = True) -> tuple[ResponseRun, Gateway]:
    gw = Gateway(make_config([upstream.provider("up")]))
    request = _request(model, stream)
    return await ResponseRun.open(request, gw.router.plan(request.model), gw.engine), gw


async def test_the_opening_is_encoded_before_the_first_delta_came(upstream: Upstream) -> None:
    # The upstream answers 50 ms after it has the request: the opening is made in that time, so the run comes
    # back with its snapshot's JSON made (the door has encoded nothing yet).
    run, gw = await _opened(upstream, "up/text:tokens=3,ttft=0.05")
    try:
        created, in_progress = run.initial[0], run.initial[1]
        snapshot = created["response"]
        assert type(snapshot) is Snapshot and in_progress["response"] is snapshot
        assert snapshot.text is not None and snapshot["provider"] == "up"
        events = list(run.initial)

        async def deliver(batch: list[Any]) -> None:
            events.extend(batch)

        await run.stream(deliver)
    finally:
        await run.aclose()
        await gw.clients.aclose()
    # made before the stream went on, and still the snapshot's JSON after it (nothing changed it meanwhile)
    assert snapshot.text == dumps_compact(dict(snapshot))
    final = check_events([json.loads(encode_event(e).split(b"\ndata: ", 1)[1]) for e in events])
    assert final["status"] == "completed" and final["id"] == snapshot["id"]


async def test_a_collected_response_s_opening_is_not_encoded(upstream: Upstream) -> None:
    run, gw = await _opened(upstream, "up/text:tokens=2,ttft=0.05", stream=False)
    try:
        assert run.initial[0]["response"].text is None  # its events are never written: no JSON made for them
        final = await run.collect()
    finally:
        await run.aclose()
        await gw.clients.aclose()
    assert final["status"] == "completed" and final["provider"] == "up"


def _providers(events: list[dict[str, Any]]) -> list[str]:
    return [e["response"]["provider"] for e in events if "response" in e]


async def test_a_fallback_s_opening_names_the_provider_that_answered(upstream: Upstream) -> None:
    # "a" has the request first (its opening is made while it works on it), answers 500; "b" answers.
    route = RouteConfig("r", ("a/status-500", "b/text:tokens=2"))
    config = make_config([upstream.provider("a"), upstream.provider("b")], [route])
    async with running_gateway(config) as port:
        result = await post_sse(port, {"model": "r", "input": "hello", "stream": True})
    check_events(result.events)
    assert [e["type"] for e in result.events[:2]] == ["response.created", "response.in_progress"]
    assert _providers(result.events) == ["b", "b", "b"]  # created, in_progress, completed
    assert upstream.models_seen() == ["status-500", "text:tokens=2"]


async def test_a_hedge_s_opening_names_the_provider_that_won(upstream: Upstream) -> None:
    route = RouteConfig("h", ("slow/text:ttft=3", "fast/text:tokens=2"), strategy="hedge", hedge_delay=0.1)
    config = make_config([upstream.provider("slow"), upstream.provider("fast")], [route])
    async with running_gateway(config) as port:
        result = await post_sse(port, {"model": "h", "input": "hello", "stream": True})
        await trio.sleep(0.05)
    check_events(result.events)
    assert _providers(result.events) == ["fast", "fast", "fast"]

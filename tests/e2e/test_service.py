"""The demo provider, /v1/models, health, readiness and metrics, through a real gateway process."""

from __future__ import annotations

import json

import httpx

from streamgw.testing.invariants import check_events

from .conftest import GATEWAY_KEY, Gateway
from .test_responses import WEATHER_TOOL, raw_stream

AUTH = {"authorization": f"Bearer {GATEWAY_KEY}"}


def test_demo_streams_with_the_sdk(gateway: Gateway) -> None:
    client = gateway.client()
    with client.responses.stream(model="demo/anything", input="Say hello") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert "Say hello" in text and final.output_text == text


def test_demo_tool_call_and_answer(gateway: Gateway) -> None:
    client = gateway.client()
    first = client.responses.create(model="demo/demo", input="weather?", tools=[WEATHER_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "demo-city"}
    second = client.responses.create(
        model="demo/demo", tools=[WEATHER_TOOL],
        input=[{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
    )
    assert "sunny, 21 C" in second.output_text


def test_demo_reasoning_and_max_output_tokens(gateway: Gateway) -> None:
    _, events = raw_stream(gateway, {"model": "demo/demo", "input": "x", "reasoning": {"effort": "low"},
                                     "max_output_tokens": 4})
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["reasoning", "message"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}


def test_models_list(gateway: Gateway) -> None:
    body = httpx.get(gateway.url + "/v1/models", headers=AUTH, timeout=5).json()
    ids = {m["id"] for m in body["data"]}
    assert body["object"] == "list" and "demo/demo" in ids and "mock/text-bare" in ids
    sdk_ids = {m.id for m in gateway.client().models.list()}
    assert sdk_ids == ids


def test_health_readiness_and_metrics(gateway: Gateway) -> None:
    ready = httpx.get(gateway.url + "/readyz", timeout=5).json()
    assert ready == {"ready": True, "draining": False, "pid": gateway.process.pid}
    gateway.client().responses.create(model="demo/demo", input="count me")
    metrics = httpx.get(gateway.url + "/metrics", timeout=5)
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'streamgw_requests_total{provider="demo",status="200"}' in text
    assert "streamgw_streams_in_flight" in text
    assert 'streamgw_time_to_first_token_seconds_count{provider="demo"}' in text


def test_unknown_route_is_an_envelope(gateway: Gateway) -> None:
    response = httpx.get(gateway.url + "/v1/nothing", headers=AUTH, timeout=5)
    assert response.status_code == 404 and response.json()["error"]["type"] == "not_found_error"

"""Limits at the front doors (in-process gateway, real hypercorn): headers on every kind of answer, the 429s,
budgets and prices, usage endpoints and their parameters, and a control backend that is down."""

from __future__ import annotations

import csv
import io
import json
from hashlib import sha256

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from streamgw.app.routes import create_app
from streamgw.config import (
    Config,
    ControlConfig,
    KeyPolicy,
    Limits,
    Price,
    ProviderConfig,
    Secret,
    StaticKey,
    StoreConfig,
)
from streamgw.engine.limits import duration
from streamgw.testing.harness import post_sse, running_gateway
from streamgw.testing.process import free_port

ADMIN = "sk-admin-limits-0123"
KEYS = {"capped": "sk-capped-0123456789", "free": "sk-free-0123456789", "broke": "sk-broke-0123456789",
        "spender": "sk-spender-0123456789", "mate": "sk-mate-0123456789"}


def auth(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def static(name: str, limits: Limits, tenant: str = "") -> StaticKey:
    secret = KEYS[name]
    policy = KeyPolicy(name=name, tenant=f"t:{tenant}" if tenant else f"key:{name}", limits=limits)
    return StaticKey(policy, sha256(secret.encode()).digest(), Secret(secret))


def config(control: ControlConfig | None = None, admin: bool = True) -> Config:
    return Config(
        providers={"demo": ProviderConfig(name="demo", type="demo")},
        store=StoreConfig(backend="none"),
        control=control or ControlConfig(backend="memory"),
        keys=(static("capped", Limits(requests_per_minute=3, tokens_per_minute=100000)),
              static("free", Limits()),
              static("broke", Limits(tokens_per_day=1)),
              static("spender", Limits(cost_per_month=0.000001), tenant="crew"),
              static("mate", Limits(), tenant="crew")),
        tenant_limits={"crew": Limits(requests_per_minute=2)},
        prices=(Price("demo/*", input=1.0, output=2.0),),
        admin_key=Secret(ADMIN) if admin else None,
    )


BODY = {"model": "demo/demo", "input": "hi"}


def test_reset_times_are_written_as_openai_does() -> None:
    assert [duration(s) for s in (0, 0.012, 1, 1.5, 59.9994, 60, 360, 3723)] == [
        "0s", "12ms", "1s", "1.5s", "59.999s", "1m0s", "6m0s", "1h2m3s"]


async def test_every_answer_of_a_limited_key_carries_the_headers() -> None:
    async with running_gateway(config()) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        first = await client.post("/v1/responses", json=BODY, headers=auth("capped"))
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "3"
        assert first.headers["x-ratelimit-remaining-requests"] == "2"
        assert first.headers["x-ratelimit-reset-requests"].endswith("s")
        assert first.headers["x-ratelimit-limit-tokens"] == "100000"
        assert first.headers["x-ratelimit-remaining-tokens"] == "100000"
        streamed = await post_sse(port, {**BODY, "stream": True}, auth("capped"))
        assert streamed.status == 200 and streamed.headers["x-ratelimit-remaining-requests"] == "1"
        unknown = await client.post("/v1/responses", json={**BODY, "model": "nope/x"}, headers=auth("capped"))
        assert unknown.status_code == 404 and unknown.headers["x-ratelimit-remaining-requests"] == "1"
        bad = await client.post("/v1/responses", content=b"{", headers=auth("capped"))
        assert bad.status_code == 400 and bad.headers["x-ratelimit-limit-requests"] == "3"
        third = await client.post("/v1/responses", json=BODY, headers=auth("capped"))
        assert third.status_code == 200 and third.headers["x-ratelimit-remaining-requests"] == "0"
        refused = await client.post("/v1/responses", json=BODY, headers=auth("capped"))
        assert refused.status_code == 429
        assert refused.json()["error"] == {"type": "rate_limit_error", "code": "rate_limit_exceeded",
                                           "param": None, "message": refused.json()["error"]["message"]}
        assert 5 <= int(refused.headers["retry-after"]) <= 21  # 20 s a request, less what the demo took
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"][-1] == "s"
        assert int(refused.headers["retry-after-ms"]) <= 1000 * int(refused.headers["retry-after"])
        async with open_websocket_url(f"ws://127.0.0.1:{port}/v1/responses", extra_headers=[
                ("authorization", auth("capped")["authorization"])]) as ws:
            handshake = dict(ws.handshake_headers)
            assert handshake[b"x-ratelimit-limit-requests"] == b"3"
            assert handshake[b"x-ratelimit-remaining-requests"] == b"0"
        plain = await client.post("/v1/responses", json=BODY, headers=auth("free"))
        assert plain.status_code == 200 and "x-ratelimit-limit-requests" not in plain.headers


async def test_a_tenant_limit_is_shared_by_its_keys() -> None:
    async with running_gateway(config()) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.post("/v1/responses", json=BODY, headers=auth("mate"))).status_code == 200
        assert (await client.post("/v1/responses", json=BODY, headers=auth("mate"))).status_code == 200
        third = await client.post("/v1/responses", json=BODY, headers=auth("mate"))
        assert third.status_code == 429 and third.headers["x-ratelimit-limit-requests"] == "2"


async def test_budgets_end_in_insufficient_quota() -> None:
    async with running_gateway(config()) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.post("/v1/responses", json=BODY, headers=auth("broke"))).status_code == 200
        assert (await client.post("/v1/responses", json=BODY, headers=auth("spender"))).status_code == 200
        for name in ("broke", "spender"):  # a token budget, then a cost budget (priced by [prices])
            refused = await client.post("/v1/responses", json=BODY, headers=auth(name))
            assert refused.status_code == 429
            error = refused.json()["error"]
            assert (error["type"], error["code"]) == ("rate_limit_error", "insufficient_quota")
            assert refused.headers["x-should-retry"] == "false" and int(refused.headers["retry-after"]) >= 1
        assert "cost" in refused.json()["error"]["message"]


async def test_usage_endpoints() -> None:
    async with running_gateway(config()) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answers = [(await client.post("/v1/responses", json=BODY, headers=auth(name))).json()
                   for name in ("free", "free", "mate")]
        mine = (await client.get("/v1/usage", headers=auth("free"))).json()
        assert mine["object"] == "usage" and {row["key"] for row in mine["data"]} == {"free"}
        expected = sum(a["usage"]["input_tokens"] for a in answers[:2])
        assert mine["totals"]["input_tokens"] == expected and mine["totals"]["completed"] == 2
        assert mine["data"][0]["provider"] == "demo" and mine["data"][0]["model"] == "demo/demo"
        price = answers[0]["usage"]["input_tokens"] * 1.0 + answers[0]["usage"]["output_tokens"] * 2.0
        assert mine["totals"]["cost_usd"] == pytest.approx(2 * price / 1e6)
        # the admin sees everyone: filters, group_by and CSV
        admin = {"authorization": f"Bearer {ADMIN}"}
        grouped = (await client.get("/admin/usage", params={"group_by": "key"}, headers=admin)).json()
        assert {row["key"]: row["requests"] for row in grouped["data"]} == {"free": 2, "mate": 1}
        crew = (await client.get("/admin/usage", params={"tenant": "crew"}, headers=admin)).json()
        assert [row["key"] for row in crew["data"]] == ["mate"] and crew["data"][0]["tenant"] == "crew"
        text = await client.get("/admin/usage", params={"format": "csv", "group_by": "day,key"}, headers=admin)
        assert text.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(text.text)))
        assert [(r["key"], r["requests"]) for r in rows] == [("free", "2"), ("mate", "1")]
        assert list(rows[0]) == ["day", "key", "requests", "completed", "incomplete", "failed", "input_tokens",
                                 "cached_tokens", "output_tokens", "reasoning_tokens", "cost_usd"]
        # wrong admin key, a gateway key on the admin route, no key at all
        for headers in ({"authorization": "Bearer sk-wrong-000000"}, auth("free"), {}):
            assert (await client.get("/admin/usage", headers=headers)).status_code == 401
        assert (await client.get("/v1/usage")).status_code == 401


@pytest.mark.parametrize(("params", "param"), [
    ({"start": "2026-13-01"}, "start"), ({"end": "yesterday"}, "end"), ({"start": "2026-02-01", "end": "2026-01-01"},
                                                                        "start"),
    ({"start": "2020-01-01", "end": "2026-01-01"}, "end"), ({"format": "xml"}, "format"),
    ({"group_by": "key,colour"}, "group_by"), ({"key": "alice"}, "key"), ({"bogus": "1"}, "bogus"),
])
async def test_usage_parameters_are_checked(params: dict[str, str], param: str) -> None:
    async with running_gateway(config()) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answer = await client.get("/v1/usage", params=params, headers=auth("free"))
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param


async def test_admin_usage_without_an_admin_key_does_not_exist() -> None:
    async with running_gateway(config(admin=False)) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answer = await client.get("/admin/usage", headers={"authorization": f"Bearer {ADMIN}"})
        assert answer.status_code == 404


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_a_control_backend_that_is_down(mode: str) -> None:
    down = ControlConfig(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0", timeout=0.5,
                         on_unavailable=mode)
    app = create_app(config(down))
    async with running_gateway(config(down), app) as port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        answer = await client.post("/v1/responses", json=BODY, headers=auth("capped"))
        if mode == "open":
            assert answer.status_code == 200 and "x-ratelimit-limit-requests" not in answer.headers
        else:
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "control_unavailable"
        free = await client.post("/v1/responses", json=BODY, headers=auth("free"))
        assert free.status_code == 200  # a key without limits never asks the backend
        metrics = (await client.get("/metrics")).text
        assert "streamgw_control_unavailable_total 1.0" in metrics
        assert 'streamgw_control_seconds_count{op="admit"} 1.0' in metrics


async def test_a_stream_slot_is_released_when_the_client_leaves() -> None:
    one = Config(providers={"demo": ProviderConfig(name="demo", type="demo")}, store=StoreConfig(backend="none"),
                 keys=(static("capped", Limits(concurrent_streams=1)),))
    slow = {"model": "demo/demo", "input": "hi " * 200, "stream": True}
    async with running_gateway(one) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        async with client.stream("POST", "/v1/responses", json=slow, headers=auth("capped")) as held:
            assert held.status_code == 200
            second = await client.post("/v1/responses", json=BODY, headers=auth("capped"))
            assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
            assert "concurrent" in second.json()["error"]["message"]
        for _ in range(50):  # the client left mid-stream: the slot comes back once the gateway saw it
            answer = await client.post("/v1/responses", json=BODY, headers=auth("capped"))
            if answer.status_code == 200:
                break
            await trio.sleep(0.05)
        assert answer.status_code == 200, json.dumps(answer.json())


async def test_a_managed_key_is_limited_like_a_static_one() -> None:
    admin = {"authorization": f"Bearer {ADMIN}"}
    async with running_gateway(config()) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        made = await client.post("/admin/keys", headers=admin, json={"name": "runtime", "requests_per_minute": 1,
                                                                    "tokens_per_day": 100000})
        assert made.status_code == 201, made.text
        key = {"authorization": f"Bearer {made.json()['secret']}"}
        first = await client.post("/v1/responses", json=BODY, headers=key)
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-requests"] == "1"
        second = await client.post("/v1/responses", json=BODY, headers=key)
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
        usage = (await client.get("/admin/usage", params={"key": "runtime"}, headers=admin)).json()
        assert usage["totals"]["requests"] == 2 and usage["totals"]["completed"] == 1

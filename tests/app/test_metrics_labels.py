"""``/metrics`` against a real hypercorn server: bounded label values, and ``[metrics] require_key``.

An upstream that answers 500 with a new ``error.code`` every time (its own key, say) must not put
that text in the client's answer nor grow ``/metrics`` by a series per code; a client-chosen
``provider`` hint never becomes a label either.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import trio

from streamgw.app.metrics import ERROR_KINDS, Metrics
from streamgw.config import Config, MetricsConfig, ProviderConfig, Secret, StoreConfig
from streamgw.config_loader import load_config
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import running_gateway
from streamgw.testing.server import MockRequest, Responder

KEY = "gw-metrics-key"
UPSTREAM_KEY = "upstream-key-that-must-not-leak-0123"
AUTH = {"authorization": f"Bearer {KEY}"}
CODES = 300


class LeakyMock(ChatCompletionsMock):
    """Answers every request with a 500 whose ``code`` is new each time (the first ones: its key)."""

    async def handle(self, req: MockRequest, send: Responder) -> None:
        self.requests.append(req)
        n = len(self.requests)
        code = UPSTREAM_KEY if n % 3 == 0 else f"made_up_code_{n}"
        body = {"error": {"message": "boom", "type": f"type_{n}", "param": f"param_{n}", "code": code}}
        await send.full(500, [("content-type", "application/json")], json.dumps(body).encode())


def config(port: int, *, require_key: bool = False, keys: tuple[str, ...] = (KEY,)) -> Config:
    return Config(
        auth_keys=tuple(Secret(k) for k in keys),
        providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                        api_key=Secret(UPSTREAM_KEY))},
        store=StoreConfig(backend="none"),
        metrics=MetricsConfig(require_key=require_key),
    )


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


async def test_upstream_codes_never_reach_the_client_or_the_labels(nursery: trio.Nursery) -> None:
    mock = LeakyMock()
    port = await nursery.start(mock.serve)
    async with running_gateway(config(port)) as gw_port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", headers=AUTH) as client:
        codes = set()
        for _ in range(CODES):
            answer = await client.post("/v1/responses", json={"model": "up/m", "input": "hi"})
            assert answer.status_code == 502
            assert UPSTREAM_KEY not in answer.text
            codes.add(answer.json()["error"]["code"])
        hint = await client.post("/v1/responses", json={"model": "m", "input": "hi", "provider": "client-chosen"})
        assert hint.status_code == 404
        text = (await client.get("/metrics")).text
    # A plain identifier is relayed to the client as the upstream's code; its key is not.
    assert {code for code in codes if not code.startswith("made_up_code_")} == {"upstream_5xx"}, codes
    assert UPSTREAM_KEY not in text and "made_up_code" not in text and "client-chosen" not in text
    errors = series(text, "streamgw_upstream_errors_total")
    assert 1 <= len(errors) <= 3, errors
    kinds = {re.search(r'kind="([^"]*)"', line)[1] for line in errors}  # type: ignore[index]
    assert kinds <= ERROR_KINDS | {"other"}
    providers = {re.search(r'provider="([^"]*)"', line)[1]  # type: ignore[index]
                 for line in series(text, "streamgw_requests_total")}
    assert providers <= {"up", "none"}


def test_label_values_are_mapped_into_fixed_sets() -> None:
    metrics = Metrics(["up"])
    for i in range(50):
        metrics.upstream_errors.labels(f"p{i}", f"code_{i}").inc()
        metrics.requests.labels("up", f"{i}x").inc()
    metrics.upstream_errors.labels("up", "upstream_timeout").inc()
    text = metrics.render().decode()
    assert sorted(series(text, "streamgw_upstream_errors_total")) == [
        'streamgw_upstream_errors_total{kind="other",provider="none"} 50.0',
        'streamgw_upstream_errors_total{kind="upstream_timeout",provider="up"} 1.0',
    ]
    assert series(text, "streamgw_requests_total") == ['streamgw_requests_total{provider="up",status="other"} 50.0']


@pytest.mark.parametrize(("keys", "headers", "status"), [
    ((KEY,), {}, 401),
    ((KEY,), {"authorization": "Bearer wrong"}, 401),
    ((KEY,), AUTH, 200),
    ((), {}, 401),  # no gateway key configured: nobody can present one
])
async def test_metrics_can_require_a_gateway_key(keys: tuple[str, ...], headers: dict[str, str],
                                                 status: int) -> None:
    async with running_gateway(config(9, require_key=True, keys=keys)) as gw_port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}") as client:
        answer = await client.get("/metrics", headers=headers)
        open_door = await client.get("/healthz")
    assert answer.status_code == status
    assert open_door.status_code == 200
    if status == 401:
        assert answer.json()["error"]["type"] == "authentication_error"
        assert "streamgw_" not in answer.text
    else:
        assert "streamgw_requests" in answer.text


async def test_metrics_stay_open_by_default() -> None:
    async with running_gateway(config(9)) as gw_port, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}") as client:
        assert (await client.get("/metrics")).status_code == 200


def test_require_key_from_toml_and_environment(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "gw.toml"
    path.write_text("[metrics]\nrequire_key = true\n")
    assert load_config(path, env={}).metrics.require_key is True
    assert load_config(None, env={}).metrics.require_key is False
    assert load_config(path, env={"STREAMGW_METRICS_REQUIRE_KEY": "0"}).metrics.require_key is False
    assert load_config(None, env={"STREAMGW_METRICS_REQUIRE_KEY": "yes"}).metrics.require_key is True
    path.write_text('[metrics]\nrequire_key = "maybe"\n')
    with pytest.raises(ValueError, match=r"\[metrics\] require_key: must be true or false"):
        load_config(path, env={})

"""Limits across real processes: one instance with ``--workers 2`` on SQLite, and two instances with
``--workers 2`` each sharing one real redis-server — one limit for all four workers.

Each scenario runs against both deployments: a 60 requests/minute key driven concurrently (60-62
successes, 429s after, with OpenAI's headers), a tokens-per-minute key, a concurrent-stream key,
token and cost budgets (``insufficient_quota``), and usage totals equal to the sum of the usage
the clients saw.  The official openai SDK retries a 429 on its own and reads ``x-ratelimit-*``.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.process import free_port, start_gateway, stop_process
from streamgw.testing.redis_server import require_redis, running_redis
from streamgw.testing.server import serving_in_thread

ADMIN = "sk-admin-e2e-limits-01"
KEYS = {name: f"sk-e2e-{name}-0123456789" for name in ("burst", "tpm", "streams", "tokens", "cost", "acct", "sdk")}
QUICK = {"model": "up/text:tokens=5", "input": "hi"}  # usage: 1 input token, 5 output tokens


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}"}


def config_text(mock_port: int, control: str) -> str:
    return f"""
[providers.up]
type = "chat"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key = "sk-upstream-e2e-0123456789"

[store]
backend = "none"

{control}

[prices."up/*"]
input = 1.0
output = 1.0

[keys.burst]
key = "{KEYS['burst']}"
requests_per_minute = 60

[keys.tpm]
key = "{KEYS['tpm']}"
tokens_per_minute = 20

[keys.streams]
key = "{KEYS['streams']}"
concurrent_streams = 2

[keys.tokens]
key = "{KEYS['tokens']}"
tokens_per_day = 10

[keys.cost]
key = "{KEYS['cost']}"
cost_per_day = 0.00001

[keys.acct]
key = "{KEYS['acct']}"
tenant = "accounting"

[keys.sdk]
key = "{KEYS['sdk']}"
requests_per_minute = 60

[admin]
key = "{ADMIN}"
"""


@dataclass
class Deployment:
    """Gateway processes sharing one control backend, and the mock behind them."""

    kind: str
    urls: list[str]
    mock: ChatCompletionsMock
    config: Path
    procs: list[subprocess.Popen[bytes]]

    def spread(self) -> Iterator[str]:
        return itertools.cycle(self.urls)


@pytest.fixture(scope="module")
def mock() -> Iterator[ChatCompletionsMock]:
    upstream = ChatCompletionsMock()
    with serving_in_thread(lambda: upstream.handle, stats=upstream.stats) as port:
        upstream.port = port  # type: ignore[attr-defined]
        yield upstream


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def deployment(request: pytest.FixtureRequest, mock: ChatCompletionsMock,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp(f"limits-{request.param}")
    with _backend(request.param, tmp) as control:
        config = tmp / "streamgw.toml"
        config.write_text(config_text(mock.port, control))  # type: ignore[attr-defined]
        instances = 1 if request.param == "sqlite" else 2
        procs: list[subprocess.Popen[bytes]] = []
        urls: list[str] = []
        try:
            for n in range(instances):
                proc, url = start_gateway(config, tmp / f"gateway-{n}.log", extra_args=["--workers", "2"])
                procs.append(proc)
                urls.append(url)
            yield Deployment(request.param, urls, mock, config, procs)
        finally:
            for proc in procs:
                stop_process(proc)


class _backend:
    """The ``[control]`` table of a deployment (a redis-server for the redis one)."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind, self.tmp = kind, tmp
        self._redis = running_redis() if kind == "redis" else None

    def __enter__(self) -> str:
        if self._redis is None:
            return f'[control]\nbackend = "sqlite"\npath = "{self.tmp / "control.db"}"'
        require_redis()
        url = self._redis.__enter__()
        return f'[control]\nbackend = "redis"\nurl = "{url}"\nkey_prefix = "e2e:"'

    def __exit__(self, *exc: object) -> None:
        if self._redis is not None:
            self._redis.__exit__(None, None, None)


#: every request on a connection of its own (so the kernel spreads them over the workers); one client, so
#: that a burst is not slowed down by building a client (and its TLS context) per request
_FRESH = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0, max_connections=100), timeout=20)


def post(url: str, key: str, body: dict[str, object] | None = None) -> httpx.Response:
    """One request on a connection of its own."""
    return _FRESH.post(url + "/v1/responses", json=body or QUICK, headers=bearer(key))


def test_requests_per_minute_hold_across_workers_and_instances(deployment: Deployment) -> None:
    urls = list(itertools.islice(deployment.spread(), 80))
    with ThreadPoolExecutor(max_workers=40) as pool:
        started = time.monotonic()
        answers = list(pool.map(lambda url: post(url, "burst"), urls))
        took = time.monotonic() - started
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    # the bucket holds 60 and refills one a second: 60 at once, one more per second the burst took
    assert 60 <= len(ok) <= 62, f"{len(ok)} admitted in a burst of {took:.2f} s"
    assert len(ok) + len(refused) == 80
    for answer in refused:
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        assert answer.headers["x-ratelimit-limit-requests"] == "60"
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
        assert 1 <= int(answer.headers["retry-after"]) <= 2
    assert {a.headers["x-ratelimit-limit-requests"] for a in ok} == {"60"}
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in ok)
    assert remaining[:3] == [0, 0, 0] or remaining[0] == 0  # the bucket was emptied
    after = [post(url, "burst").status_code for url in deployment.urls]
    assert after == [429] * len(deployment.urls)


def test_tokens_per_minute_count_what_responses_used(deployment: Deployment) -> None:
    statuses = []
    for url in itertools.islice(deployment.spread(), 5):
        answer = post(url, "tpm")
        statuses.append(answer.status_code)
        time.sleep(0.1)  # the tokens are counted as the request ends, a moment after its last byte
    assert statuses == [200, 200, 200, 200, 429]  # 6 tokens each: 0, 6, 12, 18 < 20, then 24
    assert answer.headers["x-ratelimit-limit-tokens"] == "20"
    assert answer.headers["x-ratelimit-remaining-tokens"] == "0"
    assert answer.json()["error"]["code"] == "rate_limit_exceeded"


def test_concurrent_streams_are_one_limit(deployment: Deployment) -> None:
    slow = {"model": "up/text:tokens=60,token_delay=0.1", "input": "hi", "stream": True}
    first, second = (url for url in itertools.islice(deployment.spread(), 2))
    with httpx.Client(timeout=20) as a, httpx.Client(timeout=20) as b:
        with a.stream("POST", first + "/v1/responses", json=slow, headers=bearer("streams")) as one:
            assert one.status_code == 200
            with b.stream("POST", second + "/v1/responses", json=slow, headers=bearer("streams")) as two:
                assert two.status_code == 200
                third = post(deployment.urls[-1], "streams")
                assert third.status_code == 429 and third.json()["error"]["code"] == "rate_limit_exceeded"
            # the client of the second stream left: its slot comes back
        deadline = time.monotonic() + 5
        while (answer := post(deployment.urls[0], "streams")).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answer.status_code == 200


def test_budgets_end_in_insufficient_quota(deployment: Deployment) -> None:
    for key in ("tokens", "cost"):  # 6 tokens (6e-6 USD) a request: two fit under 10 (1e-5 USD), not three
        statuses = []
        for url in itertools.islice(deployment.spread(), 3):
            answer = post(url, key)
            statuses.append(answer.status_code)
            time.sleep(0.1)
        assert statuses == [200, 200, 429]
        error = answer.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "insufficient_quota")
        assert answer.headers["x-should-retry"] == "false"


def test_usage_totals_are_what_the_clients_saw(deployment: Deployment) -> None:
    seen = {"input_tokens": 0, "output_tokens": 0, "requests": 0}
    urls = list(itertools.islice(deployment.spread(), 12))
    bodies = [QUICK, {"model": "up/text:tokens=7", "input": "a longer question here", "stream": False},
              {"model": "up/text:tokens=3", "input": "streamed", "stream": True}]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda pair: post(pair[0], "acct", pair[1]), zip(urls, itertools.cycle(bodies))))
    for answer in answers:
        assert answer.status_code == 200
        if answer.headers["content-type"].startswith("text/event-stream"):
            usage = [line for line in answer.text.splitlines() if '"response.completed"' in line]
            usage_obj = json.loads(usage[-1].removeprefix("data: "))["response"]["usage"]
        else:
            usage_obj = answer.json()["usage"]
        seen["input_tokens"] += usage_obj["input_tokens"]
        seen["output_tokens"] += usage_obj["output_tokens"]
        seen["requests"] += 1
    admin = {"authorization": f"Bearer {ADMIN}"}
    deadline = time.monotonic() + 5
    while True:  # every worker writes its rows within a quarter of a second
        totals = httpx.get(deployment.urls[-1] + "/admin/usage", params={"key": "acct"}, headers=admin).json()["totals"]
        got = {name: totals[name] for name in seen}
        if got == seen or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got == seen
    assert totals["completed"] == 12 and totals["cost_usd"] == pytest.approx(
        (seen["input_tokens"] + seen["output_tokens"]) / 1e6)
    own = httpx.get(deployment.urls[0] + "/v1/usage", params={"format": "csv", "group_by": "tenant,model"},
                    headers=bearer("acct"))
    assert own.text.splitlines()[0].startswith("tenant,model,requests,")
    assert sum(int(line.split(",")[2]) for line in own.text.splitlines()[1:]) == 12
    assert all(line.startswith("accounting,up/text:tokens=") for line in own.text.splitlines()[1:])


def test_the_openai_sdk_retries_a_429_on_its_own(deployment: Deployment) -> None:
    if deployment.kind != "sqlite":
        pytest.skip("one deployment is enough for the SDK")
    marker = f"sdk-retry-{free_port()}"
    before = sum(marker.encode() in r.body for r in deployment.mock.requests)
    with ThreadPoolExecutor(max_workers=10) as pool:  # empty the bucket: 60 at once
        burst = list(pool.map(lambda _: post(deployment.urls[0], "sdk").status_code, range(62)))
    assert 60 <= burst.count(200) <= 62
    while post(deployment.urls[0], "sdk").status_code == 200:  # the bucket refills one a second: empty again
        pass
    statuses: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]})
    client = openai.OpenAI(base_url=deployment.urls[0] + "/v1", api_key=KEYS["sdk"], max_retries=4,
                           http_client=http)
    try:
        started = time.monotonic()
        raw = client.responses.with_raw_response.create(model="up/text:tokens=2", input=marker)
        waited = time.monotonic() - started
    finally:
        client.close()
    assert statuses[0] == 429 and statuses[-1] == 200 and set(statuses) == {429, 200}
    assert waited >= 0.3  # the SDK waited the retry-after it was given
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    assert raw.parse().status == "completed"
    # the refused attempts never reached the upstream: it saw the one that was admitted
    assert sum(marker.encode() in r.body for r in deployment.mock.requests) - before == 1


def test_budgets_survive_a_restart(deployment: Deployment, tmp_path: Path) -> None:
    if deployment.kind != "sqlite":
        pytest.skip("the redis deployment keeps its budgets in redis-server, which outlives the gateways")
    stop_process(deployment.procs[0])
    proc, url = start_gateway(deployment.config, tmp_path / "restarted.log", extra_args=["--workers", "2"])
    deployment.procs[0], deployment.urls[0] = proc, url
    assert post(url, "tokens").json()["error"]["code"] == "insufficient_quota"

"""Routes: fallback, retries, hedging, weighting and cooldown, through a real gateway on loopback."""

from __future__ import annotations

from collections import Counter

import trio

from streamgw.config import ProviderConfig, RouteConfig, Secret
from streamgw.engine.health import Health
from streamgw.testing.harness import post_sse, running_gateway
from streamgw.testing.invariants import check_events, output_text

from .conftest import Upstream, make_config


def body(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "input": "hello", "stream": True, **extra}


async def test_fallback_moves_on_after_5xx_and_connect_errors(upstream: Upstream) -> None:
    dead = upstream.provider("dead", base_url="http://127.0.0.1:9/v1")
    route = RouteConfig("r", ("dead/text", "up/status-500", "up/text:tokens=3"))
    async with running_gateway(make_config([dead, upstream.provider("up")], [route])) as port:
        result = await post_sse(port, body("r"))
    assert result.status == 200
    final = check_events(result.events)
    assert final["provider"] == "up" and output_text(final) == "tok0 tok1 tok2 "
    assert upstream.models_seen() == ["status-500", "text:tokens=3"]


async def test_fallback_does_not_hide_a_bad_request(upstream: Upstream) -> None:
    route = RouteConfig("r", ("up/status-400", "up/text"))
    async with running_gateway(make_config([upstream.provider("up")], [route])) as port:
        result = await post_sse(port, body("r"))
    assert result.status == 400
    assert upstream.models_seen() == ["status-400"]


async def test_first_token_timeout_falls_back(upstream: Upstream) -> None:
    route = RouteConfig("r", ("up/text:ttft=5", "up/text:tokens=2"), timeouts=(("first_token", 0.3),))
    async with running_gateway(make_config([upstream.provider("up")], [route])) as port:
        start = trio.current_time()
        result = await post_sse(port, body("r"))
    assert check_events(result.events)["status"] == "completed"
    assert 0.3 <= trio.current_time() - start < 2.0
    assert upstream.models_seen() == ["text:ttft=5", "text:tokens=2"]
    assert len(upstream.mock.stats.disconnects) >= 1, "the timed-out attempt's upstream must be closed"


async def test_retries_honour_retry_after(upstream: Upstream) -> None:
    # status-429 answers retry-after: 7; a 0.1 s backoff must still wait >= 7 s, so with a 1 s
    # budget the retry is skipped and the next target answers.
    route = RouteConfig("r", ("up/status-429", "up/text:tokens=1"), retries=2, backoff=0.1,
                        timeouts=(("total", 1.0),))
    async with running_gateway(make_config([upstream.provider("up")], [route])) as port:
        result = await post_sse(port, body("r"))
    assert check_events(result.events)["status"] == "completed"
    assert upstream.models_seen() == ["status-429", "text:tokens=1"]


async def test_retries_on_the_same_target_with_backoff(upstream: Upstream) -> None:
    route = RouteConfig("r", ("up/status-500",), retries=2, backoff=0.1)
    async with running_gateway(make_config([upstream.provider("up")], [route])) as port:
        start = trio.current_time()
        result = await post_sse(port, body("r"))
        elapsed = trio.current_time() - start
    assert result.status == 502 and "all 3 attempt(s) failed" in result.body.decode()
    assert upstream.models_seen() == ["status-500"] * 3
    assert elapsed >= 0.1 * 0.5 + 0.2 * 0.5, "two jittered backoffs (0.1 s, then 0.2 s, each at least halved)"


async def test_a_retry_after_beyond_the_deadline_is_not_waited_for(upstream: Upstream) -> None:
    route = RouteConfig("r", ("up/status-503",), retries=2, backoff=0.05)  # status-503 says retry-after: 3
    async with running_gateway(make_config([upstream.provider("up")], [route], total=1.0)) as port:
        start = trio.current_time()
        result = await post_sse(port, body("r"))
    assert result.status == 502 and trio.current_time() - start < 0.9
    assert upstream.models_seen() == ["status-503"]


async def test_failure_after_the_first_byte_is_reported_not_retried(upstream: Upstream) -> None:
    route = RouteConfig("r", ("up/error-mid", "up/text"))
    async with running_gateway(make_config([upstream.provider("up")], [route])) as port:
        result = await post_sse(port, body("r"))
    final = check_events(result.events)
    assert final["status"] == "failed" and final["provider"] == "up"
    assert upstream.models_seen() == ["error-mid"]


async def test_hedge_takes_the_faster_target_and_closes_the_slow_one(upstream: Upstream) -> None:
    route = RouteConfig("h", ("slow/text:ttft=3", "fast/text:tokens=2"), strategy="hedge", hedge_delay=0.2)
    config = make_config([upstream.provider("slow"), upstream.provider("fast")], [route])
    async with running_gateway(config) as port:
        start = trio.current_time()
        result = await post_sse(port, body("h"))
        elapsed = trio.current_time() - start
        await trio.sleep(0.1)
    final = check_events(result.events)
    assert final["provider"] == "fast" and output_text(final) == "tok0 tok1 "
    assert elapsed < 1.5
    assert upstream.models_seen() == ["text:ttft=3", "text:tokens=2"]
    assert len(upstream.mock.stats.disconnects) == 1, "the losing attempt's connection must be closed"


async def test_hedge_with_a_fast_first_target_starts_one_attempt(upstream: Upstream) -> None:
    route = RouteConfig("h", ("a/text:tokens=2", "b/text"), strategy="hedge", hedge_delay=1.0)
    config = make_config([upstream.provider("a"), upstream.provider("b")], [route])
    async with running_gateway(config) as port:
        result = await post_sse(port, body("h"))
    assert check_events(result.events)["provider"] == "a"
    assert upstream.models_seen() == ["text:tokens=2"]


async def test_hedge_replaces_a_failed_attempt_at_once(upstream: Upstream) -> None:
    route = RouteConfig("h", ("a/status-500", "b/text:tokens=1"), strategy="hedge", hedge_delay=5.0)
    config = make_config([upstream.provider("a"), upstream.provider("b")], [route])
    async with running_gateway(config) as port:
        start = trio.current_time()
        result = await post_sse(port, body("h"))
    assert check_events(result.events)["provider"] == "b"
    assert trio.current_time() - start < 2.0


async def test_weighted_spreads_by_weight(upstream: Upstream) -> None:
    route = RouteConfig("w", ("a/text:tokens=1", "b/text:tokens=1"), strategy="weighted", weights=(3.0, 1.0))
    config = make_config([upstream.provider("a"), upstream.provider("b")], [route])
    async with running_gateway(config) as port:
        served = Counter()
        for _ in range(80):
            result = await post_sse(port, body("w"))
            served[check_events(result.events)["provider"]] += 1
    assert served["a"] + served["b"] == 80
    assert 45 <= served["a"] <= 75, served  # expected 60 of 80


async def test_several_keys_share_the_load_by_least_in_flight(upstream: Upstream) -> None:
    provider = upstream.provider("multi", extra_keys=(Secret("sk-second-key-0000"),))
    async with running_gateway(make_config([provider])) as port:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(post_sse, port, body("multi/text:tokens=3,token_delay=0.05"))
    keys = Counter(req.headers["authorization"] for req in upstream.mock.requests)
    assert keys == {"Bearer sk-upstream-test-key": 3, "Bearer sk-second-key-0000": 3}


async def test_cooldown_skips_a_failing_target_then_recovers(upstream: Upstream) -> None:
    route = RouteConfig("c", ("bad/status-500", "good/text:tokens=1"), cooldown_failures=2, cooldown_seconds=0.5)
    config = make_config([upstream.provider("bad"), upstream.provider("good")], [route])
    async with running_gateway(config) as port:
        for _ in range(4):
            assert check_events((await post_sse(port, body("c"))).events)["provider"] == "good"
        assert upstream.models_seen().count("status-500") == 2, "after 2 failures the target cools down"
        await trio.sleep(0.6)
        await post_sse(port, body("c"))
    assert upstream.models_seen().count("status-500") == 3, "after the cooldown it is tried again"


async def test_cooldown_never_rejects_everything(upstream: Upstream) -> None:
    route = RouteConfig("c", ("a/status-500", "b/status-500"), cooldown_failures=1, cooldown_seconds=60)
    config = make_config([upstream.provider("a"), upstream.provider("b")], [route])
    async with running_gateway(config) as port:
        for _ in range(3):
            assert (await post_sse(port, body("c"))).status == 502
    assert len(upstream.models_seen()) == 6, "every request still tries every target"


def test_health_orders_cooling_targets_last_and_recovers() -> None:
    now = [0.0]
    health = Health(clock=lambda: now[0])
    a, b = ProviderConfig(name="a", type="demo"), ProviderConfig(name="b", type="demo")
    endpoint = health.pick(a)
    health.failure(endpoint, threshold=2, seconds=10)
    assert health.order([a, b]) == [0, 1]
    health.failure(endpoint, threshold=2, seconds=10)
    assert health.order([a, b]) == [1, 0]
    now[0] = 10.5
    assert health.order([a, b]) == [0, 1]
    health.success(endpoint)
    assert endpoint.failures == 0 and endpoint.cooled_until == 0

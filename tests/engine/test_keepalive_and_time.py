"""Keepalive comments, and streams longer than any framework default, on real and virtual time."""

from __future__ import annotations

import gc
import json
from typing import Any

import trio
import trio.testing

from streamgw.app.routes import create_app
from streamgw.config import Config, DemoSettings, ProviderConfig, RouteConfig, Timeouts
from streamgw.core.sse import SSEDecoder
from streamgw.testing.harness import post_sse, running_gateway
from streamgw.testing.invariants import check_events, output_text

from .conftest import Upstream, make_config


def body(model: str) -> dict[str, object]:
    return {"model": model, "input": "hello", "stream": True}


async def test_keepalive_while_waiting_for_the_first_token(upstream: Upstream) -> None:
    config = make_config([upstream.provider("up")], keepalive=0.2)
    async with running_gateway(config) as port:
        result = await post_sse(port, body("up/text:ttft=1.0,tokens=2"))
    assert result.status == 200
    assert result.body.startswith(b": keepalive\n\n")
    assert result.comments >= 3
    assert output_text(check_events(result.events)) == "tok0 tok1 "


async def test_keepalive_mid_stream_keeps_the_stream_whole(upstream: Upstream) -> None:
    config = make_config([upstream.provider("up")], keepalive=0.2, idle=5)
    async with running_gateway(config) as port:
        result = await post_sse(port, body("up/text:tokens=3,token_delay=0.7"))
    assert not result.body.startswith(b": keepalive"), "the first token came before the first keepalive"
    assert result.comments >= 4
    assert output_text(check_events(result.events)) == "tok0 tok1 tok2 "


async def test_failure_after_an_early_commit_is_a_complete_failed_stream(upstream: Upstream) -> None:
    config = make_config([upstream.provider("up")], keepalive=0.2, first_token=0.7)
    async with running_gateway(config) as port:
        result = await post_sse(port, body("up/text:ttft=3"))
    assert result.status == 200 and result.comments >= 2
    final = check_events(result.events)
    assert final["status"] == "failed" and final["error"]["code"] == "first_token_timeout"


async def test_keepalive_off_means_no_early_commit(upstream: Upstream) -> None:
    config = make_config([upstream.provider("up")], keepalive=0, first_token=0.5)
    async with running_gateway(config) as port:
        result = await post_sse(port, body("up/text:ttft=3"))
    assert result.status == 504 and result.comments == 0


async def test_route_timeouts_override_keepalive(upstream: Upstream) -> None:
    route = RouteConfig("r", ("up/text:ttft=0.8,tokens=1",), timeouts=(("keepalive", 0.2),))
    async with running_gateway(make_config([upstream.provider("up")], [route], keepalive=0)) as port:
        result = await post_sse(port, body("r"))
    assert result.comments >= 2 and check_events(result.events)["status"] == "completed"


async def test_provider_timeouts_override_keepalive(upstream: Upstream) -> None:
    """``[providers.NAME.timeouts] keepalive`` beats the global one, as every other provider timeout does."""
    provider = upstream.provider("up", timeouts=(("keepalive", 0.2),))
    async with running_gateway(make_config([provider], keepalive=0)) as port:
        result = await post_sse(port, body("up/text:ttft=0.8,tokens=1"))
    assert result.status == 200 and result.body.startswith(b": keepalive\n\n")
    assert result.comments >= 2 and check_events(result.events)["status"] == "completed"


async def test_route_keepalive_overrides_the_providers(upstream: Upstream) -> None:
    """Route over provider over global: a route that turns keepalive off wins over its provider's."""
    provider = upstream.provider("up", timeouts=(("keepalive", 0.2),))
    route = RouteConfig("r", ("up/text:ttft=0.8,tokens=1",), timeouts=(("keepalive", 0.0),))
    async with running_gateway(make_config([provider], [route], keepalive=0.2)) as port:
        result = await post_sse(port, body("r"))
    assert result.comments == 0 and check_events(result.events)["status"] == "completed"


# -- virtual time: the ASGI app driven directly, no sockets ------------------------------------------


async def asgi_post(config: Config, payload: dict[str, Any]) -> tuple[int, bytes]:
    """Run one POST /v1/responses through the ASGI app; return status and body."""
    app = create_app(config)
    data = json.dumps(payload).encode()
    sent_body = False
    status = 0
    chunks: list[bytes] = []
    done = trio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": data, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/responses", "raw_path": b"/v1/responses", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"gw"), (b"content-type", b"application/json"),
                                          (b"content-length", str(len(data)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8080), "extensions": {}}
    await app(scope, receive, send)
    return status, b"".join(chunks)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    decoder = SSEDecoder()
    events = [json.loads(e.data) for e in decoder.feed(raw)]
    decoder.finish()
    return events


def slow_demo(seconds_per_token: float, **timeouts: float) -> Config:
    demo = ProviderConfig(name="demo", type="demo",
                          demo=DemoSettings(first_token_delay=1.0, tokens_per_second=1 / seconds_per_token))
    return Config(providers={"demo": demo}, timeouts=Timeouts(**timeouts))


async def test_a_healthy_stream_longer_than_a_minute_is_not_cut(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    status, raw = await asgi_post(slow_demo(10.0, idle=60, keepalive=15), body("demo/demo"))
    elapsed = trio.current_time() - start
    assert status == 200 and elapsed > 300, f"the demo answer takes several minutes of virtual time ({elapsed})"
    final = check_events(events_of(raw))
    assert final["status"] == "completed" and "hello" in output_text(final)
    assert raw.count(b": keepalive\n\n") == 0, "a token every 10 s needs no 15 s keepalive"


async def test_silences_longer_than_the_keepalive_get_comments(autojump_clock: trio.testing.MockClock) -> None:
    status, raw = await asgi_post(slow_demo(40.0, idle=60, keepalive=15), body("demo/demo"))
    assert status == 200 and raw.count(b": keepalive\n\n") >= 40
    assert check_events(events_of(raw))["status"] == "completed"


async def test_idle_timeout_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    status, raw = await asgi_post(slow_demo(90.0, idle=60, first_token=120, keepalive=0), body("demo/demo"))
    final = check_events(events_of(raw))
    assert status == 200 and final["status"] == "failed"
    assert final["error"]["code"] == "upstream_idle_timeout"


async def test_total_timeout_ends_a_stream_that_keeps_going(autojump_clock: trio.testing.MockClock) -> None:
    status, raw = await asgi_post(slow_demo(10.0, idle=60, total=100, keepalive=0), body("demo/demo"))
    final = check_events(events_of(raw))
    assert status == 200 and final["status"] == "failed" and final["error"]["code"] == "upstream_total_timeout"


async def test_the_idle_timeout_comes_when_the_silence_reaches_it(autojump_clock: trio.testing.MockClock) -> None:
    # first token at 1 s, the next 90 s later: the 60 s idle timeout ends the stream at 61 s, not a period later
    start = trio.current_time()
    status, raw = await asgi_post(slow_demo(90.0, idle=60, first_token=120, keepalive=0), body("demo/demo"))
    elapsed = trio.current_time() - start
    assert status == 200
    assert check_events(events_of(raw))["error"]["code"] == "upstream_idle_timeout"
    assert 60.9 < elapsed < 61.5, elapsed


def deadline_timers() -> int:
    """Tasks named like the engine's stream deadline timer, anywhere in this trio run."""
    found = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found += task.name == "streamgw stream deadlines"
        todo.extend(child for nursery in task.child_nurseries for child in nursery.child_tasks)
    return found


async def test_many_streams_share_one_deadline_timer_that_ends_with_them(
        autojump_clock: trio.testing.MockClock) -> None:
    results: list[tuple[int, bytes]] = []

    async def one(model: str) -> None:
        results.append(await asgi_post(slow_demo(10.0, idle=15, keepalive=0), body(model)))

    assert deadline_timers() == 0
    async with trio.open_nursery() as nursery:
        for _ in range(30):
            nursery.start_soon(one, "demo/demo")
        await trio.sleep(30)
        assert deadline_timers() == 1  # 30 streams, one timer
    # each silent 10 s between tokens, under a 15 s idle timeout: none cut
    assert [check_events(events_of(raw))["status"] for _, raw in results] == ["completed"] * 30
    await trio.sleep(0.5)
    assert deadline_timers() == 1  # it outlives the last stream (a next one would need it again)
    await trio.sleep(15)
    assert deadline_timers() == 0  # and ends by the last stream's idle deadline


async def test_finished_streams_leave_nothing_with_the_keepalive_timer(upstream: Upstream) -> None:
    """A stream's place with the keepalive timer goes once it ends, not an interval after its last write."""
    from streamgw.app.streaming import _Ticket

    def tickets() -> list[_Ticket]:
        gc.collect()
        return [obj for obj in gc.get_objects() if type(obj) is _Ticket]

    config = make_config([upstream.provider("up")], keepalive=30)
    async with running_gateway(config) as port:
        for _ in range(30):
            result = await post_sse(port, body("up/text:tokens=2"))
            assert output_text(check_events(result.events)) == "tok0 tok1 "
        # the last handler ends after its client has read the whole answer: give it a moment (bounded)
        for _ in range(50):
            left = tickets()
            if all(t.exchange is None for t in left):
                break
            await trio.sleep(0.1)
        # released tickets are swept once they are half the heap: at most one is left between sweeps
        assert len(left) <= 1, f"{len(left)} tickets of finished streams kept by the timer"
        assert all(t.exchange is None and t.live is None and t.work is None for t in left)

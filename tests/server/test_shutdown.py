"""Graceful drain on SIGTERM, against ``streamgw serve`` as a real process.

The upstream is the Chat Completions mock; ``text:tokens=N,token_delay=D`` makes a stream last
about N x D seconds.  Times are read on the trio clock on both sides of each event.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest
import trio

from streamgw.app.gateway import Gateway
from streamgw.config import Config, ProviderConfig
from streamgw.core.request import parse_request
from streamgw.engine.attempt import AttemptRecord
from streamgw.engine.drain import GatewayShuttingDown
from streamgw.engine.run import ResponseRun
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import RawClient
from streamgw.testing.invariants import check_events, output_text

from .drain_support import (
    StreamResult,
    closed_by_server,
    config_text,
    get,
    refuses_connections,
    start_serve,
    stream,
    upstream_port,
)

__all__ = ["upstream_port"]  # the fixture, used by name

SHUTDOWN_MESSAGE = "the gateway is shutting down"


async def _start_streams(nursery: trio.Nursery, port: int, model: str, count: int) -> list[StreamResult]:
    """Start ``count`` streams and return once each has received its first event."""
    results: list[StreamResult] = []

    async def one(started: trio.Event) -> None:
        results.append(await stream(port, model, started))

    for _ in range(count):
        started = trio.Event()
        nursery.start_soon(one, started)
        with trio.fail_after(10):
            await started.wait()
    return results


async def test_streams_that_finish_within_the_drain_complete_and_new_connections_are_refused(
    tmp_path: Path, upstream_port: int
) -> None:
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, config_text(upstream_port, drain_timeout=10))
    model = "mock/text:tokens=12,token_delay=0.1"  # about 1.2 s each
    async with trio.open_nursery() as nursery:
        results = await _start_streams(nursery, gw.port, model, 3)
        signalled = gw.terminate()
        await trio.sleep(0.3)
        assert await refuses_connections(gw.port), "a new connection was accepted after SIGTERM"
    status, exited = await gw.wait(15)
    assert status == 0
    assert len(results) == 3
    for result in results:
        final = check_events(result.events)
        assert final["status"] == "completed"
        assert output_text(final) == "".join(f"tok{i} " for i in range(12))
        assert result.ended_at > signalled + 0.3  # they really were in flight at SIGTERM
    # Exit as soon as the last stream ended: well before the 10 s drain deadline.
    assert exited - max(r.ended_at for r in results) < 1.0
    assert exited - signalled < 3.0
    assert "draining: 3 request(s) in flight" in gw.log_text()


async def test_streams_past_the_deadline_end_with_response_failed_and_the_process_exits(
    tmp_path: Path, upstream_port: int
) -> None:
    drain = 1.0
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, config_text(upstream_port, drain_timeout=drain))
    model = "mock/text:tokens=100,token_delay=0.1"  # 10 s: far past the deadline
    collected: list[tuple[int, bytes, dict[str, str], float]] = []

    async def complete() -> None:  # a non-streamed request on the same slow model
        client = await RawClient.connect(gw.port)
        await client.send_json("/v1/responses", {"model": model, "input": "hello"})
        head = await client.response_head()
        body = b""
        while not isinstance(event := await client.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data)
            body += event.data
        headers = {k.decode(): v.decode() for k, v in head.headers}
        collected.append((head.status_code, body, headers, trio.current_time()))
        await client.aclose()

    async with trio.open_nursery() as nursery:
        results = await _start_streams(nursery, gw.port, model, 2)
        nursery.start_soon(complete)
        await trio.sleep(0.3)  # the non-streamed request is waiting on its upstream
        signalled = gw.terminate()
    status, exited = await gw.wait(15)
    assert status == 0
    for result in results:
        final = check_events(result.events)  # still one terminal event, contiguous sequence numbers
        assert result.final["type"] == "response.failed"
        assert final["error"]["code"] == "server_error"
        assert SHUTDOWN_MESSAGE in final["error"]["message"]
        assert output_text(final).startswith("tok0 tok1 ")  # what was streamed before stays
        assert drain - 0.05 <= result.ended_at - signalled <= drain + 0.5
    [(code, body, headers, answered)] = collected
    assert code == 503 and headers["retry-after"] == "1"
    error = json.loads(body)["error"]
    assert error["code"] == "server_error" and SHUTDOWN_MESSAGE in error["message"]
    assert drain - 0.05 <= answered - signalled <= drain + 0.5
    assert exited - signalled < drain + 1.0  # shortly after the deadline, not at the hard cut
    # The streams' runs end at the same deadline: each may be over before the worker counts (its turn comes
    # in any order), the non-streamed answer takes a few more turns.
    assert re.search(r"drain deadline reached: ending [123] request\(s\) still in flight", gw.log_text())


async def test_readyz_answers_503_while_draining_on_a_connection_opened_before(
    tmp_path: Path, upstream_port: int
) -> None:
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, config_text(upstream_port, drain_timeout=10))
    probe = await RawClient.connect(gw.port)  # a load balancer's kept health-check connection
    assert await get(probe, "/readyz") == (200, {"ready": True, "draining": False, "pid": gw.proc.pid})
    async with trio.open_nursery() as nursery:
        results = await _start_streams(nursery, gw.port, "mock/text:tokens=10,token_delay=0.1", 1)
        signalled = gw.terminate()
        await trio.sleep(0.2)
        assert await get(probe, "/readyz") == (503, {"ready": False, "draining": True, "pid": gw.proc.pid})
        assert await get(probe, "/healthz") == (200, {"status": "ok"})  # alive, just not ready
        # Once the stream is done nothing is in flight: the kept connection is closed, the process exits.
        with trio.fail_after(5):
            assert await closed_by_server(probe)
    status, exited = await gw.wait(15)
    await probe.aclose()
    assert status == 0
    assert check_events(results[0].events)["status"] == "completed"
    assert exited - signalled < 3.0


async def test_idle_keepalive_connections_do_not_hold_the_process(tmp_path: Path, upstream_port: int) -> None:
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, config_text(upstream_port, drain_timeout=10))
    used = await RawClient.connect(gw.port)  # served a request, then idle in keep-alive
    assert (await get(used, "/healthz"))[0] == 200
    silent = await RawClient.connect(gw.port)  # connected, never sent anything
    await trio.sleep(0.1)
    signalled = gw.terminate()
    status, exited = await gw.wait(15)
    assert status == 0
    assert exited - signalled < 1.0, "an idle connection held the process"
    assert await closed_by_server(used) and await closed_by_server(silent)
    await used.aclose()
    await silent.aclose()


# -- the engine's drain, in this process: every consumer of a run --------------------------------------


@asynccontextmanager
async def engine(nursery: trio.Nursery) -> AsyncIterator[Gateway]:
    """A gateway's shared state (engine, drain) in front of a mock upstream in this trio run."""
    port = await nursery.start(ChatCompletionsMock().serve)
    nursery.start_soon(_watchdog, 10.0)  # a drain that fails to cut a wait fails the test, not hangs it
    provider = ProviderConfig(name="mock", type="chat", base_url=f"http://127.0.0.1:{port}/v1")
    gw = Gateway(Config(providers={"mock": provider}))
    try:
        yield gw
    finally:
        await gw.clients.aclose()


async def _watchdog(seconds: float) -> None:
    await trio.sleep(seconds)
    raise AssertionError(f"the test took more than {seconds:g} s")


async def open_run(gw: Gateway, model: str, *, stream: bool = True) -> ResponseRun:
    request = parse_request(json.dumps({"model": model, "input": "hello", "stream": stream}).encode())
    return await ResponseRun.open(request, gw.router.plan(request.model), gw.engine)


async def test_a_collected_run_is_cut_at_the_deadline(nursery: trio.Nursery) -> None:
    """``collect`` (stream: false) drives the same loop as a stream: the drain deadline ends it."""
    async with engine(nursery) as gw:
        run = await open_run(gw, "mock/text:tokens=100,token_delay=0.05", stream=False)
        assert gw.drain.watched == 1
        gw.drain.begin(0.3)
        begun = trio.current_time()
        with pytest.raises(GatewayShuttingDown) as caught:
            await run.collect()
        ended = trio.current_time()
    assert caught.value.message == ("the gateway is shutting down and the response did not finish within "
                                    "the 0.3 s drain timeout; retry the request")
    assert run.emitter.response["status"] == "failed"
    assert 0.3 <= ended - begun < 0.6
    assert gw.drain.watched == 0


async def test_a_silent_upstream_is_cut_at_the_deadline_not_at_the_idle_timeout(nursery: trio.Nursery) -> None:
    async with engine(nursery) as gw:
        run = await open_run(gw, "mock/stall")  # one chunk, then silence (idle timeout: 60 s)
        delivered: list[list[dict[str, object]]] = []

        async def deliver(events: list[dict[str, object]]) -> None:
            delivered.append(events)

        async with trio.open_nursery() as inner:
            inner.start_soon(run.stream, deliver)
            await trio.sleep(0.2)  # run.stream is waiting on the upstream now
            gw.drain.begin(0.2)
            begun = trio.current_time()
        ended = trio.current_time()
        await run.aclose()
    assert 0.2 <= ended - begun < 0.5
    assert delivered[-1][-1]["type"] == "response.failed"
    assert check_events(run.initial + [e for batch in delivered for e in batch])["error"]["code"] == "server_error"


async def test_a_delivery_in_progress_is_never_cut(nursery: trio.Nursery) -> None:
    async with engine(nursery) as gw:
        run = await open_run(gw, "mock/text:tokens=100,token_delay=0.02")
        deliveries: list[tuple[float, float, list[dict[str, object]]]] = []

        async def slow_client(events: list[dict[str, object]]) -> None:
            started = trio.current_time()
            if len(deliveries) == 2:
                gw.drain.begin(0.1)
                await trio.sleep(0.4)  # the deadline passes while this batch is being written
            deliveries.append((started, trio.current_time(), events))

        await run.stream(slow_client)
        await run.aclose()
    assert [d[2][-1]["type"] for d in deliveries][-1] == "response.failed"
    started, finished, _ = deliveries[2]
    assert finished - started >= 0.4  # delivered whole, past the deadline
    assert len(deliveries) == 4  # then only the failure: no more upstream reads after the deadline
    final = check_events(run.initial + [e for d in deliveries for e in d[2]])
    assert final["status"] == "failed"


async def test_a_request_still_opening_gets_503(nursery: trio.Nursery) -> None:
    async with engine(nursery) as gw:
        gw.drain.begin(0.2)
        begun = trio.current_time()
        with pytest.raises(GatewayShuttingDown) as raised:
            await open_run(gw, "mock/text:ttft=5")  # no first token for 5 s
        assert 0.2 <= trio.current_time() - begun < 0.5
        assert gw.drain.watched == 0
    error = raised.value
    assert error.status == 503 and error.headers == {"retry-after": "1"}
    assert error.envelope()["error"] == {"message": error.message, "type": "provider_error", "param": None,
                                         "code": "server_error"}


async def test_a_drain_that_begins_while_a_request_opens_cuts_its_wait(nursery: trio.Nursery) -> None:
    """A one-target request waits in its attempt's cancel scope, which the drain lowers like any run's."""
    async with engine(nursery) as gw:
        attempts: list[AttemptRecord] = []
        outcome: list[BaseException] = []

        async def opening() -> None:
            request = parse_request(b'{"model": "mock/text:ttft=5", "input": "hello", "stream": true}')
            try:
                await ResponseRun.open(request, gw.router.plan(request.model), gw.engine, attempts=attempts)
            except GatewayShuttingDown as exc:
                outcome.append(exc)

        async with trio.open_nursery() as inner:
            inner.start_soon(opening)
            await trio.sleep(0.1)  # waiting for the first token now
            assert gw.drain.watched == 1
            gw.drain.begin(0.2)
            begun = trio.current_time()
        assert 0.2 <= trio.current_time() - begun < 0.5
        assert gw.drain.watched == 0
    assert len(outcome) == 1 and outcome[0].status == 503
    assert [a.outcome for a in attempts] == ["cancelled"]


async def test_a_non_streamed_request_cut_by_the_drain_gets_503(nursery: trio.Nursery) -> None:
    async with engine(nursery) as gw:
        run = await open_run(gw, "mock/text:tokens=100,token_delay=0.05", stream=False)
        gw.drain.begin(0.2)
        with pytest.raises(GatewayShuttingDown) as raised:
            await run.collect()
    assert raised.value.status == 503 and "shutting down" in raised.value.message


async def test_a_run_that_ends_before_the_deadline_is_untouched(nursery: trio.Nursery) -> None:
    async with engine(nursery) as gw:
        run = await open_run(gw, "mock/text:tokens=5,token_delay=0.05")
        gw.drain.begin(10)
        deadline = gw.drain.deadline
        gw.drain.begin(0)  # a second signal changes nothing
        assert gw.drain.deadline == deadline
        final = await run.collect()
    assert final["status"] == "completed" and output_text(final) == "tok0 tok1 tok2 tok3 tok4 "
    assert gw.drain.watched == 0

"""The first write carries the response's opening and its first output, even when the first read holds it all.

An upstream that answers at once (a short answer, a cached one, a fast model) lets one socket read carry
the whole stream.  The source translates that read only up to its first delta (in growing slices) and the
run hands its first events over as soon as the first output is translated; the rest of that read follows
as the next delivery, so the client's first token does not wait for the decoding, translation and
encoding of every later one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from streamgw.app.gateway import Gateway
from streamgw.config import Config, ProviderConfig, Timeouts
from streamgw.core.deltas import TextDelta, Usage
from streamgw.core.request import parse_request
from streamgw.core.sse import encode_event
from streamgw.engine.attempt import AttemptRecord, open_attempt
from streamgw.engine.run import ResponseRun
from streamgw.engine.sources import FIRST_SLICE
from streamgw.errors import GatewayError
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.server import Handler, MockRequest, Responder, serve_http
from streamgw.transport.h11pool import FIRST_PIECE

TOKENS = [f"t{i} " for i in range(20)]
_HEAD = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
#: a whole answer: role, 20 content chunks, the finish, usage and [DONE], written with one send
WHOLE = b"".join([
    _HEAD + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
    *(_HEAD + b'"delta":{"content":' + json.dumps(t).encode() + b'},"finish_reason":null}]}\n\n' for t in TOKENS),
    _HEAD + b'"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":20,"total_tokens":23}}\n\n',
    b"data: [DONE]\n\n",
])


async def _at_once(req: MockRequest, send: Responder) -> None:
    await send.start(200, {"content-type": "text/event-stream"})
    await send.end(WHOLE)


@asynccontextmanager
async def _gateway(nursery: trio.Nursery, port: int) -> AsyncIterator[Gateway]:
    gw = Gateway(Config(providers={"up": ProviderConfig(name="up", type="chat",
                                                         base_url=f"http://127.0.0.1:{port}/v1")}))
    try:
        yield gw
    finally:
        await gw.clients.aclose()


async def _run(gw: Gateway, model: str) -> tuple[list[Any], list[list[dict[str, Any]]]]:
    """Open a streamed run; its initial events and each later delivery, as a client would decode them."""
    request = parse_request(json.dumps({"model": model, "input": "hello", "stream": True}).encode())
    run = await ResponseRun.open(request, gw.router.plan(request.model), gw.engine)
    initial = _decoded(run.initial)
    deliveries: list[list[dict[str, Any]]] = []

    async def deliver(events: list[Any]) -> None:
        deliveries.append(_decoded(events))

    try:
        await run.stream(deliver)
    finally:
        await run.aclose()
    return initial, deliveries


def _decoded(events: list[Any]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        data = encode_event(event).split(b"\ndata: ", 1)[1]
        out.append(json.loads(data))
    return out


async def test_a_whole_answer_in_one_read_is_delivered_first_output_first(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_http, _at_once)
    async with _gateway(nursery, port) as gw:
        initial, deliveries = await _run(gw, "up/m")
    assert [e["type"] for e in initial] == ["response.created", "response.in_progress", "response.output_item.added",
                                            "response.content_part.added", "response.output_text.delta"]
    assert initial[-1]["delta"] == TOKENS[0]
    # the rest of the read comes as the next delivery (one write), not a delivery per delta
    assert [e["delta"] for e in deliveries[0] if e["type"] == "response.output_text.delta"] == TOKENS[1:]
    rest = [e for batch in deliveries for e in batch]
    assert rest[-1]["type"] == "response.completed"
    final = check_events(initial + rest)  # one stream: numbered in order, every item opened and closed
    assert output_text(final) == "".join(TOKENS) and final["usage"]["output_tokens"] == 20


async def test_tokens_that_arrive_one_by_one_are_delivered_one_by_one(nursery: trio.Nursery) -> None:
    port = await nursery.start(ChatCompletionsMock().serve)
    async with _gateway(nursery, port) as gw:
        initial, deliveries = await _run(gw, "up/text:tokens=4,token_delay=0.05,ttft=0.05")
    assert initial[-1]["type"] == "response.output_text.delta"
    texts = [[e["delta"] for e in batch if e["type"] == "response.output_text.delta"] for batch in deliveries]
    assert [t for t in texts if t] == [[t] for t in [d for batch in texts for d in batch]]  # one token a write
    assert all(batch for batch in deliveries)  # nothing delivers an empty batch
    final = check_events(initial + [e for batch in deliveries for e in batch])
    assert final["status"] == "completed"


async def test_the_first_read_is_translated_only_up_to_its_first_delta(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_http, _at_once)
    async with _gateway(nursery, port) as gw:
        request = parse_request(json.dumps({"model": "up/m", "input": "hello", "stream": True}).encode())
        opened = await open_attempt(request, gw.router.plan(request.model).targets[0], gw.engine, None)
        try:
            assert len(WHOLE) > 4 * FIRST_SLICE  # one read, several slices
            # the first slice holds the role chunk and the first two tokens: the rest waits, read but not decoded
            assert opened.first == [TextDelta(TOKENS[0]), TextDelta(TOKENS[1])]
            assert opened.source.ready
            rest: list[Any] = []
            while opened.source.ready:  # no upstream read: it was read with the first
                batch = await opened.source.receive()
                assert batch is not None
                rest += batch
            texts = [d.text for d in rest if isinstance(d, TextDelta)]
            assert texts == TOKENS[2:] and isinstance(rest[-1], Usage)
        finally:
            await opened.aclose()


def usage_then_error(padding: int) -> bytes:
    """Usage first (within the first slice), ``padding`` bytes of SSE comments, then an error: all in one read."""
    return (
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":0,"total_tokens":3}}\n\n'
        + b": padding\n" * (padding // 10)
        + b'data: {"error":{"message":"overloaded","type":"server_error","code":"overloaded"}}\n\n'
    )


# the error past the first slice; past the transport's first piece too (the rest is decoded only when asked)
@pytest.mark.parametrize("padding", [FIRST_SLICE, 3 * FIRST_PIECE])
async def test_usage_alone_does_not_end_the_first_read(nursery: trio.Nursery, padding: int) -> None:
    """A failure after usage in the first read is still a failure before any output: an error, not a stream."""
    body = usage_then_error(padding)

    async def usage_then_error_at_once(req: MockRequest, send: Responder) -> None:
        await send.start(200, {"content-type": "text/event-stream"})
        await send.end(body)

    port = await nursery.start(serve_http, usage_then_error_at_once)
    async with _gateway(nursery, port) as gw:
        request = parse_request(json.dumps({"model": "up/m", "input": "hello", "stream": True}).encode())
        assert body.index(b"\n\n") < FIRST_SLICE <= padding < body.index(b'"error"')
        with pytest.raises(GatewayError) as caught:
            await open_attempt(request, gw.router.plan(request.model).targets[0], gw.engine, None)
        assert "overloaded" in str(caught.value)


# -- the first-token deadline: one for the response head and the first delta -----------------------------------

FIRST_TOKEN = 0.4


def _slow(head_after: float, delta_after: float | None) -> Handler:
    """An upstream whose head comes after ``head_after`` s and its first token ``delta_after`` s later (None:
    never)."""
    async def answer(req: MockRequest, send: Responder) -> None:
        await trio.sleep(head_after)
        await send.start(200, {"content-type": "text/event-stream"})
        if delta_after is None:
            await trio.sleep_forever()
        await trio.sleep(delta_after)
        await send.end(WHOLE)
    return answer


@pytest.mark.parametrize(("head_after", "delta_after", "message"), [
    (10.0, None, "sent no response headers within 0.4 s"),
    (0.0, None, "no output from upstream within 0.4 s"),
    (0.25, 0.25, "no output from upstream within 0.4 s"),  # each wait within it, the two together not
])
async def test_one_first_token_deadline_covers_the_head_and_the_first_delta(
        nursery: trio.Nursery, head_after: float, delta_after: float | None, message: str) -> None:
    port = await nursery.start(serve_http, _slow(head_after, delta_after))
    gw = Gateway(Config(providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                                         timeouts=(("first_token", FIRST_TOKEN),))}))
    try:
        request = parse_request(json.dumps({"model": "up/m", "input": "hello", "stream": True}).encode())
        start = trio.current_time()
        with pytest.raises(GatewayError) as caught:
            await open_attempt(request, gw.router.plan(request.model).targets[0], gw.engine, None)
        elapsed = trio.current_time() - start
    finally:
        await gw.clients.aclose()
    assert caught.value.code == "first_token_timeout" and message in str(caught.value)
    assert FIRST_TOKEN <= elapsed < FIRST_TOKEN + 0.3


async def test_a_first_delta_within_the_deadline_opens_the_attempt(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_http, _slow(0.1, 0.1))
    gw = Gateway(Config(providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                                         timeouts=(("first_token", FIRST_TOKEN),))}))
    try:
        request = parse_request(json.dumps({"model": "up/m", "input": "hello", "stream": True}).encode())
        opened = await open_attempt(request, gw.router.plan(request.model).targets[0], gw.engine, None)
        await opened.aclose()
    finally:
        await gw.clients.aclose()
    assert opened.first == [TextDelta(TOKENS[0]), TextDelta(TOKENS[1])]
    headers_at, first_delta_at = opened.record.headers_at, opened.record.first_delta_at
    assert headers_at is not None and first_delta_at is not None
    assert first_delta_at - headers_at >= 0.09  # the head, then the first delta 0.1 s later


async def test_a_providers_own_total_timeout_bounds_the_wait_for_its_first_output(nursery: trio.Nursery) -> None:
    """``[providers.X.timeouts] total`` bounds the whole response, its opening too (it bounded only the stream after
    the first output: a slow opening ran to the first-token timeout, then failed with ``total_timeout``)."""
    port = await nursery.start(serve_http, _slow(10.0, None))
    provider = ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                              timeouts=(("total", 0.3),))
    gw = Gateway(Config(providers={"up": provider}, timeouts=Timeouts(first_token=5.0, total=60.0)))
    try:
        request = parse_request(json.dumps({"model": "up/m", "input": "hello", "stream": True}).encode())
        start = trio.current_time()
        with pytest.raises(GatewayError) as caught:
            await ResponseRun.open(request, gw.router.plan(request.model), gw.engine)
        elapsed = trio.current_time() - start
    finally:
        await gw.clients.aclose()
    assert caught.value.code == "total_timeout"
    assert 0.3 <= elapsed < 0.55


@pytest.mark.parametrize(("total", "first_token", "code"), [
    (0.3, 0.6, "total_timeout"),  # the run's deadline comes first: the run's error, the endpoint not blamed
    (0.6, 0.3, "first_token_timeout"),  # the attempt's comes first: a failure of the endpoint
])
async def test_a_one_target_run_reports_whichever_deadline_came_first(
        nursery: trio.Nursery, total: float, first_token: float, code: str) -> None:
    """One target, one cancel scope for both deadlines (the attempt's): each still ends the wait as its own."""
    port = await nursery.start(serve_http, _slow(10.0, None))
    gw = Gateway(Config(providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1")},
                        timeouts=Timeouts(first_token=first_token, total=total)))
    attempts: list[AttemptRecord] = []
    try:
        request = parse_request(json.dumps({"model": "up/m", "input": "hello", "stream": True}).encode())
        plan = gw.router.plan(request.model)
        start = trio.current_time()
        with pytest.raises(GatewayError) as caught:
            await ResponseRun.open(request, plan, gw.engine, attempts=attempts)
        elapsed = trio.current_time() - start
        [endpoint] = gw.engine.health.endpoints(plan.targets[0].provider)
    finally:
        await gw.clients.aclose()
    assert caught.value.code == code
    assert min(total, first_token) <= elapsed < min(total, first_token) + 0.25
    assert [a.outcome for a in attempts] == ["cancelled" if code == "total_timeout" else code]
    assert endpoint.failures == (0 if code == "total_timeout" else 1) and endpoint.in_flight == 0

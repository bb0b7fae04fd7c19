"""A cleanly finished upstream body is read to its end, so its connection goes back to the pool."""

from __future__ import annotations

from typing import Any

import trio

from streamgw.config import ProviderConfig
from streamgw.testing.harness import post_sse, running_gateway
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.server import MockRequest, MockServerStats, Responder, serve_http

from .conftest import make_config

CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":"hi"},"logprobs":null,"finish_reason":"stop"}],"usage":null}\n\n')


async def late_terminator(req: MockRequest, send: Responder) -> None:
    """Everything up to [DONE] at once; the chunked terminator only a moment later."""
    await send.start(200, [("content-type", "text/event-stream")])
    await send.chunk(CHUNK + b"data: [DONE]\n\n")
    await trio.sleep(0.05)
    await send.end()


async def test_terminator_after_done_keeps_the_connection(nursery: Any) -> None:
    stats = MockServerStats()
    port = await nursery.start(lambda task_status: serve_http(late_terminator, stats=stats, task_status=task_status))
    provider = ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1")
    async with running_gateway(make_config([provider])) as gw_port:
        for _ in range(3):
            result = await post_sse(gw_port, {"model": "up/m", "input": "x", "stream": True})
            assert output_text(check_events(result.events)) == "hi"
    assert stats.requests_served == 3
    assert stats.connections_opened == 1, "the upstream connection must be reused"
    assert stats.disconnects == []

"""The bare trio + h11 proxy the bench measures beside the gateway: a faithful pass-through."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import trio

from bench.bareproxy import BareProxy
from streamgw.testing.chat_mock import ChatCompletionsMock


async def _running(nursery: Any, **knobs: Any) -> tuple[ChatCompletionsMock, str]:
    mock = ChatCompletionsMock(**knobs)
    mock_port = await nursery.start(mock.serve)
    proxy = BareProxy(f"http://127.0.0.1:{mock_port}", "/v1/chat/completions")
    port = await nursery.start(partial(proxy.serve, 0))
    return mock, f"http://127.0.0.1:{port}"


BODY = {"model": "text:tokens=5", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def test_chunks_pass_through_unchanged_on_kept_alive_connections(nursery: Any) -> None:
    mock, url = await _running(nursery)
    async with httpx.AsyncClient(base_url=url) as client:
        streamed = await client.post("/v1/responses", json=BODY)
        direct = await client.post("/v1/responses", json={**BODY, "stream": False})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    datas = [line for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert datas[-1] == "data: [DONE]" and len(datas) >= 7
    assert direct.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
    assert [r.json()["model"] for r in mock.requests] == ["text:tokens=5", "text:tokens=5"]
    assert mock.stats.connections_opened == 1  # the second request reused the upstream connection


async def test_an_upstream_error_status_is_relayed(nursery: Any) -> None:
    _, url = await _running(nursery)
    async with httpx.AsyncClient(base_url=url) as client:
        answer = await client.post("/v1/responses", json={**BODY, "model": "status-503"})
    assert answer.status_code == 503


async def test_a_client_that_leaves_closes_its_upstream(nursery: Any) -> None:
    mock, url = await _running(nursery)
    body = json.dumps({**BODY, "model": "text:tokens=100,token_delay=0.05"}).encode()
    stream = await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))
    await stream.send_all(b"POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (len(body), body))
    assert b"200" in await stream.receive_some(65536)
    await stream.aclose()
    with trio.fail_after(5):
        while not mock.stats.disconnects:  # noqa: ASYNC110 (the mock's stats have no event to wait on)
            await trio.sleep(0.02)
    assert len(mock.requests) == 1 and len(mock.stats.disconnects) == 1

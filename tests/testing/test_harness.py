"""The in-process harness stops the gateway the same way whether the test's block ended or raised."""

from __future__ import annotations

import httpx
import trio

from streamgw.config import Config, ProviderConfig, Secret, StoreConfig
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import running_gateway


class Failed(Exception):
    pass


async def test_a_block_that_raises_still_shuts_the_gateway_down_and_closes_its_upstream_connections(
        nursery: trio.Nursery) -> None:
    mock = ChatCompletionsMock()
    mock_port: int = await nursery.start(mock.serve)
    provider = ProviderConfig(name="mock", type="chat", base_url=f"http://127.0.0.1:{mock_port}/v1",
                              api_key=Secret("sk-upstream-test-key"))
    config = Config(providers={"mock": provider}, store=StoreConfig(backend="none"))
    failed = False
    try:
        async with running_gateway(config) as port:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                answer = await client.post("/v1/responses", json={"model": "mock/text:tokens=2", "input": "hi"})
            assert answer.status_code == 200
            assert mock.stats.connections_open == 1, "the gateway keeps its upstream connection for the next request"
            raise Failed
    except* Failed:
        failed = True
    assert failed
    # The app's shutdown ran (it closes the upstream pool): the mock saw the connection close, nothing was left
    # for the garbage collector to find later (a ResourceWarning that would fail another test).
    for _ in range(500):
        if not mock.stats.connections_open:
            break
        await trio.sleep(0.01)
    assert mock.stats.connections_open == 0

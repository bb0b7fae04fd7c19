"""A provider's connection cap makes requests wait for a free connection; it does not fail them.

A real hypercorn gateway in front of an in-process Chat Completions mock.  With
``max_connections = 1`` and a connect timeout far shorter than one stream, three concurrent
streams must all complete, one after the other (they used to fail with a pool timeout after
the connect timeout); the wait is still bounded by the request's own first-token deadline.
"""

from __future__ import annotations

import trio

from streamgw.config import Config, ProviderConfig, StoreConfig, Timeouts
from streamgw.config_loader import load_config
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import SSEResult, post_sse, running_gateway
from streamgw.testing.invariants import check_events

STREAM = "text:ttft=0.4,tokens=2"  # each stream holds its connection for ~0.4 s


def config(port: int, cap: int, first_token: float = 30.0) -> Config:
    return Config(
        providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1",
                                        max_connections=cap)},
        timeouts=Timeouts(connect=0.1, first_token=first_token),
        store=StoreConfig(backend="none"),
    )


async def concurrent_streams(port: int, count: int) -> list[SSEResult]:
    results: list[SSEResult] = []

    async def one() -> None:
        results.append(await post_sse(port, {"model": f"up/{STREAM}", "input": "hi", "stream": True}))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return results


async def test_at_the_cap_requests_wait_for_a_connection(nursery: trio.Nursery) -> None:
    mock = ChatCompletionsMock()
    port = await nursery.start(mock.serve)
    async with running_gateway(config(port, cap=1)) as gw_port:
        started = trio.current_time()
        results = await concurrent_streams(gw_port, 3)
        elapsed = trio.current_time() - started
    assert [r.status for r in results] == [200, 200, 200], [r.events[-1:] for r in results]
    assert all(check_events(r.events)["status"] == "completed" for r in results)
    assert elapsed >= 3 * 0.4 - 0.05  # they took turns on the one connection
    assert mock.stats.connections_opened == 1  # one connection, reused in turn


async def test_the_wait_is_bounded_by_the_first_token_deadline(nursery: trio.Nursery) -> None:
    mock = ChatCompletionsMock()
    port = await nursery.start(mock.serve)
    async with running_gateway(config(port, cap=1, first_token=0.6)) as gw_port:
        results = await concurrent_streams(gw_port, 3)
    statuses = sorted(r.status for r in results)
    assert statuses[0] == 200  # the first one streams
    assert statuses[-1] == 504  # the last would wait ~0.8 s for its turn: its first-token deadline ends it


def test_no_cap_by_default() -> None:
    assert ProviderConfig(name="p", type="chat").max_connections == 0
    assert load_config(None, env={"OPENAI_API_KEY": "k"}).providers["openai"].max_connections == 0

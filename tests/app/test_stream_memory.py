"""What an open stream keeps while it waits for its upstream (issue 15: memory per open stream).

A stream that is quiet for minutes should hold only what its next events need: not the first events
(their response snapshots and the snapshots' JSON text), not the last batch of deltas and events, not
the upstream's response headers.  The gateway runs in this process, so its live objects can be looked at.
"""

from __future__ import annotations

import gc

import httpx
import trio

from streamgw.config import Config, ProviderConfig, StoreConfig
from streamgw.core.deltas import TextDelta
from streamgw.core.jsontext import Snapshot
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import RawClient, running_gateway

# a token every 2 s: between two of them the stream is quiet
SLOW = {"model": "up/text:tokens=50,token_delay=2", "input": "hi", "stream": True}


def _held() -> dict[str, int]:
    """How many of each kind the process holds (earlier tests may have left some: compare, never expect 0)."""
    gc.collect()
    found = {"snapshots": 0, "text deltas": 0, "text delta events": 0, "upstream headers": 0}
    for o in gc.get_objects():
        kind = type(o)
        if kind is Snapshot:
            found["snapshots"] += 1
        elif kind is TextDelta:
            found["text deltas"] += 1
        elif kind is dict and o.get("type") == "response.output_text.delta" and "sequence_number" in o:
            found["text delta events"] += 1
        elif kind is httpx.Headers and "content-type" in o:
            found["upstream headers"] += 1
    return found


async def test_a_quiet_open_stream_keeps_no_first_events_last_batch_or_upstream_headers(
        nursery: trio.Nursery) -> None:
    mock = ChatCompletionsMock()
    port = await nursery.start(mock.serve)
    config = Config(providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1")},
                    store=StoreConfig(backend="none"))
    async with running_gateway(config) as gw_port:
        before = _held()
        clients = []
        try:
            for _ in range(3):
                client = await RawClient.connect(gw_port)
                await client.send_json("/v1/responses", SLOW)
                clients.append(client)
            for client in clients:
                assert (await client.response_head()).status_code == 200
            # the first events are written with the first token; one more batch goes out ~2 s later, and the
            # one after that is ~2 s further: in between, the stream waits with a batch behind it
            await trio.sleep(3)
            now = _held()
            assert {kind: max(0, count - before[kind]) for kind, count in now.items()} == dict.fromkeys(now, 0)
        finally:
            for client in clients:
                await client.aclose()

"""Backpressure: a slow client slows the upstream read; a client that stops reading cannot grow memory.

The upstream here is a flood: a Chat Completions stream of 1 KB content chunks, written
as fast as its socket takes them, counting what it managed to send.  Between it and the
client there are only socket buffers and one event batch in flight (the pump hands bytes
to the response body over a zero-capacity channel), so what the upstream can send is
bounded by what the client reads.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
import trio

from streamgw.config import ProviderConfig, Secret
from streamgw.core.sse import SSEDecoder
from streamgw.testing.harness import RawClient, running_gateway
from streamgw.testing.invariants import check_events, output_text
from streamgw.testing.server import MockRequest, MockServerStats, Responder, serve_http

from .conftest import make_config

CONTENT = "x" * 1000
_HEAD = (b'data: {"id":"chatcmpl-flood","object":"chat.completion.chunk","created":1,"model":"flood",'
         b'"choices":[{"index":0,')
ROLE = _HEAD + b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
CHUNK = _HEAD + b'"delta":{"content":"' + CONTENT.encode() + b'"},"finish_reason":null}]}\n\n'
FINISH = _HEAD + b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
ENDLESS = 1_000_000  # chunks: a 1.2 GB answer, far more than any test reads
MB = 1024 * 1024


@dataclass
class Progress:
    """What the flood managed to write for one request."""

    chunks: int = 0
    bytes: int = 0
    finished: bool = False
    ended: trio.Event = field(default_factory=trio.Event)  # the handler returned, whatever the reason


@dataclass
class Flood:
    """A Chat Completions upstream whose model ``flood-N`` streams N chunks as fast as it can."""

    stats: MockServerStats = field(default_factory=MockServerStats)
    progress: dict[int, Progress] = field(default_factory=dict)
    port: int = 0

    async def handle(self, req: MockRequest, send: Responder) -> None:
        count = int(req.json()["model"].removeprefix("flood-"))
        progress = self.progress[req.request_id] = Progress()
        try:
            await send.start(200, {"content-type": "text/event-stream"})
            await send.chunk(ROLE)
            for _ in range(count):
                await send.chunk(CHUNK)
                progress.chunks += 1
                progress.bytes += len(CHUNK)
            await send.end(FINISH)
            progress.finished = True
        finally:
            progress.ended.set()

    def provider(self) -> ProviderConfig:
        return ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{self.port}/v1",
                              api_key=Secret("sk-upstream-test-key"))

    def only(self) -> Progress:
        [progress] = self.progress.values()
        return progress


@pytest.fixture
async def flood(nursery: trio.Nursery) -> AsyncIterator[Flood]:
    upstream = Flood()
    upstream.port = await nursery.start(lambda task_status: serve_http(
        upstream.handle, stats=upstream.stats, task_status=task_status))
    yield upstream


async def open_stream(port: int, chunks: int = ENDLESS) -> RawClient:
    """A client that sent its request and read the response head (200), nothing more."""
    client = await RawClient.connect(port)
    await client.send_json("/v1/responses", {"model": f"up/flood-{chunks}", "input": "flood me", "stream": True})
    head = await client.response_head()
    assert head.status_code == 200
    return client


class Reader:
    """Reads a stream ``size`` bytes at a time, ``pause`` seconds apart, counting text deltas."""

    def __init__(self, client: RawClient, size: int, pause: float) -> None:
        self.client = client
        self.size = size
        self.pause = pause
        self.decoder = SSEDecoder()
        self.deltas = 0

    async def run(self) -> None:
        conn = self.client.conn
        while True:
            conn.receive_data(await self.client.stream.receive_some(self.size))
            while isinstance(event := conn.next_event(), h11.Data):
                events = self.decoder.feed(bytes(event.data))
                self.deltas += sum(e.event == "response.output_text.delta" for e in events)
            assert event is h11.NEED_DATA, event
            await trio.sleep(self.pause)


async def read_all(client: RawClient) -> list[dict[str, Any]]:
    """Every event of the rest of the stream."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    while not isinstance(event := await client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        events += [json.loads(sse.data) for sse in decoder.feed(bytes(event.data))]
    return events


async def test_a_client_that_stops_reading_stops_the_upstream(flood: Flood) -> None:
    async with running_gateway(make_config([flood.provider()])) as port:
        client = await open_stream(port)
        await trio.sleep(1.0)
        progress = flood.only()
        stopped_at = progress.bytes
        await trio.sleep(1.0)
        blocked_for_a_second = progress.bytes - stopped_at
        print(f"\nnon-reading client: the upstream sent {stopped_at / MB:.2f} MB, then "
              f"{blocked_for_a_second} bytes in the next second")
        assert 0 < stopped_at < 10 * MB, "only socket buffers' worth got through"
        assert progress.chunks < ENDLESS // 100 and not progress.finished
        assert blocked_for_a_second < 64 * 1024, "the upstream stays blocked while the client does not read"
        await client.aclose()
        with trio.fail_after(1):
            await progress.ended.wait()
    assert not progress.finished
    assert [request_id for request_id, _ in flood.stats.disconnects] == list(flood.progress), "it saw us go"


async def test_the_upstream_follows_a_slow_reader(flood: Flood) -> None:
    window = 2.5
    async with running_gateway(make_config([flood.provider()])) as port:
        # Two streams, one read six times slower than the other (16 KiB every 10 ms / 60 ms).
        readers = [Reader(await open_stream(port), 16384, 0.01), Reader(await open_stream(port), 16384, 0.06)]
        upstreams = list(flood.progress.values())
        pairs = list(zip(readers, upstreams, strict=True))
        async with trio.open_nursery() as nursery:
            for reader in readers:
                nursery.start_soon(reader.run)
            await trio.sleep(1.0)  # the buffers fill, then the pace is the readers'
            start = [(reader.deltas, up.chunks) for reader, up in pairs]
            ahead = 0  # the most chunks an upstream was ahead of its reader
            for _ in range(10):
                await trio.sleep(window / 10)
                ahead = max(ahead, *(up.chunks - reader.deltas for reader, up in pairs))
            rates = [((reader.deltas - read0) / window, (up.chunks - sent0) / window)
                     for (read0, sent0), (reader, up) in zip(start, pairs, strict=True)]
            nursery.cancel_scope.cancel()
        for reader in readers:
            await reader.client.aclose()
    print(f"\nslow readers (chunks/s read, chunks/s sent): fast {rates[0]}, slow {rates[1]}; "
          f"an upstream was at most {ahead} chunks ({ahead * len(CHUNK) / MB:.2f} MB) ahead of its reader")
    assert ahead * len(CHUNK) < 4 * MB, "the upstream is never more than socket buffers ahead of the reader"
    assert rates[1][1] > 0, "the slow reader's upstream still makes progress"
    assert rates[0][1] > 2 * rates[1][1], "a six times slower reader makes its upstream several times slower"


async def test_memory_for_clients_that_stop_reading_is_bounded(flood: Flood) -> None:
    clients: list[RawClient] = []
    async with running_gateway(make_config([flood.provider()])) as port:
        warm_up = await open_stream(port, 10)  # imports, caches, pools
        await read_all(warm_up)
        await warm_up.aclose()
        gc.collect()
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            for _ in range(50):
                clients.append(await open_stream(port))
            await trio.sleep(1.5)
            gc.collect()
            stalled = tracemalloc.get_traced_memory()[0]
            await trio.sleep(1.0)
            gc.collect()
            later = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
            for client in clients:
                await client.aclose()
    sent = sum(p.bytes for p in flood.progress.values()) / 50
    per_stream = (stalled - baseline) / 50
    print(f"\n50 non-reading clients: {per_stream / 1024:.0f} KiB traced per stream (the upstream sent "
          f"{sent / 1024:.0f} KiB each), {(later - stalled) / 1024:.1f} KiB more a second later")
    assert per_stream < 1 * MB, "a stalled stream holds socket-buffer-sized state, not the answer"
    assert later - stalled < 1 * MB, "memory does not grow while the clients do not read"


async def test_a_client_pausing_longer_than_the_idle_timeout_still_gets_the_whole_answer(flood: Flood) -> None:
    """The idle timeout is for a silent upstream, not for a gateway held back by its own client."""
    chunks = 5000  # ~5.6 MB: more than the socket buffers hold, so the upstream must wait for the client
    async with running_gateway(make_config([flood.provider()], idle=0.5)) as port:
        client = await open_stream(port, chunks)
        await trio.sleep(1.5)
        events = await read_all(client)
        await client.aclose()
    final = check_events(events)
    assert final["status"] == "completed", final.get("error")
    assert output_text(final) == CONTENT * chunks
    assert flood.only().finished

"""HTTP/1.1 stream writes: body chunks framed by ``H1OnlyCapableProtocol.write_body`` and written by
``SerialisedTCPServer.send_raw`` without h11's state machine per chunk, and still exactly what h11 frames.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import h11
import pytest
import trio

from streamgw.config import Config, ProviderConfig, Secret
from streamgw.core.sse import SSEDecoder
from streamgw.serving import hypercorn_trio
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import RawClient, running_gateway
from streamgw.testing.invariants import check_events
from streamgw.testing.server import serving_in_thread


@pytest.fixture(scope="module")
def mock_port() -> Iterator[int]:
    upstream = ChatCompletionsMock()
    with serving_in_thread(lambda: upstream.handle) as port:
        yield port


def chat_config(port: int) -> Config:
    return Config(providers={"mock": ProviderConfig(name="mock", type="chat",
                                                    base_url=f"http://127.0.0.1:{port}/v1")})


async def read_stream(client: RawClient, pause: float = 0.0) -> list[dict[str, Any]]:
    """One streamed response read with h11's client (which checks the chunked framing), as events."""
    head = await client.response_head()
    assert head.status_code == 200
    assert (b"transfer-encoding", b"chunked") in head.headers
    if pause:
        await trio.sleep(pause)  # let the server fill the socket
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    while True:
        event = await client.next_event()
        if isinstance(event, h11.Data):
            events += [json.loads(sse.data) for sse in decoder.feed(bytes(event.data))]
        elif isinstance(event, h11.EndOfMessage):
            client.conn.start_next_cycle()
            return events


async def test_body_chunks_bypass_h11_and_the_usual_request_never_meets_it(
        mock_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual request is served without h11 (``LeanH1Protocol``); once a request sends the connection
    hypercorn's way, h11 frames each response's head and end only, and keeps its state across responses."""
    server_sends: list[type] = []
    writes: list[bytes] = []
    h11_send = h11.Connection.send
    send_raw = hypercorn_trio.SerialisedTCPServer.send_raw

    def counting(self: h11.Connection, event: Any) -> bytes | None:
        if self.our_role is h11.SERVER and threading.current_thread() is threading.main_thread():  # not the mock
            server_sends.append(type(event))
        return h11_send(self, event)

    async def recording(self: hypercorn_trio.SerialisedTCPServer, data: bytes) -> None:
        writes.append(bytes(data))
        await send_raw(self, data)

    monkeypatch.setattr(h11.Connection, "send", counting)
    monkeypatch.setattr(hypercorn_trio.SerialisedTCPServer, "send_raw", recording)
    async with running_gateway(chat_config(mock_port)) as port:
        client = await RawClient.connect(port)
        try:
            # the third request's ``Connection: upgrade`` (without an Upgrade) is one the short way declines
            for headers in ({}, {}, {"connection": "keep-alive, upgrade"}, {}):
                body = {"model": "mock/text:tokens=30,token_delay=0.005", "input": "hi", "stream": True}
                await client.send_json("/v1/responses", body, headers)
                events = await read_stream(client)
                check_events(events)
                assert sum(e["type"] == "response.output_text.delta" for e in events) == 30
                if not headers and not server_sends:
                    assert len(writes) >= 10  # paced: most deltas are written one by one
        finally:
            await client.aclose()
    assert len(writes) >= 4 * 10
    # per response on hypercorn's way, whatever the number of chunks: the head and the end
    once = [h11.Response, h11.EndOfMessage]
    assert server_sends == once * 2, [t.__name__ for t in server_sends]


async def test_a_client_slow_to_read_gets_every_byte_in_order(mock_port: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes the socket does not take at once go the shielded ``send_all`` way, in order."""
    queued: list[int] = []
    locked_send = hypercorn_trio.SerialisedTCPServer._locked_send

    async def counting(self: hypercorn_trio.SerialisedTCPServer, data: bytes, lock: trio.Lock) -> None:
        queued.append(len(data))
        await locked_send(self, data, lock)

    monkeypatch.setattr(hypercorn_trio.SerialisedTCPServer, "_locked_send", counting)
    async with running_gateway(chat_config(mock_port)) as port:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        client = RawClient(trio.SocketStream(sock))
        try:
            body = {"model": "mock/text:tokens=3000,token_text=" + "x" * 60, "input": "hi", "stream": True}
            for pause in (1.0, 0.0):
                await client.send_json("/v1/responses", body)
                events = await read_stream(client, pause)
                check_events(events)
                deltas = [e for e in events if e["type"] == "response.output_text.delta"]
                assert len(deltas) == 3000
                assert [e["sequence_number"] for e in events] == list(range(len(events)))
        finally:
            await client.aclose()
    assert queued, "the socket never filled up: the test did not reach the send_all way"


def _tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks)


async def test_an_open_stream_costs_two_tasks(mock_port: int) -> None:
    """The connection's task and the ASGI application's: no watcher per connection or per request
    (disconnects call back; keepalives, stream deadlines and store snapshots come from one timer task each per
    worker)."""
    config = chat_config(mock_port)
    streams = 20
    async with running_gateway(config) as port:
        root = trio.lowlevel.current_root_task()
        await trio.sleep(0.2)
        before = _tasks(root)
        clients = [await RawClient.connect(port) for _ in range(streams)]
        try:
            for client in clients:
                await client.send_json("/v1/responses", {"model": "mock/text:tokens=100,token_delay=0.5",
                                                         "input": "hi", "stream": True})
            for client in clients:
                assert (await client.response_head()).status_code == 200
            await trio.sleep(0.3)
            # - 3: the keepalive, stream-deadline and held-snapshot timers (one task each per worker, while busy)
            per_stream = (_tasks(root) - before - 3) / streams
        finally:
            for client in clients:
                await client.aclose()
    assert per_stream <= 2, per_stream


async def test_a_request_refused_before_its_body_is_read_keeps_its_connection(mock_port: int) -> None:
    """A 401 is written (without a checkpoint) before the server has taken in the request's body, which
    follows its head in a second write as httpx sends it; the connection must still serve the next
    request (hypercorn closes a connection whose request is incomplete when the response ends, and the
    client saw no ``connection: close``)."""
    config = dataclasses.replace(chat_config(mock_port), auth_keys=(Secret("gw-key"),))
    body = json.dumps({"model": "mock/text", "input": "hi"}).encode()
    request = h11.Request(method="POST", target="/v1/responses", headers=[
        ("host", "gateway"), ("content-type", "application/json"), ("content-length", str(len(body)))])
    async with running_gateway(config) as port:
        client = await RawClient.connect(port)
        try:
            for _ in range(20):
                await client.stream.send_all(client.conn.send(request))
                rest = client.conn.send(h11.Data(data=body)) + client.conn.send(h11.EndOfMessage())
                await client.stream.send_all(rest)
                head = await client.response_head()
                assert head.status_code == 401
                while not isinstance(await client.next_event(), h11.EndOfMessage):
                    pass
                client.conn.start_next_cycle()
        finally:
            await client.aclose()

"""HTTP/2 against ``streamgw serve --http2`` as a process: many streams per connection, h2c and TLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from streamgw.testing.process import stop_process

from .serving_support import GatewayProcess, TLSFiles, mock_process, start_serve, tls_files

__all__ = ["mock_process", "tls_files"]  # fixtures, used by name
from .h2client import H2Client, Reply

_STREAM = {"model": "mock/text:tokens=20", "input": "hi", "stream": True}


@pytest.fixture(scope="module", params=["h2c", "tls"])
def gateway(request: pytest.FixtureRequest, mock_process: int, tls_files: TLSFiles,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, ssl.SSLContext | None]]:
    """``streamgw serve --http2`` (plus ``--certfile/--keyfile`` for tls) in front of the mock process."""
    folder: Path = tmp_path_factory.mktemp(f"gw-{request.param}")
    config = (f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{mock_process}/v1"\n'
              'max_connections = 2000\n\n[store]\nbackend = "none"\n')
    args = ["--http2"]
    context = None
    if request.param == "tls":
        args += ["--certfile", str(tls_files.certfile), "--keyfile", str(tls_files.keyfile)]
        context = tls_files.client_context()
    process = start_serve(config, folder, args, verify=tls_files.client_context(("http/1.1",)))
    try:
        yield process, context
    finally:
        stop_process(process.proc)
        log = process.log_text()
        assert "Traceback" not in log and "connection failed" not in log, log[-3000:]


async def test_64_connections_with_10_streams_each(gateway: tuple[GatewayProcess, ssl.SSLContext | None]) -> None:
    process, context = gateway
    replies: list[Reply] = []

    async def one_connection(nursery: trio.Nursery) -> None:
        client = await H2Client.open(nursery, process.port, tls=context)
        try:
            mine = [await client.post("/v1/responses", _STREAM) for _ in range(10)]
            replies.extend(mine)
            for reply in mine:
                await reply.ended.wait()
            assert client.error is None
        finally:
            await client.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as readers:
            async with trio.open_nursery() as connections:
                for _ in range(64):
                    connections.start_soon(one_connection, readers)
            readers.cancel_scope.cancel()
    assert len(replies) == 640
    texts = set()
    for reply in replies:
        final = reply.check()  # 200, text/event-stream, a complete stream that passes every invariant
        texts.add(final["output"][0]["content"][0]["text"])
    assert texts == {"".join(f"tok{i} " for i in range(20))}


async def test_a_stream_the_client_does_not_read_stalls_no_other(
        gateway: tuple[GatewayProcess, ssl.SSLContext | None]) -> None:
    """Per-stream flow control: one unread stream (and one slow upstream) beside streams that finish."""
    process, context = gateway
    async with trio.open_nursery() as nursery:
        client = await H2Client.open(nursery, process.port, tls=context, initial_window=16384)
        try:
            big = await client.post("/v1/responses", {**_STREAM, "model": "mock/text:tokens=400"}, paused=True)
            slow = await client.post("/v1/responses", {**_STREAM, "model": "mock/text:tokens=20,token_delay=0.25"})
            others = [await client.post("/v1/responses", _STREAM) for _ in range(8)]
            with trio.fail_after(20):
                for reply in others:
                    await reply.ended.wait()
                await client.wait_received(16384, big)
            for reply in others:
                reply.check()
            assert not slow.ended.is_set(), "the slow upstream's stream should still be going"
            await client.reset(slow)
            await trio.sleep(0.2)
            assert len(big.body) == 16384 and not big.ended.is_set(), "the unread stream went past its window"
            await client.resume(big)
            with trio.fail_after(20):
                await big.ended.wait()
            big.check()
            assert len(big.body) > 16384
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


async def test_httpx_multiplexes_on_one_connection(gateway: tuple[GatewayProcess, ssl.SSLContext | None]) -> None:
    """A stock client: httpx with ``http2=True`` (prior knowledge on h2c), 10 concurrent streams."""
    process, context = gateway
    scheme = "https" if context else "http"
    limits = httpx.Limits(max_connections=1)
    seen: list[str] = []
    async with httpx.AsyncClient(http2=True, http1=context is not None, verify=context or False,
                                 limits=limits, timeout=30) as client:

        async def one() -> None:
            url = f"{scheme}://127.0.0.1:{process.port}/v1/responses"
            async with client.stream("POST", url, json=_STREAM) as response:
                assert response.status_code == 200
                seen.append(response.http_version)
                body = b"".join([chunk async for chunk in response.aiter_bytes()])
            assert body.rstrip().endswith(b"}") and b"response.completed" in body

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
    assert seen == ["HTTP/2"] * 10


async def test_body_frames_after_the_response_ended_leave_the_connection_up(
        gateway: tuple[GatewayProcess, ssl.SSLContext | None]) -> None:
    """A response complete before the client's last DATA frame: the late frame must not end the connection.

    The first stream's body is sent whole but without END_STREAM; the gateway answers once Content-Length
    bytes are in.  Only then does the client send an empty DATA frame with END_STREAM (as httpx's HTTP/2
    client does), and an extra 10-byte one on a second stream answered 404 before any body.  The same
    connection then serves another stream, and the gateway logs no failed connection (module fixture).
    """
    process, context = gateway
    async with trio.open_nursery() as nursery:
        client = await H2Client.open(nursery, process.port, tls=context)
        try:
            payload = b'{"model":"mock/text:tokens=3","input":"hi","stream":true}'
            sid = client.conn.get_next_available_stream_id()
            first = client.replies[sid] = Reply(sid)
            client.conn.send_headers(sid, [(":method", "POST"), (":scheme", client.scheme),
                                           (":authority", client.authority), (":path", "/v1/responses"),
                                           ("content-type", "application/json"),
                                           ("content-length", str(len(payload)))])
            client.conn.send_data(sid, payload)
            await client.flush()
            missing = client.conn.get_next_available_stream_id()
            gone = client.replies[missing] = Reply(missing)
            client.conn.send_headers(missing, [(":method", "POST"), (":scheme", client.scheme),
                                               (":authority", client.authority), (":path", "/no/such/route"),
                                               ("content-length", "10")])
            await client.flush()
            with trio.fail_after(20):
                await first.ended.wait()
                await gone.ended.wait()
            assert first.status == 200 and gone.status == 404
            for stream_id, data in ((sid, b""), (missing, b"0123456789")):
                if client.conn.streams.get(stream_id) is not None and client.conn.streams[stream_id].open:
                    client.conn.send_data(stream_id, data, end_stream=True)
            await client.flush()
            await trio.sleep(0.3)  # the late frames reach the gateway before the next request
            with trio.fail_after(20):
                after = await client.post("/v1/responses", _STREAM)
                await after.ended.wait()
            after.check()
            assert client.error is None
        finally:
            await client.aclose()

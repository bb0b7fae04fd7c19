"""HTTP/1.1 responses: the head leaves in the same write as the first body bytes (one system call less)."""

from __future__ import annotations

import pytest

from streamgw.config import Config, DemoSettings, ProviderConfig
from streamgw.serving import hypercorn_trio
from streamgw.testing.harness import RawClient, post_sse, running_gateway
from streamgw.testing.invariants import check_events


def demo_config() -> Config:
    demo = ProviderConfig(name="demo", type="demo", demo=DemoSettings(first_token_delay=0.0))
    return Config(providers={"demo": demo})


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the server makes to a client connection (all of them go through ``send_raw``)."""
    seen: list[bytes] = []
    original = hypercorn_trio.SerialisedTCPServer.send_raw

    async def recording(self: hypercorn_trio.SerialisedTCPServer, data: bytes) -> None:
        seen.append(bytes(data))
        await original(self, data)

    monkeypatch.setattr(hypercorn_trio.SerialisedTCPServer, "send_raw", recording)
    return seen


async def test_stream_head_and_first_events_are_one_write(writes: list[bytes]) -> None:
    async with running_gateway(demo_config()) as port:
        result = await post_sse(port, {"model": "demo/demo", "input": "hello", "stream": True})
    check_events(result.events)
    heads = [w for w in writes if w.startswith(b"HTTP/1.1 ")]
    assert len(heads) == 1
    head = heads[0]
    assert b"\r\n\r\n" in head and b"event: response.created" in head.split(b"\r\n\r\n", 1)[1]


async def test_empty_and_json_bodies_are_written_with_their_head(writes: list[bytes]) -> None:
    async with running_gateway(demo_config()) as port:
        result = await post_sse(port, {"model": "demo/demo", "input": "hello"})  # non-streamed JSON
        assert result.status == 200
        client = await RawClient.connect(port)
        try:
            await client.send_json("/v1/responses", {"model": "nope/none", "input": "x"})
            head = await client.response_head()
            assert head.status_code == 404
        finally:
            await client.aclose()
    heads = [w for w in writes if w.startswith(b"HTTP/1.1 ")]
    assert len(heads) == 2
    assert all(w.split(b"\r\n\r\n", 1)[1].startswith(b"{") for w in heads), heads


async def test_last_events_and_the_end_of_the_body_are_one_write(writes: list[bytes]) -> None:
    async with running_gateway(demo_config()) as port:
        result = await post_sse(port, {"model": "demo/demo", "input": "hello", "stream": True})
        check_events(result.events)
        client = await RawClient.connect(port)  # the connection is kept: the body ended as h11 frames it
        try:
            await client.send_json("/v1/responses", {"model": "demo/demo", "input": "again", "stream": True})
            head = await client.response_head()
            assert head.status_code == 200
        finally:
            await client.aclose()
    ends = [w for w in writes if w.endswith(b"\r\n0\r\n\r\n")]
    assert ends and b"event: response.completed" in ends[0], writes[-3:]
    assert b"0\r\n\r\n" not in writes  # never the terminator alone


async def test_a_json_answer_makes_no_empty_write(writes: list[bytes]) -> None:
    async with running_gateway(demo_config()) as port:
        result = await post_sse(port, {"model": "demo/demo", "input": "hello"})  # non-streamed JSON
        assert result.status == 200
    assert b"" not in writes


def test_the_date_header_is_formatted_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    import hypercorn.config

    formatted: list[float] = []
    original = hypercorn.config.format_date_time

    def counting(when: float) -> str:
        formatted.append(when)
        return original(when)

    monkeypatch.setattr(hypercorn.config, "format_date_time", counting)
    config = hypercorn_trio.GatewayHypercornConfig()
    first = config.response_headers("h11")
    for _ in range(50):
        again = config.response_headers("h11")
        again.append((b"x", b"y"))  # a caller's changes stay its own
    assert again[:-1] == first or len(formatted) == 2  # a second boundary may pass once
    assert [name for name, _ in first] == [b"date", b"server"]
    assert first[1] == (b"server", b"hypercorn-h11")
    assert len(formatted) <= 2
    assert config.response_headers("h2")[1] == (b"server", b"hypercorn-h2")

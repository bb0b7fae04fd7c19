"""The trio RESP client: the sans-IO parser fed in every split, and the client against a real redis-server."""

from __future__ import annotations

import socket

import pytest
import trio

from streamgw.store.resp import (
    NEED_DATA,
    RedisClient,
    RedisURL,
    RespError,
    RespParser,
    RespProtocolError,
    encode_command,
)

REPLIES = (
    b"+OK\r\n-ERR wrong type\r\n:42\r\n:-7\r\n$5\r\nhello\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n"
    b"*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n+PONG\r\n$6\r\na\r\nb\r\n\r\n"
)
EXPECTED = ["OK", RespError("ERR wrong type"), 42, -7, b"hello", b"", None, None, [], [b"foo", [1, None], "PONG"],
            b"a\r\nb\r\n"]


def _drain(parser: RespParser) -> list[object]:
    out: list[object] = []
    while (reply := parser.next_reply()) is not NEED_DATA:
        out.append(reply)
    return out


def _check_same(got: list[object]) -> None:
    assert [str(x) if isinstance(x, RespError) else x for x in got] == [
        str(x) if isinstance(x, RespError) else x for x in EXPECTED
    ]
    assert isinstance(got[1], RespError)


def test_encode_command() -> None:
    assert encode_command("SET", "k", b"v\r\n", 5) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n5\r\n"
    assert encode_command("PING") == b"*1\r\n$4\r\nPING\r\n"


def test_parser_whole_and_one_byte_at_a_time() -> None:
    whole = RespParser()
    whole.feed(REPLIES)
    _check_same(_drain(whole))
    parser = RespParser()
    got: list[object] = []
    for i in range(len(REPLIES)):
        parser.feed(REPLIES[i : i + 1])
        got += _drain(parser)
    _check_same(got)


def test_parser_split_at_every_offset() -> None:
    for cut in range(len(REPLIES) + 1):
        parser = RespParser()
        parser.feed(REPLIES[:cut])
        got = _drain(parser)
        parser.feed(REPLIES[cut:])
        _check_same(got + _drain(parser))


def test_parser_rejects_what_is_not_resp() -> None:
    parser = RespParser()
    parser.feed(b"?what\r\n")
    with pytest.raises(RespProtocolError):
        parser.next_reply()


def test_parser_compacts_a_long_stream() -> None:
    parser = RespParser()
    big = b"$70000\r\n" + b"x" * 70000 + b"\r\n"
    for _ in range(3):
        parser.feed(big)
        assert parser.next_reply() == b"x" * 70000
    assert len(parser._buf) < 3 * len(big)


def test_url_parsing() -> None:
    assert RedisURL.parse("redis://127.0.0.1:6380/2") == RedisURL("127.0.0.1", 6380, 2, None, None)
    assert RedisURL.parse("redis://:s%40cret@cache") == RedisURL("cache", 6379, 0, None, "s@cret")
    assert RedisURL.parse("redis://me:pw@cache:1/0").username == "me"
    with pytest.raises(ValueError):
        RedisURL.parse("rediss://cache")


async def test_pipeline_against_a_real_server(redis_url: str) -> None:
    client = RedisClient(redis_url)
    try:
        replies = await client.pipeline([["SET", "resp-test:a", b"\x00\xffbinary"], ["GET", "resp-test:a"],
                                         ["GET", "resp-test:missing"], ["INCR", "resp-test:a"]])
        assert replies[:3] == ["OK", b"\x00\xffbinary", None]
        assert isinstance(replies[3], RespError)
        with pytest.raises(RespError):
            await client.execute("INCR", "resp-test:a")
        assert await client.execute("DEL", "resp-test:a") == 1
    finally:
        await client.aclose()


async def test_many_tasks_share_the_pool(redis_url: str) -> None:
    client = RedisClient(redis_url, max_connections=4)
    results: dict[int, object] = {}

    async def one(i: int) -> None:
        await client.execute("SET", f"resp-test:n{i}", i)
        results[i] = await client.execute("GET", f"resp-test:n{i}")

    try:
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(one, i)
        assert results == {i: str(i).encode() for i in range(100)}
        assert len(client._idle) <= 4
    finally:
        await client.aclose()


async def test_unreachable_server_fails_fast_afterwards() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        client = RedisClient(f"redis://127.0.0.1:{port}/0", timeout=1.0, retry_after=30.0)
        with pytest.raises(OSError):
            await client.execute("PING")
        started = trio.current_time()
        with pytest.raises(ConnectionRefusedError, match="a moment ago"):
            await client.execute("PING")
        assert trio.current_time() - started < 0.1


async def test_a_silent_server_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]  # accepts (backlog) but never answers
        client = RedisClient(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        with pytest.raises(trio.TooSlowError):
            await client.execute("PING")
        assert client._idle == [], "a connection that timed out mid-reply is never reused"

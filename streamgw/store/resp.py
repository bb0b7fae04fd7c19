"""A small Redis client that runs under trio: RESP2 over ``trio.SocketStream``, pipelined, pooled.

``RespParser`` is sans-IO (feed bytes, take replies, h11 style), so it is tested byte by
byte.  ``RedisClient`` keeps a few idle connections, sends a whole pipeline in one write
and reads its replies, all under one deadline.  A connection that failed, timed out or was
cancelled mid-reply is closed, never reused.  After a failed connect the client fails fast
for ``retry_after`` seconds instead of making every caller wait for the same timeout.

Why not the ``redis`` package: its asyncio client does not run under trio, and its sync
client in worker threads costs a thread hop per call (README, "Stored responses", has the
measurement; ``bench/redis_clients.py`` repeats it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeAlias

import trio

from streamgw.config import RedisURL

__all__ = ["FAILURES", "NEED_DATA", "RedisClient", "RedisURL", "RespError", "RespParser", "RespProtocolError",
           "encode_command", "failures_as"]

Arg: TypeAlias = bytes | str | int | float
Reply: TypeAlias = "bytes | str | int | list[Reply] | RespError | None"


class RespError(Exception):
    """An error reply from the server (``-ERR ...``)."""


class RespProtocolError(Exception):
    """The server sent something that is not RESP."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: what ``RespParser.next_reply`` returns until a whole reply is buffered
NEED_DATA = _NeedData()


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg(arg)
        parts += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(parts)


class RespParser:
    """RESP2 replies out of a byte stream fed in any split."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def next_reply(self) -> Reply | _NeedData:
        """The next complete reply (an error reply as a ``RespError`` value), or ``NEED_DATA``."""
        parsed = self._parse(self._pos)
        if parsed is None:
            return NEED_DATA
        reply, self._pos = parsed
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]  # compact now and then, not after every reply
            self._pos = 0
        return reply

    def _line(self, pos: int) -> tuple[bytes, int] | None:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            return None
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Reply, int] | None:
        line = self._line(pos + 1) if pos < len(self._buf) else None
        if line is None:
            return None
        kind, (text, after) = self._buf[pos : pos + 1], line
        if kind == b"+":
            return text.decode(), after
        if kind == b"-":
            return RespError(text.decode(errors="replace")), after
        if kind == b":":
            return int(text), after
        if kind == b"$":
            return self._bulk(int(text), after)
        if kind == b"*":
            return self._array(int(text), after)
        raise RespProtocolError(f"unexpected RESP type byte {bytes(kind)!r}")

    def _bulk(self, size: int, pos: int) -> tuple[Reply, int] | None:
        if size < 0:
            return None, pos
        if len(self._buf) < pos + size + 2:
            return None
        return bytes(self._buf[pos : pos + size]), pos + size + 2

    def _array(self, count: int, pos: int) -> tuple[Reply, int] | None:
        if count < 0:
            return None, pos
        items: list[Reply] = []
        for _ in range(count):
            parsed = self._parse(pos)
            if parsed is None:
                return None
            item, pos = parsed
            items.append(item)
        return items, pos


class _Connection:
    """One socket and its parser."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = RespParser()

    async def roundtrip(self, payload: bytes, replies: int) -> list[Reply]:
        """Send a pipeline, read its ``replies`` replies."""
        await self.stream.send_all(payload)
        out: list[Reply] = []
        while len(out) < replies:
            reply = self.parser.next_reply()
            if isinstance(reply, _NeedData):
                data = await self.stream.receive_some(65536)
                if not data:
                    raise trio.BrokenResourceError("redis closed the connection")
                self.parser.feed(data)
                continue
            out.append(reply)
        return out


class RedisClient:
    """Pipelined commands over a small pool of trio connections."""

    def __init__(self, url: str, *, max_connections: int = 8, timeout: float = 2.0,
                 retry_after: float = 1.0) -> None:
        self.url = RedisURL.parse(url)
        self._timeout = timeout
        self._retry_after = retry_after
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[_Connection] = []
        self._down_until = 0.0

    async def execute(self, *args: Arg) -> Reply:
        """One command; an error reply is raised as ``RespError``."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Arg]]) -> list[Reply]:
        """Several commands in one round trip; error replies come back in place, as ``RespError`` values.

        Raises ``OSError``, ``trio.BrokenResourceError``, ``trio.TooSlowError`` or
        ``RespProtocolError`` when the server cannot be reached or answered badly.
        """
        payload = b"".join(encode_command(*command) for command in commands)
        # The deadline covers the wait for a pooled connection too: with a server that hangs, every
        # connection is busy timing out, and a caller queued behind them must not wait longer.
        with trio.fail_after(self._timeout):
            async with self._limiter:
                conn = self._idle.pop() if self._idle else await self._connect()
                try:
                    replies = await conn.roundtrip(payload, len(commands))
                except BaseException:
                    await trio.aclose_forcefully(conn.stream)
                    raise
        self._idle.append(conn)
        return replies

    async def aclose(self) -> None:
        """Close the idle connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await trio.aclose_forcefully(conn.stream)

    async def _connect(self) -> _Connection:
        if time.monotonic() < self._down_until:
            raise ConnectionRefusedError(f"redis at {self.url.host}:{self.url.port} was unreachable a moment ago")
        try:
            stream = await trio.open_tcp_stream(self.url.host, self.url.port)
        except OSError:
            self._down_until = time.monotonic() + self._retry_after
            raise
        conn = _Connection(stream)
        try:
            await self._handshake(conn)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return conn

    async def _handshake(self, conn: _Connection) -> None:
        commands: list[bytes] = []
        if self.url.password is not None:
            auth = (self.url.username, self.url.password) if self.url.username else (self.url.password,)
            commands.append(encode_command("AUTH", *auth))
        if self.url.db:
            commands.append(encode_command("SELECT", self.url.db))
        if commands:
            for reply in await conn.roundtrip(b"".join(commands), len(commands)):
                if isinstance(reply, RespError):
                    raise reply


#: what a Redis round trip can fail with: the connection, its timeout, or the server's answer
FAILURES: tuple[type[BaseException], ...] = (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                                             trio.TooSlowError, RespError, RespProtocolError, ValueError)


@contextmanager
def failures_as(error: Callable[[str], Exception], message: str) -> Iterator[None]:
    """Re-raise a Redis failure (``FAILURES``) as ``error(message + ": " + the cause)``."""
    try:
        yield
    except FAILURES as exc:
        raise error(f"{message}: {str(exc) or type(exc).__name__}") from exc


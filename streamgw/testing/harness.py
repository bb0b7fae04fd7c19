"""In-process test harness: the gateway under hypercorn and mock upstreams in the test's own trio run.

Everything shares one clock, so a test can compare when its client closed a socket with
when the mock upstream saw its connection close.  The client is raw trio + h11, so the
test controls exactly when bytes are read and when the connection goes away.

``Transcripts`` replays a stream translator's golden transcripts (whole, byte by byte,
split at every offset, with every line end) against their expected deltas.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, assert_never

import h11
import pytest
import trio
from quart_trio import QuartTrio

from streamgw.app.routes import create_app
from streamgw.config import Config
from streamgw.core.blobs import decode_blob
from streamgw.core.deltas import (
    Delta,
    Finish,
    ReasoningDelta,
    ReasoningSignature,
    RefusalDelta,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    UpstreamFailure,
    Usage,
)
from streamgw.core.sse import SSEDecoder
from streamgw.providers.base import StreamTranslator
from streamgw.serving.main import hypercorn_config, serve_until


@asynccontextmanager
async def running_gateway(config: Config, app: QuartTrio | None = None) -> AsyncIterator[int]:
    """Serve ``config`` on 127.0.0.1 (a free port) until the block exits; yields the port.

    ``app`` (from ``create_app(config)``) lets a test reach the gateway's state while it serves.
    """
    app = create_app(config) if app is None else app
    hc = hypercorn_config(config)  # production settings; only the bind and shutdown differ
    hc.bind = ["127.0.0.1:0"]
    hc.graceful_timeout = 0.5
    stop, stopped = trio.Event(), trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await serve_until(app, hc, shutdown_trigger, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(serve)
        try:
            yield int(binds[0].rsplit(":", 1)[1])
        finally:
            stop.set()
            # A block that raised would cancel the server at once, before the app's shutdown closed its
            # upstream connections (left to the garbage collector, they fail a later test with a
            # ResourceWarning): the server stops the same way whether the block failed or not.
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await stopped.wait()


@dataclass
class SSEResult:
    """What a raw client saw: status, headers, events, keepalive comments, and timing."""

    status: int
    headers: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: int = 0
    body: bytes = b""
    first_event_at: float | None = None


class RawClient:
    """One HTTP/1.1 connection to the gateway, driven by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        """Open a connection to 127.0.0.1:``port``."""
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send_json(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """Send a POST with a JSON body."""
        data = json.dumps(body).encode()
        head = [("host", "gateway"), ("content-type", "application/json"), ("content-length", str(len(data))),
                *(headers or {}).items()]
        await self.stream.send_all(self.conn.send(h11.Request(method="POST", target=path, headers=head))
                                   + self.conn.send(h11.Data(data=data)) + self.conn.send(h11.EndOfMessage()))

    async def next_event(self) -> h11.Event:
        """The next h11 event, reading from the socket as needed."""
        while True:
            event = self.conn.next_event()
            if isinstance(event, h11.Event):
                return event
            self.conn.receive_data(await self.stream.receive_some(65536))

    async def response_head(self) -> h11.Response:
        """Read up to the response headers."""
        event = await self.next_event()
        assert isinstance(event, h11.Response), event
        return event

    async def aclose(self) -> None:
        """Close the connection (the client leaves)."""
        await self.stream.aclose()


async def post_sse(port: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> SSEResult:
    """POST ``body`` to /v1/responses and read the whole answer, decoding SSE when it is a stream."""
    client = await RawClient.connect(port)
    try:
        await client.send_json("/v1/responses", body, headers)
        head = await client.response_head()
        result = SSEResult(head.status_code, {k.decode(): v.decode() for k, v in head.headers})
        decoder = SSEDecoder()
        raw = bytearray()
        while True:
            event = await client.next_event()
            if isinstance(event, h11.Data):
                raw += event.data
                result.comments += event.data.count(b": keepalive\n\n")
                for sse in decoder.feed(bytes(event.data)):
                    if result.first_event_at is None:
                        result.first_event_at = trio.current_time()
                    result.events.append(json.loads(sse.data))
            elif isinstance(event, h11.EndOfMessage):
                break
        result.body = bytes(raw)
        return result
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------ golden transcripts

#: the line ends every transcript is replayed with (NDJSON has no lone CR)
STREAM_LINE_ENDS: Mapping[str, bytes] = MappingProxyType({"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"})
#: the ways a body is cut into chunks: one chunk, one byte each, two chunks at every offset
SPLITS = ("whole", "byte_at_a_time", "every_offset")
MINTED_CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


def encode_delta(delta: Delta, provider: str | None = None) -> list[Any]:
    """A delta in the JSON encoding of the ``.deltas.json`` files.

    With ``provider``, a signature is shown as the blob it decodes to for that provider
    (and must decode).
    """
    match delta:
        case TextDelta(text):
            return ["text", text]
        case RefusalDelta(text):
            return ["refusal", text]
        case ReasoningDelta(text):
            return ["reasoning", text]
        case ReasoningSignature(data):
            if provider is None:
                return ["signature", data]
            decoded = decode_blob(data, provider)
            assert decoded is not None, "a signature blob must be minted for this provider"
            return ["signature", decoded]
        case ToolCallStart(key, call_id, name):
            return ["tool_start", key, call_id, name]
        case ToolCallArgs(key, fragment):
            return ["tool_args", key, fragment]
        case ToolCallEnd(key):
            return ["tool_end", key]
        case Usage():
            return ["usage", {"input_tokens": delta.input_tokens, "output_tokens": delta.output_tokens,
                              "cached_tokens": delta.cached_tokens, "cache_write_tokens": delta.cache_write_tokens,
                              "reasoning_tokens": delta.reasoning_tokens}]
        case Finish(reason):
            return ["finish", reason.value]
        case UpstreamFailure(code, message):
            return ["failure", code, message]
        case _:
            assert_never(delta)


def normalise_minted(value: Any, names: dict[str, str] | None = None) -> Any:
    """Replace each distinct minted call id (values and keys, at any depth) by ``<minted:N>``."""
    names = {} if names is None else names
    if isinstance(value, str) and MINTED_CALL_ID.fullmatch(value):
        return names.setdefault(value, f"<minted:{len(names) + 1}>")
    if isinstance(value, list):
        return [normalise_minted(item, names) for item in value]
    if isinstance(value, dict):
        return {normalise_minted(k, names): normalise_minted(v, names) for k, v in value.items()}
    return value


def chunkings(data: bytes, split: str) -> Iterator[list[bytes]]:
    """``data`` cut the ``split`` way (one of ``SPLITS``), each cut a list of chunks."""
    if split == "whole":
        yield [data]
    elif split == "byte_at_a_time":
        yield [data[i : i + 1] for i in range(len(data))]
    else:
        for offset in range(len(data) + 1):
            yield [data[:offset], data[offset:]]


def _no_invariants(deltas: list[Delta]) -> None:
    return None


@dataclass(frozen=True)
class Transcripts:
    """The golden transcripts of one stream translator.

    ``<folder>/<name><suffix>`` is an upstream body as the upstream sends it (written with LF
    line ends); ``<name>.deltas.json`` the expected deltas (``encode_delta``, minted call ids
    normalised), and other ``<name>.<kind>.json`` files what a test file adds.  ``check``
    replays one transcript with one line end and one way of splitting; every replay must
    give the identical list, and ``invariants`` must hold for it.
    """

    folder: Path
    #: a fresh translator redacting the given secrets
    translator: Callable[[Sequence[str]], StreamTranslator]
    invariants: Callable[[list[Delta]], None] = _no_invariants
    suffix: str = ".sse"
    line_ends: Mapping[str, bytes] = field(default_factory=lambda: dict(STREAM_LINE_ENDS))
    #: decode signature blobs minted for this provider (``encode_delta``)
    provider: str | None = None

    @property
    def names(self) -> list[str]:
        """Every transcript's name, sorted."""
        return sorted(path.name.removesuffix(self.suffix) for path in self.folder.glob(f"*{self.suffix}"))

    def body(self, name: str, line_end: str) -> bytes:
        """The transcript's body with ``line_end`` (a key of ``line_ends``)."""
        data = (self.folder / f"{name}{self.suffix}").read_bytes().replace(b"\r\n", b"\n")
        assert b"\r" not in data, "transcripts are written with LF line ends"
        return data.replace(b"\n", self.line_ends[line_end])

    def expected(self, name: str, kind: str = "deltas") -> Any:
        """The contents of ``<name>.<kind>.json``."""
        return json.loads((self.folder / f"{name}.{kind}.json").read_text(encoding="utf-8"))

    def replay(self, chunks: Iterable[bytes], secrets: Sequence[str] = ()) -> list[Delta]:
        """Feed ``chunks`` to a fresh translator, then finish it."""
        translator = self.translator(secrets)
        out: list[Delta] = []
        for chunk in chunks:
            out += translator.feed(chunk)
        out += translator.finish()
        return out

    def run(self, chunks: Iterable[bytes]) -> Any:
        """Replay ``chunks``, check the invariants, and encode the deltas as the golden files do."""
        deltas = self.replay(chunks)
        self.invariants(deltas)
        return normalise_minted([encode_delta(d, self.provider) for d in deltas])

    def check(self, name: str, line_end: str, split: str) -> None:
        """Every chunking of the transcript (``split``, one of ``SPLITS``) gives the golden deltas."""
        want = self.expected(name)
        for chunks in chunkings(self.body(name, line_end), split):
            assert self.run(chunks) == want, f"{name} ({line_end}) cut into {[len(c) for c in chunks][:3]}..."

    def check_present(self, at_least: int, *kinds: str) -> None:
        """At least ``at_least`` transcripts, each with a ``<name>.<kind>.json`` for every kind."""
        assert len(self.names) >= at_least, self.names
        for name in self.names:
            for kind in kinds or ("deltas",):
                assert (self.folder / f"{name}.{kind}.json").is_file(), (name, kind)

    def golden_test(self) -> Callable[[str, str, str], None]:
        """A pytest test that runs ``check`` for every transcript, line end and split.

        Assign it to a ``test_*`` name in the test module.
        """
        @pytest.mark.parametrize("split", SPLITS)
        @pytest.mark.parametrize("line_end", sorted(self.line_ends))
        @pytest.mark.parametrize("name", self.names)
        def test_golden(name: str, line_end: str, split: str) -> None:
            self.check(name, line_end, split)
        return test_golden

"""``LeanH1Protocol``: the usual HTTP/1.1 request served without h11, byte for byte as hypercorn's way serves it.

Each scenario is a client's bytes (sent in pieces, with pauses) to the production worker, once with the short way
in place and once with hypercorn's HTTP/1.1 protocol alone (``H1OnlyCapableProtocol``, h11): what the client reads
back and what the application is given must be the same.  The scenarios cover the
requests the short way serves (a body in one read or many, keep-alive, pipelining, ``Connection: close``, a head
that trickles in) and those it hands over (a chunked body, ``Expect``, HTTP/1.0, HEAD, a malformed or oversized
head), before and after a request it served on the same connection, and the application's ways to answer (a
stream, a fixed length, no response, too few bytes, 204, ``connection: close``).
"""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import hypercorn.protocol
import pytest
import trio
from hypercorn.config import Config as HypercornConfig

from streamgw.serving import hypercorn_trio
from streamgw.serving.hypercorn_trio import (
    ARRIVED_EXTENSION,
    DISCONNECT_EXTENSION,
    H1OnlyCapableProtocol,
    LeanH1Protocol,
)

from .serving_support import lifespan, worker_serving


class _App:
    """Answers by path; notes what each request brought (its scope's fields, its body messages)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.disconnected = trio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        messages = []
        while scope["path"] != "/stall":
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        path = scope["path"]
        self.seen.append({
            "method": scope["method"], "path": path, "raw_path": scope["raw_path"], "query": scope["query_string"],
            "headers": [tuple(h) for h in scope["headers"]], "version": scope["http_version"],
            "body": b"".join(m.get("body", b"") for m in messages), "ended": messages and messages[-1]["type"],
            # (``streamgw.arrived`` is left out when a request came before the previous response was over: timing)
            "extensions": sorted(set(scope["extensions"]) - {ARRIVED_EXTENSION}), "scheme": scope["scheme"],
        })
        start = {"type": "http.response.start", "status": 200, "headers": [(b"x-path", path.encode())]}
        if path == "/stream":
            await send(start)
            for part in (b"one", b"", b"two", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/none":
            return
        elif path == "/short":
            await send({**start, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"abc", "more_body": False})
        elif path == "/204":
            await send({**start, "status": 204})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/close":
            await send({**start, "headers": [(b"Connection", b"close"), (b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})
        elif path == "/stall":  # answers without reading the body that keeps coming
            await send(start)
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await trio.sleep(0.2)
            await send({"type": "http.response.body", "body": b"last"})
            await trio.sleep(0.1)
        elif path == "/wait":
            await send(start)
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            if (await receive())["type"] == "http.disconnect":
                self.disconnected.set()
        else:
            body = json.dumps({"n": len(self.seen)}).encode()
            await send({**start, "headers": [*start["headers"], (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})


def _serving(app: _App) -> AbstractAsyncContextManager[int]:
    def tweak(hc: HypercornConfig) -> None:
        hc.h11_max_incomplete_size = 2048
        hc.include_date_header = False  # the two ways' answers compare byte for byte (HTTP/2's HPACK too)

    return worker_serving(app, tweak)


def _head(path: bytes, length: int, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: t\r\n%bcontent-length: %d\r\n\r\n" % (path, extra, length)


def _post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return _head(path, len(body), extra) + body


_GET = b"GET /echo?a=1&b=%20x HTTP/1.1\r\nHost: t\r\nX-Multi: one\r\nx-multi: two\r\nx-empty:\r\n\r\n"
_CHUNKED = b"POST /echo HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
_HUGE = b"GET /echo HTTP/1.1\r\nhost: t\r\nx-big: " + b"x" * 3000 + b"\r\n\r\n"

#: name -> the client's sends (bytes, or a float: a pause in seconds)
SCENARIOS: dict[str, list[bytes | float]] = {
    "get": [_GET],
    "post in one read": [_post(b"/echo", b'{"input": "hi"}')],
    "body in pieces": [_head(b"/echo", 9), 0.02, b"abc", 0.02, b"def", 0.02, b"ghi"],
    "head in pieces": [*(bytes([byte]) for byte in _post(b"/echo", b"xy")[:40]), 0.02, _post(b"/echo", b"xy")[40:]],
    "keep-alive": [_post(b"/echo", b"1"), 0.05, _GET, 0.05, _post(b"/stream", b"")],
    "pipelined": [_post(b"/stream", b"a") + _GET + _post(b"/echo", b"b")],
    "pipelined behind a slow body": [_head(b"/echo", 4) + b"ab", 0.02, b"cd" + _GET],
    # (more of the body than its inbox holds, and not all of it: the connection closes once the response ends)
    "a body the application does not read": [_head(b"/stall", 40 * 1000), *[0.005, b"b" * 1000] * 30],
    "connection close": [_post(b"/echo", b"x", b"connection: close\r\n")],
    "connection close on a stream": [_post(b"/stream", b"", b"Connection: Keep-Alive, Close\r\n")],
    "stream": [_post(b"/stream", b"")],
    "no response": [_post(b"/none", b""), 0.05, _GET],
    "too few bytes": [_post(b"/short", b""), 0.05, _GET],
    "204": [_post(b"/204", b"z"), 0.05, _GET],
    "the application closes": [_post(b"/close", b""), 0.05, _GET],
    "chunked body": [_CHUNKED, 0.05, _GET],
    "chunked after a served one": [_GET, 0.05, _CHUNKED, 0.05, _GET],
    "expect 100-continue": [_head(b"/echo", 3, b"expect: 100-continue\r\n"), 0.05, b"abc"],
    "http/1.0": [b"GET /echo HTTP/1.0\r\n\r\n"],
    "head": [b"HEAD /echo HTTP/1.1\r\nhost: t\r\n\r\n", 0.05, _GET],
    "malformed": [b"GET /echo HTTP/1.1\r\nhost: t\r\nbad header\r\n\r\n"],
    "malformed after a served one": [_GET, 0.05, b"GET / HTTP/1.1\r\nhost t\r\n\r\n"],
    "no host": [b"GET /echo HTTP/1.1\r\n\r\n"],
    "folded header": [b"GET /echo HTTP/1.1\r\nhost: t\r\nx-fold: a\r\n  b\r\n\r\n"],
    "both framings": [b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
                      b"3\r\nabc\r\n0\r\n\r\n"],
    "head over the limit": [_HUGE],
    "a head that never ends": [b"GET /echo HTTP/1.1\r\nhost: t\r\n" + b"x-a: b\r\n" * 400],
    "h2c upgrade": [b"GET /echo HTTP/1.1\r\nhost: t\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
                    b"http2-settings: AAMAAABkAAQAAP__\r\n\r\n"],
    "bare line feeds": [b"GET /echo HTTP/1.1\nhost: t\n\n"],
}

async def _exchange(port: int, sends: list[bytes | float]) -> tuple[bytes, bool]:
    """What the server writes back to ``sends``; whether it closed the connection (before 0.5 s without a byte)."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        for send in sends:
            if isinstance(send, float):
                await trio.sleep(send)
                continue
            try:
                await client.send_all(send)
            except trio.BrokenResourceError:  # the server has closed the connection: read what it wrote
                break
        received = b""
        while True:
            with trio.move_on_after(0.5):
                data = await client.receive_some(65536)
                if not data:
                    return received, True
                received += data
                continue
            return received, False


async def test_the_short_way_answers_as_hypercorns_does(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[LeanH1Protocol] = []
    init = LeanH1Protocol.__init__

    def noting(self: LeanH1Protocol, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(LeanH1Protocol, "__init__", noting)
    results: dict[str, dict[str, Any]] = {}
    ports: dict[int, str] = {}

    async def run(way: str, scenario: str, sends: list[bytes | float]) -> None:
        app = _App()
        async with _serving(app) as port:
            if way == "lean":  # (the h11 way's servers, later, may be given a port the lean way's had)
                ports[port] = scenario
            answer, closed = await _exchange(port, sends)
        results.setdefault(scenario, {})[way] = (answer, closed, app.seen)

    hypercorn_trio.install()
    for way, protocol in (("lean", LeanH1Protocol), ("h11", H1OnlyCapableProtocol)):
        # what the next connections are served with, also once each server's config has installed the fixes
        monkeypatch.setattr(hypercorn.protocol, "H11Protocol", protocol)
        patches = tuple((module, name, protocol if name == "H11Protocol" else replacement)
                        for module, name, replacement in hypercorn_trio._PATCHES)
        monkeypatch.setattr(hypercorn_trio, "_PATCHES", patches)
        async with trio.open_nursery() as nursery:  # the scenarios side by side, each with its own server
            for scenario, sends in SCENARIOS.items():
                nursery.start_soon(run, way, scenario, sends)
    assert len(made) == len(SCENARIOS)  # one connection each, the h11 way's made none
    served_short = {ports[protocol.server[1]] for protocol in made if not protocol._hypercorn}
    for scenario, by_way in results.items():
        assert by_way["lean"] == by_way["h11"], scenario
    # the short way served these throughout, and handed the others to h11 at the request it declined
    assert served_short == {"get", "post in one read", "body in pieces", "head in pieces", "keep-alive", "pipelined",
                            "pipelined behind a slow body", "connection close", "connection close on a stream",
                            "stream", "no response", "too few bytes", "204", "the application closes",
                            "a body the application does not read"}
    # a few facts, so that "the same" is not "the same nothing"
    answer, closed, seen = results["keep-alive"]["lean"]
    assert answer.count(b"HTTP/1.1 200 \r\n") == 3 and not closed and len(seen) == 3
    assert b"\r\ntransfer-encoding: chunked\r\n" in answer.lower() and answer.endswith(b"3\r\none\r\n3\r\ntwo\r\n"
                                                                                   b"5\r\nthree\r\n0\r\n\r\n")
    answer, closed, seen = results["body in pieces"]["lean"]
    assert seen[0]["body"] == b"abcdefghi" and seen[0]["ended"] == "http.request"
    assert DISCONNECT_EXTENSION in seen[0]["extensions"]
    answer, closed, seen = results["get"]["lean"]
    assert seen[0]["headers"] == [(b"host", b"t"), (b"x-multi", b"one"), (b"x-multi", b"two"), (b"x-empty", b"")]
    assert (seen[0]["query"], seen[0]["raw_path"], seen[0]["method"]) == (b"a=1&b=%20x", b"/echo", "GET")
    answer, closed, seen = results["pipelined"]["lean"]
    assert answer.count(b"HTTP/1.1 200") == 3 and [s["path"] for s in seen] == ["/stream", "/echo", "/echo"]
    assert results["connection close"]["lean"][1] and b"\r\nConnection: close\r\n" in results["connection close"][
        "lean"][0]
    assert results["no response"]["lean"][0].startswith(b"HTTP/1.1 500 ") and results["no response"]["lean"][1]
    assert results["too few bytes"]["lean"][1] and len(results["too few bytes"]["lean"][2]) == 1
    # the application that did not read its body returned, and its connection closed (it used to wait on itself)
    assert results["a body the application does not read"]["h11"][1]
    assert results["chunked after a served one"]["lean"][0].count(b"HTTP/1.1 200") == 3
    assert results["malformed"]["lean"][0].startswith(b"HTTP/1.1 400")
    # over the size limit: h11 serves a complete head that came in one read, and refuses one still incomplete
    assert results["head over the limit"]["lean"][0].startswith(b"HTTP/1.1 200")
    assert results["a head that never ends"]["lean"][0].startswith(b"HTTP/1.1 4")


async def test_a_client_that_leaves_mid_stream_is_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    notices: list[Any] = []
    start = hypercorn_trio.LeanH1Protocol._start

    async def noting(self: LeanH1Protocol, *args: Any) -> None:
        await start(self, *args)
        assert self._exchange is not None
        notices.append(self._exchange.notice)

    monkeypatch.setattr(hypercorn_trio.LeanH1Protocol, "_start", noting)
    app = _App()
    async with _serving(app) as port:
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(_post(b"/wait", b""))
            received = b""
            while b"first" not in received:
                received += await client.receive_some(4096)
        with trio.fail_after(2):
            await app.disconnected.wait()
    (notice,) = notices
    assert notice.closed

"""``streamgw.serving.h1request`` checked against h11 0.16, the HTTP/1.1 implementation it stands in for.

``parse_request_head``
    * every head it accepts, written by hand or generated, is read by an ``h11.Connection(h11.SERVER)`` as the
      same request: method, target, lower-cased headers, body length and whether the connection is kept, and
      the head ends where the parser says (the body after it is left alone);
    * the heads the lean path must leave to h11 are declined: other framings, upgrades, ``Expect``, the lenient
      syntax h11 tolerates (bare LF, folds), what h11 refuses, and heads over the limit.  Next to each, what h11
      itself does with it is pinned down, so the table also says why declining is right;
    * an incomplete head is ``None``, at any length, however it trickles in (the ``searched`` argument);
    * heads generated from usual and nasty pieces never make it raise, and whatever it accepts h11 agrees with.

``response_head``
    the head's bytes, the body's framing and the keep-alive verdict equal what h11 writes and decides for the
    same response after the same request.  On the server the application's headers first pass through
    hypercorn's ``build_and_validate_headers`` (which strips them), so the reference does that too.  What h11
    refuses to send, ``response_head`` refuses with ``ValueError`` (and one thing more, by design: a
    ``Transfer-Encoding`` of the application's).  Where h11 rewrites what it is given (repeated or listed
    ``Content-Length``, ``Host`` written first) the bytes must still be h11's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import cycle
from typing import Any

import h11
import pytest
from h11._readers import ChunkedReader
from hypercorn.utils import build_and_validate_headers
from hypothesis import event, given, settings
from hypothesis import strategies as st

from streamgw.serving.h1request import DECLINED, RequestHead, parse_request_head, response_head

LIMIT = 16 * 1024  # h11's own default max_incomplete_event_size, so both give up at the same size

Headers = list[tuple[bytes, bytes]]
Reading = tuple[bytes, bytes, Headers, int, bool]


# --------------------------------------------------------------------------------------------------- helpers


class H11Incomplete(Exception):
    """h11 waits for more bytes than it was given."""


def _h11_request(data: bytes) -> Reading:
    """How h11's server side reads the one request in ``data`` (its head and whole body, nothing more):
    (method, target, headers, body length, keep alive).

    Raises ``h11.RemoteProtocolError`` where h11 refuses the head, ``H11Incomplete`` where it waits for more,
    and ``AssertionError`` where h11 would not simply serve it (HTTP/1.0, ``Expect: 100-continue``, a protocol
    switch) or leaves bytes of ``data`` unread."""
    conn = h11.Connection(h11.SERVER)
    if data:  # (h11 takes b"" for the end of the stream)
        conn.receive_data(data)
    request = conn.next_event()
    if request is h11.NEED_DATA:
        raise H11Incomplete
    assert isinstance(request, h11.Request)
    assert request.http_version == b"1.1"
    assert not conn.they_are_waiting_for_100_continue
    body_len = 0
    while True:
        part = conn.next_event()
        if part is h11.NEED_DATA:
            raise H11Incomplete
        if isinstance(part, h11.EndOfMessage):
            break
        assert isinstance(part, h11.Data)
        body_len += len(part.data)
    assert conn.their_state in (h11.DONE, h11.MUST_CLOSE)  # not MIGHT_SWITCH_PROTOCOL
    assert conn.trailing_data == (b"", False)
    return request.method, request.target, list(request.headers), body_len, conn._cstate.keep_alive


def _h11_verdict(data: bytes) -> str:
    """What h11's server side makes of ``data``, in a word: ``error``, ``incomplete``, ``chunked`` (a body
    of chunks), ``100-continue`` (it waits for the server's go-ahead), ``switch`` (a protocol switch is
    proposed) or ``served`` (an ordinary request read to its end, whatever its version or method)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        request = conn.next_event()
        if request is h11.NEED_DATA:
            return "incomplete"
        assert isinstance(request, h11.Request)
        if conn.they_are_waiting_for_100_continue:
            return "100-continue"
        if isinstance(conn._reader, ChunkedReader):
            return "chunked"
        while not isinstance(part := conn.next_event(), h11.EndOfMessage):
            if part is h11.NEED_DATA:
                return "incomplete"
    except h11.RemoteProtocolError:
        return "error"
    return "switch" if conn.their_state is h11.MIGHT_SWITCH_PROTOCOL else "served"


def _reading(head: RequestHead) -> Reading:
    return head.method, head.target, head.headers, head.content_length, head.keep_alive


def _accepted(data: bytes, limit: int = LIMIT) -> tuple[RequestHead, int]:
    """``data`` starts with a head the parser accepts, and h11 reads that head and its body the same way."""
    result = parse_request_head(data, limit)
    assert isinstance(result, tuple), result
    head, end = result
    assert isinstance(head, RequestHead)
    assert 0 < end <= len(data)
    assert data[end - 4:end] == b"\r\n\r\n"
    assert _h11_request(data[:end] + b"x" * head.content_length) == _reading(head)
    return head, end


def _outcome(result: Any) -> Any:
    """A parse result in a form ``==`` compares: None, DECLINED, or (reading, end)."""
    if isinstance(result, tuple):
        head, end = result
        return _reading(head), end
    return result


def _parse_in_pieces(data: bytes, sizes: Iterable[int]) -> Any:
    """Feed ``data`` in pieces of the given sizes (cycled), as the server does: the buffer grows, and each call
    after a ``None`` passes ``searched=`` the length of the buffer that call saw.  The first result that is not
    ``None``, or ``None``."""
    buffer = b""
    searched = 0
    pieces = cycle(sizes)
    while len(buffer) < len(data):
        buffer = data[:len(buffer) + next(pieces)]
        result = parse_request_head(buffer, LIMIT, searched)
        if result is not None:
            return _outcome(result)
        searched = len(buffer)
    return None


# ----------------------------------------------------------------------------------- 1. heads it accepts

#: (head, body, what both should read: method, target, headers, body length, keep alive)
ACCEPTED: list[Any] = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", b"",
                 (b"GET", b"/", [(b"host", b"example.com")], 0, True), id="get"),
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 13\r\n\r\n", b'{"a": "b c"}\n',
                 (b"POST", b"/v1/chat/completions",
                  [(b"host", b"gw"), (b"content-type", b"application/json"), (b"content-length", b"13")], 13, True),
                 id="post-with-body"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHOST: gw:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n"
                 b"Authorization: Bearer sk-abc.def\r\nX-Request-Id: 7f3a\r\n\r\n", b"",
                 (b"GET", b"/v1/models",
                  [(b"host", b"gw:8080"), (b"user-agent", b"curl/8.5.0"), (b"accept", b"*/*"),
                   (b"authorization", b"Bearer sk-abc.def"), (b"x-request-id", b"7f3a")], 0, True),
                 id="several-headers"),
    pytest.param(b"PUT /x HTTP/1.1\r\nHost: gw\r\nX-A: one  two\tthree\r\nX-B:\t padded \t \r\nX-C:tight\r\n"
                 b"Content-Length: 0\r\n\r\n", b"",
                 (b"PUT", b"/x",
                  [(b"host", b"gw"), (b"x-a", b"one  two\tthree"), (b"x-b", b"padded"), (b"x-c", b"tight"),
                   (b"content-length", b"0")], 0, True),
                 id="inner-and-outer-whitespace"),
    pytest.param(b"DELETE /r/1 HTTP/1.1\r\nHost: gw\r\nX-Empty:\r\nX-Blank:   \r\n\r\n", b"",
                 (b"DELETE", b"/r/1", [(b"host", b"gw"), (b"x-empty", b""), (b"x-blank", b"")], 0, True),
                 id="empty-values"),
    pytest.param(b"GET /v1/models?limit=10&order=desc&q= HTTP/1.1\r\nHost: gw\r\n\r\n", b"",
                 (b"GET", b"/v1/models?limit=10&order=desc&q=", [(b"host", b"gw")], 0, True), id="query"),
    pytest.param(b"OPTIONS /a%20b/%E2%82%AC?q=%2F%3F#frag HTTP/1.1\r\nHost: gw\r\n\r\n", b"",
                 (b"OPTIONS", b"/a%20b/%E2%82%AC?q=%2F%3F#frag", [(b"host", b"gw")], 0, True),
                 id="percent-encoding"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n", b"",
                 (b"GET", b"/", [(b"host", b"gw"), (b"connection", b"keep-alive")], 0, True), id="keep-alive"),
    pytest.param(b"GET / HTTP/1.1\r\nConnection: close\r\nHost: gw\r\n\r\n", b"",
                 (b"GET", b"/", [(b"connection", b"close"), (b"host", b"gw")], 0, False), id="close"),
    pytest.param(b"PATCH /p HTTP/1.1\r\nHost: gw\r\nconnection: Close, foo\r\nContent-Length: 2\r\n\r\n", b"{}",
                 (b"PATCH", b"/p", [(b"host", b"gw"), (b"connection", b"Close, foo"), (b"content-length", b"2")],
                  2, False), id="close-among-tokens"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive\r\nConnection: foo,close\r\n\r\n", b"",
                 (b"GET", b"/", [(b"host", b"gw"), (b"connection", b"keep-alive"), (b"connection", b"foo,close")],
                  0, False), id="close-in-second-connection-header"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 007\r\n\r\n", b"1234567",
                 (b"POST", b"/", [(b"host", b"gw"), (b"content-length", b"007")], 7, True), id="leading-zeros"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Name: caf\xc3\xa9\x7f\x01\r\n\r\n", b"",
                 (b"GET", b"/", [(b"host", b"gw"), (b"x-name", b"caf\xc3\xa9\x7f\x01")], 0, True),
                 id="obs-text-and-controls-h11-allows"),
    # TE is hop-by-hop but says nothing about this request's framing; h11 reads it as any other header
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nTE: trailers\r\n\r\n", b"",
                 (b"GET", b"/", [(b"host", b"gw"), (b"te", b"trailers")], 0, True), id="te-trailers"),
]


@pytest.mark.parametrize(("head", "body", "expected"), ACCEPTED)
def test_accepted_head_reads_as_h11_reads_it(head: bytes, body: bytes, expected: Reading) -> None:
    after = b"GET /next HTTP/1.1\r\nHo"  # a pipelined request's first bytes
    data = head + body + after
    parsed, end = _accepted(data)
    assert end == len(head)
    assert data[end:] == body + after  # the body and what follows are the caller's to read
    assert _reading(parsed) == expected
    assert _h11_request(head + body) == expected


def test_head_size_limit_is_exact() -> None:
    head = b"GET / HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 40 + b"\r\n\r\n"
    assert isinstance(parse_request_head(head, len(head)), tuple)
    assert parse_request_head(head, len(head) - 1) is DECLINED
    # still incomplete: waits while within the limit, declines beyond it
    assert parse_request_head(head[:-1], len(head) - 1) is None
    assert parse_request_head(head[:-1], len(head) - 2) is DECLINED


# ---------------------------------------------------------------------------------- 2. heads it declines

_TLS_CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))

#: (data, limit, what h11 does with it: see ``_h11_verdict``)
DECLINED_HEADS: list[Any] = [
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", LIMIT,
                 "chunked", id="transfer-encoding-chunked"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", LIMIT,
                 "chunked", id="transfer-encoding-and-content-length"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", LIMIT,
                 "served", id="content-length-twice-same"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", LIMIT,
                 "error", id="content-length-twice-different"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 5, 5\r\n\r\nabcde", LIMIT,
                 "served", id="content-length-list"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: abc\r\n\r\n", LIMIT, "error",
                 id="content-length-not-digits"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: +5\r\n\r\nabcde", LIMIT, "error",
                 id="content-length-plus"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: " + b"1" * 19 + b"\r\n\r\n", LIMIT,
                 "incomplete", id="content-length-19-digits"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n", LIMIT,
                 "100-continue", id="expect-100-continue"),
    pytest.param(b"GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", LIMIT,
                 "switch", id="websocket-upgrade"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\n\r\n", LIMIT, "switch", id="upgrade-h2c"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n\r\n", LIMIT, "served",
                 id="connection-upgrade-alone"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", LIMIT, "served",
                 id="http2-settings"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: one\r\n two\r\n\r\n", LIMIT, "served", id="obs-fold"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: one\r\n\ttwo\r\n\r\n", LIMIT, "served", id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\nHost: gw\nX-A: b\n\n", LIMIT, "served", id="bare-lf-throughout"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\nX-A: b\r\n\r\n", LIMIT, "served", id="one-bare-lf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\n\n", LIMIT, "served", id="bare-lf-blank-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\n\r\n", LIMIT, "served", id="bare-lf-before-blank-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\n\nX-Late: 1\r\n\r\n", LIMIT, "served",
                 id="bare-lf-blank-line-before-crlf-blank-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost : gw\r\n\r\n", LIMIT, "error", id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: b\x00c\r\n\r\n", LIMIT, "error", id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: b\rc\r\n\r\n", LIMIT, "error", id="cr-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: b\x0bc\r\n\r\n", LIMIT, "error", id="vt-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-A: b\r\r\n\r\n", LIMIT, "error", id="cr-before-crlf"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", LIMIT, "error", id="no-host"),
    pytest.param(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", LIMIT, "error", id="no-host-other-headers"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nhost: gw\r\n\r\n", LIMIT, "error", id="two-hosts"),
    pytest.param(b"GET / HTTP/1.0\r\nHost: gw\r\n\r\n", LIMIT, "served", id="http-1.0"),
    pytest.param(b"GET / HTTP/2.0\r\nHost: gw\r\n\r\n", LIMIT, "served", id="http-2.0"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", LIMIT, "served", id="h2-preface"),
    pytest.param(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", LIMIT, "served", id="absolute-form"),
    pytest.param(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", LIMIT, "served", id="asterisk-form"),
    pytest.param(b"HEAD / HTTP/1.1\r\nHost: gw\r\n\r\n", LIMIT, "served", id="head"),
    pytest.param(b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n", LIMIT, "switch", id="connect"),
    pytest.param(b"get / HTTP/1.1\r\nHost: gw\r\n\r\n", LIMIT, "served", id="lowercase-method"),
    pytest.param(b"TRACE / HTTP/1.1\r\nHost: gw\r\n\r\n", LIMIT, "served", id="other-method"),
    pytest.param(b"GET  / HTTP/1.1\r\nHost: gw\r\n\r\n", LIMIT, "error", id="two-spaces-in-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 80 + b"\r\n\r\n", 64, "served",
                 id="complete-head-over-limit"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"p" * 80, 64, "incomplete",
                 id="incomplete-head-over-limit"),
    pytest.param(_TLS_CLIENT_HELLO, LIMIT, "error", id="tls-client-hello"),
    pytest.param(b"\x16\x03\x01", LIMIT, "error", id="tls-record-start"),
    # h11 does not skip a blank line before the request line: it reports "no request line received"
    pytest.param(b"\r\nGET / HTTP/1.1\r\nHost: gw\r\n\r\n", LIMIT, "error", id="leading-crlf"),
    pytest.param(b"\r\n", LIMIT, "error", id="crlf-only"),
    pytest.param(b"\nGET / HTTP/1.1\r\nHost: gw\r\n\r\n", LIMIT, "error", id="leading-lf"),
    pytest.param(b" GET / HTTP/1.1\r\nHost: gw\r\n\r\n", LIMIT, "error", id="leading-space"),
]


@pytest.mark.parametrize(("data", "limit", "h11_verdict"), DECLINED_HEADS)
def test_declined_head(data: bytes, limit: int, h11_verdict: str) -> None:
    assert parse_request_head(data, limit) is DECLINED
    # declining is right: h11 frames it otherwise, refuses it, or reads it by rules the lean path does not apply
    assert _h11_verdict(data) == h11_verdict


@pytest.mark.parametrize(("data", "limit", "h11_verdict"), DECLINED_HEADS)
def test_declined_head_trickling_in_is_never_accepted(data: bytes, limit: int, h11_verdict: str) -> None:
    """Byte by byte, with ``searched``, the same heads end in DECLINED (possibly before they are complete)."""
    buffer = b""
    searched = 0
    result: Any = None
    for size in range(1, len(data) + 1):
        buffer = data[:size]
        result = parse_request_head(buffer, limit, searched)
        if result is not None:
            break
        searched = size
    assert result is DECLINED


def test_nothing_yet_is_incomplete() -> None:
    assert parse_request_head(b"", LIMIT) is None
    assert parse_request_head(b"G", LIMIT) is None


# ------------------------------------------------------------------------------------ 3. incomplete heads

_ACCEPTED_DATA = [pytest.param(p.values[0] + p.values[1], id=p.id) for p in ACCEPTED]


@pytest.mark.parametrize("data", _ACCEPTED_DATA)
def test_every_proper_prefix_is_incomplete(data: bytes) -> None:
    _, end = _accepted(data)
    for size in range(end):
        assert parse_request_head(data[:size], LIMIT) is None, data[:size]


@pytest.mark.parametrize("size", range(1, 8))
@pytest.mark.parametrize("data", _ACCEPTED_DATA)
def test_pieces_with_searched_give_the_same_result(data: bytes, size: int) -> None:
    whole = _outcome(parse_request_head(data, LIMIT))
    assert isinstance(whole, tuple)
    assert _parse_in_pieces(data, [size]) == whole


@pytest.mark.parametrize("data", _ACCEPTED_DATA)
def test_head_end_straddling_two_pieces(data: bytes) -> None:
    whole = _outcome(parse_request_head(data, LIMIT))
    end = whole[1]
    for cut in range(end - 4, end):  # the first piece ends inside the blank line's CRLFCRLF (or just before it)
        assert parse_request_head(data[:cut], LIMIT) is None
        assert _outcome(parse_request_head(data, LIMIT, searched=cut)) == whole


def test_bare_lf_end_straddling_two_pieces_is_declined() -> None:
    data = b"GET / HTTP/1.1\r\nHost: gw\r\n\n"
    for cut in range(len(data) - 3, len(data)):
        assert parse_request_head(data[:cut], LIMIT) is None
        assert parse_request_head(data, LIMIT, searched=cut) is DECLINED
    data = b"GET / HTTP/1.1\r\nHost: gw\n\r\n"
    for cut in range(len(data) - 3, len(data)):
        assert parse_request_head(data[:cut], LIMIT) is None
        assert parse_request_head(data, LIMIT, searched=cut) is DECLINED


# ---------------------------------------------------------------------------- 4. generated request heads

_TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_FIELD_BYTES = list(range(0x21, 0x7F)) + list(range(0x80, 0x100))  # visible ASCII, obs-text: all fine in values
_NASTY_BYTES = [0x00, 0x0D, 0x0A, 0x09, 0x20, 0x0B, 0x0C, 0x7F, 0x16, 0x3A, 0x2C]

_tokens = st.text(_TOKEN_CHARS, min_size=1, max_size=10).map(str.encode)


@st.composite
def _field_values(draw: st.DrawFn) -> bytes:
    """A value h11 accepts: runs of visible bytes (and obs-text) with spaces or tabs between them."""
    runs = draw(st.lists(st.lists(st.sampled_from(_FIELD_BYTES), min_size=1, max_size=6).map(bytes), max_size=4))
    value = runs[0] if runs else b""
    for run in runs[1:]:
        value += draw(st.sampled_from([b" ", b"\t", b"  ", b" \t"])) + run
    return value


@st.composite
def _nasty_values(draw: st.DrawFn) -> bytes:
    value = draw(_field_values())
    at = draw(st.integers(0, len(value)))
    return value[:at] + bytes([draw(st.sampled_from(_NASTY_BYTES))]) + value[at:]


@st.composite
def _targets(draw: st.DrawFn) -> bytes:
    return b"/" + bytes(draw(st.lists(st.integers(0x21, 0x7E), max_size=24)))


#: where a generated head can go wrong (``_request_heads``): one of these is chosen, and sometimes others too
#: ("special", a header that changes how h11 goes on, counts thrice)
_SITES = ("method", "target", "version", "space", "eol", "hosts", "content-length", "content-length-twice",
          "connection", "name", "special", "special", "special", "value", "colon", "fold", "prefix", "insert")
_SPECIAL_HEADERS = [(b"Transfer-Encoding", b"chunked"), (b"transfer-encoding", b"identity"), (b"Upgrade", b"h2c"),
                    (b"upgrade", b"websocket"), (b"Expect", b"100-continue"), (b"expect", b"100-Continue"),
                    (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"), (b"Host", b"other")]


@st.composite
def _request_heads(draw: st.DrawFn, nasty: bool) -> tuple[bytes, bool]:
    """A request head, and whether it is one the parser must accept (built of usual pieces only).

    With ``nasty``, most heads get a nasty piece at one chosen site (where it first occurs, then at each other
    place it occurs on a coin toss), and any piece is nasty with a small chance besides; such a head may or may
    not be one the parser should accept."""
    clean = True
    site = draw(st.sampled_from((*_SITES, None))) if nasty else None
    seen: set[str] = set()

    def pick(where: str, usual: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        nonlocal clean
        if nasty:
            chosen = where == site and (where not in seen or draw(st.booleans()))
            seen.add(where)
            if chosen or draw(st.integers(0, 199)) == 123:  # (hypothesis favours the ends of a range)
                clean = False
                return draw(bad)
        return draw(usual)

    def eol() -> bytes:
        return pick("eol", st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r", b""]))

    method = pick("method", st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"]),
                  st.sampled_from([b"HEAD", b"get", b"Post", b"CONNECT", b"PRI", b"TRACE", b"G\x00T", b""]))
    target = pick("target", _targets(), st.sampled_from([b"*", b"http://x/", b"", b"a", b"/a b", b"/\x7f", b"/\x00",
                                                         b"/caf\xc3\xa9", b"/\t", b"x:443"]))
    version = pick("version", st.just(b"HTTP/1.1"), st.sampled_from([b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9",
                                                                     b"http/1.1", b"HTTP/1.1 ", b"HTTP/1.10",
                                                                     b"HTTP/1", b""]))
    space = pick("space", st.just(b" "), st.sampled_from([b"  ", b"\t", b""]))
    request_line = method + space + target + b" " + version + eol()

    fields: list[tuple[bytes, bytes]] = []  # (name, value) before they are written out
    for _ in range(pick("hosts", st.just(1), st.sampled_from([0, 2, 3]))):
        name = draw(st.sampled_from([b"Host", b"host", b"HOST"]))
        fields.append((name, draw(st.sampled_from([b"gw", b"localhost:8080", b"example.com", b"[::1]:80", b""]))))
    kinds = draw(st.lists(st.sampled_from(["plain", "plain", "content-length", "connection"]), max_size=5))
    if site in ("content-length", "connection"):
        kinds.append(site)
    elif site == "content-length-twice":
        kinds.append("content-length")
    elif site in ("name", "value"):
        kinds.append("plain")
    if "content-length" in kinds:  # one at most, but where the site says otherwise
        kinds = [kind for kind in kinds if kind != "content-length"] + ["content-length"]
        if pick("content-length-twice", st.just(False), st.just(True)):
            kinds.append("content-length")
    if pick("special", st.just(False), st.just(True)):
        fields.append(draw(st.sampled_from(_SPECIAL_HEADERS)))
    for kind in kinds:
        if kind == "content-length":
            name = draw(st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]))
            value = pick("content-length", st.integers(0, 40).map(b"%d".__mod__) | st.sampled_from([b"00", b"007"]),
                         st.sampled_from([b"5, 5", b"+5", b"abc", b"", b"-1", b"0x10", b"1" * 19, b"3 3", b"3,"]))
        elif kind == "connection":
            name = draw(st.sampled_from([b"Connection", b"connection"]))
            value = pick("connection", st.sampled_from([b"keep-alive", b"close", b"Close", b"close, foo", b"Keep-Alive",
                                                        b"foo, CLOSE", b"x-custom", b"", b", ,", b"closed"]),
                         st.sampled_from([b"upgrade", b"Upgrade, close", b"keep-alive, upgrade"]))
        else:
            name = pick("name", st.sampled_from([b"Accept", b"User-Agent", b"content-type", b"Authorization",
                                                 b"Cookie", b"X-Request-Id"]) | _tokens.map(b"x-".__add__),
                        st.sampled_from([b"transfer-encoding", b"upgrade", b"expect", b"te", b"http2-settings", b"host",
                                         b"x foo", b"", b"x\x00", b"caf\xc3\xa9", b"x-foo ", b"\tx"]) | _tokens)
            value = pick("value", _field_values(), _nasty_values())
        fields.append((name, value))
    lines = []
    for name, value in draw(st.permutations(fields)):
        colon = pick("colon", st.sampled_from([b":", b": ", b":\t", b":  "]),
                     st.sampled_from([b" :", b" : ", b"\t:", b""]))
        trailing = draw(st.sampled_from([b"", b" ", b"\t", b" \t"]))
        fold = pick("fold", st.just(b""), st.sampled_from([b" folded", b"\tmore", b" "]).map(lambda f: eol() + f))
        lines.append(name + colon + value + trailing + fold + eol())
    head = request_line + b"".join(lines) + eol()
    head = pick("prefix", st.just(b""), st.sampled_from([b"\r\n", b"\n", b"\x16\x03\x01\x00\xa5", b" "])) + head
    insert = pick("insert", st.just(None), st.tuples(st.integers(0, len(head)), st.sampled_from(_NASTY_BYTES)))
    if insert is not None:
        head = head[:insert[0]] + bytes([insert[1]]) + head[insert[0]:]
    return head, clean


def _check_against_h11(data: bytes) -> Any:
    """Parse ``data`` and check the result against h11: an accepted head h11 reads the same way; an incomplete
    one h11 is still waiting for too.  The parse result (as ``_outcome`` gives it)."""
    result = parse_request_head(data, LIMIT)
    if result is None:
        with pytest.raises(H11Incomplete):  # no blank line for h11 either (nor anything it refuses early)
            _h11_request(data)
    elif result is not DECLINED:
        _, end = _accepted(data)
        assert parse_request_head(data[:end - 1], LIMIT) is None
    return _outcome(result)


@settings(max_examples=300, deadline=None, database=None)
@given(_request_heads(nasty=True), st.binary(max_size=48), st.integers(0, 2**16))
def test_generated_heads_never_disagree_with_h11(generated: tuple[bytes, bool], tail: bytes, cut: int) -> None:
    head, clean = generated
    data = head + tail
    result = _check_against_h11(data)
    if result is None or result is DECLINED:
        event("incomplete" if result is None else "declined")
        assert not clean
    else:
        event("accepted (usual pieces only)" if clean else "accepted (with a nasty piece)")
        if clean:
            assert result[1] == len(head)
    # the same bytes cut short, as they may arrive
    _check_against_h11(data[:cut % (len(data) + 1)])


@settings(max_examples=300, deadline=None, database=None)
@given(_request_heads(nasty=False), st.lists(st.integers(1, 7), min_size=1, max_size=5))
def test_generated_usual_heads_are_all_accepted(generated: tuple[bytes, bool], sizes: list[int]) -> None:
    head, clean = generated
    assert clean
    parsed, end = _accepted(head)
    assert end == len(head)
    data = head + b"b" * parsed.content_length
    assert _outcome(parse_request_head(data, LIMIT)) == (_reading(parsed), end)
    assert _parse_in_pieces(data, sizes) == (_reading(parsed), end)
    for size in range(end):
        assert parse_request_head(head[:size], LIMIT) is None


# ------------------------------------------------------------------------------------------ 5. response_head

SERVER_HEADERS: Headers = [(b"date", b"Mon, 07 Dec 2026 01:00:00 GMT"), (b"server", b"hypercorn-h11")]


def _h11_after_request(keep_alive: bool) -> h11.Connection:
    """h11's server side having read a GET (with ``Connection: close`` unless ``keep_alive``)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: gw\r\n" + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    return conn


def _h11_response(status: int, headers: Sequence[tuple[bytes, bytes]], keep_alive: bool,
                  hypercorn: bool = True) -> tuple[bytes, h11.Connection]:
    """The head h11 writes for the response, and the connection after it.  ``hypercorn``: the headers pass
    through hypercorn's ``build_and_validate_headers`` first (strips each name and value), as the server's do."""
    conn = _h11_after_request(keep_alive)
    if hypercorn:
        headers = build_and_validate_headers(headers)
    return conn.send(h11.Response(status_code=status, headers=headers)), conn


def _either(write: Callable[[], bytes]) -> bytes | str:
    try:
        return write()
    except (ValueError, h11.LocalProtocolError):
        return "refused"


def _check_response(status: int, app_headers: Headers, keep_alive: bool) -> None:
    """``response_head`` and h11 agree on the head, the framing and keeping the connection."""
    headers = [*app_headers, *SERVER_HEADERS]
    head, framing, keep = response_head(status, headers, keep_alive)
    expected, conn = _h11_response(status, headers, keep_alive)
    assert head == expected

    modes = [framing.chunked, framing.none, not framing.chunked and not framing.none]
    assert modes.count(True) == 1
    if framing.chunked or framing.none:
        assert framing.length == 0
    if framing.length > 4096:  # too many bytes to send here: the count h11's body writer starts from
        assert conn._writer._length == framing.length
        return
    body = b"abc" if framing.chunked else b"a" * framing.length
    if body:
        assert conn.send(h11.Data(data=body)) == (b"3\r\nabc\r\n" if framing.chunked else body)
    assert conn.send(h11.EndOfMessage()) == (b"0\r\n\r\n" if framing.chunked else b"")
    assert conn._cstate.keep_alive is keep
    assert conn.our_state is (h11.DONE if keep else h11.MUST_CLOSE)

    if not framing.chunked:  # h11 takes exactly ``length`` bytes: not one more, and not fewer
        conn = _h11_response(status, headers, keep_alive)[1]
        with pytest.raises(h11.LocalProtocolError):
            conn.send(h11.Data(data=b"a" * (framing.length + 1)))
        if framing.length:
            conn = _h11_response(status, headers, keep_alive)[1]
            with pytest.raises(h11.LocalProtocolError):
                conn.send(h11.EndOfMessage())


APP_HEADERS: list[Any] = [
    pytest.param([], id="none"),
    pytest.param([(b"content-type", b"application/json"), (b"content-length", b"3")], id="length"),
    pytest.param([(b"Content-Type", b"text/event-stream"), (b"cache-control", b"no-cache")], id="stream"),
    pytest.param([(b"connection", b"close")], id="app-close"),
    pytest.param([(b"Connection", b"keep-alive, Foo"), (b"content-length", b"3")], id="app-keep-alive-foo"),
    pytest.param([(b"x-a", b"one  two\tthree"), (b"X-Empty", b""), (b"Content-Length", b"0")], id="odd-values"),
    pytest.param([(b"connection", b"Upgrade"), (b"x-a", b"1"), (b"connection", b"CLOSE")], id="two-connections"),
]


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("app_headers", APP_HEADERS)
@pytest.mark.parametrize("status", [200, 201, 204, 304, 401, 404, 500])
def test_response_head_is_h11s(status: int, app_headers: Headers, keep_alive: bool) -> None:
    _check_response(status, app_headers, keep_alive)


def test_response_head_literal_bytes() -> None:
    """Two heads spelled out, so the expectations do not rest on h11 alone."""
    head, framing, keep = response_head(200, [(b"content-type", b"text/plain"), *SERVER_HEADERS], True)
    assert head == (b"HTTP/1.1 200 \r\ncontent-type: text/plain\r\ndate: Mon, 07 Dec 2026 01:00:00 GMT\r\n"
                    b"server: hypercorn-h11\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (framing.chunked, framing.length, framing.none, keep) == (True, 0, False, True)
    head, framing, keep = response_head(404, [(b"Connection", b"keep-alive, Foo"), (b"content-length", b"9"),
                                              *SERVER_HEADERS], False)
    assert head == (b"HTTP/1.1 404 \r\ncontent-length: 9\r\ndate: Mon, 07 Dec 2026 01:00:00 GMT\r\n"
                    b"server: hypercorn-h11\r\nConnection: close\r\nConnection: foo\r\n\r\n")
    assert (framing.chunked, framing.length, framing.none, keep) == (False, 9, False, False)


def test_response_head_strips_names_and_values_as_hypercorn_does() -> None:
    headers = [(b" x-a\t", b" one two \r\n"), (b"content-length", b" 3 ")]
    head = response_head(200, headers, True)[0]
    assert head == b"HTTP/1.1 200 \r\nx-a: one two\r\ncontent-length: 3\r\n\r\n"
    assert head == _h11_response(200, headers, True)[0]
    # h11 alone would refuse the padding; on the server hypercorn strips it before h11 sees it
    with pytest.raises(h11.LocalProtocolError):
        _h11_response(200, headers, True, hypercorn=False)


@st.composite
def _responses(draw: st.DrawFn) -> tuple[int, Headers, bool]:
    status = draw(st.sampled_from([200, 201, 204, 304, 401, 404, 500]) | st.integers(200, 999))
    headers: Headers = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([b"content-type", b"Cache-Control", b"x-request-id", b"Set-Cookie", b"Vary"])
                    | _tokens.map(b"x-".__add__))
        headers.append((name, draw(_field_values())))
    if draw(st.booleans()):  # a Content-Length, maybe repeated or listed (the same value each time)
        value = draw(st.integers(0, 40).map(b"%d".__mod__) | st.sampled_from([b"007", b"0"]))
        for _ in range(draw(st.integers(1, 3))):
            name = draw(st.sampled_from([b"content-length", b"Content-Length"]))
            listed = draw(st.sampled_from([value, value + b", " + value, value + b"," + value + b" ," + value]))
            headers.insert(draw(st.integers(0, len(headers))), (name, listed))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([b"host", b"Host"]))
        headers.insert(draw(st.integers(0, len(headers))), (name, draw(_field_values())))
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([b"connection", b"Connection", b"CONNECTION"]))
        value = draw(st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, Foo", b"Close", b"foo, bar", b"upgrade",
                                      b",", b"", b"x, close ,y"]))
        headers.insert(draw(st.integers(0, len(headers))), (name, value))
    pads = st.sampled_from([b"", b"", b" ", b"\t", b" \r\n"])
    headers = [(draw(pads) + name + draw(pads), draw(pads) + value + draw(pads)) for name, value in headers]
    return status, headers, draw(st.booleans())


@settings(max_examples=300, deadline=None, database=None)
@given(_responses())
def test_generated_responses_are_h11s(response: tuple[int, Headers, bool]) -> None:
    status, headers, keep_alive = response
    _check_response(status, headers, keep_alive)


REFUSED: list[Any] = [
    pytest.param(200, [(b"x foo", b"1")], id="space-in-name"),
    pytest.param(200, [(b"x-a", b"1\r\nX-Injected: 1")], id="crlf-in-value"),
    pytest.param(200, [(b"x-a", b"1\nX-Injected: 1")], id="lf-in-value"),
    pytest.param(200, [(b"x-a", b"a\x00b")], id="nul-in-value"),
    pytest.param(200, [(b"x:a", b"1")], id="colon-in-name"),
    pytest.param(200, [(b":status", b"200")], id="pseudo-header"),
    pytest.param(199, [], id="status-199"),
    pytest.param(100, [], id="status-100"),
    pytest.param(1000, [], id="status-1000"),
    pytest.param(200, [(b"content-length", b"abc")], id="content-length-abc"),
    pytest.param(200, [(b"content-length", b"-1")], id="content-length-negative"),
    pytest.param(200, [(b"content-length", b"")], id="content-length-empty"),
    pytest.param(200, [(b"content-length", b"3"), (b"content-length", b"4")], id="content-lengths-differ"),
]


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize(("status", "app_headers"), REFUSED)
def test_response_head_refuses_what_h11_refuses(status: int, app_headers: Headers, keep_alive: bool) -> None:
    headers = [*app_headers, *SERVER_HEADERS]
    with pytest.raises(ValueError):
        response_head(status, headers, keep_alive)
    with pytest.raises(h11.LocalProtocolError):
        _h11_response(status, headers, keep_alive, hypercorn=False)


def test_response_head_refuses_a_transfer_encoding_of_the_applications() -> None:
    headers = [(b"transfer-encoding", b"chunked"), *SERVER_HEADERS]
    with pytest.raises(ValueError):
        response_head(200, headers, True)
    # by design: h11 would take this one (and write its own Transfer-Encoding: chunked in its place)
    assert _h11_response(200, headers, True)[0].endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ValueError):
        response_head(200, [(b"Transfer-Encoding", b"gzip")], True)
    with pytest.raises(h11.LocalProtocolError):
        _h11_response(200, [(b"Transfer-Encoding", b"gzip")], True)


#: repeated and listed Content-Length and Host, where h11 rewrites what it is given
REWRITTEN: list[Any] = [
    pytest.param([(b"x-a", b"1"), (b"host", b"gw")], id="host-goes-first"),
    pytest.param([(b"x-a", b"1"), (b"Host", b"a"), (b"connection", b"close"), (b"HOST", b"b")], id="hosts-go-first"),
    pytest.param([(b"content-length", b"3"), (b"Content-Length", b"3")], id="content-length-twice-same"),
    pytest.param([(b"Content-Length", b"3, 3"), (b"x-a", b"1"), (b"content-length", b"3")],
                 id="content-length-list-and-repeat"),
    pytest.param([(b"content-length", b"3 ,3,  3")], id="content-length-list"),
    pytest.param([(b"content-length", b"1" * 20)], id="content-length-20-digits"),
    pytest.param([(b"content-length", b"3"), (b"content-length", b"03")], id="content-length-3-and-03"),
    pytest.param([(b"content-length", b"3, 4")], id="content-length-list-differs"),
    pytest.param([(b"content-length", b"3,")], id="content-length-list-with-empty"),
    pytest.param([(b"content-length", b"1" * 21)], id="content-length-21-digits"),
]


@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("app_headers", REWRITTEN)
def test_response_head_rewrites_as_h11_does(app_headers: Headers, keep_alive: bool) -> None:
    headers = [*app_headers, *SERVER_HEADERS]
    theirs = _either(lambda: _h11_response(200, headers, keep_alive)[0])
    ours = _either(lambda: response_head(200, headers, keep_alive)[0])
    assert ours == theirs
    if theirs != "refused":
        _check_response(200, app_headers, keep_alive)

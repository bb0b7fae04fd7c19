"""``http1head`` against h11: the same response heads accepted with the same fields, the same refused; the same
request bytes written, the same requests refused."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamgw.transport.http1head import HeadError, LocalHeadError, parse_response_head, request_head

LIMIT = 64 * 1024
_REQUEST = h11.Request(method=b"POST", target=b"/v1/x", headers=[(b"host", b"a"), (b"content-length", b"0")])


Parsed = tuple[int, bytes, bytes, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], bytes] | str | None


def h11_response(data: bytes) -> Parsed:
    """What h11 (as a client that sent ``_REQUEST``) makes of ``data``: the final head's status, reason,
    version, headers (lower-cased), raw headers and the bytes after it; ``"refused"``; ``None`` (wants more)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=LIMIT)
    conn.send(_REQUEST)
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if type(event) is h11.Response:
                return (event.status_code, event.reason, event.http_version, list(event.headers),
                        event.headers.raw_items(), bytes(conn.trailing_data[0]))
            if event is h11.NEED_DATA:
                return None
            assert type(event) is h11.InformationalResponse
    except h11.RemoteProtocolError:
        return "refused"


def ours(data: bytes) -> Parsed:
    """``parse_response_head`` as the transport calls it (1xx heads skipped), in ``h11_response``'s terms."""
    try:
        while True:
            parsed = parse_response_head(data, LIMIT) if data else None
            if parsed is None:
                return None
            head, end = parsed
            data = data[end:]
            if head.status_code >= 200:
                return head.status_code, head.reason, head.http_version, head.headers, head.raw, data
    except HeadError:
        return "refused"


HEADS = [
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nrest",
    b"HTTP/1.1 200\r\n\r\n",  # no reason phrase
    b"HTTP/1.1 200 \r\n\r\n",  # an empty one
    b"HTTP/1.1 404 Not  Found\t(really)\r\nX: y\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF line ends
    b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\n\tagain\r\n\r\n",  # obsolete line folding
    b"HTTP/1.1 200 OK\r\n folded first\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\ncontent-length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 123456789012345678901\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaces:   v  \r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9 \x80\xff\r\n\r\n",  # obs-text
    b"HTTP/1.1 200 OK\r\nX : v\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",  # no switch was asked for
    b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1 999 High\r\n\r\n",
    b"HTTP/2.0 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\n\r\n",
    b" HTTP/1.1 200 OK\r\n\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS record where a status line belongs
    b"THIS IS NOT HTTP\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: v",  # incomplete
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",  # the final head is still to come
]


@pytest.mark.parametrize("data", HEADS)
def test_response_heads_as_h11_reads_them(data: bytes) -> None:
    assert ours(data) == h11_response(data)


def test_the_hand_written_heads_cover_both_outcomes() -> None:
    outcomes = [h11_response(data) for data in HEADS]
    assert outcomes.count(None) == 3  # the incomplete ones
    assert 15 <= outcomes.count("refused") <= len(HEADS) - 10


@pytest.mark.parametrize("data", [d for d in HEADS if type(h11_response(d)) is tuple])
def test_a_head_split_anywhere_is_incomplete_until_it_is_whole(data: bytes) -> None:
    whole = ours(data)
    assert type(whole) is tuple
    end = len(data) - len(whole[-1])
    for cut in range(1, end):
        got = ours(data[:cut])  # complete 1xx heads before the final one: skipped
        assert got is None or (type(got) is tuple and got[:5] == whole[:5]), cut


def test_a_head_over_the_limit_is_refused_complete_or_not() -> None:
    big = b"HTTP/1.1 200 OK\r\n" + b"X: " + b"v" * 200 + b"\r\n"
    with pytest.raises(HeadError, match="longer than"):
        parse_response_head(big, 100)
    with pytest.raises(HeadError, match="longer than"):
        parse_response_head(big + b"\r\n", 100)
    assert parse_response_head(big, 1000) is None


_PIECES = st.sampled_from([
    b"HTTP/1.1 ", b"HTTP/1.0 ", b"200", b"204", b"100", b"101", b"404", b" OK", b"\r\n", b"\n", b"\r", b" ", b"\t",
    b":", b",", b"X-A", b"content-length", b"Content-Length", b"transfer-encoding", b"chunked", b"gzip", b"5", b"0",
    b"v", b"\x00", b"\x7f", b"\x80", b"\xff", b"(", b"\r\n\r\n",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, min_size=1, max_size=24))
def test_generated_heads_as_h11_reads_them(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    assert ours(data) == h11_response(data)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"content-length", b"Transfer-Encoding", b"X-A", b"x_b", b"Host"]),
                          st.lists(_PIECES, max_size=4).map(b"".join)), max_size=5))
def test_generated_header_lines_as_h11_reads_them(fields: list[tuple[bytes, bytes]]) -> None:
    data = b"HTTP/1.1 200 OK\r\n" + b"".join(b"%s: %s\r\n" % field for field in fields) + b"\r\nbody"
    assert ours(data) == h11_response(data)


# -- request heads -----------------------------------------------------------------------------------------------

def h11_request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes | None:
    conn = h11.Connection(h11.CLIENT)
    try:
        out = conn.send(h11.Request(method=method, target=target, headers=headers))
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
    except h11.LocalProtocolError:
        return None
    return out


def our_request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes | None:
    try:
        head, length = request_head(method, target, headers)
    except LocalHeadError:
        return None
    if length is None:
        return head + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    return head + body if len(body) == length else None


REQUESTS = [
    (b"POST", b"/v1/chat/completions", [(b"Host", b"api.example"), (b"Content-Type", b"application/json"),
                                         (b"Authorization", b"Bearer sk-1"), (b"Content-Length", b"2")], b"{}"),
    (b"POST", b"/v1/x", [(b"content-length", b"2"), (b"host", b"a:8080")], b"{}"),  # Host goes first
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"Transfer-Encoding", b"Chunked")], b"hello"),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"Transfer-Encoding", b"chunked")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"Content-Length", b"2, 2"), (b"content-length", b"2")], b"{}"),
    (b"GET", b"/?q=1&r=%20", [(b"host", b"a")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"x-key", b"v\r\nX-Injected: 1"), (b"content-length", b"0")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"x-key", b"v\n"), (b"content-length", b"0")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"x-key", b" padded"), (b"content-length", b"0")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"x key", b"v"), (b"content-length", b"0")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"x-key", b"a\x00b"), (b"content-length", b"0")], b""),
    (b"POST", b"/v1/x", [(b"content-length", b"0")], b""),  # no Host
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"Host", b"b"), (b"content-length", b"0")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"content-length", b"1, 2")], b"x"),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"content-length", b"x")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"transfer-encoding", b"gzip")], b""),
    (b"POST", b"/v1/x", [(b"host", b"a"), (b"content-length", b"3")], b"{}"),  # the body is not that long
    (b"PO ST", b"/v1/x", [(b"host", b"a")], b""),
    (b"POST", b"/v1 /x", [(b"host", b"a")], b""),
    (b"POST", b"", [(b"host", b"a")], b""),
]


@pytest.mark.parametrize(("method", "target", "headers", "body"), REQUESTS)
def test_request_heads_as_h11_writes_them(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
                                          body: bytes) -> None:
    assert our_request(method, target, headers, body) == h11_request(method, target, headers, body)


def test_the_requests_cover_both_outcomes() -> None:
    written = [r for r in REQUESTS if h11_request(*r) is not None]
    assert 5 <= len(written) <= len(REQUESTS) - 10


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"X-A", b"x b", b"content-length", b"Transfer-Encoding", b"host", b""]),
                          st.lists(_PIECES, max_size=4).map(b"".join)), max_size=5))
def test_generated_request_headers_as_h11_writes_them(extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"Host", b"a"), *extra]
    assert our_request(b"POST", b"/x", headers, b"5") == h11_request(b"POST", b"/x", headers, b"5")


# -- a head that arrives in pieces ----------------------------------------------------------------------------

def _fed(data: bytes, piece: int) -> tuple[object, int]:
    """``data`` fed ``piece`` bytes at a time, as the transport does (a growing ``bytearray``, ``searched``)."""
    buf = bytearray()
    searched = 0
    for start in range(0, len(data), piece):
        buf += data[start:start + piece]
        parsed = parse_response_head(buf, LIMIT, searched)
        if parsed is not None:
            head, end = parsed
            return (head.status_code, head.reason, head.http_version, head.headers, head.raw), end
        searched = len(buf)
    raise AssertionError("never complete")


@pytest.mark.parametrize("piece", [1, 2, 3, 7])
@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi",
    b"HTTP/1.1 200 OK\nX-A: 1\n\nhi",  # bare LF: the end is two bytes
    b"HTTP/1.1 200 OK\r\nX-A: 1\n\r\nhi",  # "\n\r\n" straddling any cut
])
def test_a_head_fed_in_pieces_parses_as_a_whole_one(data: bytes, piece: int) -> None:
    whole = parse_response_head(data, LIMIT)
    assert whole is not None
    head, end = whole
    assert _fed(data, piece) == ((head.status_code, head.reason, head.http_version, head.headers, head.raw), end)


class _CountingSearch:
    """Stands in for the blank-line pattern and counts the bytes each search may scan."""

    def __init__(self, pattern: object) -> None:
        self.pattern = pattern
        self.scanned = 0

    def search(self, data: bytes | bytearray, pos: int = 0) -> object:
        self.scanned += len(data) - pos
        return self.pattern.search(data, pos)  # type: ignore[attr-defined]


def test_a_head_trickling_in_byte_by_byte_is_searched_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upstream sending a large head a byte per read must not cost a scan of the whole buffer per byte."""
    import streamgw.transport.http1head as http1head

    counting = _CountingSearch(http1head._BLANK_RE)
    monkeypatch.setattr(http1head, "_BLANK_RE", counting)
    data = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 60) for i in range(100)) + b"\r\n"
    assert _fed(data, 1)[1] == len(data)
    assert counting.scanned <= 3 * len(data)  # searching from the start each time: ~len(data) ** 2 / 2

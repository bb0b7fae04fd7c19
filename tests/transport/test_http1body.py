"""The response body decoder, checked against h11 as the oracle on the same bytes at every split."""

from __future__ import annotations

import random

import h11
import pytest

from streamgw.transport.http1body import BodyDecoder, BodyFramingError, framing

CHUNKED = (
    b"5\r\nhello\r\n"
    b"1;name=value;flag\r\n \r\n"
    b"00A\r\n0123456789\r\n"
    b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n"
    b"0\r\nx-trailer: yes\r\nother: 1\r\n\r\n"
)
EXPECTED = b"hello 0123456789abcdefghijklmnopqrstuvwxyz"


def h11_body(head: bytes, body: bytes) -> bytes:
    """What h11 makes of ``body`` after ``head`` (the oracle)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head + body)
    out = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            out += event.data
        elif isinstance(event, h11.EndOfMessage):
            return out
        elif event is h11.NEED_DATA:
            raise AssertionError("h11 wants more data")


def decode(decoder: BodyDecoder, pieces: list[bytes]) -> bytes:
    out = b""
    for piece in pieces:
        got = decoder.feed(piece)
        assert isinstance(got, bytes)
        out += got
    return out


def test_chunked_matches_h11() -> None:
    assert h11_body(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", CHUNKED) == EXPECTED
    decoder = BodyDecoder("chunked")
    assert decode(decoder, [CHUNKED]) == EXPECTED
    assert decoder.done and decoder.extra == b""


@pytest.mark.parametrize("split", range(1, len(CHUNKED)))
def test_chunked_at_every_split(split: int) -> None:
    decoder = BodyDecoder("chunked")
    first = decoder.feed(CHUNKED[:split])
    assert not decoder.done
    assert first + decoder.feed(CHUNKED[split:]) == EXPECTED
    assert decoder.done


def test_chunked_byte_by_byte_and_random_pieces() -> None:
    decoder = BodyDecoder("chunked")
    assert decode(decoder, [CHUNKED[i:i + 1] for i in range(len(CHUNKED))]) == EXPECTED
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(CHUNKED)), rng.randint(1, 12)))
        pieces = [CHUNKED[a:b] for a, b in zip([0, *cuts], [*cuts, len(CHUNKED)], strict=True)]
        decoder = BodyDecoder("chunked")
        assert decode(decoder, pieces) == EXPECTED and decoder.done


def test_bytes_after_the_end_are_kept_as_extra() -> None:
    decoder = BodyDecoder("chunked")
    assert decoder.feed(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200") == b"abc"
    assert decoder.done and decoder.extra == b"HTTP/1.1 200"
    fixed = BodyDecoder("length", 3)
    assert fixed.feed(b"abcdef") == b"abc" and fixed.done and fixed.extra == b"def"


@pytest.mark.parametrize("body", [
    b"zz\r\nabc\r\n",  # not hex
    b"3\r\nabcX\r\n",  # data not followed by CRLF
    b"-1\r\n",  # sign
    b"123456789012345678901\r\n",  # 21 digits
    b"\r\n",  # empty size
])
def test_bad_chunked_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(BodyFramingError):
        BodyDecoder("chunked").feed(body)


@pytest.mark.parametrize("body", [
    b"+3\r\nabc\r\n",  # int() would take a sign
    b"0x3\r\nabc\r\n",  # or a prefix
    b"3_0\r\n" + b"a" * 48 + b"\r\n",  # or an underscore
    b" 3\r\nabc\r\n",  # or leading space
    b"3\r\nabcde\r\n",  # one whole read, but the data is longer than its size
])
def test_a_whole_chunk_read_is_checked_as_strictly(body: bytes) -> None:
    """One read holding exactly one chunk takes a short path; it refuses what the general one refuses."""
    with pytest.raises(BodyFramingError):
        BodyDecoder("chunked").feed(body)


def test_one_chunk_per_read_matches_h11() -> None:
    """A streamed answer arrives a chunk a read: the body is the same as h11's, the end is seen."""
    frames = [b"%x\r\n%b\r\n" % (len(d), d) for d in (b"data: {}\n\n", b"x" * 300, b"\r\n", b"y")]
    frames.append(b"0\r\n\r\n")
    decoder = BodyDecoder("chunked")
    out = b"".join(decoder.feed(frame) for frame in frames)
    assert out == h11_body(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", b"".join(frames))
    assert decoder.done and decoder.extra == b""


def test_early_eof_is_an_error_except_for_until_close_bodies() -> None:
    chunked = BodyDecoder("chunked")
    chunked.feed(b"5\r\nhel")
    with pytest.raises(BodyFramingError):
        chunked.eof()
    fixed = BodyDecoder("length", 10)
    assert fixed.feed(b"12345") == b"12345" and not fixed.done
    with pytest.raises(BodyFramingError):
        fixed.eof()
    until_close = BodyDecoder("eof")
    assert until_close.feed(b"anything") == b"anything" and not until_close.done
    until_close.eof()
    assert until_close.done


def test_framing_from_the_head() -> None:
    te = [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")]
    assert framing(200, te, b"POST") == ("chunked", 0)
    assert framing(200, [(b"content-length", b"12")], b"POST") == ("length", 12)
    assert framing(200, [], b"POST") == ("eof", 0)
    assert framing(204, [(b"content-length", b"12")], b"POST") == ("none", 0)
    assert framing(200, [(b"content-length", b"12")], b"HEAD") == ("none", 0)
    assert BodyDecoder("none").done and BodyDecoder("length", 0).done
    with pytest.raises(BodyFramingError):
        framing(200, [(b"transfer-encoding", b"gzip")], b"GET")
    with pytest.raises(BodyFramingError):
        framing(200, [(b"content-length", b"1"), (b"content-length", b"2")], b"GET")
    with pytest.raises(BodyFramingError):
        framing(200, [(b"content-length", b"x")], b"GET")


@pytest.mark.parametrize(("body", "line"), [
    (b"5;ext=" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n", 0),  # a long chunk-size line (its extension)
    (b"5\r\nhello\r\n0\r\nx-trailer: " + b"t" * 5000 + b"\r\n\r\n", 1),  # a long trailer line
])
def test_a_line_sent_a_byte_at_a_time_is_not_rescanned_per_byte(monkeypatch: pytest.MonkeyPatch, body: bytes,
                                                                  line: int) -> None:
    """An upstream that sends a long line a byte per read: the decoder keeps the bytes until the line's end
    comes, instead of joining and searching the whole line again on every read (quadratic time)."""
    calls = 0
    original = BodyDecoder._chunks

    def counted(self: BodyDecoder, buf: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return original(self, buf)

    monkeypatch.setattr(BodyDecoder, "_chunks", counted)
    decoder = BodyDecoder("chunked")
    out = b"".join(decoder.feed(body[i:i + 1]) for i in range(len(body)))
    assert out == b"hello" and decoder.done and not decoder.extra
    assert calls < 40  # once per byte before: ~5,000


def test_a_line_longer_than_the_limit_is_refused_when_trickled() -> None:
    decoder = BodyDecoder("chunked")
    decoder.feed(b"5;")
    with pytest.raises(BodyFramingError, match="chunk size line too long"):
        for _ in range(70):
            decoder.feed(b"x" * 1000)

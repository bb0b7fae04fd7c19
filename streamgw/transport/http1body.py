"""Sans-IO framing of an HTTP/1.1 response body: chunked, Content-Length, or until the connection closes.

``http1head`` parses the response head; the body, where a streamed answer spends all its bytes,
is unframed here.  h11 (which did both) makes an event object per chunk and runs its state machine for
each; a gateway relaying hundreds of small SSE chunks per second per stream paid about a
tenth of its CPU for that.  This decoder turns everything that arrived in one read into one
``bytes`` object with a few ``find`` calls and slices.

It accepts what h11 accepts (RFC 9112 §7.1): hex chunk sizes of up to 20 digits, chunk
extensions (ignored), trailer fields (ignored), CRLF line ends, and it rejects anything else.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BodyDecoder", "BodyFramingError", "framing"]

#: the longest chunk-size line (with extensions) or trailer section we accept
MAX_LINE: Final = 64 * 1024

_HEX_DIGITS: Final = b"0123456789abcdefABCDEF"

# decoder states
_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)
#: the states that wait for the end of a line (CRLF)
_LINE_STATES: Final = (_SIZE, _TRAILERS)


class BodyFramingError(Exception):
    """The body does not follow its framing (bad chunk line, early EOF...)."""


def framing(status: int, headers: list[tuple[bytes, bytes]], method: bytes) -> tuple[str, int]:
    """The framing of a response body from its head: ``("none"|"chunked"|"length"|"eof", length)``.

    ``headers`` are lower-cased names (as ``http1head`` gives them).  Transfer-Encoding wins over
    Content-Length; a Transfer-Encoding other than ``chunked`` is refused, as h11 does.
    """
    if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
        return "none", 0
    length: int | None = None
    for name, value in headers:
        if name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                raise BodyFramingError(f"unsupported transfer-encoding {value!r}")
            return "chunked", 0
        if name == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise BodyFramingError(f"bad content-length {value!r}")
            if length is not None and int(text) != length:
                raise BodyFramingError("conflicting content-length headers")
            length = int(text)
    if length is not None:
        return "length", length
    return "eof", 0


class BodyDecoder:
    """Turns raw bytes off the socket into body bytes for one response.

    ``feed(data)`` returns the body bytes ``data`` completed (possibly ``b""``);
    ``done`` tells when the body ended; ``extra`` is anything that arrived after
    the end (which makes the connection unusable for another request).
    """

    __slots__ = ("_buf", "_chunked", "_remaining", "_state", "done", "extra", "until_eof")

    def __init__(self, mode: str, length: int = 0) -> None:
        self._buf: bytes | bytearray = b""  # an unfinished line (or CRLF) from the previous read
        self._chunked = mode == "chunked"
        self.until_eof = mode == "eof"
        self._remaining = length
        self._state = _SIZE if self._chunked else _DATA
        self.done = mode == "none" or (mode == "length" and length == 0)
        self.extra = b""

    def feed(self, data: bytes) -> bytes:
        """Body bytes from ``data`` (which must not be empty: EOF is ``eof()``)."""
        if self.done:
            self.extra += data
            return b""
        if not self._chunked:
            if self.until_eof:
                return data
            if len(data) < self._remaining:
                self._remaining -= len(data)
                return data
            out, self.extra = data[: self._remaining], data[self._remaining:]
            self._remaining = 0
            self.done = True
            return out
        if self._buf:
            if self._state in _LINE_STATES and b"\n" not in data:
                # Still inside a chunk-size or trailer line: kept without a copy of it all and a search from its
                # start on every read (a line sent a byte at a time would cost quadratic time).
                line = self._buf if isinstance(self._buf, bytearray) else bytearray(self._buf)
                line += data
                if len(line) > MAX_LINE:
                    raise BodyFramingError("chunk size line too long" if self._state == _SIZE
                                           else "trailer section too long")
                self._buf = line
                return b""
            return self._chunks(bytes(self._buf) + data)
        if self._state == _SIZE:
            # The usual read of a streamed answer: exactly one whole chunk (``size CRLF data CRLF``).
            eol = data.find(b"\r\n", 0, MAX_LINE)
            if eol > 0:
                start = eol + 2
                stop = start + _chunk_size(data[:eol])
                if stop > start and len(data) == stop + 2 and data.endswith(b"\r\n"):
                    return data[start:stop]
        return self._chunks(data)

    def eof(self) -> None:
        """The peer closed the connection: fine only where the body may end that way."""
        if self.until_eof:
            self.done = True
        elif not self.done:
            raise BodyFramingError("connection closed before the end of the response body")

    def _chunks(self, buf: bytes) -> bytes:
        parts: list[bytes] = []
        pos = 0
        end = len(buf)
        state = self._state
        remaining = self._remaining
        while pos < end:
            if state == _DATA:
                take = min(remaining, end - pos)
                parts.append(buf[pos: pos + take])
                pos += take
                remaining -= take
                if remaining:
                    break
                state = _DATA_END
            elif state == _DATA_END:
                if end - pos < 2:
                    break
                if buf[pos: pos + 2] != b"\r\n":
                    raise BodyFramingError("chunk data not followed by CRLF")
                pos += 2
                state = _SIZE
            elif state == _SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > MAX_LINE:
                        raise BodyFramingError("chunk size line too long")
                    break
                remaining = _chunk_size(buf[pos:eol])
                pos = eol + 2
                state = _DATA if remaining else _TRAILERS
            elif state == _TRAILERS:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > MAX_LINE:
                        raise BodyFramingError("trailer section too long")
                    break
                if eol == pos:  # the empty line: end of the body
                    pos += 2
                    state = _DONE
                    self.done = True
                    self.extra = buf[pos:]
                    pos = end
                    break
                pos = eol + 2  # a trailer field: ignored
            else:  # pragma: no cover - _DONE is left through the break above
                break
        self._state = state
        self._remaining = remaining
        self._buf = buf[pos:] if pos < end else b""
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].rstrip(b" \t")
    if not 0 < len(size) <= 20 or size.translate(None, _HEX_DIGITS):  # anything left is not a hex digit
        raise BodyFramingError(f"bad chunk size line {line[:40]!r}")
    return int(size, 16)

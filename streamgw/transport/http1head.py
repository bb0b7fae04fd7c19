"""Sans-IO HTTP/1.1 heads for the upstream client: the request head it writes and the response head it reads.

h11 did both, through its event objects, its header normalisation and its state machine: about 65 µs a request
on the way to every first token, for a request whose headers we built and a response head of a few lines.  Both
are checked here with the grammar h11 applies (RFC 9110 §5.5 and RFC 9112 §2 to §4, with h11's tolerances: bare LF
line ends, a missing reason phrase, obsolete line folding joined with a space), and the response's header
semantics h11 enforces: one value for Content-Length (repeats must agree), only ``chunked`` as a
Transfer-Encoding, no 1xx below 100 and no 101 (we never ask to switch protocols).  A response head this parser
accepts h11 accepts with the same fields, and the reverse (``tests/transport/test_http1head.py`` compares
them on hand-written and generated heads).  The body after the head is framed by ``http1body``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

__all__ = ["FIELD_VALUE", "TOKEN", "HeadError", "LocalHeadError", "ResponseHead", "parse_response_head",
           "request_head"]

# RFC 9110 §5.6.2 token; §5.5 field-value as h11 reads it (obs-text allowed, no NUL or whitespace inside a
# "vchar", single spaces or tabs between them, none at either end).  ``streamgw.serving.h1request`` reads
# request heads with the same grammar.
TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
FIELD_VALUE: Final = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_NAME_RE: Final = re.compile(TOKEN)
_VALUE_RE: Final = re.compile(FIELD_VALUE)
_TARGET_RE: Final = re.compile(rb"[\x21-\x7e]+")
_FIELD_RE: Final = re.compile(rb"(" + TOKEN + rb"):[ \t]*(" + FIELD_VALUE + rb")[ \t]*")
_STATUS_RE: Final = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ((?:[ \t]|[^\x00\s])*))?")
_FOLD_RE: Final = re.compile(rb"[ \t]+")
_BLANK_RE: Final = re.compile(rb"\n\r?\n")
_DIGITS_RE: Final = re.compile(rb"[0-9]{1,20}")


class HeadError(Exception):
    """The server's response head is not HTTP/1.1 (or asks for what this client does not do)."""


class LocalHeadError(Exception):
    """A request head we were about to send would not be valid HTTP/1.1 (a bad header name or value...)."""


class ResponseHead:
    """A parsed response head.  ``headers``: (lower-cased name, value); ``raw``: (name as sent, value)."""

    __slots__ = ("headers", "http_version", "raw", "reason", "status_code")

    def __init__(self, status_code: int, reason: bytes, http_version: bytes,
                 headers: list[tuple[bytes, bytes]], raw: list[tuple[bytes, bytes]]) -> None:
        self.status_code = status_code
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self.raw = raw


def parse_response_head(data: bytes | bytearray, limit: int, searched: int = 0) -> tuple[ResponseHead, int] | None:
    """The response head at the start of ``data`` and where it ends, or ``None`` while it is incomplete.

    1xx heads are returned like any other (the caller skips them).  Raises ``HeadError`` for anything h11
    would refuse, and for a head longer than ``limit`` bytes, complete or not.  ``searched``: how much of
    ``data`` an earlier call saw without finding the head's end (a caller that appends each read to its
    buffer passes it, so a head that trickles in byte by byte costs linear time, not quadratic).
    """
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        raise HeadError("no response line received")
    blank = _BLANK_RE.search(data, max(0, searched - 2))  # the end ("\n\r\n") may straddle the old end
    if blank is None:
        if len(data) > limit:
            raise HeadError(f"response head longer than {limit} bytes")
        if data and data[0] < 0x21:  # cannot start a status line (a TLS record, a space...): say so now
            raise HeadError("illegal status line")
        return None
    end = blank.end()
    if end > limit:
        raise HeadError(f"response head longer than {limit} bytes")
    lines = bytes(data[:blank.start()]).split(b"\n")
    status_line = lines[0][:-1] if lines[0].endswith(b"\r") else lines[0]
    status = _STATUS_RE.fullmatch(status_line)
    if status is None:
        raise HeadError(f"illegal status line: {status_line[:100]!r}")
    code = int(status[2])
    if code < 100:
        raise HeadError(f"illegal status code {code}")
    if code == 101:
        raise HeadError("101 Switching Protocols, but no protocol switch was asked for")
    raw = _fields(lines)
    return ResponseHead(code, status[3] or b"", status[1], _normalised(raw), raw), end


def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """The header fields of ``lines`` (after the status line), obsolete line folds joined with a space."""
    folded: list[bytes] = []
    for line in lines[1:]:
        if line.endswith(b"\r"):
            line = line[:-1]
        fold = _FOLD_RE.match(line)
        if fold is not None:
            if not folded:
                raise HeadError("continuation line at start of headers")
            folded[-1] += b" " + line[fold.end():]
        else:
            folded.append(line)
    fields = []
    for line in folded:
        field = _FIELD_RE.fullmatch(line)
        if field is None:
            raise HeadError(f"illegal header line: {line[:100]!r}")
        fields.append((field[1], field[2]))
    return fields


class _Framing:
    """A head's Content-Length and Transfer-Encoding, checked as h11 checks them: one length (repeats of it in a
    header or across headers collapsed, any other value refused), ``chunked`` as the only coding, named once."""

    __slots__ = ("_error", "chunked", "length")

    def __init__(self, error: type[Exception]) -> None:
        self._error = error
        self.length: bytes | None = None
        self.chunked = False

    def kept(self, lower: bytes, value: bytes) -> bytes | None:
        """The value of header ``lower`` as it is kept (a collapsed length, a lower-cased coding), or ``None``
        for a Content-Length that repeats the one kept already."""
        if lower == b"content-length":
            values = {part.strip() for part in value.split(b",")}
            if len(values) != 1:
                raise self._error("conflicting Content-Length headers")
            value = values.pop()
            if _DIGITS_RE.fullmatch(value) is None:
                raise self._error(f"bad Content-Length {value[:40]!r}")
            if self.length is not None:
                if value != self.length:
                    raise self._error("conflicting Content-Length headers")
                return None
            self.length = value
        elif lower == b"transfer-encoding":
            if self.chunked:
                raise self._error("multiple Transfer-Encoding headers")
            value = value.lower()
            if value != b"chunked":
                raise self._error(f"unsupported Transfer-Encoding {value[:40]!r} (only chunked is)")
            self.chunked = True
        return value


def _normalised(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """(lower-cased name, value) of ``raw``, framing headers checked and collapsed (``_Framing``); ``raw`` gets
    the same edits: it is what the caller's response shows."""
    out: list[tuple[bytes, bytes]] = []
    kept: list[tuple[bytes, bytes]] = []
    framing = _Framing(HeadError)
    for name, value in raw:
        lower = name.lower()
        kept_value = framing.kept(lower, value)
        if kept_value is not None:
            out.append((lower, kept_value))
            kept.append((name, kept_value))
    raw[:] = kept
    return out


def request_head(method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, int | None]:
    """The bytes of a request head, and its body's framing: the Content-Length, or ``None`` for chunked.

    The headers are written as given, Host first (RFC 9112 §3.2: exactly one).  Raises ``LocalHeadError`` for
    what h11 would refuse to send: a method that is not a token, a target with spaces or controls, a header
    name or value outside the grammar (a CR or LF in a value would start a header of its own), no Host or
    two, a Transfer-Encoding other than chunked, disagreeing Content-Lengths.
    """
    if _NAME_RE.fullmatch(method) is None:
        raise LocalHeadError(f"illegal method {method[:40]!r}")
    if _TARGET_RE.fullmatch(target) is None:
        raise LocalHeadError(f"illegal request target {target[:100]!r}")
    host: list[bytes] = []
    lines: list[bytes] = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    framing = _Framing(LocalHeadError)
    for name, value in headers:
        if _NAME_RE.fullmatch(name) is None:
            raise LocalHeadError(f"illegal header name {name[:40]!r}")
        if _VALUE_RE.fullmatch(value) is None:
            raise LocalHeadError(f"illegal value of header {name[:40]!r}")
        lower = name.lower()
        if lower == b"host":
            host.append(b"%s: %s\r\n" % (name, value))
            continue
        kept = framing.kept(lower, value)  # written as h11 writes them: a repeated length once, the coding lower-cased
        if kept is not None:
            lines.append(b"%s: %s\r\n" % (name, kept))
    if len(host) != 1:
        raise LocalHeadError("a request needs exactly one Host header" if host else "missing Host header")
    lines.insert(1, host[0])
    lines.append(b"\r\n")
    return b"".join(lines), None if framing.chunked else int(framing.length or b"0")

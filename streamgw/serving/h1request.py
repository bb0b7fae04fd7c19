"""Sans-IO HTTP/1.1 for the server's usual exchange: a request head it reads, a response head it writes.

``streamgw.serving.hypercorn_trio.LeanH1Protocol`` serves the requests a client of this gateway sends nearly
always (HTTP/1.1, a ``Host``, a body of a ``Content-Length`` or none, no upgrade, no ``Expect``) without h11's
server-side state machine and event objects, hypercorn's stream events and their layers; anything else it
hands to hypercorn's HTTP/1.1 protocol (h11), which has always served it.  So ``parse_request_head`` is strict
on purpose: it accepts a subset of what h11 accepts, and each head it accepts h11 reads the same way (the same
method, target, headers and body length: ``tests/server/test_h1request.py`` compares them on written and
generated heads).  Whatever it is unsure of — an obsolete line fold, a bare LF, a repeated or odd
``Content-Length``, any ``Transfer-Encoding`` — it declines rather than judges, and h11 decides, with its
own errors (400, 431).

``response_head`` writes the bytes h11 writes for the same response (RFC 9112 §4 and §6: the status line with an
empty reason, the headers as given, ``Transfer-Encoding: chunked`` for a body of unknown length, ``Connection:
close`` when the request asked for it), after checking each header as h11 does (RFC 9110 §5.1, §5.5).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

# the grammar h11 applies (RFC 9110 §5.6.2 token, §5.5 field-value), shared with the upstream side's heads
from streamgw.transport.http1head import FIELD_VALUE, TOKEN

__all__ = ["DECLINED", "Framing", "RequestHead", "parse_request_head", "response_head"]

_REQUEST_LINE_RE: Final = re.compile(rb"(" + TOKEN + rb") (/[\x21-\x7e]*) HTTP/1\.1")
_FIELD_RE: Final = re.compile(rb"(" + TOKEN + rb"):[ \t]*(" + FIELD_VALUE + rb")[ \t]*")
_NAME_RE: Final = re.compile(TOKEN)
_VALUE_RE: Final = re.compile(FIELD_VALUE)
_DIGITS_RE: Final = re.compile(rb"[0-9]{1,18}")
_LENGTH_RE: Final = re.compile(rb"[0-9]{1,20}")  # h11's bound on a Content-Length it sends
_HEAD_END: Final = b"\r\n\r\n"
_BARE_END_RE: Final = re.compile(rb"\n\r?\n")

#: the methods served here (HEAD and CONNECT frame their responses differently; any other is h11's)
_METHODS: Final = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"})
#: headers whose presence sends a request to h11: framing, upgrades and the 100-continue dance
_DECLINED_NAMES: Final = frozenset({b"transfer-encoding", b"upgrade", b"expect", b"http2-settings"})


class _Declined:
    """The head is not one the lean path serves (h11 takes the connection from here)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DECLINED"


DECLINED: Final = _Declined()


class RequestHead:
    """A request head the lean path serves.  ``headers``: (lower-cased name, value) in order, as h11 gives them."""

    __slots__ = ("content_length", "headers", "keep_alive", "method", "target")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], content_length: int,
                 keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.content_length = content_length
        self.keep_alive = keep_alive


def parse_request_head(data: bytes, limit: int, searched: int = 0) -> tuple[RequestHead, int] | _Declined | None:
    """The request head at the start of ``data`` and where it ends; ``None`` while it is incomplete (and may
    still be one to serve); ``DECLINED`` for anything h11 should read instead, including a head over ``limit``
    bytes, complete or not, and one that does not start with a request line's first character.  ``searched``:
    how much of ``data`` an earlier call saw incomplete (a head that trickles in costs linear time)."""
    start = max(0, searched - 3)  # the end may straddle what was seen before
    end = data.find(_HEAD_END, start)
    if end < 0:
        if len(data) > limit or _BARE_END_RE.search(data, start) is not None or (data and not 0x21 <= data[0] < 0x7f):
            return DECLINED  # too long; a head ended by bare LFs; a TLS record, a blank line, ...: h11's turn
        return None
    if end + 4 > limit:
        return DECLINED
    lines = data[:end].split(b"\r\n")
    line = _REQUEST_LINE_RE.fullmatch(lines[0])
    if line is None or line[1] not in _METHODS:
        return DECLINED
    headers: list[tuple[bytes, bytes]] = []
    content_length: int | None = None
    hosts = 0
    keep_alive = True
    for raw in lines[1:]:
        field = _FIELD_RE.fullmatch(raw)
        if field is None:  # a fold, a stray CR or LF, a space before the colon, a NUL...
            return DECLINED
        name = field[1].lower()
        value = field[2]
        if name == b"content-length":
            if content_length is not None or _DIGITS_RE.fullmatch(value) is None:
                return DECLINED
            content_length = int(value)
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            tokens = {token.strip() for token in value.lower().split(b",")}
            if b"upgrade" in tokens:
                return DECLINED
            if b"close" in tokens:
                keep_alive = False
        elif name in _DECLINED_NAMES:
            return DECLINED
        headers.append((name, value))
    if hosts != 1:  # h11 refuses an HTTP/1.1 request without one; two are its call too
        return DECLINED
    return RequestHead(line[1], line[2], headers, content_length or 0, keep_alive), end + 4


class Framing:
    """How a response's body goes out: ``chunked``, a ``length`` (bytes still to send), or no body at all."""

    __slots__ = ("chunked", "length", "none")

    def __init__(self, chunked: bool, length: int, none: bool) -> None:
        self.chunked = chunked
        self.length = length
        self.none = none


#: statuses whose responses have no body (RFC 9110 §6.4.1)
_NO_BODY: Final = frozenset({204, 304})


def response_head(status: int, headers: Iterable[tuple[bytes, bytes]],
                  keep_alive: bool) -> tuple[bytes, Framing, bool]:
    """The head h11 writes for a final response with ``headers`` (the application's, then the server's own) to a
    request that was HTTP/1.1 (``keep_alive``: False when the request said ``Connection: close``), its body's
    framing, and whether the connection may serve another request after it (not when either side said
    ``close``).  Raises ``ValueError`` for what h11 refuses to send (a bad header name or value, a status outside
    200-999, a ``Content-Length`` that is not a number or disagrees with another) and for a ``Transfer-Encoding``
    of the application's.  As h11 does, it writes one ``Content-Length`` for repeats of the same one (or a list
    of the same value) and any ``Host`` first."""
    if not 200 <= status <= 999:
        raise ValueError(f"status {status} is not a final response's")
    fields: list[tuple[bytes, bytes, bytes]] = []  # (name as given, lower-cased, value)
    length: bytes | None = None
    connection: list[bytes] | None = None if keep_alive else []
    for name, value in headers:
        if name[:1] == b":":
            raise ValueError("Pseudo headers are not valid")
        name = bytes(name).strip()
        value = bytes(value).strip()
        if _NAME_RE.fullmatch(name) is None or _VALUE_RE.fullmatch(value) is None:
            raise ValueError(f"illegal header {name!r}: {value!r}")
        lower = name.lower()
        if lower == b"content-length":
            values = {item.strip() for item in value.split(b",")}
            if len(values) != 1:
                raise ValueError(f"conflicting Content-Length {value!r}")
            value = values.pop()
            if _LENGTH_RE.fullmatch(value) is None or (length is not None and value != length):
                raise ValueError(f"illegal Content-Length {value!r}")  # h11 compares them as written
            if length is not None:
                continue
            length = value
        elif lower == b"transfer-encoding":
            raise ValueError("the server frames the body: no Transfer-Encoding from the application")
        elif lower == b"connection":
            tokens = [token.strip() for token in value.lower().split(b",")]
            if b"close" in tokens:
                keep_alive = False
            if connection is not None:
                connection.extend(tokens)
                continue  # h11 rewrites it (below)
        fields.append((name, lower, value))
    if status in _NO_BODY:
        framing = Framing(False, 0, True)
    elif length is not None:
        framing = Framing(False, int(length), False)
    else:
        framing = Framing(True, 0, False)
        fields.append((b"Transfer-Encoding", b"transfer-encoding", b"chunked"))
    if connection is not None:
        kept = {token for token in connection if token and token != b"keep-alive"}
        kept.add(b"close")
        fields.extend((b"Connection", b"connection", token) for token in sorted(kept))
    lines = [b"HTTP/1.1 %d \r\n" % status]
    rest: list[bytes] = []
    for name, lower, value in fields:  # any Host first, the others in order
        (lines if lower == b"host" else rest).append(b"%b: %b\r\n" % (name, value))
    lines += rest
    lines.append(b"\r\n")
    return b"".join(lines), framing, keep_alive

"""Sans-IO Server-Sent Events framing: an incremental decoder and the byte encoders.

The decoder follows the WHATWG ``EventSource`` parsing rules (HTML Living Standard,
"Server-sent events", *Interpreting an event stream*), with two deliberate
differences that suit a gateway better than a browser:

* an event without an ``event:`` field has ``event == ""`` (not ``"message"``);
* ``finish()`` reports a stream that ended inside an event by raising
  :class:`TruncatedStream` instead of silently discarding the partial event.

As in the specification, the last event id persists across events: ``SSEEvent.id``
is the most recent ``id:`` value seen anywhere earlier in the stream (``None`` until
one is seen).  ``SSEEvent.retry`` is the ``retry:`` value given inside that event's
own block, if any.

This module is pure: standard library only, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streamgw.core.jsontext import Snapshot
from streamgw.core.jsontext import dumps_compact as _json_compact

if TYPE_CHECKING:
    from streamgw.core.relay import RelayedEvent

__all__ = ["SSEDecoder", "SSEEvent", "TruncatedStream", "encode_comment", "encode_event", "event_json"]

_BOM = b"\xef\xbb\xbf"
_LF = 0x0A
_COLON = 0x3A
_DATA_PREFIX = b"data: "
#: the string encoder that encoder uses (C, non-ASCII kept): the text-delta fast path uses it too
_json_str = json.encoder.encode_basestring
_TEXT_DELTA = "response.output_text.delta"
_SNAPSHOT_KEYS = ("type", "response", "sequence_number")
_TEXT_DELTA_KEYS = ("type", "item_id", "output_index", "content_index", "delta", "logprobs", "sequence_number")


class TruncatedStream(ValueError):
    """The event stream ended inside an event (partial line or no dispatching blank line)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched Server-Sent Event.

    ``event`` is ``""`` when the block had no ``event:`` field; ``data`` is the
    ``data:`` lines joined with ``"\\n"``; ``id`` is the last event id seen so far in
    the stream; ``retry`` is the block's own ``retry:`` value in milliseconds.
    """

    event: str
    data: str
    id: str | None
    retry: int | None


# Hot-path constructor: a frozen dataclass's generated ``__init__`` goes through
# ``object.__setattr__`` for each field; writing the slots through their member
# descriptors builds an identical instance in about half the time.
_new_object = object.__new__
_set_event, _set_data, _set_id, _set_retry = (
    SSEEvent.__dict__[name].__set__ for name in ("event", "data", "id", "retry")
)


class SSEDecoder:
    """Incremental, sans-IO Server-Sent Events parser.

    Feed raw body bytes as they arrive with :meth:`feed`; each call returns the events
    completed by that chunk.  Call :meth:`finish` at end of stream to detect truncation.
    """

    __slots__ = (
        "_data",
        "_done",
        "_event",
        "_head",
        "_keep_unknown",
        "_last_id",
        "_open",
        "_parts",
        "_pending_cr",
        "_retry",
        "_started",
        "unknown_lines",
    )

    def __init__(self, *, keep_unknown_lines: bool = False) -> None:
        """``keep_unknown_lines``: collect lines whose field name SSE does not define in
        ``unknown_lines`` (the caller drains it) instead of ignoring them, for upstreams
        that mix raw non-SSE text into a stream (Gemini's JSON error lines)."""
        self._keep_unknown = keep_unknown_lines
        #: (a list only where kept: an open stream of another upstream holds no empty one)
        self.unknown_lines: list[bytes] | tuple[()] = [] if keep_unknown_lines else ()
        self._data: list[str] = []  # data-line values of the event being built
        self._event = ""  # event type buffer
        self._last_id: str | None = None  # last event id buffer (persists)
        self._retry: int | None = None  # retry value of the event being built
        self._parts: list[bytes] = []  # pieces of the current unterminated line (no CR inside)
        self._head = b""  # first bytes of the stream, held back while a BOM is still possible
        self._started = False  # True once the BOM check is over
        self._pending_cr = False  # last chunk ended with CR: a leading LF next is the same line end
        self._open = False  # a field line was seen since the last blank line
        self._done = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk`` and return the events it completes (possibly none)."""
        if self._done:
            raise RuntimeError("SSEDecoder.feed() called after finish()")
        if not self._started:
            chunk = self._skip_bom(chunk)
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            return self._feed_with_cr(chunk)
        # Fast path: LF-only line ends.
        parts = self._parts
        if b"\n" not in chunk:
            parts.append(chunk)
            return []
        if parts:
            parts.append(chunk)
            chunk = b"".join(parts)
            parts.clear()
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            parts.append(tail)
        return self._process(lines)

    def finish(self) -> list[SSEEvent]:
        """Signal end of stream.

        Returns ``[]`` when the stream ended cleanly (between events).  Raises
        :class:`TruncatedStream` when it ended inside a line or after field lines
        that were never dispatched by a blank line.  The decoder cannot be used after.
        """
        if self._done:
            raise RuntimeError("SSEDecoder.finish() called twice")
        self._done = True
        if self._head or self._parts:
            raise TruncatedStream("event stream ended in the middle of a line")
        if self._open:
            raise TruncatedStream("event stream ended before the blank line closing an event")
        return []

    def _skip_bom(self, chunk: bytes) -> bytes:
        """Drop a UTF-8 BOM at the very start of the stream, even when split across chunks."""
        head = self._head + chunk if self._head else chunk
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._started = True
        self._head = b""
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _feed_with_cr(self, chunk: bytes) -> list[SSEEvent]:
        """Slow path for chunks containing CR: normalise CRLF and lone CR to LF."""
        parts = self._parts
        parts.append(chunk)
        data = b"".join(parts)
        parts.clear()
        ends_with_cr = data[-1] == 0x0D
        if ends_with_cr:
            # The line is complete; an LF opening the next chunk belongs to this line end.
            self._pending_cr = True
            data = data[:-1]
        lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if not ends_with_cr:
            tail = lines.pop()
            if tail:
                parts.append(tail)
        return self._process(lines)

    def _process(self, lines: list[bytes]) -> list[SSEEvent]:
        """Interpret complete lines (without their line ends) and return dispatched events."""
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append(self._dispatch())
                else:
                    self._event = ""
                    self._retry = None
                self._open = False
            elif line[0] == _COLON:
                continue
            elif line.startswith(_DATA_PREFIX):
                data.append(line[6:].decode("utf-8", "replace"))
                self._open = True
            else:
                self._field(line)
                self._open = True
        return events

    def _field(self, line: bytes) -> None:
        """Apply one non-comment field line other than the common ``data: `` form."""
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry":
            if value.isdigit():  # bytes.isdigit(): ASCII digits only, False when empty
                self._retry = int(value)
        elif self._keep_unknown:
            self.unknown_lines.append(line)  # type: ignore[union-attr]  # a list when kept

    def _dispatch(self) -> SSEEvent:
        """Build the event from the buffers and reset the per-event buffers."""
        data = self._data
        event: SSEEvent = _new_object(SSEEvent)
        _set_event(event, self._event)
        _set_data(event, data[0] if len(data) == 1 else "\n".join(data))
        _set_id(event, self._last_id)
        _set_retry(event, self._retry)
        data.clear()
        self._event = ""
        self._retry = None
        return event


def encode_event(event: dict[str, Any] | RelayedEvent) -> bytes:
    """Frame ``event`` as ``event: <type>`` + one compact-JSON ``data:`` line + blank line.

    ``event["type"]`` must be a string without CR or LF.  A ``RelayedEvent`` (an
    upstream event relayed unchanged) already holds its JSON text: its own framing is
    returned, with no JSON work.
    """
    if not isinstance(event, dict):
        return event.sse
    etype = event["type"]
    if not isinstance(etype, str):
        raise TypeError(f"event type must be a str, not {type(etype).__name__}")
    if "\n" in etype or "\r" in etype:
        raise ValueError("event type must not contain CR or LF")
    if etype == _TEXT_DELTA:
        framed = _text_delta(event)
        if framed is not None:
            return framed
    return ("event: " + etype + "\ndata: " + event_json(event) + "\n\n").encode()


def event_json(event: dict[str, Any]) -> str:
    """The compact JSON of an emitted event: what its SSE ``data:`` line (and a WebSocket text frame) carries.

    An event carrying a ``Snapshot`` (``response.created``, ``response.in_progress``) takes the snapshot's
    text, made once for both.
    """
    response = event.get("response")
    if type(response) is Snapshot and tuple(event) == _SNAPSHOT_KEYS and type(event["sequence_number"]) is int:
        return ('{"type":' + _json_str(event["type"]) + ',"response":' + response.json() + ',"sequence_number":'
                + str(event["sequence_number"]) + "}")
    return _json_compact(event)


def _text_delta(event: dict[str, Any]) -> bytes | None:
    """``encode_event`` of the most frequent event, byte for byte, without the generic encoder.

    Only for the exact shape the emitter makes (keys in this order, plain types); anything
    else returns None and takes the generic path.
    """
    if tuple(event) != _TEXT_DELTA_KEYS or event["logprobs"] != []:
        return None
    item_id, output_index, content_index = event["item_id"], event["output_index"], event["content_index"]
    delta, seq = event["delta"], event["sequence_number"]
    if not (type(item_id) is str and type(delta) is str and type(output_index) is int
            and type(content_index) is int and type(seq) is int):
        return None
    return ('event: response.output_text.delta\ndata: {"type":"response.output_text.delta","item_id":'
            + _json_str(item_id) + ',"output_index":' + str(output_index) + ',"content_index":'
            + str(content_index) + ',"delta":' + _json_str(delta) + ',"logprobs":[],"sequence_number":'
            + str(seq) + "}\n\n").encode()


def encode_comment(text: str) -> bytes:
    """Frame ``text`` as an SSE comment (``: text`` + blank line), e.g. a keepalive."""
    if "\n" in text or "\r" in text:
        raise ValueError("SSE comment text must not contain CR or LF")
    return b": " + text.encode() + b"\n\n"

"""Relay of a native Responses upstream: its events go out as they came in (OpenAI's Responses streaming events).

A native Responses upstream already produces the exact event stream, so it is
relayed, not rebuilt from deltas (README "Architecture": the one exception to "deltas in,
events out").  ``decode_event`` parses each upstream event once into a
``RelayedEvent``; ``RelayEmitter`` has the verbs and properties of
``streamgw.core.emitter.ResponseEmitter`` so the engine drives both alike, but it is
fed ``RelayedEvent``s (and ``UpstreamFailure``s) instead of neutral deltas.

Every event keeps its upstream ids, indices and ``sequence_number``.  Events that
carry a ``response`` snapshot get ``provider`` added and are re-serialised; every
other event leaves as the ``RelayedEvent`` it came in as, whose SSE bytes
``streamgw.core.sse.encode_event`` frames around the received JSON text.  A stream
always ends with exactly one terminal event: a failure (an upstream ``error`` event,
malformed data, a cut stream, ``fail()``) becomes our own ``response.failed`` with the
next sequence number, after closing the item left open (as ``"incomplete"``) so that
every ``output_item.added`` still has its ``done``.

Pure: standard library only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from streamgw.core import jsontext, textbuf
from streamgw.core.deltas import UpstreamFailure
from streamgw.core.emitter import Echo, echoed, random_id
from streamgw.errors import clean_message, sanitize_error_object

__all__ = [
    "SNAPSHOT_EVENTS",
    "RelayEmitter",
    "RelayItem",
    "RelayOutput",
    "RelayedEvent",
    "decode_event",
    "error_event_failure",
    "failed_event_failure",
    "failure_code",
]


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    """One upstream Responses event, passed through unchanged.

    ``type`` is the event's JSON ``type`` (its SSE event name); ``data`` is its JSON
    text exactly as received (one line), which is also what a WebSocket frame carries;
    ``payload`` is that JSON parsed, for the relay's bookkeeping.
    """

    type: str
    data: str
    payload: dict[str, Any] = field(compare=False, repr=False)

    @property
    def sse(self) -> bytes:
        """The event framed as SSE: ``event:`` line, one ``data:`` line, blank line."""
        return ("event: " + self.type + "\ndata: " + self.data + "\n\n").encode()


#: what a relay translator yields: upstream events, or a failure of the stream itself
RelayItem = RelayedEvent | UpstreamFailure
#: what ``RelayEmitter`` returns: passed-through events, and dicts for events it (re)built
RelayOutput = dict[str, Any] | RelayedEvent

#: the events that carry an in-progress ``response`` snapshot (all three precede any output)
SNAPSHOT_EVENTS = frozenset({"response.created", "response.in_progress", "response.queued"})
_TERMINALS = ("response.completed", "response.incomplete", "response.failed")
_ENDED_EARLY = "upstream stream ended without a terminal event"
_NO_MESSAGE = "upstream reported an error without a message"
_loads = jsontext.loads_strict  # no NaN (relayed verbatim), lone surrogates become U+FFFD
_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# The ``response.error.code`` values the Responses API declares (``ResponseError.code`` in the openai SDK): an upstream
# error code is kept when it is one of them, otherwise mapped by ``_CODE_MARKERS``.
_RESPONSE_ERROR_CODES = frozenset({
    "server_error", "rate_limit_exceeded", "invalid_prompt", "data_residency_mismatch", "bio_policy",
    "vector_store_timeout", "invalid_image", "invalid_image_format", "invalid_base64_image",
    "invalid_image_url", "image_too_large", "image_too_small", "image_parse_error",
    "image_content_policy_violation", "invalid_image_mode", "image_file_too_large",
    "unsupported_image_media_type", "empty_image_file", "failed_to_download_image", "image_file_not_found",
})
_CODE_MARKERS = (
    ("rate_limit", "rate_limit_exceeded"),
    ("quota", "rate_limit_exceeded"),
    ("context_length", "invalid_prompt"),
    ("invalid", "invalid_prompt"),
)

# Part type -> (the field holding its text, the event that ends its text) for closing a cut part.
_PART_TEXT: dict[str, tuple[str, str]] = {
    "output_text": ("text", "response.output_text.done"),
    "refusal": ("refusal", "response.refusal.done"),
    "reasoning_text": ("text", "response.reasoning_text.done"),
    "summary_text": ("text", "response.reasoning_summary_text.done"),
}
# Part space -> (its index field, its done event).
_SPACES: dict[str, tuple[str, str]] = {
    "content": ("content_index", "response.content_part.done"),
    "summary": ("summary_index", "response.reasoning_summary_part.done"),
}


# --- decoding ------------------------------------------------------------------------------------


def decode_event(data: str) -> RelayedEvent | UpstreamFailure:
    """One upstream event's ``data`` → a ``RelayedEvent`` (JSON parsed once), or the failure it is.

    The ``event:`` name is not trusted: ``type`` comes from the JSON.  JSON spread over
    several ``data:`` lines is re-serialised compactly so that it fits one line, and so is
    JSON with surrogate escapes (``jsontext.loads`` replaced any lone one).
    """
    try:
        payload = _loads(data)
    except (ValueError, RecursionError) as exc:
        return UpstreamFailure("server_error", f"malformed upstream event: {exc}")
    kind = payload.get("type") if type(payload) is dict else None
    if type(kind) is not str or "\n" in kind or "\r" in kind:
        return UpstreamFailure("server_error", "malformed upstream event: not a Responses event object")
    if "\n" in data or jsontext.has_surrogate_escape(data):
        data = _compact(payload)  # one line; and text a lone surrogate was replaced in (U+FFFD)
    return RelayedEvent(kind, data, payload)


def failure_code(code: object) -> str:
    """The ``response.error.code`` for an upstream error ``code``."""
    if not isinstance(code, str) or not code:
        return "server_error"
    if code in _RESPONSE_ERROR_CODES:
        return code
    lowered = code.lower()
    return next((ours for marker, ours in _CODE_MARKERS if marker in lowered), "server_error")


def _failure_from(error: object, secrets: Iterable[str]) -> UpstreamFailure:
    source = error if type(error) is dict else {}
    message = source.get("message")
    if not isinstance(message, str) or not message:
        message = _NO_MESSAGE
    return UpstreamFailure(failure_code(source.get("code")), clean_message(message, secrets))


def error_event_failure(payload: dict[str, Any], secrets: Iterable[str] = ()) -> UpstreamFailure:
    """A bare ``error`` event (flat, or the WebSocket form with a nested ``error``) as a failure."""
    nested = payload.get("error")
    return _failure_from(nested if type(nested) is dict else payload, secrets)


def failed_event_failure(payload: dict[str, Any], secrets: Iterable[str] = ()) -> UpstreamFailure:
    """A ``response.failed`` event's ``response.error`` as a failure."""
    response = payload.get("response")
    return _failure_from(response.get("error") if type(response) is dict else None, secrets)


# --- the emitter ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Part:
    """A content or summary part between its ``added`` and its ``done``."""

    part: dict[str, Any]
    text: bytearray = field(default_factory=bytearray)  # its deltas so far (``textbuf``)
    text_done: bool = False  # its ``*.done`` text event was relayed


@dataclass(slots=True)
class _Item:
    """The output item between ``output_item.added`` and ``output_item.done``."""

    index: int
    item: dict[str, Any]
    parts: dict[tuple[str, int], _Part] = field(default_factory=dict)  # open, in order
    closed: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    args: bytearray = field(default_factory=bytearray)  # its arguments' deltas so far (``textbuf``)
    args_done: bool = False


def _index(payload: dict[str, Any], name: str) -> int:
    value = payload.get(name, 0)
    return value if type(value) is int else 0


def _dict(value: object) -> dict[str, Any]:
    return value if type(value) is dict else {}


def _placeholder(response_id: str, created_at: int, model: str, provider: str, echo: dict[str, Any]) -> dict[str, Any]:
    """The ``response`` our own ``response.failed`` carries if the upstream never sent a snapshot."""
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": "in_progress",
        "background": False, "completed_at": None, "error": None, "incomplete_details": None, **echo,
        "model": model, "output": [], "usage": None, "provider": provider,
    }


class RelayEmitter:
    """Relays one native Responses upstream stream; drop-in for ``ResponseEmitter``.

    ``start()`` returns nothing (the upstream sends its own ``response.created``);
    ``feed()`` takes ``RelayedEvent``s and ``UpstreamFailure``s; ``finish()`` ends a
    stream that had no terminal event with ``response.failed``; ``fail()`` does the same
    for gateway-side failures.  After the terminal event every call returns ``[]``.
    """

    def __init__(
        self,
        *,
        model: str,
        provider: str,
        echo: Echo,
        new_id: Callable[[str], str] = random_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._provider = provider
        #: the latest ``response`` snapshot (a placeholder until the upstream sends one)
        self.response = _placeholder(new_id("resp_"), int(clock()), model, provider, echoed(echo))
        self.done = False
        self.output_started = False
        self._seq = 0
        self._out: list[RelayOutput] = []
        self._open: _Item | None = None
        self._items: dict[int, dict[str, Any]] = {}  # finished items by output_index

    # -- public verbs ---------------------------------------------------------------------------

    @property
    def sequence_number(self) -> int:
        """The sequence number our next own event would get."""
        return self._seq

    def in_progress(self) -> dict[str, Any]:
        """A fresh ``in_progress`` snapshot without output or usage (of the latest snapshot the upstream sent)."""
        return {**self.response, "status": "in_progress", "output": [], "usage": None}

    def start(self) -> list[RelayOutput]:
        """Nothing: the upstream sends its own ``response.created``."""
        return []

    def feed(self, items: Iterable[RelayItem]) -> list[RelayOutput]:
        """Relay a batch of upstream events; return what to send, in order."""
        handlers = _RELAY_HANDLERS
        for item in items:
            if self.done:
                break
            if isinstance(item, RelayedEvent):
                handler = handlers.get(item.type)
                if handler is None:
                    self._pass(item)  # events the relay needs no bookkeeping for
                else:
                    handler(self, item)
            else:
                self._fail(item.code, item.message)
        return self._take()

    def finish(self) -> list[RelayOutput]:
        """The upstream body ended: without a terminal event that is a failure."""
        if not self.done:
            self._fail("server_error", _ENDED_EARLY)
        return self._take()

    def fail(self, code: str, message: str) -> list[RelayOutput]:
        """End the stream with our own ``response.failed`` (timeouts, resets, ...)."""
        if not self.done:
            self._fail(code, message)
        return self._take()

    # -- output ---------------------------------------------------------------------------------

    def _pass(self, item: RelayedEvent) -> None:
        """Relay ``item`` as it came: the hot path, no copy and no re-serialisation."""
        seq = item.payload.get("sequence_number")
        self._seq = seq + 1 if type(seq) is int else self._seq + 1
        self._out.append(item)

    def _pass_rebuilt(self, payload: dict[str, Any]) -> None:
        """Relay an event we changed: re-serialised, its upstream sequence number kept."""
        seq = payload.get("sequence_number")
        self._seq = seq + 1 if type(seq) is int else self._seq + 1
        self._out.append(payload)

    def _emit_own(self, event: dict[str, Any]) -> None:
        """Send an event of our own with the next sequence number."""
        event["sequence_number"] = self._seq
        self._seq += 1
        self._out.append(event)

    def _take(self) -> list[RelayOutput]:
        out, self._out = self._out, []
        return out

    # -- lifecycle ------------------------------------------------------------------------------

    def _snapshot_of(self, item: RelayedEvent) -> dict[str, Any] | None:
        response = item.payload.get("response")
        if type(response) is not dict:
            self._fail("server_error", f"malformed upstream event: {item.type} without a response object")
            return None
        response["provider"] = self._provider
        return response

    def _on_snapshot(self, item: RelayedEvent) -> None:
        response = self._snapshot_of(item)
        if response is not None:
            self.response = response
            self._pass_rebuilt(item.payload)

    def _on_terminal(self, item: RelayedEvent) -> None:
        response = self._snapshot_of(item)
        if response is None:
            return
        status = response.setdefault("status", item.type.removeprefix("response."))
        if status != item.type.removeprefix("response."):  # a client reads either: they must agree
            self._fail("server_error", f"malformed upstream event: {item.type} with a response whose status "
                                       "does not match it")
            return
        response.setdefault("error", None)
        if response["error"] is not None:  # upstream text: only a plain code and a clean message go out
            response["error"] = sanitize_error_object(response["error"])
        if self._open is not None:
            # Upstream ended with an item still open: close it so every ``added`` has its ``done``.
            self._close_open()
            response["output"] = self._output()
            self._emit_own(item.payload)
        else:
            if not response.get("output") and self._items:
                response["output"] = self._output()  # some backends send ``output: []`` at the end
            self._pass_rebuilt(item.payload)
        self.response = response
        self.done = True

    def _on_error(self, item: RelayedEvent) -> None:
        # A bare ``error`` event is replaced by ``response.failed``, which takes its place.
        failure = error_event_failure(item.payload)
        self._fail(failure.code, failure.message)

    # -- items ----------------------------------------------------------------------------------

    def _bad_output_index(self, item: RelayedEvent) -> bool:
        """An item event whose ``output_index`` is no integer: the stream fails (True) instead.

        Relayed as is, a client could not match that ``added``/``done`` to any item.
        """
        if type(item.payload.get("output_index")) is int:
            return False
        self._fail("server_error", f"malformed upstream event: {item.type} without an integer output_index")
        return True

    def _on_item_added(self, item: RelayedEvent) -> None:
        payload = item.payload
        if self._bad_output_index(item):
            return
        if self._open is not None:
            # Output items never interleave: a broken upstream.  Tracking only the newest item
            # would leave the open one without its ``done``; ``_fail`` closes it instead.
            self._fail("server_error", f"malformed upstream event: output_item.added while output item "
                                       f"{self._open.index} is still open")
            return
        self.output_started = True
        self._open = _Item(_index(payload, "output_index"), _dict(payload.get("item")))
        self._pass(item)

    def _on_item_done(self, item: RelayedEvent) -> None:
        payload = item.payload
        if self._bad_output_index(item):
            return
        index = _index(payload, "output_index")
        self._items[index] = _dict(payload.get("item"))
        if self._open is not None and self._open.index == index:
            self._open = None
        self._pass(item)

    def _part_added(self, item: RelayedEvent, space: str) -> None:
        current = self._open
        if current is not None:
            key = (space, _index(item.payload, _SPACES[space][0]))
            current.parts[key] = _Part(_dict(item.payload.get("part")))
        self._pass(item)

    def _part_done(self, item: RelayedEvent, space: str) -> None:
        current = self._open
        if current is not None:
            key = (space, _index(item.payload, _SPACES[space][0]))
            current.parts.pop(key, None)
            current.closed[key] = _dict(item.payload.get("part"))
        self._pass(item)

    def _on_content_part_added(self, item: RelayedEvent) -> None:
        self._part_added(item, "content")

    def _on_summary_part_added(self, item: RelayedEvent) -> None:
        self._part_added(item, "summary")

    def _on_content_part_done(self, item: RelayedEvent) -> None:
        self._part_done(item, "content")

    def _on_summary_part_done(self, item: RelayedEvent) -> None:
        self._part_done(item, "summary")

    def _open_part(self, item: RelayedEvent, space: str) -> _Part | None:
        current = self._open
        return None if current is None else current.parts.get((space, _index(item.payload, _SPACES[space][0])))

    def _on_content_delta(self, item: RelayedEvent) -> None:
        part = self._open_part(item, "content")
        delta = item.payload.get("delta")
        if part is not None and type(delta) is str:
            textbuf.add(part.text, delta)
        self._pass(item)

    def _on_summary_delta(self, item: RelayedEvent) -> None:
        part = self._open_part(item, "summary")
        delta = item.payload.get("delta")
        if part is not None and type(delta) is str:
            textbuf.add(part.text, delta)
        self._pass(item)

    def _on_content_text_done(self, item: RelayedEvent) -> None:
        part = self._open_part(item, "content")
        if part is not None:
            part.text_done = True
        self._pass(item)

    def _on_summary_text_done(self, item: RelayedEvent) -> None:
        part = self._open_part(item, "summary")
        if part is not None:
            part.text_done = True
        self._pass(item)

    def _on_args_delta(self, item: RelayedEvent) -> None:
        delta = item.payload.get("delta")
        if self._open is not None and type(delta) is str:
            textbuf.add(self._open.args, delta)
        self._pass(item)

    def _on_args_done(self, item: RelayedEvent) -> None:
        if self._open is not None:
            self._open.args_done = True
        self._pass(item)

    # -- our own ending -------------------------------------------------------------------------

    def _output(self) -> list[dict[str, Any]]:
        return [self._items[index] for index in sorted(self._items)]

    def _close_part(self, current: _Item, key: tuple[str, int], part: _Part) -> None:
        """Send the ``done`` events a cut part never got; remember the part as closed."""
        space, index = key
        index_name, part_done = _SPACES[space]
        text_field, text_done = _PART_TEXT.get(str(part.part.get("type")), ("text", ""))
        text = textbuf.text(part.text)
        base = {"item_id": current.item.get("id"), "output_index": current.index, index_name: index}
        if text_done and not part.text_done:
            event: dict[str, Any] = {"type": text_done, **base, text_field: text}
            if text_done == "response.output_text.done":
                event["logprobs"] = []
            self._emit_own(event)
        full = {**part.part, text_field: text}
        self._emit_own({"type": part_done, **base, "part": full})
        current.closed[key] = full

    def _close_open(self) -> None:
        """Close the item left open as ``incomplete``, with every event it still lacks."""
        current, self._open = self._open, None
        if current is None:
            return
        for key, part in list(current.parts.items()):
            self._close_part(current, key, part)
        final = {**current.item, "status": "incomplete"}
        kind = final.get("type")
        closed = sorted(current.closed.items())
        if kind == "message":
            final["content"] = [part for (space, _), part in closed if space == "content"]
        elif kind == "reasoning":
            final["summary"] = [part for (space, _), part in closed if space == "summary"]
            content = [part for (space, _), part in closed if space == "content"]
            if content:
                final["content"] = content
        elif kind == "function_call":
            self._close_arguments(current, final)
        self._emit_own({"type": "response.output_item.done", "output_index": current.index, "item": final})
        self._items[current.index] = final

    def _close_arguments(self, current: _Item, final: dict[str, Any]) -> None:
        arguments = textbuf.text(current.args)
        if not current.args_done:
            self._emit_own({"type": "response.function_call_arguments.done", "item_id": final.get("id"),
                            "output_index": current.index, "name": final.get("name"), "arguments": arguments})
        final["arguments"] = arguments

    def _fail(self, code: str, message: str) -> None:
        self._close_open()
        response = {
            **self.response,
            "status": "failed",
            "completed_at": None,
            "error": {"code": code, "message": clean_message(message)},
            "incomplete_details": None,
            "output": self._output(),
            "usage": None,
            "provider": self._provider,
        }
        self._emit_own({"type": "response.failed", "response": response})
        self.response = response
        self.done = True


#: upstream event type → its handler (one table for every relay: building bound methods per response cost more)
_RELAY_HANDLERS: dict[str, Callable[[RelayEmitter, RelayedEvent], None]] = {
    **dict.fromkeys(SNAPSHOT_EVENTS, RelayEmitter._on_snapshot),
    **dict.fromkeys(_TERMINALS, RelayEmitter._on_terminal),
    "error": RelayEmitter._on_error,
    "response.output_item.added": RelayEmitter._on_item_added,
    "response.output_item.done": RelayEmitter._on_item_done,
    "response.content_part.added": RelayEmitter._on_content_part_added,
    "response.content_part.done": RelayEmitter._on_content_part_done,
    "response.reasoning_summary_part.added": RelayEmitter._on_summary_part_added,
    "response.reasoning_summary_part.done": RelayEmitter._on_summary_part_done,
    "response.output_text.delta": RelayEmitter._on_content_delta,
    "response.refusal.delta": RelayEmitter._on_content_delta,
    "response.reasoning_text.delta": RelayEmitter._on_content_delta,
    "response.reasoning_summary_text.delta": RelayEmitter._on_summary_delta,
    "response.output_text.done": RelayEmitter._on_content_text_done,
    "response.refusal.done": RelayEmitter._on_content_text_done,
    "response.reasoning_text.done": RelayEmitter._on_content_text_done,
    "response.reasoning_summary_text.done": RelayEmitter._on_summary_text_done,
    "response.function_call_arguments.delta": RelayEmitter._on_args_delta,
    "response.function_call_arguments.done": RelayEmitter._on_args_done,
}

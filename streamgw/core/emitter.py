"""Neutral deltas in, the exact Responses event sequence out.

The events: https://platform.openai.com/docs/api-reference/responses-streaming.
The emitter owns every piece of Responses bookkeeping: ids, ``output_index``,
``content_index``, ``sequence_number``, item lifecycles and the final response
object.  Providers only produce deltas.  A non-streamed request runs the same
machine and returns ``response`` at the end.

Events are plain JSON-ready dicts; ``streamgw.core.sse.encode_event`` turns one
into bytes, the WebSocket pump sends its JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, assert_never

from streamgw.core import textbuf
from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
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
from streamgw.core.ids import random_hex
from streamgw.core.jsontext import Snapshot

Event = dict[str, Any]
#: the request fields every snapshot echoes (``request.echo_fields``), or what builds them
Echo = dict[str, Any] | Callable[[], dict[str, Any]]


def echoed(echo: Echo) -> dict[str, Any]:
    """The fields ``echo`` stands for."""
    return echo if isinstance(echo, dict) else echo()


class Emitter(Protocol):
    """What the engine drives for one response: ``ResponseEmitter`` (deltas in) or ``RelayEmitter``.

    ``start`` once, ``feed`` per upstream batch, ``finish`` at the upstream's end, ``fail`` for a
    gateway-side failure; each returns the events to send.  ``response`` is the response object
    as it stands (final once ``done``).  What ``feed`` takes and the events returned depend on the
    emitter; the engine hands them on without looking inside.
    """

    response: dict[str, Any]
    done: bool

    @property
    def output_started(self) -> bool:
        """True once any output item went out."""
        ...

    def in_progress(self) -> dict[str, Any]:
        """A fresh ``in_progress`` snapshot without output or usage (what ``response.created`` carries)."""
        ...

    def start(self) -> list[Any]: ...

    def feed(self, items: Iterable[Any], /) -> list[Any]: ...

    def finish(self) -> list[Any]: ...

    def fail(self, code: str, message: str) -> list[Any]: ...


class EmitterFactory(Protocol):
    """Builds the emitter of one response (both emitter classes are one)."""

    def __call__(self, *, model: str, provider: str, echo: Echo) -> Emitter: ...


def random_id(prefix: str) -> str:
    """``prefix`` + 48 hex characters, the shape OpenAI uses."""
    return prefix + random_hex(24)


@dataclass(slots=True)
class _Message:
    item: dict[str, Any]
    index: int
    part_kind: str | None = None  # "output_text" | "refusal" while a part is open
    text: bytearray = field(default_factory=bytearray)  # the open part's text so far (``textbuf``)


@dataclass(slots=True)
class _Reasoning:
    item: dict[str, Any]
    index: int
    text: bytearray = field(default_factory=bytearray)  # the summary's text so far (``textbuf``)
    sealed: bool = False  # its signature arrived: the block is complete


@dataclass(slots=True)
class _Call:
    key: int | str
    call_id: str
    name: str
    fragments: list[str] = field(default_factory=list)
    item: dict[str, Any] | None = None  # set once the call is emitted
    index: int = -1
    ended: bool = False


_OpenItem = _Message | _Reasoning | _Call


class ResponseEmitter:
    """Turns deltas into Responses events for one response.

    Call ``start()`` once, ``feed()`` for every batch of deltas, then ``finish()``
    at the upstream's end (or ``fail()`` for a gateway-side failure).  Each
    returns the events to send, in order.  After a terminal event every further
    call returns ``[]``.
    """

    # one per open stream: slots, not a per-instance dict
    __slots__ = ("_calls", "_clock", "_created_at", "_echo", "_final", "_finish", "_id", "_model", "_new_id", "_open",
                 "_out", "_output", "_provider", "_seq", "_usage", "_waiting", "done")

    def __init__(
        self,
        *,
        model: str,
        provider: str,
        echo: Echo,
        response_id: str | None = None,
        created_at: int | None = None,
        new_id: Callable[[str], str] = random_id,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``echo``: the request fields every snapshot echoes, or what builds them (then a stream keeps no response
        object while it runs: one is built for each snapshot, ~0.8 KB less held by every open stream)."""
        self._new_id = new_id
        self._clock = clock
        self._id = response_id or new_id("resp_")
        self._created_at = int(clock()) if created_at is None else created_at
        self._echo = echo
        self._model = model
        self._provider = provider
        self._output: list[dict[str, Any]] = []
        self._final: dict[str, Any] | None = None  # the response object once terminal
        self._seq = 0
        self._out: list[Event] = []
        self._open: _OpenItem | None = None
        self._calls: dict[int | str, _Call] = {}
        self._waiting: tuple[_Call, ...] = ()  # calls started while another call was open (rare: a tuple)
        self._usage: Usage | None = None
        self._finish: FinishReason | None = None
        self.done = False

    @property
    def response(self) -> dict[str, Any]:
        """The response object as it stands: the final one once terminal, else a fresh ``in_progress`` one (its
        ``output`` the emitter's own list: read it, do not change it)."""
        return self._final if self._final is not None else self._snapshot(self._output)

    def in_progress(self) -> dict[str, Any]:
        """A fresh ``in_progress`` snapshot without output or usage (what ``response.created`` carries)."""
        return self._snapshot([])

    def _snapshot(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created_at,
            "status": "in_progress",
            "background": False,
            "completed_at": None,
            "error": None,
            "incomplete_details": None,
            **echoed(self._echo),
            "model": self._model,
            "output": output,
            "usage": None,
            "provider": self._provider,
        }

    # -- public verbs -------------------------------------------------------------------------

    @property
    def output_started(self) -> bool:
        """True once any output item was emitted."""
        return bool(self._output)

    @property
    def sequence_number(self) -> int:
        """The sequence number the next event will get."""
        return self._seq

    def start(self) -> list[Event]:
        """``response.created`` and ``response.in_progress``: one snapshot, encoded once for both."""
        snapshot = Snapshot(self._snapshot([]))
        self._emit({"type": "response.created", "response": snapshot})
        self._emit({"type": "response.in_progress", "response": snapshot})
        return self._take()

    def feed(self, deltas: Iterable[Delta]) -> list[Event]:
        """Translate a batch of deltas into events."""
        handlers = _HANDLERS
        for delta in deltas:
            if self.done:
                break
            handlers[type(delta)](self, delta)
        out = self._out
        self._out = []
        return out

    def finish(self) -> list[Event]:
        """The upstream ended: close open items and emit the terminal event."""
        if not self.done:
            match self._finish:
                case None:
                    self._fail("server_error", "upstream stream ended without a finish reason")
                case FinishReason.COMPLETED:
                    self._close_all("completed")
                    self._terminal("completed")
                case FinishReason.MAX_OUTPUT_TOKENS | FinishReason.CONTENT_FILTER:
                    self._close_all("incomplete")
                    self._terminal("incomplete", incomplete=self._finish.value)
                case _ as unreachable:
                    assert_never(unreachable)
        return self._take()

    def fail(self, code: str, message: str) -> list[Event]:
        """End the stream with ``response.failed`` (gateway-side failure: timeout, upstream reset, ...)."""
        if not self.done:
            self._fail(code, message)
        return self._take()

    # -- delta handlers -----------------------------------------------------------------------

    def _on_text(self, delta: TextDelta) -> None:
        # The most frequent delta: ``_emit`` inlined, and the open text part found without a call.
        text = delta.text
        if text:
            msg = self._open
            if type(msg) is not _Message or msg.part_kind != "output_text":
                msg = self._message_part("output_text")
            textbuf.add(msg.text, text)
            item = msg.item
            seq = self._seq
            self._seq = seq + 1
            self._out.append({
                "type": "response.output_text.delta",
                "item_id": item["id"],
                "output_index": msg.index,
                "content_index": len(item["content"]),
                "delta": text,
                "logprobs": [],
                "sequence_number": seq,
            })

    def _on_refusal(self, delta: RefusalDelta) -> None:
        if delta.text:
            msg = self._message_part("refusal")
            textbuf.add(msg.text, delta.text)
            self._emit(
                {
                    "type": "response.refusal.delta",
                    "item_id": msg.item["id"],
                    "output_index": msg.index,
                    "content_index": len(msg.item["content"]),
                    "delta": delta.text,
                }
            )

    def _on_reasoning(self, delta: ReasoningDelta) -> None:
        if not delta.text:
            return
        rs = self._open
        if not isinstance(rs, _Reasoning) or rs.sealed:
            rs = self._open_reasoning()
        textbuf.add(rs.text, delta.text)
        self._emit(
            {
                "type": "response.reasoning_summary_text.delta",
                "item_id": rs.item["id"],
                "output_index": rs.index,
                "summary_index": 0,
                "delta": delta.text,
            }
        )

    def _on_signature(self, delta: ReasoningSignature) -> None:
        rs = self._open
        if not isinstance(rs, _Reasoning) or rs.sealed:
            # A signature with no visible reasoning before it (redacted thinking, a Gemini call
            # signature): it gets an empty reasoning item of its own.
            rs = self._open_reasoning(summary_part=False)
        rs.item["encrypted_content"] = delta.encrypted_content
        rs.sealed = True  # reasoning after a signature belongs to a new block

    def _on_call_start(self, delta: ToolCallStart) -> None:
        if delta.key in self._calls:
            return  # a repeated start for the same call: keep the first
        call = _Call(delta.key, delta.call_id, delta.name)
        self._calls[delta.key] = call
        if isinstance(self._open, _Call):
            self._waiting += (call,)  # items never interleave: replay it after the open call closes
        else:
            self._emit_call(call)

    def _on_call_args(self, delta: ToolCallArgs) -> None:
        call = self._calls.get(delta.key)
        if call is None or call.ended or not delta.fragment:
            return
        call.fragments.append(delta.fragment)
        if call.item is not None:
            self._emit_args(call, delta.fragment)

    def _on_call_end(self, delta: ToolCallEnd) -> None:
        call = self._calls.get(delta.key)
        if call is None or call.ended:
            return
        call.ended = True
        if call is self._open:
            self._close_open("completed")
            self._drain_waiting()

    def _on_usage(self, delta: Usage) -> None:
        self._usage = delta

    def _on_finish(self, delta: Finish) -> None:
        self._finish = delta.reason

    def _on_failure(self, delta: UpstreamFailure) -> None:
        self._fail(delta.code, delta.message)

    # -- items ----------------------------------------------------------------------------------

    def _add_item(self, item: dict[str, Any]) -> int:
        output = self._output
        index = len(output)
        output.append(item)
        # The added event gets its own copy: the item's lists fill up before the batch is encoded.
        added = {k: (list(v) if isinstance(v, list) else v) for k, v in item.items()}
        self._emit({"type": "response.output_item.added", "output_index": index, "item": added})
        return index

    def _message_part(self, kind: str) -> _Message:
        msg = self._open
        if not isinstance(msg, _Message):
            self._settle()
            item = {"id": self._new_id("msg_"), "type": "message", "status": "in_progress",
                    "content": [], "role": "assistant"}
            msg = _Message(item, self._add_item(item))
            self._open = msg
        if msg.part_kind != kind:
            self._close_part(msg)
            msg.part_kind = kind
            part: dict[str, Any] = (
                {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
                if kind == "output_text"
                else {"type": "refusal", "refusal": ""}
            )
            self._emit({"type": "response.content_part.added", "item_id": msg.item["id"],
                        "output_index": msg.index, "content_index": len(msg.item["content"]), "part": part})
        return msg

    def _close_part(self, msg: _Message) -> None:
        if msg.part_kind is None:
            return
        text = textbuf.text(msg.text)
        base = {"item_id": msg.item["id"], "output_index": msg.index, "content_index": len(msg.item["content"])}
        part: dict[str, Any]
        if msg.part_kind == "output_text":
            self._emit({"type": "response.output_text.done", **base, "text": text, "logprobs": []})
            part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        else:
            self._emit({"type": "response.refusal.done", **base, "refusal": text})
            part = {"type": "refusal", "refusal": text}
        self._emit({"type": "response.content_part.done", **base, "part": part})
        msg.item["content"].append(part)
        msg.part_kind = None
        msg.text = bytearray()

    def _open_reasoning(self, *, summary_part: bool = True) -> _Reasoning:
        self._settle()
        item: dict[str, Any] = {"id": self._new_id("rs_"), "type": "reasoning", "summary": []}
        rs = _Reasoning(item, self._add_item(item))
        self._open = rs
        if summary_part:
            self._emit({"type": "response.reasoning_summary_part.added", "item_id": item["id"],
                        "output_index": rs.index, "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""}})
        return rs

    def _close_reasoning(self, rs: _Reasoning) -> None:
        if rs.text:
            text = textbuf.text(rs.text)
            base = {"item_id": rs.item["id"], "output_index": rs.index, "summary_index": 0}
            self._emit({"type": "response.reasoning_summary_text.done", **base, "text": text})
            part = {"type": "summary_text", "text": text}
            self._emit({"type": "response.reasoning_summary_part.done", **base, "part": part})
            rs.item["summary"] = [part]
        self._emit({"type": "response.output_item.done", "output_index": rs.index, "item": rs.item})

    def _emit_call(self, call: _Call) -> None:
        self._close_open("completed")
        call.item = {"id": self._new_id("fc_"), "type": "function_call", "status": "in_progress",
                     "arguments": "", "call_id": call.call_id, "name": call.name}
        call.index = self._add_item(call.item)
        self._open = call
        for fragment in call.fragments:
            self._emit_args(call, fragment)

    def _emit_args(self, call: _Call, fragment: str) -> None:
        assert call.item is not None
        self._emit({"type": "response.function_call_arguments.delta", "item_id": call.item["id"],
                    "output_index": call.index, "delta": fragment})

    def _close_call(self, call: _Call, status: str) -> None:
        assert call.item is not None
        if not call.fragments:
            call.fragments.append("{}")  # a call with no arguments still carries a JSON object
            self._emit_args(call, "{}")
        arguments = "".join(call.fragments)
        self._emit({"type": "response.function_call_arguments.done", "item_id": call.item["id"],
                    "output_index": call.index, "name": call.name, "arguments": arguments})
        call.item["arguments"] = arguments
        call.item["status"] = status
        self._emit({"type": "response.output_item.done", "output_index": call.index, "item": call.item})
        call.ended = True

    def _close_open(self, status: str) -> None:
        item = self._open
        self._open = None
        match item:
            case None:
                pass
            case _Message():
                self._close_part(item)
                item.item["status"] = status
                self._emit({"type": "response.output_item.done", "output_index": item.index,
                            "item": item.item})
            case _Reasoning():
                self._close_reasoning(item)
            case _Call():
                self._close_call(item, status)
            case _ as unreachable:
                assert_never(unreachable)

    def _drain_waiting(self) -> None:
        """Emit calls that started while another call was open, in the order they started."""
        while self._waiting and not isinstance(self._open, _Call):
            call = self._next_waiting()
            self._emit_call(call)
            if call.ended:
                self._close_open("completed")

    def _next_waiting(self) -> _Call:
        call, *rest = self._waiting
        self._waiting = tuple(rest)
        return call

    def _settle(self) -> None:
        """Close the open item and every waiting call, before a new kind of item opens."""
        self._close_open("completed")
        while self._waiting:
            self._emit_call(self._next_waiting())
            self._close_open("completed")

    def _close_all(self, last_status: str) -> None:
        """Close everything; the item still open at the very end gets ``last_status``."""
        while self._waiting:
            self._close_open("completed")
            self._emit_call(self._next_waiting())
        self._close_open(last_status)

    # -- terminal -------------------------------------------------------------------------------

    def _fail(self, code: str, message: str) -> None:
        self._close_all("incomplete")
        self._terminal("failed", error={"code": code, "message": message})

    def _terminal(self, status: str, *, incomplete: str | None = None,
                  error: dict[str, str] | None = None) -> None:
        resp = self._final = self._snapshot(self._output)
        resp["status"] = status
        if status == "completed":
            resp["completed_at"] = int(self._clock())
        resp["incomplete_details"] = {"reason": incomplete} if incomplete else None
        resp["error"] = error
        resp["usage"] = self._usage.as_response_usage() if self._usage is not None else None
        self._emit({"type": f"response.{status}", "response": resp})
        self.done = True

    # -- plumbing -------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        event["sequence_number"] = self._seq
        self._seq += 1
        self._out.append(event)

    def _take(self) -> list[Event]:
        out = self._out
        self._out = []
        return out


#: delta type → its handler (one table for every emitter: building bound methods per response cost more)
_HANDLERS: dict[type, Callable[[ResponseEmitter, Any], None]] = {
    TextDelta: ResponseEmitter._on_text,
    RefusalDelta: ResponseEmitter._on_refusal,
    ReasoningDelta: ResponseEmitter._on_reasoning,
    ReasoningSignature: ResponseEmitter._on_signature,
    ToolCallStart: ResponseEmitter._on_call_start,
    ToolCallArgs: ResponseEmitter._on_call_args,
    ToolCallEnd: ResponseEmitter._on_call_end,
    Usage: ResponseEmitter._on_usage,
    Finish: ResponseEmitter._on_finish,
    UpstreamFailure: ResponseEmitter._on_failure,
}

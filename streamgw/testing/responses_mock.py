"""Mock native OpenAI Responses upstream (``POST /v1/responses``, ``GET /v1/models``).

The answer is chosen by the request's ``model`` exactly as in ``streamgw.testing.chat_mock``
(``name`` or ``name:k=v,...`` with the same knobs: ``ttft``, ``token_delay``, ``tokens``,
``token_text``, ``fault_rate``, ``heavy_tail``, ``reasoning_tokens``).  Unknown names behave
like ``text``.

Streams follow OpenAI's Responses streaming events byte for byte: every event is an ``event:`` line equal
to ``data.type``, one compact-JSON ``data:`` line and a blank line; ``sequence_number`` runs
from 0; ``response.created`` and ``response.in_progress`` come first, items one after another,
exactly one terminal event last, and no ``[DONE]``.  Text and function-argument deltas carry a
random ``obfuscation`` string unless ``stream_options.include_obfuscation`` is false.
``service_tier`` is ``"auto"`` in the opening snapshots and ``"default"`` at the end.  A
non-streamed request gets the terminal ``response`` object as its JSON body.
Timing: headers and the two opening snapshots go out at once; the first output event
``ttft`` later; each later delta ``token_delay`` after the previous one.

Scenarios:

* ``text`` (and unknown names): one message of ``tokens`` deltas; ``response.completed``.
* ``tool`` / ``two-tools``: one / two function calls (named after the request's first function
  tool, default ``get_weather``) whose argument fragments join to ``{"city":"Paris"}`` /
  ``{"city":"Tokyo"}``.
* ``reasoning``: a reasoning item whose ``reasoning_tokens`` summary deltas are split over two
  summary parts (one when there is a single delta), with ``encrypted_content`` on its done
  item; then the message.  ``usage.output_tokens_details.reasoning_tokens`` counts them.
* ``length``: the message ends ``incomplete``; ``response.incomplete`` (``max_output_tokens``).
* ``failed``: 3 deltas, then ``response.failed`` (``server_error``) with the message still open;
  non-streamed: HTTP 200 with the failed response.
* ``error-event``: 3 deltas, then a bare ``error`` event and the end of the body;
  non-streamed: HTTP 500.
* ``cut``: 3 deltas, then the connection is closed mid-body; non-streamed: half a body, the same.
* ``malformed``: an event whose data is not JSON after the second delta, then the rest as
  ``text``; non-streamed: a truncated JSON body.
* ``stall``: the first delta, then silence until the client leaves.
* With ``tokens=0``, ``failed``, ``error-event``, ``cut`` and ``stall`` fail (or stall) right after
  ``response.in_progress``, before any output item.
* ``status-400|401|404|429|500|503``: OpenAI error envelopes (429 ``retry-after: 7``, 503
  ``retry-after: 3``).  ``fault_rate`` turns any request into ``status-500``.

Requests are checked like OpenAI does: a JSON object with a string ``model``, no unknown
top-level parameter (400 ``unknown_parameter`` naming it), ``max_output_tokens`` >= 16.
Usage: ``input_tokens`` = characters of ``instructions`` and input text // 4 + 1;
``output_tokens`` = the number of deltas.

Run standalone: ``python -m streamgw.testing.responses_mock --port 0`` prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import string
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from streamgw.testing.chat_mock import (
    BadRequest,
    ChatKnobs,
    add_openai_options,
    json_object,
    mask_key,
    openai_options,
    parse_model,
)
from streamgw.testing.mockbase import (
    MockUpstream,
    bearer_token,
    mock_arguments,
    models_list_body,
    run_until_signal,
)
from streamgw.testing.server import MockRequest, Responder

__all__ = ["SCENARIOS", "STATUS_SCENARIOS", "ResponsesMock", "main", "render_event"]

SCENARIOS = (
    "text", "tool", "two-tools", "reasoning", "length", "failed", "error-event", "cut", "malformed", "stall",
)
STATUS_SCENARIOS = ("status-400", "status-401", "status-404", "status-429", "status-500", "status-503")

#: how a stream ends: a terminal event, or one of the broken endings
Ending = Literal["completed", "incomplete", "failed", "error", "cut", "stall"]
Json = dict[str, Any]

_SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
_JSON_TYPE = ("content-type", "application/json")
_FEW = 3
_HEAVY_TAIL_CAP = 1000.0
_DEFAULT_TOOL = "get_weather"
_TOOL_ARGS = (('{"', "city", '":"', "Paris", '"}'), ('{"', "city", '":"', "Tokyo", '"}'))
_MODEL_FAILED = "The model failed to generate a response."
_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_OBFUSCATION_ALPHABET = string.ascii_letters + string.digits
_KNOWN_PARAMS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
    "max_output_tokens", "max_tool_calls", "text", "reasoning", "previous_response_id", "conversation",
    "store", "background", "metadata", "stream", "stream_options", "truncation", "user", "safety_identifier",
    "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier", "include",
    "top_logprobs", "prompt", "context_management", "moderation",
})


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def render_event(event: Json) -> bytes:
    """One event as OpenAI frames it: ``event:`` line, compact-JSON ``data:`` line, blank line."""
    return f"event: {event['type']}\ndata: {_dumps(event)}\n\n".encode()


def _envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return _dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


# ------------------------------------------------------------------------------------ answers


@dataclass
class _Item:
    """One output item to produce: ``chunks`` are its deltas (summary deltas per part for reasoning)."""

    kind: Literal["message", "function_call", "reasoning"]
    chunks: list[str] = field(default_factory=list)
    parts: list[list[str]] = field(default_factory=list)  # reasoning summary parts
    call_id: str = ""
    name: str = ""


@dataclass
class _Answer:
    items: list[_Item]
    ending: Ending = "completed"
    malformed: bool = False

    @property
    def output_tokens(self) -> int:
        return sum(len(item.chunks) + sum(map(len, item.parts)) for item in self.items)

    @property
    def reasoning_tokens(self) -> int:
        return sum(sum(map(len, item.parts)) for item in self.items)


@dataclass
class _Ctx:
    """What a scenario builder may look at."""

    knobs: ChatKnobs
    body: Json
    digest: str

    def call_id(self, index: int) -> str:
        return "call_" + hashlib.blake2b(f"{self.digest}/call{index}".encode(), digest_size=12).hexdigest()

    def tool_name(self) -> str:
        tools = self.body.get("tools")
        for tool in tools if isinstance(tools, list) else []:
            if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("name"), str):
                return str(tool["name"])
        return _DEFAULT_TOOL

    def message(self, count: int) -> _Item:
        return _Item("message", [self.knobs.text(i) for i in range(count)])

    def call(self, index: int) -> _Item:
        return _Item("function_call", list(_TOOL_ARGS[index]), call_id=self.call_id(index), name=self.tool_name())


def _build_reasoning(ctx: _Ctx) -> _Answer:
    thoughts = [f"think{i} " for i in range(ctx.knobs.reasoning_tokens)]
    half = (len(thoughts) + 1) // 2
    parts = [thoughts[:half], thoughts[half:]] if len(thoughts) > 1 else [thoughts]
    return _Answer([_Item("reasoning", parts=parts), ctx.message(ctx.knobs.tokens)])


def _build_broken(ending: Ending, count: int) -> Callable[[_Ctx], _Answer]:
    def build(ctx: _Ctx) -> _Answer:
        deltas = min(count, ctx.knobs.tokens)
        return _Answer([ctx.message(deltas)] if deltas else [], ending)

    return build


_BUILDERS: dict[str, Callable[[_Ctx], _Answer]] = {
    "text": lambda ctx: _Answer([ctx.message(ctx.knobs.tokens)]),
    "tool": lambda ctx: _Answer([ctx.call(0)]),
    "two-tools": lambda ctx: _Answer([ctx.call(0), ctx.call(1)]),
    "reasoning": _build_reasoning,
    "length": lambda ctx: _Answer([ctx.message(ctx.knobs.tokens)], "incomplete"),
    "failed": _build_broken("failed", _FEW),
    "error-event": _build_broken("error", _FEW),
    "cut": _build_broken("cut", _FEW),
    "stall": _build_broken("stall", 1),
    "malformed": lambda ctx: _Answer([ctx.message(ctx.knobs.tokens)], malformed=True),
}


# ---------------------------------------------------------------------------- response object


def _echo_tool(tool: Any) -> Any:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    strict = tool.get("strict")
    return {"type": "function", "name": tool.get("name"), "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": True if strict is None else strict}


def _or(body: Json, key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _response_object(body: Json, response_id: str, created_at: int) -> Json:
    """The in-progress ``response`` snapshot, request fields echoed with OpenAI's defaults."""
    text = {"format": {"type": "text"}, "verbosity": "medium", **_or(body, "text", {})}
    reasoning = {"effort": None, "summary": None, **_or(body, "reasoning", {})}
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": "in_progress",
        "background": _or(body, "background", False), "completed_at": None, "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "max_tool_calls": body.get("max_tool_calls"),
        "model": body["model"], "output": [], "parallel_tool_calls": _or(body, "parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"), "reasoning": reasoning,
        "safety_identifier": body.get("safety_identifier"), "service_tier": "auto",
        "store": _or(body, "store", True), "temperature": _or(body, "temperature", 1.0), "text": text,
        "tool_choice": _or(body, "tool_choice", "auto"), "tools": [_echo_tool(t) for t in _or(body, "tools", [])],
        "top_logprobs": _or(body, "top_logprobs", 0), "top_p": _or(body, "top_p", 1.0),
        "truncation": _or(body, "truncation", "disabled"), "usage": None, "user": body.get("user"),
        "metadata": _or(body, "metadata", {}),
    }


def _text_chars(value: Any) -> int:
    """Characters of text in an ``input`` value (strings, message contents, text parts, outputs)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_text_chars(entry) for entry in value)
    if isinstance(value, dict):
        return sum(_text_chars(value.get(key)) for key in ("content", "text", "output"))
    return 0


def _usage(body: Json, answer: _Answer) -> Json:
    prompt = (_text_chars(body.get("instructions")) + _text_chars(body.get("input"))) // 4 + 1
    output = answer.output_tokens
    return {
        "input_tokens": prompt, "input_tokens_details": {"cache_write_tokens": 0, "cached_tokens": 0},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": answer.reasoning_tokens},
        "total_tokens": prompt + output,
    }


# ------------------------------------------------------------------------------------ rendering


class _Renderer:
    """Builds the events of one answer: sequence numbers, ids, obfuscation and send times."""

    def __init__(self, ctx: _Ctx, answer: _Answer, response: Json, *, obfuscate: bool, rng: random.Random) -> None:
        self.ctx, self.answer, self.response = ctx, answer, response
        self.obfuscate, self.rng = obfuscate, rng
        self.events: list[tuple[float, bytes]] = []
        self.output: list[Json] = []
        self.seq = 0
        self.deltas = 0  # deltas sent so far: each later one is token_delay after the previous

    def emit(self, event: Json) -> None:
        event["sequence_number"] = self.seq
        self.seq += 1
        self.events.append((self.at(), render_event(event)))

    def at(self) -> float:
        knobs = self.ctx.knobs
        return 0.0 if not self.output else knobs.ttft + max(self.deltas - 1, 0) * knobs.token_delay

    def delta(self, event: Json, *, obfuscated: bool = True) -> None:
        if self.answer.malformed and self.deltas == 2:
            broken = '{"type":"response.output_text.delta","item_id":"msg_' + self.ctx.digest[:8] + '","outp'
            self.events.append((self.at(), f"event: response.output_text.delta\ndata: {broken}\n\n".encode()))
        self.deltas += 1
        if obfuscated and self.obfuscate:
            length = self.rng.randint(4, 16)
            event["obfuscation"] = "".join(self.rng.choices(_OBFUSCATION_ALPHABET, k=length))
        self.emit(event)

    def item_id(self, prefix: str, index: int) -> str:
        return prefix + hashlib.blake2b(f"{self.ctx.digest}/{index}".encode(), digest_size=24).hexdigest()

    def add(self, item: Json) -> int:
        index = len(self.output)
        self.output.append(item)
        self.emit({"type": "response.output_item.added", "output_index": index, "item": dict(item)})
        return index

    def done(self, index: int, item: Json) -> None:
        self.output[index] = item
        self.emit({"type": "response.output_item.done", "output_index": index, "item": item})


def _render_message(r: _Renderer, spec: _Item, close: bool, status: str) -> None:
    item_id = r.item_id("msg_", len(r.output))
    index = r.add({"id": item_id, "type": "message", "status": "in_progress", "content": [], "role": "assistant"})
    base = {"item_id": item_id, "output_index": index, "content_index": 0}
    r.emit({"type": "response.content_part.added", **base,
            "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}})
    for chunk in spec.chunks:
        r.delta({"type": "response.output_text.delta", **base, "delta": chunk, "logprobs": []})
    text = "".join(spec.chunks)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    if not close:
        r.output[index] = {**r.output[index], "status": "incomplete", "content": [part]}
        return
    r.emit({"type": "response.output_text.done", **base, "text": text, "logprobs": []})
    r.emit({"type": "response.content_part.done", **base, "part": part})
    r.done(index, {"id": item_id, "type": "message", "status": status, "content": [part], "role": "assistant"})


def _render_call(r: _Renderer, spec: _Item, close: bool, status: str) -> None:
    item_id = r.item_id("fc_", len(r.output))
    item = {"id": item_id, "type": "function_call", "status": "in_progress", "arguments": "",
            "call_id": spec.call_id, "name": spec.name}
    index = r.add(item)
    for chunk in spec.chunks:
        r.delta({"type": "response.function_call_arguments.delta", "item_id": item_id, "output_index": index,
                 "delta": chunk})
    arguments = "".join(spec.chunks)
    if not close:
        r.output[index] = {**item, "status": "incomplete", "arguments": arguments}
        return
    r.emit({"type": "response.function_call_arguments.done", "item_id": item_id, "output_index": index,
            "name": spec.name, "arguments": arguments})
    r.done(index, {**item, "status": status, "arguments": arguments})


def _render_reasoning(r: _Renderer, spec: _Item, close: bool, status: str) -> None:
    # Reasoning is never the last item of an answer, so it is always closed.
    item_id = r.item_id("rs_", len(r.output))
    index = r.add({"id": item_id, "type": "reasoning", "summary": []})
    summary = []
    for s, chunks in enumerate(spec.parts):
        base = {"item_id": item_id, "output_index": index, "summary_index": s}
        r.emit({"type": "response.reasoning_summary_part.added", **base, "part": {"type": "summary_text", "text": ""}})
        for chunk in chunks:
            r.delta({"type": "response.reasoning_summary_text.delta", **base, "delta": chunk}, obfuscated=False)
        part = {"type": "summary_text", "text": "".join(chunks)}
        r.emit({"type": "response.reasoning_summary_text.done", **base, "text": part["text"]})
        r.emit({"type": "response.reasoning_summary_part.done", **base, "part": part})
        summary.append(part)
    opaque = "gAAAAB" + hashlib.blake2b(item_id.encode(), digest_size=30).hexdigest()
    r.done(index, {"id": item_id, "type": "reasoning", "summary": summary, "encrypted_content": opaque})


_RENDER_ITEM: dict[str, Callable[[_Renderer, _Item, bool, str], None]] = {
    "message": _render_message,
    "function_call": _render_call,
    "reasoning": _render_reasoning,
}
_BROKEN: tuple[Ending, ...] = ("failed", "error", "cut", "stall")


def _final_response(r: _Renderer, usage: Json) -> Json:
    """The terminal ``response`` for the answer's ending."""
    final = {**r.response, "output": list(r.output), "service_tier": "default"}
    ending = r.answer.ending
    if ending == "completed":
        final |= {"status": "completed", "completed_at": int(time.time()), "usage": usage}
    elif ending == "incomplete":
        final |= {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "usage": usage}
    else:
        final |= {"status": "failed", "error": {"code": "server_error", "message": _MODEL_FAILED}}
    return final


def _render(r: _Renderer, usage: Json) -> Json:
    """Render every event of the answer into ``r.events``; return the terminal ``response``."""
    r.emit({"type": "response.created", "response": r.response})
    r.emit({"type": "response.in_progress", "response": r.response})
    items = r.answer.items
    status = "incomplete" if r.answer.ending == "incomplete" else "completed"
    for i, spec in enumerate(items):
        close = i < len(items) - 1 or r.answer.ending not in _BROKEN
        _RENDER_ITEM[spec.kind](r, spec, close, status if i == len(items) - 1 else "completed")
    final = _final_response(r, usage)
    if r.answer.ending == "error":
        r.emit({"type": "error", "code": "server_error", "message": _SERVER_ERROR, "param": None})
    elif r.answer.ending not in ("cut", "stall"):
        r.emit({"type": f"response.{final['status']}", "response": final})
    return final


# ----------------------------------------------------------------------------- status errors


def _auth_error(received: str | None) -> bytes:
    if not received:
        message = ("You didn't provide an API key. You need to provide your API key in an Authorization "
                   "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
    else:
        message = (f"Incorrect API key provided: {mask_key(received)}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
    return _envelope(message, "invalid_request_error", None, "invalid_api_key")


_StatusError = tuple[int, bytes, tuple[tuple[str, str], ...]]


def _status_error(name: str, model: str, key: str | None) -> _StatusError:
    """Status, body and extra headers of a ``status-NNN`` scenario."""
    errors: dict[str, Callable[[], _StatusError]] = {
        "status-400": lambda: (400, _envelope(
            "Your input exceeds the context window of this model. Please adjust your input and try again.",
            "invalid_request_error", "input", "context_length_exceeded"), ()),
        "status-401": lambda: (401, _auth_error(key), ()),
        "status-404": lambda: (404, _envelope(
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error", "model", "model_not_found"), ()),
        "status-429": lambda: (429, _envelope(
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 7s.",
            "requests", None, "rate_limit_exceeded"), (("retry-after", "7"), ("x-ratelimit-remaining-requests", "0"))),
        "status-503": lambda: (503, _envelope(
            "The engine is currently overloaded, please try again later.", "server_error"), (("retry-after", "3"),)),
    }
    return errors.get(name, _internal_error)()


def _internal_error() -> _StatusError:
    return 500, _envelope(_SERVER_ERROR, "server_error"), ()


# ---------------------------------------------------------------------------------- validation


def _validate(req: MockRequest) -> Json:
    """The request body, checked like OpenAI does; raises ``BadRequest``."""
    body = json_object(req)
    unknown = next((key for key in body if key not in _KNOWN_PARAMS), None)
    if unknown is not None:
        raise BadRequest(f"Unknown parameter: '{unknown}'.", unknown, "unknown_parameter")
    if not isinstance(body.get("model"), str):
        raise BadRequest("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and limit < 16:
        raise BadRequest(f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
                          f"but got {limit} instead.", "max_output_tokens", "integer_below_min_value")
    return body


# ------------------------------------------------------------------------------------- the mock


class ResponsesMock(MockUpstream):
    """A native OpenAI Responses upstream with scripted scenarios.

    Every request received is appended to ``requests``; ``sent`` maps a request's
    ``request_id`` to the body bytes sent for it (recorded before each write).  ``stats``
    are the server counters once it is served with ``serve`` or ``serving_in_thread``.
    """

    def __init__(
        self, *, ttft: float = 0.0, token_delay: float = 0.0, tokens: int = 20, token_text: str = "tok{i} ",
        fault_rate: float = 0.0, heavy_tail: float | None = None, api_key: str | None = None, seed: int = 0,
        reasoning_tokens: int = 4, base_path: str = "/v1",
    ) -> None:
        self.knobs = ChatKnobs(ttft, token_delay, tokens, token_text, fault_rate, heavy_tail, reasoning_tokens)
        super().__init__(api_key=api_key)
        self.seed = seed
        self.base_path = base_path.rstrip("/")
        self.sent: dict[int, bytes] = {}
        self._rng = random.Random(seed)

    async def handle(self, req: MockRequest, send: Responder) -> None:
        """The server handler: auth, routing, validation, then the scenario."""
        self.requests.append(req)
        key = bearer_token(req)
        if self.api_key is not None and key != self.api_key:
            await self._json(send, req, 401, _auth_error(key))
        elif req.path == self.base_path + "/responses" and req.method == "POST":
            await self._responses(req, send, key)
        elif req.path == self.base_path + "/models" and req.method == "GET":
            await self._json(send, req, 200, models_list_body(SCENARIOS + STATUS_SCENARIOS))
        else:
            await self._json(send, req, 404, _envelope(f"Invalid URL ({req.method} {req.path})",
                                                        "invalid_request_error"))

    async def _responses(self, req: MockRequest, send: Responder, key: str | None) -> None:
        try:
            body = _validate(req)
            name, overrides = parse_model(body["model"])
        except BadRequest as exc:
            await self._json(send, req, 400, _envelope(str(exc), "invalid_request_error", exc.param, exc.code))
            return
        except ValueError as exc:
            await self._json(send, req, 400, _envelope(str(exc), "invalid_request_error", "model", "invalid_value"))
            return
        knobs = dataclasses.replace(self.knobs, **overrides)
        if knobs.fault_rate > 0 and self._rng.random() < knobs.fault_rate:
            name = "status-500"
        if name in STATUS_SCENARIOS:
            status, payload, extra = _status_error(name, body["model"], key)
            await self._json(send, req, status, payload, extra)
            return
        r = self._renderer(req, body, knobs, name)
        final = _render(r, _usage(body, r.answer))
        if body.get("stream") is True:
            await self._stream(send, req, r)
        else:
            await self._complete(send, req, r, final)

    def _renderer(self, req: MockRequest, body: Json, knobs: ChatKnobs, name: str) -> _Renderer:
        digest = hashlib.blake2b(f"{self.seed}:{req.request_id}".encode(), digest_size=24).hexdigest()
        ctx = _Ctx(knobs, body, digest)
        answer = _BUILDERS.get(name, _BUILDERS["text"])(ctx)
        options = body.get("stream_options")
        obfuscate = not (isinstance(options, dict) and options.get("include_obfuscation") is False)
        response = _response_object(body, "resp_" + digest, int(time.time()))
        if knobs.heavy_tail is not None:
            scale = min(self._rng.paretovariate(knobs.heavy_tail), _HEAVY_TAIL_CAP)
            ctx.knobs = dataclasses.replace(knobs, ttft=knobs.ttft * scale)
        return _Renderer(ctx, answer, response, obfuscate=obfuscate, rng=random.Random(digest))

    async def _stream(self, send: Responder, req: MockRequest, r: _Renderer) -> None:
        await send.start(200, (*_SSE_HEADERS, ("x-request-id", self._request_id(req))))
        sent = self.sent.setdefault(req.request_id, b"")
        t0 = trio.current_time()
        for offset, data in r.events:
            if offset > 0:
                await trio.sleep_until(t0 + offset)
            sent += data
            self.sent[req.request_id] = sent
            await send.chunk(data)
        ending = r.answer.ending
        if ending == "cut":
            await send.abort()
        elif ending == "stall":
            await trio.sleep_forever()
        else:
            await send.end()

    async def _complete(self, send: Responder, req: MockRequest, r: _Renderer, final: Json) -> None:
        await trio.sleep(r.events[-1][0] if r.events else 0.0)
        ending = r.answer.ending
        if ending == "stall":
            await trio.sleep_forever()
        if ending == "error":
            await self._json(send, req, 500, _envelope(_SERVER_ERROR, "server_error"))
            return
        payload = _dumps(final).encode()
        if ending == "cut":
            await send.start(200, (_JSON_TYPE, ("x-request-id", self._request_id(req))))
            await send.chunk(payload[: len(payload) // 2])
            await send.abort()
            return
        await self._json(send, req, 200, payload[: len(payload) // 2] if r.answer.malformed else payload)

    async def _json(self, send: Responder, req: MockRequest, status: int, payload: bytes,
                    extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.sent[req.request_id] = payload
        await send.full(status, (_JSON_TYPE, ("x-request-id", self._request_id(req)), *extra), payload)

    def _request_id(self, req: MockRequest) -> str:
        return "req_" + hashlib.blake2b(f"{self.seed}:{req.request_id}".encode(), digest_size=16).hexdigest()


# ------------------------------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arguments("responses_mock", "Mock native OpenAI Responses upstream.", unit="delta",
                            first="the first output event")
    return add_openai_options(parser).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock until SIGINT/SIGTERM; prints ``LISTENING <port>`` once bound."""
    args = _parse_args(argv)
    return run_until_signal(ResponsesMock(**openai_options(args)), args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())

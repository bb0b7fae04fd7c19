"""Mock OpenAI-compatible Chat Completions upstream (``POST /v1/chat/completions``, ``GET /v1/models``).

The answer is chosen by the request's ``model``: ``name`` or ``name:k=v,k=v`` where the
``k=v`` pairs override this mock's knobs for that request (``text:tokens=5,token_delay=0.01``).
Unknown names behave like ``text``; a model whose suffix is not ``k=v`` pairs (``llama3:8b``)
is just an unknown name.  See ``SCENARIOS`` and ``STATUS_SCENARIOS``.

Streams follow https://platform.openai.com/docs/api-reference/chat-streaming
byte for byte: ``data: <compact JSON>\\n\\n`` per chunk, first
chunk ``delta: {"role":"assistant","content":""}``, ``finish_reason`` on an empty-delta chunk,
an optional usage chunk (``stream_options.include_usage``), then ``data: [DONE]\\n\\n``.
Timing: the response headers go out at once; the first chunk follows after ``ttft`` (times a
seeded Pareto draw when ``heavy_tail`` is set, capped at 1000 x ``ttft``); each later content
chunk ``token_delay`` after the previous one (deadline-based, no drift).

Scenarios (streamed / non-streamed ``stream`` absent or false):

* ``text`` (and unknown names): ``tokens`` chunks of ``token_text``, finish ``stop``.
* ``tool`` / ``two-tools``: one / two (index 0, 1) fragmented tool calls named after the request's
  first / second tool (default ``get_weather``), args ``{"city":"Paris"|"Tokyo","unit":"celsius"}``,
  finish ``tool_calls``.
* ``reasoning``: ``reasoning_tokens`` ``delta.reasoning_content`` chunks, then text; non-streamed
  puts ``reasoning_content`` on the message.
* ``length``: text, finish ``length``.  ``refusal``: ``delta.refusal`` chunks, finish ``stop``.
* ``error-mid``: 3 text chunks, then an ``{"error":...}`` event and the end of the body (no
  ``[DONE]``); non-streamed: HTTP 500.
* ``cut``: 3 text chunks, then the connection is closed without the chunked terminator;
  non-streamed: half the JSON body, then the same.
* ``eof``: 3 text chunks, then a clean end without finish_reason or ``[DONE]``; non-streamed:
  ``finish_reason: null``.
* ``malformed``: a chunk whose data is not JSON after the second text chunk, then the rest as
  ``text``; non-streamed: a truncated (invalid) JSON body.
* ``stall``: the first text chunk, then silence until the client leaves; non-streamed: no answer.
* ``echo``: the raw request body as text chunks of 24 characters.
* ``status-400|401|404|429|500|503``: OpenAI's error envelope (429 ``retry-after: 7``, 503
  ``retry-after: 3``).  ``fault_rate`` turns any request into ``status-500``.

Usage: ``prompt_tokens`` = characters of message contents // 4 + 1; ``completion_tokens`` = the
number of content chunks (text, reasoning, refusal and tool-call chunks).

Run standalone: ``python -m streamgw.testing.chat_mock --port 0`` prints ``LISTENING <port>``.
``--hold-until N`` holds every chat completion until N of them are waiting (or, for all, until the
first waited ``--hold-timeout`` seconds), so that N streams are in flight at once however slowly
they arrive.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import trio

from streamgw.testing.mockbase import (
    Knobs,
    MockUpstream,
    base_knob_parsers,
    bearer_token,
    dumps,
    in_range,
    mock_arguments,
    models_list_body,
    non_negative,
    parse_knobs,
    run_until_signal,
)
from streamgw.testing.server import (
    MockRequest,
    Pacer,
    Responder,
)

__all__ = [
    "SCENARIOS",
    "STATUS_SCENARIOS",
    "BadRequest",
    "ChatCompletionsMock",
    "ChatKnobs",
    "add_openai_options",
    "json_object",
    "main",
    "mask_key",
    "openai_options",
    "parse_model",
    "prompt_tokens",
]

SCENARIOS = (
    "text", "tool", "two-tools", "reasoning", "length", "refusal", "error-mid",
    "cut", "eof", "malformed", "stall", "echo",
)
STATUS_SCENARIOS = ("status-400", "status-401", "status-404", "status-429", "status-500", "status-503")

Ending = Literal["done", "error", "cut", "eof", "stall"]
Json = dict[str, Any]

_SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
_JSON_TYPE = ("content-type", "application/json")
_ROLE_DELTA = b'{"role":"assistant","content":""}'
_CHOICE_TAIL = b',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
_DONE = b"data: [DONE]\n\n"
_FEW = 3
_ECHO_SLICE = 24
_HEAVY_TAIL_CAP = 1000.0
_REFUSAL_WORDS = ("I'm ", "sorry, ", "but ", "I ", "can't ", "help ", "with ", "that.")
_TOOL_ARGS = (
    ('{"city":', '"Paris",', '"unit":', '"celsius"}'),
    ('{"city":', '"Tokyo",', '"unit":', '"celsius"}'),
)
_DEFAULT_TOOL = "get_weather"
_SERVER_ERROR = "The server had an error while processing your request."
_VALID_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


def _envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


_MID_STREAM_ERROR = b"data: " + _envelope(_SERVER_ERROR, "server_error") + b"\n\n"


# ----------------------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class ChatKnobs(Knobs):
    """Per-request behaviour; the mock's defaults, overridable through the model string."""

    fault_rate: float = 0.0
    heavy_tail: float | None = None
    reasoning_tokens: int = 5


_KNOB_PARSERS: dict[str, Callable[[str], Any]] = {
    **base_knob_parsers(),
    "fault_rate": in_range(float, lambda v: 0 <= v <= 1),
    "heavy_tail": in_range(lambda s: None if s.lower() == "none" else float(s), lambda v: v is None or v > 0),
    "reasoning_tokens": in_range(int, non_negative),
}


def parse_model(model: str) -> tuple[str, dict[str, Any]]:
    """Split ``name:k=v,k=v`` into the name and typed knob overrides.

    A suffix that is not all ``k=v`` pairs is part of the name.  Raises ``ValueError`` for an
    unknown knob or a bad value.
    """
    return parse_knobs(model, _KNOB_PARSERS)


# ---------------------------------------------------------------------------------- the answers


class _Piece(NamedTuple):
    """One content chunk of an answer (``raw`` is sent verbatim as the data line)."""

    kind: Literal["content", "reasoning", "refusal", "tool_start", "tool_args", "raw"]
    text: str
    slot: int = 0  # the tool call's index
    call_id: str = ""
    name: str = ""


@dataclass
class _Answer:
    pieces: list[_Piece]
    finish_reason: str | None
    ending: Ending = "done"

    @property
    def tokens(self) -> int:
        return sum(1 for p in self.pieces if p.kind != "raw")

    @property
    def reasoning_tokens(self) -> int:
        return sum(1 for p in self.pieces if p.kind == "reasoning")

    @property
    def malformed(self) -> bool:
        return any(p.kind == "raw" for p in self.pieces)


@dataclass
class _Ctx:
    """What a scenario builder may look at."""

    knobs: ChatKnobs
    body: Json
    raw_body: bytes
    chat_id: str

    def call_id(self, index: int) -> str:
        return "call_" + hashlib.blake2b(f"{self.chat_id}/{index}".encode(), digest_size=12).hexdigest()

    def tool_name(self, index: int) -> str:
        tools = self.body.get("tools")
        found = [_tool_name(t) for t in tools] if isinstance(tools, list) else []
        names = [n for n in found if n is not None]
        return names[min(index, len(names) - 1)] if names else _DEFAULT_TOOL


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    fn = tool.get("function")
    name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
    return name if isinstance(name, str) and name else None


def _text_pieces(knobs: ChatKnobs, count: int) -> list[_Piece]:
    return [_Piece("content", knobs.text(i)) for i in range(count)]


def _tool_pieces(ctx: _Ctx, index: int) -> list[_Piece]:
    start = _Piece("tool_start", "", index, ctx.call_id(index), ctx.tool_name(index))
    return [start, *(_Piece("tool_args", frag, index) for frag in _TOOL_ARGS[index])]


def _build_text(ctx: _Ctx) -> _Answer:
    return _Answer(_text_pieces(ctx.knobs, ctx.knobs.tokens), "stop")


def _build_length(ctx: _Ctx) -> _Answer:
    return _Answer(_text_pieces(ctx.knobs, ctx.knobs.tokens), "length")


def _build_tool(ctx: _Ctx) -> _Answer:
    return _Answer(_tool_pieces(ctx, 0), "tool_calls")


def _build_two_tools(ctx: _Ctx) -> _Answer:
    return _Answer(_tool_pieces(ctx, 0) + _tool_pieces(ctx, 1), "tool_calls")


def _build_reasoning(ctx: _Ctx) -> _Answer:
    thoughts = [_Piece("reasoning", f"think{i} ") for i in range(ctx.knobs.reasoning_tokens)]
    return _Answer(thoughts + _text_pieces(ctx.knobs, ctx.knobs.tokens), "stop")


def _build_refusal(ctx: _Ctx) -> _Answer:
    return _Answer([_Piece("refusal", word) for word in _REFUSAL_WORDS], "stop")


def _build_truncated(ending: Ending, count: int) -> Callable[[_Ctx], _Answer]:
    def build(ctx: _Ctx) -> _Answer:
        return _Answer(_text_pieces(ctx.knobs, min(count, ctx.knobs.tokens)), None, ending)

    return build


def _build_malformed(ctx: _Ctx) -> _Answer:
    pieces = _text_pieces(ctx.knobs, ctx.knobs.tokens)
    broken = _Piece("raw", '{"id":"' + ctx.chat_id + '","object":"chat.completion.chunk","choices":[{"ind')
    return _Answer([*pieces[:2], broken, *pieces[2:]], "stop")


def _build_echo(ctx: _Ctx) -> _Answer:
    text = ctx.raw_body.decode("utf-8", errors="replace")
    slices = range(0, len(text), _ECHO_SLICE)
    return _Answer([_Piece("content", text[i : i + _ECHO_SLICE]) for i in slices], "stop")


_BUILDERS: dict[str, Callable[[_Ctx], _Answer]] = {
    "text": _build_text,
    "tool": _build_tool,
    "two-tools": _build_two_tools,
    "reasoning": _build_reasoning,
    "length": _build_length,
    "refusal": _build_refusal,
    "error-mid": _build_truncated("error", _FEW),
    "cut": _build_truncated("cut", _FEW),
    "eof": _build_truncated("eof", _FEW),
    "malformed": _build_malformed,
    "stall": _build_truncated("stall", 1),
    "echo": _build_echo,
}


# ------------------------------------------------------------------------------- usage and keys


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        texts = (part.get("text") for part in content if isinstance(part, dict))
        return sum(len(text) for text in texts if isinstance(text, str))
    return 0


def prompt_tokens(messages: Sequence[Any]) -> int:
    """The mock's prompt token count: total characters of message contents // 4 + 1."""
    chars = sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    return chars // 4 + 1


def _usage(prompt: int, answer: _Answer) -> Json:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": answer.tokens,
        "total_tokens": prompt + answer.tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": answer.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def mask_key(key: str) -> str:
    """Mask an API key the way OpenAI echoes it (``sk-tes***********key``)."""
    if len(key) >= 16:
        return key[:6] + "*" * (len(key) - 9) + key[-3:]
    shown = min(2, len(key) // 4)
    return key[:shown] + "*" * (len(key) - shown)


def _auth_error(received: str | None) -> bytes:
    if not received:
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        message = (
            f"Incorrect API key provided: {mask_key(received)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    return _envelope(message, "invalid_request_error", None, "invalid_api_key")


def _status_error(name: str, model: str, key: str | None) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """Status, body and extra headers of a ``status-NNN`` scenario."""
    if name == "status-400":
        return 400, _envelope(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in "
            "130000 tokens. Please reduce the length of the messages.",
            "invalid_request_error", "messages", "context_length_exceeded"), ()
    if name == "status-401":
        return 401, _auth_error(key), ()
    if name == "status-404":
        return 404, _envelope(
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error", None, "model_not_found"), ()
    if name == "status-429":
        return 429, _envelope(
            "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. "
            "Please try again in 7s.", "requests", None, "rate_limit_exceeded"), (
            ("retry-after", "7"), ("x-ratelimit-limit-requests", "3"),
            ("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "7s"))
    if name == "status-503":
        return 503, _envelope(
            "The engine is currently overloaded, please try again later.", "server_error"), (
            ("retry-after", "3"),)
    return 500, _envelope(
        "The server had an error while processing your request. Sorry about that!", "server_error"), ()


# ------------------------------------------------------------------------------------ rendering


@functools.lru_cache(maxsize=4096)
def _piece_tail(piece: _Piece) -> bytes:
    """Everything of a content chunk after ``"delta":`` (cached: the same pieces repeat)."""
    return dumps(_piece_delta(piece)) + _CHOICE_TAIL


def _piece_delta(piece: _Piece) -> Json:
    if piece.kind == "content":
        return {"content": piece.text}
    if piece.kind == "reasoning":
        return {"content": None, "reasoning_content": piece.text}
    if piece.kind == "refusal":
        return {"refusal": piece.text}
    if piece.kind == "tool_start":
        fn = {"name": piece.name, "arguments": ""}
        call = {"index": piece.slot, "id": piece.call_id, "type": "function", "function": fn}
        return {"tool_calls": [call]}
    return {"tool_calls": [{"index": piece.slot, "function": {"arguments": piece.text}}]}


@dataclass
class _Stream:
    """Precomputed bytes and schedule of one streamed answer.

    ``last`` goes out in the same write as the chunked terminator (``[DONE]`` or the error
    event), right after the last scheduled event.
    """

    head: bytes
    events: list[tuple[float, bytes]] = field(default_factory=list)
    last: bytes = b""

    def add(self, offset: float, body: bytes) -> None:
        self.events.append((offset, self.head + body))


def _render_stream(
    answer: _Answer, head: bytes, knobs: ChatKnobs, first: float, usage: Json | None
) -> _Stream:
    """Every chunk's bytes with its send time (seconds after the headers)."""
    out = _Stream(head)
    out.add(first, b'"choices":[{"index":0,"delta":' + _ROLE_DELTA + _CHOICE_TAIL)
    offset = first
    for i, piece in enumerate(answer.pieces):
        offset = first + i * knobs.token_delay
        if piece.kind == "raw":
            out.events.append((offset, b"data: " + piece.text.encode() + b"\n\n"))
        else:
            out.add(offset, b'"choices":[{"index":0,"delta":' + _piece_tail(piece))
    if answer.ending == "error":
        out.last = _MID_STREAM_ERROR
    if answer.ending != "done":
        return out
    out.add(offset, b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":%b}],"usage":null}\n\n'
            % dumps(answer.finish_reason))
    if usage is not None:
        out.add(offset, b'"choices":[],"usage":' + dumps(usage) + b"}\n\n")
    out.last = _DONE
    return out


def _render_message(answer: _Answer) -> Json:
    """The non-streamed ``message`` of an answer."""
    texts: dict[str, list[str]] = {"content": [], "reasoning": [], "refusal": []}
    calls: dict[int, Json] = {}
    for piece in answer.pieces:
        if piece.kind in texts:
            texts[piece.kind].append(piece.text)
        elif piece.kind == "tool_start":
            fn = {"name": piece.name, "arguments": ""}
            calls[piece.slot] = {"id": piece.call_id, "type": "function", "function": fn}
        elif piece.kind == "tool_args":
            calls[piece.slot]["function"]["arguments"] += piece.text
    message: Json = {
        "role": "assistant",
        "content": "".join(texts["content"]) if texts["content"] else None,
        "refusal": "".join(texts["refusal"]) if texts["refusal"] else None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if texts["reasoning"]:
        message["reasoning_content"] = "".join(texts["reasoning"])
    return message


# ------------------------------------------------------------------------------------- the mock


class BadRequest(Exception):
    """An OpenAI 400 (``invalid_request_error``) naming ``param`` and ``code``."""

    def __init__(self, message: str, param: str | None, code: str | None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def json_object(req: MockRequest) -> Json:
    """The request body as a JSON object, or the 400 OpenAI answers for anything else."""
    try:
        body = req.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise BadRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload.)", None, None)
    return body


def _validate(req: MockRequest) -> Json:
    """The request body, checked like OpenAI does; raises ``BadRequest``."""
    body = json_object(req)
    for name, kind, kind_name in (("model", str, "a string"), ("messages", list, "an array")):
        if name not in body:
            raise BadRequest(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
        if not isinstance(body[name], kind):
            raise BadRequest(
                f"Invalid type for '{name}': expected {kind_name}, but got {type(body[name]).__name__}.",
                name, "invalid_type")
    _validate_messages(body["messages"])
    return body


def _validate_messages(messages: list[Any]) -> None:
    if not messages:
        raise BadRequest(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.", "messages", "empty_array")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _VALID_ROLES:
            raise BadRequest(
                f"Invalid value: {role!r}. Supported values are: {', '.join(map(repr, _VALID_ROLES))}.",
                f"messages[{i}].role", "invalid_value")


def _parse_model_param(model: str) -> tuple[str, dict[str, Any]]:
    try:
        return parse_model(model)
    except ValueError as exc:
        raise BadRequest(str(exc), "model", "invalid_value") from None


class _Ids:
    """Deterministic ids of one request (seed + request ordinal)."""

    def __init__(self, seed: int, ordinal: int) -> None:
        digest = hashlib.blake2b(f"{seed}:{ordinal}".encode(), digest_size=12).hexdigest()
        self.chat_id = "chatcmpl-" + digest
        self.request_id = "req_" + digest


class ChatCompletionsMock(MockUpstream):
    """An OpenAI Chat Completions upstream with scripted scenarios.

    Every request received is appended to ``requests``; ``stats`` are the server counters once
    it is served with ``serve`` or ``serving_in_thread`` (or ``serve_http(mock.handle,
    stats=mock.stats)``).  ``knobs`` holds the defaults and may be replaced between requests.
    """

    def __init__(
        self,
        *,
        ttft: float = 0.0,
        token_delay: float = 0.0,
        tokens: int = 20,
        token_text: str = "tok{i} ",
        fault_rate: float = 0.0,
        heavy_tail: float | None = None,
        api_key: str | None = None,
        seed: int = 0,
        reasoning_tokens: int = 5,
        base_path: str = "/v1",
        hold_until: int = 0,
        hold_timeout: float = 60.0,
        pacer: Pacer | None = None,
    ) -> None:
        self.knobs = ChatKnobs(
            ttft, token_delay, tokens, token_text, fault_rate, heavy_tail, reasoning_tokens
        )
        super().__init__(api_key=api_key)
        self.seed = seed
        self.base_path = base_path.rstrip("/")
        self._rng = random.Random(seed)
        self._count = 0
        self.hold_until = hold_until
        self.hold_timeout = hold_timeout
        self._held = 0
        self._everyone_here = trio.Event()
        #: when given, every stream's timed chunks are written by it (one task) instead of by the stream
        self.pacer = pacer

    async def handle(self, req: MockRequest, send: Responder) -> None:
        """The server handler: auth, routing, validation, then the scenario."""
        self.requests.append(req)
        self._count += 1
        ids = _Ids(self.seed, self._count)
        key = bearer_token(req)
        if self.api_key is not None and key != self.api_key:
            await self._json(send, 401, _auth_error(key), ids)
        elif req.path == self.base_path + "/chat/completions" and req.method == "POST":
            if self.hold_until:
                await self._hold()
            await self._chat(req, send, ids, key)
        elif req.path == self.base_path + "/models" and req.method == "GET":
            await self._json(send, 200, models_list_body(SCENARIOS + STATUS_SCENARIOS), ids)
        else:
            body = _envelope(f"Invalid URL ({req.method} {req.path})", "invalid_request_error")
            await self._json(send, 404, body, ids)

    async def _hold(self) -> None:
        """Wait until ``hold_until`` requests are waiting; after ``hold_timeout`` seconds the first
        one opens the gate for everyone (later arrivals pass at once)."""
        self._held += 1
        if self._held >= self.hold_until:
            self._everyone_here.set()
        with trio.move_on_after(self.hold_timeout):
            await self._everyone_here.wait()
        self._everyone_here.set()

    async def _chat(self, req: MockRequest, send: Responder, ids: _Ids, key: str | None) -> None:
        try:
            body = _validate(req)
            name, overrides = _parse_model_param(body["model"])
        except BadRequest as exc:
            payload = _envelope(str(exc), "invalid_request_error", exc.param, exc.code)
            await self._json(send, 400, payload, ids)
            return
        knobs = dataclasses.replace(self.knobs, **overrides)
        if knobs.fault_rate > 0 and self._rng.random() < knobs.fault_rate:
            name = "status-500"
        if name in STATUS_SCENARIOS:
            status, payload, extra = _status_error(name, body["model"], key)
            await self._json(send, status, payload, ids, extra)
            return
        ctx = _Ctx(knobs, body, req.body, ids.chat_id)
        answer = _BUILDERS.get(name, _build_text)(ctx)
        first = self._first_delay(knobs)
        if body.get("stream") is True:
            await self._stream(send, body, answer, knobs, first, ids)
        else:
            await self._complete(send, body, answer, knobs, first, ids)

    def _first_delay(self, knobs: ChatKnobs) -> float:
        if knobs.heavy_tail is None:
            return knobs.ttft
        return knobs.ttft * min(self._rng.paretovariate(knobs.heavy_tail), _HEAVY_TAIL_CAP)

    async def _stream(self, send: Responder, body: Json, answer: _Answer, knobs: ChatKnobs,
                      first: float, ids: _Ids) -> None:
        options = body.get("stream_options")
        wants_usage = isinstance(options, dict) and options.get("include_usage") is True
        usage = _usage(prompt_tokens(body["messages"]), answer) if wants_usage else None
        head = b'data: {"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,' % (
            ids.chat_id.encode(), int(time.time()), dumps(body["model"]))
        plan = _render_stream(answer, head, knobs, first, usage)
        await send.start(200, (*_SSE_HEADERS, ("x-request-id", ids.request_id)))
        t0 = trio.current_time()
        events = plan.events
        if self.pacer is not None:
            now = 0
            while now < len(events) and events[now][0] <= 0:  # what is due at once goes from here
                await send.chunk(events[now][1])
                now += 1
            await self.pacer.play(send, t0, events[now:])
        else:
            for offset, data in events:
                if offset > 0:
                    await trio.sleep_until(t0 + offset)
                await send.chunk(data)
        await _finish_stream(send, answer.ending, plan.last)

    async def _complete(self, send: Responder, body: Json, answer: _Answer, knobs: ChatKnobs,
                        first: float, ids: _Ids) -> None:
        await trio.sleep(first + max(answer.tokens - 1, 0) * knobs.token_delay)
        if answer.ending == "stall":
            await trio.sleep_forever()
        if answer.ending == "error":
            await self._json(send, 500, _envelope(_SERVER_ERROR, "server_error"), ids)
            return
        payload = dumps(_completion(body, answer, ids.chat_id))
        if answer.ending == "cut":
            await send.start(200, (_JSON_TYPE, ("x-request-id", ids.request_id)))
            await send.chunk(payload[: len(payload) // 2])
            await send.abort()
        else:
            await self._json(send, 200, payload[: len(payload) // 2] if answer.malformed else payload, ids)

    @staticmethod
    async def _json(send: Responder, status: int, payload: bytes, ids: _Ids,
                    extra: tuple[tuple[str, str], ...] = ()) -> None:
        await send.full(status, (_JSON_TYPE, ("x-request-id", ids.request_id), *extra), payload)


async def _finish_stream(send: Responder, ending: Ending, last: bytes) -> None:
    if ending == "cut":
        await send.abort()
        return
    if ending == "stall":
        await trio.sleep_forever()
    await send.end(last)


def _completion(body: Json, answer: _Answer, chat_id: str) -> Json:
    choice = {"index": 0, "message": _render_message(answer), "logprobs": None,
              "finish_reason": answer.finish_reason}
    return {
        "id": chat_id, "object": "chat.completion", "created": int(time.time()), "model": body["model"],
        "choices": [choice], "usage": _usage(prompt_tokens(body["messages"]), answer),
        "service_tier": "default", "system_fingerprint": None,
    }


# ------------------------------------------------------------------------------------------ CLI


def add_openai_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options the OpenAI mocks (this one and ``responses_mock``) add to ``mock_arguments``."""
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability of a 500")
    parser.add_argument("--heavy-tail", type=float, default=None, metavar="ALPHA",
                        help="Pareto shape for the first-token delay (scaled by --ttft)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def openai_options(args: argparse.Namespace) -> dict[str, Any]:
    """The constructor arguments of an OpenAI mock from its parsed options."""
    names = ("ttft", "token_delay", "tokens", "token_text", "fault_rate", "heavy_tail", "api_key", "seed")
    return {name: getattr(args, name) for name in names}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = add_openai_options(mock_arguments("chat_mock", "Mock OpenAI Chat Completions upstream.", unit="chunk"))
    parser.add_argument("--hold-until", type=int, default=0, metavar="N",
                        help="hold every chat completion until N are waiting (0: off)")
    parser.add_argument("--hold-timeout", type=float, default=60.0, help="seconds a held request waits at most")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock until SIGINT/SIGTERM; prints ``LISTENING <port>`` once bound."""
    args = _parse_args(argv)
    mock = ChatCompletionsMock(**openai_options(args), hold_until=args.hold_until, hold_timeout=args.hold_timeout)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # one descriptor per client connection
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return run_until_signal(mock, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())

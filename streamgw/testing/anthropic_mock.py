"""Mock Anthropic Messages upstream (``POST /v1/messages``), byte for byte as Anthropic's Messages API has it.

Auth: ``x-api-key: KEY`` or ``Authorization: Bearer KEY`` (the official SDK sends the latter);
when the mock has an ``api_key`` anything else is a 401.  ``anthropic-version`` is required.
The body is validated like the API does it: ``model``, ``max_tokens`` and ``messages`` required,
no unknown top-level fields, roles ``user``/``assistant``, non-empty text blocks, every
``tool_use`` answered by a ``tool_result`` in the next message (and no stray results),
``thinking.budget_tokens`` >= 1024 and < ``max_tokens``, ``temperature`` in 0..1, and every
replayed ``thinking`` block's ``signature`` must be one this mock minted for that text
(``signature_for``).  Failures answer 400 with Anthropic's error body
``{"type":"error","error":{"type","message"},"request_id"}``.

The answer is chosen by the request's ``model``: ``name`` or ``name:k=v,...`` where the pairs
override knobs (``ttft``, ``token_delay``, ``tokens``, ``token_text``, ``thinking_tokens``,
``cache_read``, ``cache_write``).  Unknown names behave like ``text``.

* ``text``: ``tokens`` text deltas of ``token_text``; ``end_turn``.
* ``tool`` / ``two-tools``: one / two ``tool_use`` blocks named after the request's first / second
  tool (default ``get_weather``), input ``{"city": "Paris"|"Tokyo", "unit": "celsius"}`` sent as
  ``input_json_delta`` fragments (the first one ``""``); ``tool_use``.
* ``thinking``: a thinking block (``thinking_tokens`` deltas, then one ``signature_delta``), then
  text; ``thinking-tool``: the thinking block, then a ``tool_use`` block.
* ``redacted``: a ``redacted_thinking`` block, then text.
* ``max-tokens``: text, ``max_tokens``.  ``refusal``: a little text, then ``refusal``.
* ``error-mid``: 3 text deltas, then ``event: error`` (``overloaded_error``) and the end of the body.
* ``cut``: 3 text deltas, then the connection is closed mid-body.
* ``eof``: 3 text deltas, block stop and ``message_delta``, then a clean end without ``message_stop``.
* ``status-400|401|402|404|429|500|529``: Anthropic error bodies (429 ``retry-after: 7``,
  529 ``retry-after: 3``).  The 401 message deliberately echoes the key it received, so tests
  can prove the gateway redacts what an upstream leaks.

Streams are ``event: <type>\\ndata: <compact JSON>\\n\\n`` with the event name equal to
``data.type``; a ``ping`` follows the first ``content_block_start``.  Non-streamed requests get
the whole ``Message`` JSON (``error-mid``: HTTP 529; ``cut``: half the body, then a cut).
Usage: ``input_tokens`` = characters of system and message text // 4 + 1, ``output_tokens`` = the
number of deltas; the cache counts come from the knobs.

Run standalone: ``python -m streamgw.testing.anthropic_mock --port 0`` prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from streamgw.testing.mockbase import (
    Knobs,
    MockUpstream,
    base_knob_parsers,
    dumps,
    mock_arguments,
    non_negative_int,
    parse_knobs,
    run_until_signal,
)
from streamgw.testing.server import MockRequest, Responder

__all__ = [
    "SCENARIOS",
    "STATUS_SCENARIOS",
    "AnthropicKnobs",
    "AnthropicMock",
    "input_tokens",
    "main",
    "parse_model",
    "signature_for",
]

SCENARIOS = (
    "text", "tool", "two-tools", "thinking", "thinking-tool", "redacted", "max-tokens", "refusal",
    "error-mid", "cut", "eof",
)
STATUS_SCENARIOS = (
    "status-400", "status-401", "status-402", "status-404", "status-429", "status-500", "status-529",
)

Json = dict[str, Any]
Ending = Literal["done", "error", "cut", "eof"]

_SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"))
_JSON_TYPE = ("content-type", "application/json")
_FEW = 3
_DEFAULT_TOOL = "get_weather"
_TOOL_INPUTS = (
    ("", '{"city": ', '"Paris", ', '"unit": ', '"celsius"}'),
    ("", '{"city": ', '"Tokyo", ', '"unit": ', '"celsius"}'),
)
_REFUSAL_TEXT = ("I ", "can't ", "help ", "with ")
_SIGNATURE_KEY = b"streamgw-anthropic-mock"
_MIN_BUDGET = 1024
_TOP_LEVEL = frozenset({
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k", "tools",
    "tool_choice", "thinking", "output_config", "metadata", "service_tier", "stream", "cache_control",
    "container", "inference_geo", "context_management", "mcp_servers",
})


def signature_for(thinking: str) -> str:
    """The signature this mock puts on a thinking block with text ``thinking`` (and accepts back)."""
    digest = hashlib.blake2b(thinking.encode(), key=_SIGNATURE_KEY, digest_size=48).digest()
    return base64.b64encode(digest).decode()


def _error_body(type_: str, message: str, request_id: str) -> bytes:
    return dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id})


# ----------------------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class AnthropicKnobs(Knobs):
    """Per-request behaviour; the mock's defaults, overridable through the model string."""

    thinking_tokens: int = 5
    cache_read: int = 0
    cache_write: int = 0


_KNOB_PARSERS: dict[str, Callable[[str], Any]] = {
    **base_knob_parsers(range_errors=False),
    "thinking_tokens": non_negative_int,
    "cache_read": non_negative_int,
    "cache_write": non_negative_int,
}


def parse_model(model: str) -> tuple[str, dict[str, Any]]:
    """Split ``name:k=v,k=v`` into the name and typed knob overrides.

    A suffix that is not all ``k=v`` pairs is part of the name.  Raises ``ValueError`` for an
    unknown knob or a bad value.
    """
    return parse_knobs(model, _KNOB_PARSERS)


# ---------------------------------------------------------------------------------- the answers


@dataclass
class _Block:
    """One content block of an answer: its opening block and the delta pieces that fill it."""

    kind: Literal["text", "thinking", "redacted_thinking", "tool_use"]
    pieces: list[str] = field(default_factory=list)
    tool_id: str = ""
    name: str = ""
    data: str = ""

    def start(self) -> Json:
        """The ``content_block`` of ``content_block_start``."""
        if self.kind == "text":
            return {"type": "text", "text": ""}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        if self.kind == "redacted_thinking":
            return {"type": "redacted_thinking", "data": self.data}
        return {"type": "tool_use", "id": self.tool_id, "name": self.name, "input": {}}

    def deltas(self) -> list[Json]:
        """The ``delta`` objects of its ``content_block_delta`` events."""
        if self.kind == "text":
            return [{"type": "text_delta", "text": piece} for piece in self.pieces]
        if self.kind == "thinking":
            thoughts = [{"type": "thinking_delta", "thinking": piece} for piece in self.pieces]
            return [*thoughts, {"type": "signature_delta", "signature": signature_for("".join(self.pieces))}]
        if self.kind == "tool_use":
            return [{"type": "input_json_delta", "partial_json": piece} for piece in self.pieces]
        return []

    def final(self) -> Json:
        """The block as a non-streamed ``Message`` holds it."""
        joined = "".join(self.pieces)
        if self.kind == "text":
            return {"type": "text", "text": joined, "citations": None}
        if self.kind == "thinking":
            return {"type": "thinking", "thinking": joined, "signature": signature_for(joined)}
        if self.kind == "tool_use":
            return {"type": "tool_use", "id": self.tool_id, "name": self.name, "input": json.loads(joined or "{}")}
        return self.start()


@dataclass
class _Answer:
    blocks: list[_Block]
    stop_reason: str
    ending: Ending = "done"

    @property
    def output_tokens(self) -> int:
        return sum(len(block.pieces) for block in self.blocks)


@dataclass
class _Ctx:
    """What a scenario builder may look at."""

    knobs: AnthropicKnobs
    body: Json
    message_id: str

    def tool_id(self, index: int) -> str:
        return "toolu_" + hashlib.blake2b(f"{self.message_id}/{index}".encode(), digest_size=12).hexdigest()

    def tool_name(self, index: int) -> str:
        tools = self.body.get("tools")
        found = [t.get("name") for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
        names = [n for n in found if isinstance(n, str) and n]
        return names[min(index, len(names) - 1)] if names else _DEFAULT_TOOL

    def text(self, count: int) -> _Block:
        return _Block("text", [self.knobs.text(i) for i in range(count)])

    def thinking(self) -> _Block:
        return _Block("thinking", [f"think{i} " for i in range(self.knobs.thinking_tokens)])

    def tool(self, index: int) -> _Block:
        return _Block("tool_use", list(_TOOL_INPUTS[index]), self.tool_id(index), self.tool_name(index))


def _build_text(ctx: _Ctx) -> _Answer:
    return _Answer([ctx.text(ctx.knobs.tokens)], "end_turn")


def _build_tool(ctx: _Ctx) -> _Answer:
    return _Answer([ctx.tool(0)], "tool_use")


def _build_two_tools(ctx: _Ctx) -> _Answer:
    return _Answer([ctx.tool(0), ctx.tool(1)], "tool_use")


def _build_thinking(ctx: _Ctx) -> _Answer:
    return _Answer([ctx.thinking(), ctx.text(ctx.knobs.tokens)], "end_turn")


def _build_thinking_tool(ctx: _Ctx) -> _Answer:
    return _Answer([ctx.thinking(), ctx.tool(0)], "tool_use")


def _build_redacted(ctx: _Ctx) -> _Answer:
    data = base64.b64encode(hashlib.blake2b(ctx.message_id.encode(), digest_size=48).digest()).decode()
    return _Answer([_Block("redacted_thinking", data=data), ctx.text(ctx.knobs.tokens)], "end_turn")


def _build_max_tokens(ctx: _Ctx) -> _Answer:
    return _Answer([ctx.text(ctx.knobs.tokens)], "max_tokens")


def _build_refusal(ctx: _Ctx) -> _Answer:
    return _Answer([_Block("text", list(_REFUSAL_TEXT))], "refusal")


def _build_truncated(ending: Ending) -> Callable[[_Ctx], _Answer]:
    def build(ctx: _Ctx) -> _Answer:
        return _Answer([ctx.text(min(_FEW, ctx.knobs.tokens))], "end_turn", ending)

    return build


_BUILDERS: dict[str, Callable[[_Ctx], _Answer]] = {
    "text": _build_text,
    "tool": _build_tool,
    "two-tools": _build_two_tools,
    "thinking": _build_thinking,
    "thinking-tool": _build_thinking_tool,
    "redacted": _build_redacted,
    "max-tokens": _build_max_tokens,
    "refusal": _build_refusal,
    "error-mid": _build_truncated("error"),
    "cut": _build_truncated("cut"),
    "eof": _build_truncated("eof"),
}


# ------------------------------------------------------------------------------------ rendering


def _event(payload: Json) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + dumps(payload) + b"\n\n"


_PING = _event({"type": "ping"})
_OVERLOADED = _event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
_MESSAGE_STOP = _event({"type": "message_stop"})


def _usage(input_tokens: int, knobs: AnthropicKnobs, output_tokens: int) -> Json:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": knobs.cache_write,
        "cache_read_input_tokens": knobs.cache_read,
        "output_tokens": output_tokens,
    }


def _message(ctx: _Ctx, usage: Json, content: list[Json], stop: str | None) -> Json:
    return {
        "id": ctx.message_id, "type": "message", "role": "assistant", "model": ctx.body["model"],
        "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage,
    }


def _render_blocks(answer: _Answer) -> Iterator[tuple[bool, bytes]]:
    """``(counts as a token, event bytes)`` for every block event, up to the scenario's break point."""
    for index, block in enumerate(answer.blocks):
        yield False, _event({"type": "content_block_start", "index": index, "content_block": block.start()})
        if index == 0:
            yield False, _PING
        for delta in block.deltas():
            yield True, _event({"type": "content_block_delta", "index": index, "delta": delta})
        if answer.ending in ("error", "cut"):
            return  # these break off inside the block
        yield False, _event({"type": "content_block_stop", "index": index})


def _render_stream(ctx: _Ctx, answer: _Answer, input_tokens: int) -> tuple[list[tuple[bool, bytes]], bytes]:
    """The events (flagged when they are paced like tokens) and what goes out with the terminator."""
    start = _message(ctx, _usage(input_tokens, ctx.knobs, 1), [], None)
    events = [(True, _event({"type": "message_start", "message": start})), *_render_blocks(answer)]
    if answer.ending in ("error", "cut"):
        return events, _OVERLOADED if answer.ending == "error" else b""
    delta = {"stop_reason": answer.stop_reason, "stop_sequence": None}
    usage = _usage(input_tokens, ctx.knobs, answer.output_tokens)
    events.append((False, _event({"type": "message_delta", "delta": delta, "usage": usage})))
    return events, _MESSAGE_STOP if answer.ending == "done" else b""


# ----------------------------------------------------------------------------------- validation


class _BadRequest(Exception):
    """The request is wrong: answered 400 ``invalid_request_error`` with this message."""


def _text_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        texts = (block.get("text") for block in content if isinstance(block, dict))
        return sum(len(text) for text in texts if isinstance(text, str))
    return 0


def input_tokens(body: Json) -> int:
    """The mock's input token count: characters of system and message text // 4 + 1."""
    messages = body.get("messages") or []
    chars = _text_chars(body.get("system")) + sum(_text_chars(m.get("content")) for m in messages)
    return chars // 4 + 1


def _check_top_level(body: Json) -> None:
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _BadRequest(f"{name}: Field required")
    extra = sorted(set(body) - _TOP_LEVEL)
    if extra:
        raise _BadRequest(f"{extra[0]}: Extra inputs are not permitted")
    if not isinstance(body["model"], str):
        raise _BadRequest("model: Input should be a valid string")
    if type(body["max_tokens"]) is not int or body["max_tokens"] < 0:
        raise _BadRequest("max_tokens: Input should be a valid integer greater than or equal to 0")
    temperature = body.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 1):
        raise _BadRequest("temperature: Input should be less than or equal to 1")
    _check_thinking(body)


def _check_thinking(body: Json) -> None:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if type(budget) is not int or budget < _MIN_BUDGET:
        raise _BadRequest("thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
    if budget >= body["max_tokens"]:
        raise _BadRequest("`max_tokens` must be greater than `thinking.budget_tokens`.")
    if "temperature" in body and body["temperature"] != 1:
        raise _BadRequest("`temperature` may only be set to 1 when thinking is enabled.")


def _check_block(block: Any, where: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _BadRequest(f"{where}.type: Field required")
    if block["type"] == "text" and not block.get("text"):
        raise _BadRequest("messages: text content blocks must be non-empty")
    if block["type"] == "thinking" and block.get("signature") != signature_for(str(block.get("thinking"))):
        raise _BadRequest(f"{where}: Invalid `signature` in `thinking` block")


def _blocks(message: Json) -> list[Json]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise _BadRequest("messages: Input should be a valid list")
    if not messages:
        raise _BadRequest("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise _BadRequest(f"messages.{i}.content: Field required")
        for j, block in enumerate(_blocks(message)):
            _check_block(block, f"messages.{i}.content.{j}")
    _check_tool_pairs(messages)


def _ids(message: Json, kind: str, key: str) -> list[str]:
    return [str(block.get(key)) for block in _blocks(message) if block["type"] == kind]


def _check_tool_pairs(messages: list[Json]) -> None:
    """Every ``tool_use`` is answered in the next message, and every result answers one."""
    asked: list[str] = []
    for i, message in enumerate(messages):
        answered = _ids(message, "tool_result", "tool_use_id")
        missing = [tool_id for tool_id in asked if tool_id not in answered]
        if missing:
            raise _BadRequest(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                "in the next message.")
        stray = [tool_id for tool_id in answered if tool_id not in asked]
        if stray:
            raise _BadRequest(
                f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks: {stray[0]}. "
                "Each `tool_result` block must have a corresponding `tool_use` block in the previous message.")
        asked = _ids(message, "tool_use", "id") if message["role"] == "assistant" else []


def _validate(req: MockRequest) -> Json:
    """The request body, checked like the API does; raises ``_BadRequest``."""
    try:
        body = req.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _BadRequest("There was an error parsing the body of your request. The body must be a JSON object.")
    _check_top_level(body)
    _check_messages(body["messages"])
    return body


# ------------------------------------------------------------------------------------- the mock


class _Ids:
    """Deterministic ids of one request (seed + request ordinal)."""

    def __init__(self, seed: int, ordinal: int) -> None:
        digest = hashlib.blake2b(f"{seed}:{ordinal}".encode(), digest_size=12).hexdigest()
        self.message_id = "msg_" + digest
        self.request_id = "req_" + digest


def _received_key(req: MockRequest) -> str | None:
    if "x-api-key" in req.headers:
        return req.headers["x-api-key"]
    scheme, _, token = req.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _status_error(name: str, model: str, key: str | None) -> tuple[int, str, str, tuple[tuple[str, str], ...]]:
    """Status, error type, message and extra headers of a ``status-NNN`` scenario."""
    table: dict[str, tuple[int, str, str, tuple[tuple[str, str], ...]]] = {
        "status-400": (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", ()),
        "status-401": (401, "authentication_error", f"invalid x-api-key (received {key!r})", ()),
        "status-402": (402, "billing_error", "Your credit balance is too low to access the Anthropic API. "
                       "Please go to Plans & Billing to upgrade or purchase credits.", ()),
        "status-404": (404, "not_found_error", f"model: {model}", ()),
        "status-429": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate "
                       "limit. Please try again in 7 seconds.",
                       (("retry-after", "7"), ("anthropic-ratelimit-requests-remaining", "0"))),
        "status-529": (529, "overloaded_error", "Overloaded", (("retry-after", "3"),)),
    }
    return table.get(name, (500, "api_error", "Internal server error", ()))


class AnthropicMock(MockUpstream):
    """An Anthropic Messages upstream with scripted scenarios.

    Every request received is appended to ``requests``; ``stats`` are the server counters once
    it is served with ``serve`` or ``serving_in_thread``.  ``knobs`` holds the defaults and may
    be replaced between requests.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        ttft: float = 0.0,
        token_delay: float = 0.0,
        tokens: int = 20,
        token_text: str = "tok{i} ",
        thinking_tokens: int = 5,
        seed: int = 0,
    ) -> None:
        self.knobs = AnthropicKnobs(ttft, token_delay, tokens, token_text, thinking_tokens)
        super().__init__(api_key=api_key)
        self.seed = seed
        self._count = 0

    def bodies(self) -> list[Json]:
        """The JSON bodies of the ``/v1/messages`` requests received so far, in order."""
        return [req.json() for req in self.requests if req.path == "/v1/messages" and req.body]

    async def handle(self, req: MockRequest, send: Responder) -> None:
        """The server handler: auth, version header, routing, validation, then the scenario."""
        self.requests.append(req)
        self._count += 1
        ids = _Ids(self.seed, self._count)
        key = _received_key(req)
        if self.api_key is not None and key != self.api_key:
            await _json(send, 401, _error_body("authentication_error", "invalid x-api-key", ids.request_id), ids)
        elif "anthropic-version" not in req.headers:
            body = _error_body("invalid_request_error", "anthropic-version: header is required", ids.request_id)
            await _json(send, 400, body, ids)
        elif req.path == "/v1/messages" and req.method == "POST":
            await self._messages(req, send, ids, key)
        else:
            body = _error_body("not_found_error", f"Not found: {req.method} {req.path}", ids.request_id)
            await _json(send, 404, body, ids)

    async def _messages(self, req: MockRequest, send: Responder, ids: _Ids, key: str | None) -> None:
        try:
            body = _validate(req)
            name, overrides = parse_model(body["model"])
        except (_BadRequest, ValueError) as exc:
            await _json(send, 400, _error_body("invalid_request_error", str(exc), ids.request_id), ids)
            return
        if name in STATUS_SCENARIOS:
            status, etype, message, extra = _status_error(name, body["model"], key)
            await _json(send, status, _error_body(etype, message, ids.request_id), ids, extra)
            return
        ctx = _Ctx(dataclasses.replace(self.knobs, **overrides), body, ids.message_id)
        answer = _BUILDERS.get(name, _build_text)(ctx)
        if body.get("stream") is True:
            await _stream(send, ctx, answer, ids)
        else:
            await _complete(send, ctx, answer, ids)


async def _json(send: Responder, status: int, payload: bytes, ids: _Ids,
                extra: tuple[tuple[str, str], ...] = ()) -> None:
    await send.full(status, (_JSON_TYPE, ("request-id", ids.request_id), *extra), payload)


async def _stream(send: Responder, ctx: _Ctx, answer: _Answer, ids: _Ids) -> None:
    events, last = _render_stream(ctx, answer, input_tokens(ctx.body))
    await send.start(200, (*_SSE_HEADERS, ("request-id", ids.request_id)))
    t0 = trio.current_time()
    ticks = 0
    for paced, data in events:
        if paced:
            await trio.sleep_until(t0 + ctx.knobs.ttft + ticks * ctx.knobs.token_delay)
            ticks += 1
        await send.chunk(data)
    if answer.ending == "cut":
        await send.abort()
    else:
        await send.end(last)


async def _complete(send: Responder, ctx: _Ctx, answer: _Answer, ids: _Ids) -> None:
    await trio.sleep(ctx.knobs.ttft + answer.output_tokens * ctx.knobs.token_delay)
    if answer.ending == "error":
        await _json(send, 529, _error_body("overloaded_error", "Overloaded", ids.request_id), ids)
        return
    usage = _usage(input_tokens(ctx.body), ctx.knobs, answer.output_tokens)
    payload = dumps(_message(ctx, usage, [b.final() for b in answer.blocks], answer.stop_reason))
    if answer.ending == "cut":
        await send.start(200, (_JSON_TYPE, ("request-id", ids.request_id)))
        await send.chunk(payload[: len(payload) // 2])
        await send.abort()
    else:
        await _json(send, 200, payload, ids)


# ------------------------------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arguments("anthropic_mock", "Mock Anthropic Messages upstream.", unit="delta",
                            first="message_start", key_help="require x-api-key (or Authorization: Bearer) KEY")
    parser.add_argument("--thinking-tokens", type=int, default=5, help="thinking deltas per thinking block")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock until SIGINT/SIGTERM; prints ``LISTENING <port>`` once bound."""
    args = _parse_args(argv)
    mock = AnthropicMock(
        api_key=args.api_key, ttft=args.ttft, token_delay=args.token_delay, tokens=args.tokens,
        token_text=args.token_text, thinking_tokens=args.thinking_tokens, seed=args.seed,
    )
    return run_until_signal(mock, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())

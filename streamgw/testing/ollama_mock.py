"""Mock Ollama server: ``POST /api/chat`` (NDJSON or one JSON object), ``GET /api/tags``.

Byte for byte as https://github.com/ollama/ollama/blob/main/docs/api.md describes:
a streamed answer is ``application/x-ndjson``, one
compact JSON object per ``\\n``-terminated line, each with ``model``, ``created_at`` (RFC 3339,
UTC), ``message`` and ``done: false``; the last line has an empty message, ``done: true``,
``done_reason`` and the durations (ns) and counts (``prompt_eval_count``, ``eval_count``; zeros
omitted, as Ollama does).  ``"stream": false`` gets the same answer aggregated into one object.
Tool-call ``arguments`` are JSON objects.

The answer is chosen by the request's ``model``: ``name`` or ``name:k=v,k=v`` (knobs ``tokens``,
``token_text``, ``thinking_tokens``, ``ttft``, ``token_delay``).  A suffix that is not ``k=v``
pairs is part of the name (``llama3.2:3b``); unknown names behave like ``text``; names starting
with ``missing`` are models that are not pulled (404).

Scenarios:

* ``text``: ``tokens`` content lines, ``done_reason: "stop"``.
* ``tool``: one line with one tool call (``id`` set) named after the request's first tool
  (default ``get_weather``), arguments ``{"city":"Paris","unit":"celsius"}``.
* ``two-tools``: one line with two tool calls and no ids (as older Ollama sends them).
* ``thinking``: ``thinking_tokens`` lines of ``message.thinking``, then the text.
* ``length``: text, ``done_reason: "length"``.
* ``error-mid``: 3 text lines, then ``{"error":"..."}`` and the end of the body; non-streamed: 500.
* ``cut``: 3 text lines, then the connection is closed mid-body.
* ``eof``: 3 text lines, then a clean end without the done line.
* ``malformed``: 2 text lines, a line that is not JSON, then the rest of ``text``.
* ``stall``: one text line, then silence until the client leaves.
* ``status-400|404|429|500``: ``{"error":"..."}`` with that status (429 has ``retry-after: 7``).

Validation (400 ``{"error": ...}``): a body that is not a JSON object, a missing ``model``
(``model is required``), ``messages`` that are not objects with a string ``role``, a tool call
whose ``arguments`` is not an object, images that are not bare base64, a bad ``format``,
``think`` or ``options``.  Every request is recorded in ``requests``.

Run standalone: ``python -m streamgw.testing.ollama_mock --port 0`` prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

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

__all__ = ["SCENARIOS", "STATUS_SCENARIOS", "OllamaKnobs", "OllamaMock", "main", "parse_model", "prompt_eval_count"]

SCENARIOS = ("text", "tool", "two-tools", "thinking", "length", "error-mid", "cut", "eof", "malformed", "stall")
STATUS_SCENARIOS = ("status-400", "status-404", "status-429", "status-500")

Ending = Literal["done", "error", "cut", "eof", "stall"]
Json = dict[str, Any]

_NDJSON = ("content-type", "application/x-ndjson")
_JSON = ("content-type", "application/json; charset=utf-8")
_FEW = 3
_DEFAULT_TOOL = "get_weather"
_TOOL_ARGS: tuple[Json, ...] = ({"city": "Paris", "unit": "celsius"}, {"city": "Tokyo", "unit": "celsius"})
_MID_STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
_THINK_VALUES = ("low", "medium", "high", "max")
_ROLES = ("system", "user", "assistant", "tool")
_LOAD_NS = 1_250_000


def _error(message: str) -> bytes:
    return dumps({"error": message})


def _now() -> str:
    """``created_at`` as Go's RFC 3339 with nanoseconds renders it (here microseconds), UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ----------------------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class OllamaKnobs(Knobs):
    """Per-request behaviour; the mock's defaults, overridable through the model string."""

    tokens: int = 8
    thinking_tokens: int = 4


_KNOB_PARSERS: dict[str, Callable[[str], Any]] = {
    **base_knob_parsers(range_errors=False),
    "thinking_tokens": non_negative_int,
}


def parse_model(model: str) -> tuple[str, dict[str, Any]]:
    """Split ``name:k=v,k=v`` into the name and typed knob overrides.

    A suffix that is not all ``k=v`` pairs is part of the name (``llama3.2:3b``).  Raises
    ``ValueError`` for an unknown knob or a bad value.
    """
    return parse_knobs(model, _KNOB_PARSERS)


# ---------------------------------------------------------------------------------- the answers


class _Piece(NamedTuple):
    """One line of an answer: content, thinking, tool calls, or ``raw`` bytes sent verbatim."""

    kind: Literal["content", "thinking", "tools", "raw"]
    text: str = ""
    calls: tuple[Json, ...] = ()


@dataclass
class _Answer:
    pieces: list[_Piece]
    done_reason: str = "stop"
    ending: Ending = "done"

    @property
    def eval_count(self) -> int:
        return sum(1 for p in self.pieces if p.kind != "raw")

    @property
    def malformed(self) -> bool:
        return any(p.kind == "raw" for p in self.pieces)


@dataclass
class _Ctx:
    knobs: OllamaKnobs
    body: Json
    seed: str

    def tool_name(self, index: int) -> str:
        tools = self.body.get("tools")
        names = [_tool_name(t) for t in tools] if isinstance(tools, list) else []
        found = [n for n in names if n]
        return found[min(index, len(found) - 1)] if found else _DEFAULT_TOOL

    def call(self, index: int, with_id: bool) -> Json:
        call: Json = {"function": {"index": index, "name": self.tool_name(index), "arguments": _TOOL_ARGS[index]}}
        if with_id:
            digest = hashlib.blake2b(f"{self.seed}/{index}".encode(), digest_size=6).hexdigest()
            call = {"id": "call_" + digest, **call}
        return call


def _tool_name(tool: Any) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


def _text(knobs: OllamaKnobs, count: int) -> list[_Piece]:
    return [_Piece("content", knobs.text(i)) for i in range(count)]


def _build_thinking(ctx: _Ctx) -> _Answer:
    thoughts = [_Piece("thinking", f"think{i} ") for i in range(ctx.knobs.thinking_tokens)]
    return _Answer(thoughts + _text(ctx.knobs, ctx.knobs.tokens))


def _build_malformed(ctx: _Ctx) -> _Answer:
    pieces = _text(ctx.knobs, ctx.knobs.tokens)
    broken = _Piece("raw", '{"model":"malformed","created_at":"2025-07-07T20:22:19Z","message":{"ro')
    return _Answer([*pieces[:2], broken, *pieces[2:]])


def _build_truncated(ending: Ending, count: int) -> Callable[[_Ctx], _Answer]:
    def build(ctx: _Ctx) -> _Answer:
        return _Answer(_text(ctx.knobs, min(count, ctx.knobs.tokens)), ending=ending)

    return build


_BUILDERS: dict[str, Callable[[_Ctx], _Answer]] = {
    "text": lambda ctx: _Answer(_text(ctx.knobs, ctx.knobs.tokens)),
    "length": lambda ctx: _Answer(_text(ctx.knobs, ctx.knobs.tokens), "length"),
    "tool": lambda ctx: _Answer([_Piece("tools", calls=(ctx.call(0, True),))]),
    "two-tools": lambda ctx: _Answer([_Piece("tools", calls=(ctx.call(0, False), ctx.call(1, False)))]),
    "thinking": _build_thinking,
    "malformed": _build_malformed,
    "error-mid": _build_truncated("error", _FEW),
    "cut": _build_truncated("cut", _FEW),
    "eof": _build_truncated("eof", _FEW),
    "stall": _build_truncated("stall", 1),
}


def _status_error(name: str, model: str) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """Status, body and extra headers of a ``status-NNN`` scenario."""
    if name == "status-400":
        return 400, _error("invalid options: num_ctx must be a positive integer"), ()
    if name == "status-404":
        return 404, _error(f'model "{model}" not found, try pulling it first'), ()
    if name == "status-429":
        return 429, _error("too many requests, please retry later"), (("retry-after", "7"),)
    return 500, _error("llama runner process has terminated: exit status 2"), ()


# ------------------------------------------------------------------------------------ rendering


def prompt_eval_count(messages: Sequence[Any]) -> int:
    """The mock's prompt token count: total characters of message contents // 4 + 1."""
    chars = sum(len(m.get("content") or "") for m in messages if isinstance(m, dict))
    return chars // 4 + 1


def _piece_message(piece: _Piece) -> Json:
    message: Json = {"role": "assistant", "content": piece.text if piece.kind == "content" else ""}
    if piece.kind == "thinking":
        message["thinking"] = piece.text
    elif piece.kind == "tools":
        message["tool_calls"] = list(piece.calls)
    return message


def _line(model: str, message: Json) -> bytes:
    return dumps({"model": model, "created_at": _now(), "message": message, "done": False}) + b"\n"


def _done_fields(answer: _Answer, prompt: int, elapsed_ns: int) -> Json:
    fields: Json = {
        "done": True,
        "done_reason": answer.done_reason,
        "total_duration": _LOAD_NS + 2 * max(elapsed_ns, 1),
        "load_duration": _LOAD_NS,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": max(elapsed_ns, 1),
        "eval_count": answer.eval_count,
        "eval_duration": max(elapsed_ns, 1),
    }
    return {key: value for key, value in fields.items() if value != 0}  # Go's omitempty


def _aggregate(answer: _Answer) -> Json:
    """The one ``message`` of a non-streamed answer."""
    texts = {"content": "", "thinking": ""}
    calls: list[Json] = []
    for piece in answer.pieces:
        if piece.kind in texts:
            texts[piece.kind] += piece.text
        calls.extend(piece.calls)
    message: Json = {"role": "assistant", "content": texts["content"]}
    if texts["thinking"]:
        message["thinking"] = texts["thinking"]
    if calls:
        message["tool_calls"] = calls
    return message


# ----------------------------------------------------------------------------------- validation


class _BadRequest(Exception):
    """A request Ollama would refuse with 400 ``{"error": str(exc)}``."""


def _load_body(raw: bytes) -> Json:
    if not raw.strip():
        raise _BadRequest("missing request body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _BadRequest(f"invalid character in request body: {exc}") from None
    if not isinstance(body, dict):
        raise _BadRequest("json: cannot unmarshal request body into Go value of type api.ChatRequest")
    return body


def _unmarshal(field: str, value: Any, go_type: str) -> _BadRequest:
    kind = {str: "string", list: "array", dict: "object", bool: "bool"}.get(type(value), "number")
    return _BadRequest(f"json: cannot unmarshal {kind} into Go struct field {field} of type {go_type}")


def _check_images(images: Any) -> None:
    if not isinstance(images, list):
        raise _unmarshal("Message.messages.images", images, "[]api.ImageData")
    for image in images:
        if not isinstance(image, str):
            raise _unmarshal("Message.messages.images", image, "api.ImageData")
        try:
            base64.b64decode(image, validate=True)
        except binascii.Error:
            raise _BadRequest("illegal base64 data at input byte 0") from None


def _check_tool_calls(calls: Any) -> None:
    if not isinstance(calls, list):
        raise _unmarshal("Message.messages.tool_calls", calls, "[]api.ToolCall")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _unmarshal("ToolCall.messages.tool_calls.function", function, "api.ToolCallFunction")
        arguments = function.get("arguments")
        if not isinstance(arguments, dict):
            raise _unmarshal("ToolCallFunction.messages.tool_calls.function.arguments", arguments,
                             "api.ToolCallFunctionArguments")


def _check_message(message: Any) -> None:
    if not isinstance(message, dict):
        raise _unmarshal("ChatRequest.messages", message, "api.Message")
    role = message.get("role")
    if role not in _ROLES:
        raise _BadRequest(f"invalid role {role!r}: must be one of {', '.join(_ROLES)}")
    for key, go_type in (("content", "string"), ("thinking", "string"), ("tool_name", "string")):
        if key in message and not isinstance(message[key], str):
            raise _unmarshal(f"Message.messages.{key}", message[key], go_type)
    if "images" in message:
        _check_images(message["images"])
    if "tool_calls" in message:
        _check_tool_calls(message["tool_calls"])


def _check_fields(body: Json) -> None:
    fmt = body.get("format")
    if fmt is not None and fmt not in ("", "json") and not isinstance(fmt, dict):
        raise _BadRequest(f"invalid format: {json.dumps(fmt)}; expected \"json\" or a JSON schema")
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in _THINK_VALUES:
        raise _BadRequest(f"invalid think value: {json.dumps(think)} (must be a boolean or one of low, medium, "
                          "high, max)")
    for key, kind, go_type in (("options", dict, "map[string]interface {}"), ("stream", bool, "bool"),
                               ("tools", list, "api.Tools")):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise _unmarshal(f"ChatRequest.{key}", body[key], go_type)


def _validate(raw: bytes) -> Json:
    """The request body, checked the way Ollama decodes it; raises ``_BadRequest``."""
    body = _load_body(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model is required")
    messages = body.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise _unmarshal("ChatRequest.messages", messages, "[]api.Message")
        for message in messages:
            _check_message(message)
    _check_fields(body)
    return body


# ------------------------------------------------------------------------------------- the mock


class OllamaMock(MockUpstream):
    """An Ollama server with scripted scenarios.

    Every request received is appended to ``requests``; ``stats`` are the server counters once
    it is served with ``serve`` or ``serving_in_thread``.  ``knobs`` holds the defaults.  With
    ``api_key`` set, requests need ``Authorization: Bearer <api_key>`` (as a hosted Ollama
    behind an authenticating proxy would); a local Ollama has no key.
    """

    def __init__(
        self,
        *,
        ttft: float = 0.0,
        token_delay: float = 0.0,
        tokens: int = 8,
        token_text: str = "tok{i} ",
        thinking_tokens: int = 4,
        api_key: str | None = None,
    ) -> None:
        self.knobs = OllamaKnobs(ttft, token_delay, tokens, token_text, thinking_tokens)
        super().__init__(api_key=api_key)

    async def handle(self, req: MockRequest, send: Responder) -> None:
        """The server handler: auth, routing, then the chat scenario."""
        self.requests.append(req)
        route = (req.method, req.path)
        if self.api_key is not None and req.headers.get("authorization") != f"Bearer {self.api_key}":
            await send.full(401, (_JSON,), _error("unauthorized"))
        elif route == ("POST", "/api/chat"):
            await self._chat(req, send)
        elif route == ("GET", "/api/tags"):
            await send.full(200, (_JSON,), _tags())
        elif route == ("GET", "/api/version"):
            await send.full(200, (_JSON,), b'{"version":"0.12.6"}')
        elif route in (("GET", "/"), ("HEAD", "/")):
            await send.full(200, (("content-type", "text/plain; charset=utf-8"),), b"Ollama is running")
        else:
            await send.full(404, (("content-type", "text/plain"),), b"404 page not found")

    async def _chat(self, req: MockRequest, send: Responder) -> None:
        try:
            body = _validate(req.body)
            name, overrides = parse_model(body["model"])
        except (_BadRequest, ValueError) as exc:
            await send.full(400, (_JSON,), _error(str(exc)))
            return
        if name.startswith("missing"):
            await send.full(404, (_JSON,), _error(f'model "{body["model"]}" not found, try pulling it first'))
            return
        if name in STATUS_SCENARIOS:
            status, payload, extra = _status_error(name, body["model"])
            await send.full(status, (_JSON, *extra), payload)
            return
        knobs = dataclasses.replace(self.knobs, **overrides)
        ctx = _Ctx(knobs, body, f"{len(self.requests)}:{body['model']}")
        answer = _BUILDERS.get(name, _BUILDERS["text"])(ctx)
        prompt = prompt_eval_count(body.get("messages") or [])
        if body.get("stream", True) is False:  # Ollama streams unless told not to
            await _complete(send, body["model"], answer, knobs, prompt)
        else:
            await _stream(send, body["model"], answer, knobs, prompt)


async def _stream(send: Responder, model: str, answer: _Answer, knobs: OllamaKnobs, prompt: int) -> None:
    await send.start(200, (_NDJSON,))
    t0 = trio.current_time()
    for i, piece in enumerate(answer.pieces):
        await trio.sleep_until(t0 + knobs.ttft + i * knobs.token_delay)
        data = piece.text.encode() + b"\n" if piece.kind == "raw" else _line(model, _piece_message(piece))
        await send.chunk(data)
    elapsed = int((trio.current_time() - t0) * 1e9)
    match answer.ending:
        case "done":
            done = {"model": model, "created_at": _now(), "message": {"role": "assistant", "content": ""}}
            await send.end(dumps(done | _done_fields(answer, prompt, elapsed)) + b"\n")
        case "error":
            await send.end(_error(_MID_STREAM_ERROR) + b"\n")
        case "eof":
            await send.end()
        case "cut":
            await send.abort()
        case "stall":
            await trio.sleep_forever()


async def _complete(send: Responder, model: str, answer: _Answer, knobs: OllamaKnobs, prompt: int) -> None:
    delay = knobs.ttft + max(len(answer.pieces) - 1, 0) * knobs.token_delay
    await trio.sleep(delay)
    if answer.ending == "stall":
        await trio.sleep_forever()
    if answer.ending == "error":
        await send.full(500, (_JSON,), _error(_MID_STREAM_ERROR))
        return
    reply: Json = {"model": model, "created_at": _now(), "message": _aggregate(answer)}
    if answer.ending == "eof":
        reply["done"] = False
    else:
        reply |= _done_fields(answer, prompt, int(delay * 1e9))
    payload = dumps(reply)
    if answer.ending == "cut":
        await send.start(200, (_JSON,))
        await send.chunk(payload[: len(payload) // 2])
        await send.abort()
    else:
        await send.full(200, (_JSON,), payload[: len(payload) // 2] if answer.malformed else payload)


def _tags() -> bytes:
    details = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
               "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
    models = []
    for name in SCENARIOS:
        digest = hashlib.sha256(name.encode()).hexdigest()
        models.append({"name": f"{name}:latest", "model": f"{name}:latest",
                       "modified_at": "2025-07-07T20:22:19.180Z", "size": 2019393189, "digest": digest,
                       "details": details})
    return dumps({"models": models})


# ------------------------------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arguments("ollama_mock", "Mock Ollama server (/api/chat, /api/tags).", unit="line", tokens=8)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock until SIGINT/SIGTERM; prints ``LISTENING <port>`` once bound."""
    args = _parse_args(argv)
    mock = OllamaMock(ttft=args.ttft, token_delay=args.token_delay, tokens=args.tokens,
                      token_text=args.token_text, api_key=args.api_key)
    return run_until_signal(mock, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())

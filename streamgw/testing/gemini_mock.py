"""Mock Google Gemini Developer API upstream (``POST /v1beta/models/{model}:streamGenerateContent`` and
``:generateContent``; ``/v1/models/...`` too, the default of python-genai 3.x).

Auth is ``x-goog-api-key`` (or ``?key=``): with ``api_key`` set, a missing key gets 403
``PERMISSION_DENIED`` and a wrong one 400 ``INVALID_ARGUMENT`` with reason ``API_KEY_INVALID``,
as Google answers.  Bodies are validated like the API does (unknown fields, ``contents``,
roles, parts with exactly one data field, function call/response pairing, tool config) and a
bad one gets Google's 400 envelope.  Every request received is recorded in ``requests``.

``streamGenerateContent?alt=sse`` answers ``data: <GenerateContentResponse>`` events (no
``event:`` lines, CRLF line ends unless ``line_end`` says otherwise: Gemini's own are
unverified) and closes the connection at the end, with no sentinel.  Without ``alt=sse`` it
answers one JSON array of the same objects; ``generateContent`` answers one aggregated object.
JSON is written the way Google does (``"key": value``), ``usageMetadata`` is on every chunk and
cumulative, ``finishReason`` only on the last one.

The answer is chosen by the model name: ``name`` or ``name:k=v,k=v`` where the pairs override
the knobs (``text:tokens=3``).  Names (``SCENARIOS``; unknown names behave like ``text``; a
``-3...`` suffix, as in ``tool-3``, picks the scenario before it):

* ``text``: ``tokens`` chunks of ``token_text``, finish ``STOP``.
* ``tool`` / ``two-tools``: one / two ``functionCall`` parts (named after the request's first
  function declaration, default ``get_weather``; args ``{"city": "Paris"|"Tokyo"}``) in one
  chunk; only the first carries a ``thoughtSignature``; finish ``STOP``.
* ``thinking``: ``thinking_tokens`` thought parts (``thought: true``, sent only when
  ``includeThoughts`` was asked for, as Gemini does), the text, then an empty text part that
  carries only a ``thoughtSignature``.  ``tool``/``two-tools``/``sig-required`` also think
  first when ``includeThoughts`` is set.
* ``max-tokens`` (finish ``MAX_TOKENS``), ``safety`` (text, then a content-less candidate with
  finish ``SAFETY``), ``blocked-prompt`` (no candidates, ``promptFeedback.blockReason``),
  ``malformed-call`` (finish ``MALFORMED_FUNCTION_CALL`` with a ``finishMessage``).
* ``cut``: 3 text chunks, then the connection is closed mid-body; ``eof``: 3 text chunks, then a
  clean end without ``finishReason``; ``error-mid``: 3 text chunks, then a Google error object as
  raw (non-``data:``) JSON lines.
* ``sig-required``: a ``tool`` call, or the text answer once the last turn holds a
  ``functionResponse``.
* ``status-400`` (token limit), ``status-400-key`` (``API_KEY_INVALID``), ``status-403``,
  ``status-404``, ``status-429`` (``google.rpc.RetryInfo`` ``retryDelay: "7s"``, no
  ``retry-after`` header), ``status-500``, ``status-503``: Google error bodies.

Thought signatures are ``base64("mock-sig:" + hash(name, args))``.  For models whose name
contains ``-3`` or is ``sig-required`` the mock checks, like Gemini 3 does, that the first
``functionCall`` part of every model turn carries its signature (400 "Function call is missing
a thought_signature in functionCall parts..." otherwise) and that it is the one minted for that
call (400 "Corrupted thought signature." otherwise).

Usage: ``promptTokenCount`` = characters of all text parts // 4 + 1, ``candidatesTokenCount`` =
visible parts so far, ``thoughtsTokenCount`` = ``thinking_tokens`` when the model thought.

Run standalone: ``python -m streamgw.testing.gemini_mock --port 0`` prints ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote

import trio

from streamgw.testing.mockbase import (
    Knobs,
    MockUpstream,
    base_knob_parsers,
    in_range,
    mock_arguments,
    non_negative,
    parse_knobs,
    run_until_signal,
)
from streamgw.testing.server import MockRequest, Responder

__all__ = [
    "SCENARIOS",
    "STATUS_SCENARIOS",
    "GeminiKnobs",
    "GeminiMock",
    "main",
    "parse_model",
    "signature_for",
]

SCENARIOS = (
    "text", "tool", "two-tools", "thinking", "max-tokens", "safety", "blocked-prompt",
    "malformed-call", "cut", "eof", "error-mid", "sig-required",
)
STATUS_SCENARIOS = (
    "status-400", "status-400-key", "status-403", "status-404", "status-429", "status-500", "status-503",
)

Json = dict[str, Any]
Ending = Literal["done", "cut", "eof", "error"]

#: the API versions served (python-genai 3.x defaults to v1; the gateway sends v1beta)
_PREFIXES = ("/v1beta/models/", "/v1/models/")
_FEW = 3
_DEFAULT_TOOL = "get_weather"
_CITIES = ("Paris", "Tokyo")
_ANSWER = "The weather is fine."
_MISSING_SIGNATURE = (
    "Function call is missing a thought_signature in functionCall parts. This is required for tools to "
    "work correctly, and missing thought_signature may lead to degraded model performance. Additional "
    "data, function call `default_api:{name}` , position {position}. Please refer to "
    "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
)
_SAFETY_RATINGS = [
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
]
_TOP_LEVEL = frozenset({
    "contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "cachedContent",
    "generationConfig", "labels", "serviceTier", "model",
})
_GENERATION_CONFIG = frozenset({
    "temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "seed",
    "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema", "responseJsonSchema",
    "responseLogprobs", "logprobs", "responseModalities", "thinkingConfig", "mediaResolution",
    "speechConfig", "enableEnhancedCivicAnswers", "imageConfig",
})
_THINKING_CONFIG = frozenset({"includeThoughts", "thinkingBudget", "thinkingLevel"})
_PART_DATA = ("text", "inlineData", "fileData", "functionCall", "functionResponse", "executableCode",
              "codeExecutionResult")
_PART_FLAGS = frozenset({"thought", "thoughtSignature", "videoMetadata", "mediaResolution", "partMetadata"})
_MODES = ("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED")


def _dumps(obj: object) -> bytes:
    """JSON the way Google writes it in streams: ``"key": value`` pairs, ``,`` without a space."""
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode()


def signature_for(name: str, args: object) -> str:
    """The thought signature this mock mints (and later expects back) for a call."""
    canonical = json.dumps([name, args], sort_keys=True, separators=(",", ":")).encode()
    return base64.b64encode(b"mock-sig:" + hashlib.blake2b(canonical, digest_size=18).digest()).decode()


# ----------------------------------------------------------------------------------------- knobs


@dataclass(frozen=True)
class GeminiKnobs(Knobs):
    """Per-request behaviour; the mock's defaults, overridable through the model string."""

    thinking_tokens: int = 3


_KNOB_PARSERS: dict[str, Callable[[str], Any]] = {
    **base_knob_parsers(),
    "thinking_tokens": in_range(int, non_negative),
}


def parse_model(model: str) -> tuple[str, dict[str, Any]]:
    """Split ``name:k=v,k=v`` into the name and typed knob overrides (``ValueError`` if bad).

    A suffix that is not all ``k=v`` pairs is part of the name.
    """
    return parse_knobs(model, _KNOB_PARSERS)


def _scenario(name: str) -> str:
    if name in SCENARIOS or name in STATUS_SCENARIOS:
        return name
    base = name.split("-3", 1)[0]
    return base if base in SCENARIOS else "text"


def _requires_signatures(name: str) -> bool:
    return "-3" in name or name == "sig-required"


# ------------------------------------------------------------------------------- request checks


class _BadRequest(Exception):
    """A request Gemini would refuse; ``status`` is the gRPC status name."""

    def __init__(self, message: str, code: int = 400, status: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def _field_error(path: str, message: str) -> _BadRequest:
    return _BadRequest(f"* GenerateContentRequest.{path}: {message}\n")


def _unknown_names(obj: Json, known: frozenset[str], where: str | None) -> None:
    for name in obj:
        if name not in known:
            at = f" at '{where}'" if where else ""
            raise _BadRequest(f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.')


def _object(value: Any, path: str) -> Json:
    if not isinstance(value, dict):
        raise _BadRequest(f"Invalid JSON payload received. Invalid value at '{path}': expected an object.")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _BadRequest(f"Invalid JSON payload received. Invalid value at '{path}': expected a list.")
    return value


def _check_part(part: Json, path: str) -> None:
    data = [name for name in _PART_DATA if name in part]
    if len(data) != 1:
        raise _field_error(f"{path}.data", "required oneof field 'data' must have one initialized field")
    _unknown_names(part, frozenset(_PART_DATA) | _PART_FLAGS, path)
    kind = data[0]
    value = part[kind]
    if kind == "text" and not isinstance(value, str):
        raise _BadRequest(f"Invalid JSON payload received. Invalid value at '{path}.text': expected a string.")
    if kind == "inlineData":
        _check_inline(_object(value, f"{path}.inline_data"), path)
    if kind == "functionCall" and not _object(value, f"{path}.function_call").get("name"):
        raise _field_error(f"{path}.function_call.name", "Name cannot be empty.")
    if kind == "functionResponse":
        response = _object(value, f"{path}.function_response")
        if not response.get("name"):
            raise _field_error(f"{path}.function_response.name", "Name cannot be empty.")
        _object(response.get("response"), f"{path}.function_response.response")


def _check_inline(blob: Json, path: str) -> None:
    if not blob.get("mimeType"):
        raise _field_error(f"{path}.inline_data.mime_type", "mime_type is not specified")
    try:
        base64.b64decode(blob.get("data", ""), validate=True)
    except (ValueError, TypeError):
        raise _BadRequest(f"Invalid value at '{path}.inline_data.data' (TYPE_BYTES), Base64 decoding "
                          "failed") from None


def _check_content(value: Any, path: str) -> Json:
    content = _object(value, path)
    if content.get("role", "user") not in ("user", "model"):
        raise _BadRequest("Please use a valid role: user, model.")
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        raise _field_error(f"{path}.parts", "contents.parts must not be empty.")
    for j, part in enumerate(parts):
        _check_part(_object(part, f"{path}.parts[{j}]"), f"{path}.parts[{j}]")
    return content


def _count_parts(content: Json, kind: str) -> int:
    return sum(1 for part in content["parts"] if kind in part)


def _check_pairing(contents: list[Json]) -> None:
    """Every function-call turn is answered by a turn with as many function responses."""
    for index, content in enumerate(contents[:-1]):
        calls = _count_parts(content, "functionCall")
        if calls and _count_parts(contents[index + 1], "functionResponse") != calls:
            raise _BadRequest(
                "Please ensure that the number of function response parts is equal to the number of "
                "function call parts of the function call turn."
            )


def _check_tools(body: Json) -> None:
    for i, tool in enumerate(_list(body.get("tools", []), "tools")):
        for j, decl in enumerate(_list(_object(tool, f"tools[{i}]").get("functionDeclarations", []),
                                       f"tools[{i}].function_declarations")):
            decl = _object(decl, f"tools[{i}].function_declarations[{j}]")
            if not decl.get("name"):
                raise _field_error(f"tools[{i}].function_declarations[{j}].name", "Name cannot be empty.")
            if "parameters" in decl and "parametersJsonSchema" in decl:
                raise _BadRequest("parameters and parameters_json_schema cannot both be set.")
    config = _object(body.get("toolConfig", {}), "tool_config").get("functionCallingConfig", {})
    config = _object(config, "tool_config.function_calling_config")
    if config.get("mode", "AUTO") not in _MODES:
        raise _BadRequest(f"Invalid value at 'tool_config.function_calling_config.mode' ({config['mode']!r})")
    if config.get("allowedFunctionNames") and config.get("mode") not in ("ANY", "VALIDATED"):
        raise _field_error("tool_config.function_calling_config.allowed_function_names",
                           "allowed_function_names should only be set when mode is ANY or VALIDATED.")


def _check_generation_config(body: Json) -> None:
    config = _object(body.get("generationConfig", {}), "generation_config")
    _unknown_names(config, _GENERATION_CONFIG, "generation_config")
    thinking = _object(config.get("thinkingConfig", {}), "generation_config.thinking_config")
    _unknown_names(thinking, _THINKING_CONFIG, "generation_config.thinking_config")
    if "thinkingBudget" in thinking and "thinkingLevel" in thinking:
        raise _BadRequest("You can only set only one of thinking budget and thinking level.")


# Values that are free-form JSON (schemas, call arguments, results): their keys are not field names.
_OPAQUE = frozenset({"args", "response", "parameters", "parametersJsonSchema", "responseSchema",
                     "responseJsonSchema", "labels"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _normalise(value: Any) -> Any:
    """Field names in lowerCamelCase: proto3 JSON accepts snake_case too (python-genai mixes both)."""
    if isinstance(value, dict):
        out = {}
        for name, item in value.items():
            key = _camel(name)
            out[key] = item if key in _OPAQUE else _normalise(item)
        return out
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    return value


def _validate(req: MockRequest) -> Json:
    """The request body (field names normalised), checked like Gemini does; raises ``_BadRequest``."""
    try:
        raw = req.json()
    except ValueError:
        raise _BadRequest("Invalid JSON payload received. Unexpected token.") from None
    body: Json = _object(_normalise(_object(raw, "")), "")
    _unknown_names(body, _TOP_LEVEL, None)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _field_error("contents", "contents is not specified")
    checked = [_check_content(c, f"contents[{i}]") for i, c in enumerate(contents)]
    _check_pairing(checked)
    system = body.get("systemInstruction")
    if system is not None:
        _check_content(system, "system_instruction")
    _check_tools(body)
    _check_generation_config(body)
    return body


def _check_signatures(contents: list[Json]) -> None:
    """Gemini 3: the first functionCall of every model turn must carry the signature it was given."""
    for content in contents:
        if content.get("role") != "model":
            continue
        calls = [(j, p) for j, p in enumerate(content["parts"]) if "functionCall" in p]
        if not calls:
            continue
        position, part = calls[0]
        call = part["functionCall"]
        signature = part.get("thoughtSignature")
        if not signature:
            raise _BadRequest(_MISSING_SIGNATURE.format(name=call["name"], position=position + 1))
        if signature != signature_for(call["name"], call.get("args", {})):
            raise _BadRequest("Corrupted thought signature.")


# ---------------------------------------------------------------------------------- the answers


@dataclass
class _Chunk:
    """One streamed ``GenerateContentResponse``: new parts, and maybe the finish."""

    parts: list[Json]
    finish: str | None = None
    extra: Json = field(default_factory=dict)  # more candidate fields (safetyRatings, finishMessage)


@dataclass
class _Answer:
    chunks: list[_Chunk]
    ending: Ending = "done"
    blocked: str | None = None  # promptFeedback.blockReason: no candidates at all
    thinking: bool = False  # the model thought (thoughtsTokenCount is reported)


@dataclass
class _Ctx:
    """What a scenario builder may look at."""

    knobs: GeminiKnobs
    body: Json

    @property
    def include_thoughts(self) -> bool:
        config = self.body.get("generationConfig") or {}
        return (config.get("thinkingConfig") or {}).get("includeThoughts") is True

    def tool_name(self, index: int) -> str:
        names = [
            decl.get("name")
            for tool in self.body.get("tools") or []
            for decl in tool.get("functionDeclarations") or []
        ]
        names = [n for n in names if isinstance(n, str) and n]
        return names[min(index, len(names) - 1)] if names else _DEFAULT_TOOL

    def thoughts(self) -> list[_Chunk]:
        if not self.include_thoughts:
            return []
        return [_Chunk([{"text": f"Thinking {i}. ", "thought": True}]) for i in range(self.knobs.thinking_tokens)]


def _text_chunks(knobs: GeminiKnobs, count: int) -> list[_Chunk]:
    return [_Chunk([{"text": knobs.text(i)}]) for i in range(count)]


def _with_finish(chunks: list[_Chunk], reason: str) -> list[_Chunk]:
    if not chunks:
        chunks = [_Chunk([])]
    chunks[-1].finish = reason
    return chunks


def _call_part(ctx: _Ctx, index: int, signed: bool) -> Json:
    name, args = ctx.tool_name(index), {"city": _CITIES[index]}
    part: Json = {"functionCall": {"name": name, "args": args}}
    if signed:
        part["thoughtSignature"] = signature_for(name, args)
    return part


def _build_text(ctx: _Ctx) -> _Answer:
    return _Answer(_with_finish(_text_chunks(ctx.knobs, ctx.knobs.tokens), "STOP"))


def _build_calls(count: int) -> Callable[[_Ctx], _Answer]:
    def build(ctx: _Ctx) -> _Answer:
        calls = _Chunk([_call_part(ctx, i, signed=i == 0) for i in range(count)], "STOP")
        return _Answer([*ctx.thoughts(), calls], thinking=True)

    return build


def _build_thinking(ctx: _Ctx) -> _Answer:
    signature = base64.b64encode(b"mock-text-sig").decode()
    last = _Chunk([{"text": "", "thoughtSignature": signature}], "STOP")
    return _Answer([*ctx.thoughts(), *_text_chunks(ctx.knobs, ctx.knobs.tokens), last], thinking=True)


def _build_max_tokens(ctx: _Ctx) -> _Answer:
    return _Answer(_with_finish(_text_chunks(ctx.knobs, ctx.knobs.tokens), "MAX_TOKENS"))


def _build_safety(ctx: _Ctx) -> _Answer:
    blocked = _Chunk([], "SAFETY", {"safetyRatings": _SAFETY_RATINGS})
    return _Answer([*_text_chunks(ctx.knobs, min(_FEW, ctx.knobs.tokens)), blocked])


def _build_blocked(ctx: _Ctx) -> _Answer:
    return _Answer([], blocked="SAFETY")


def _build_malformed_call(ctx: _Ctx) -> _Answer:
    message = "Malformed function call: print(default_api.get_weather(city='Paris'"
    return _Answer([_Chunk([], "MALFORMED_FUNCTION_CALL", {"finishMessage": message})])


def _build_truncated(ending: Ending) -> Callable[[_Ctx], _Answer]:
    def build(ctx: _Ctx) -> _Answer:
        return _Answer(_text_chunks(ctx.knobs, min(_FEW, ctx.knobs.tokens)), ending)

    return build


def _build_sig_required(ctx: _Ctx) -> _Answer:
    contents = ctx.body["contents"]
    if any("functionResponse" in part for part in contents[-1]["parts"]):
        return _Answer([_Chunk([{"text": _ANSWER}], "STOP")])
    return _build_calls(1)(ctx)


_BUILDERS: dict[str, Callable[[_Ctx], _Answer]] = {
    "text": _build_text,
    "tool": _build_calls(1),
    "two-tools": _build_calls(2),
    "thinking": _build_thinking,
    "max-tokens": _build_max_tokens,
    "safety": _build_safety,
    "blocked-prompt": _build_blocked,
    "malformed-call": _build_malformed_call,
    "cut": _build_truncated("cut"),
    "eof": _build_truncated("eof"),
    "error-mid": _build_truncated("error"),
    "sig-required": _build_sig_required,
}


# ------------------------------------------------------------------------------------ rendering


def prompt_tokens(body: Json) -> int:
    """The mock's prompt token count: characters of every text part // 4 + 1."""
    contents = [*body.get("contents", []), body.get("systemInstruction") or {"parts": []}]
    texts = (part.get("text") for content in contents for part in content.get("parts", []))
    return sum(len(text) for text in texts if isinstance(text, str)) // 4 + 1


def _usage(prompt: int, visible: int, thoughts: int) -> Json:
    usage: Json = {"promptTokenCount": prompt, "candidatesTokenCount": visible,
                   "totalTokenCount": prompt + visible + thoughts,
                   "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


@dataclass
class _Renderer:
    """Turns an answer into ``GenerateContentResponse`` objects."""

    answer: _Answer
    prompt: int
    model: str
    response_id: str

    def chunks(self, knobs: GeminiKnobs) -> list[Json]:
        """The streamed objects, in order."""
        thoughts = knobs.thinking_tokens if self.answer.thinking else 0
        if self.answer.blocked is not None:
            return [self._blocked(thoughts)]
        out, visible = [], 0
        for chunk in self.answer.chunks:
            visible += sum(1 for part in chunk.parts if not part.get("thought") and part.get("text") != "")
            out.append(self._response(chunk.parts, chunk.finish, chunk.extra, _usage(self.prompt, visible, thoughts)))
        return out

    def whole(self, knobs: GeminiKnobs) -> Json:
        """The non-streamed object: every part merged, the last finish and usage."""
        chunks = self.chunks(knobs)
        if self.answer.blocked is not None:
            return chunks[0]
        parts = _merge_parts([part for chunk in self.answer.chunks for part in chunk.parts])
        last = self.answer.chunks[-1] if self.answer.chunks else _Chunk([])
        finish = None if self.answer.ending != "done" else last.finish
        return self._response(parts, finish, last.extra, chunks[-1]["usageMetadata"] if chunks else {})

    def _response(self, parts: list[Json], finish: str | None, extra: Json, usage: Json) -> Json:
        candidate: Json = {}
        if parts:
            candidate["content"] = {"parts": parts, "role": "model"}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate |= extra
        candidate["index"] = 0
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": self.model,
                "responseId": self.response_id}

    def _blocked(self, thoughts: int) -> Json:
        return {"promptFeedback": {"blockReason": self.answer.blocked, "safetyRatings": _SAFETY_RATINGS},
                "usageMetadata": _usage(self.prompt, 0, thoughts), "modelVersion": self.model,
                "responseId": self.response_id}


def _merge_parts(parts: list[Json]) -> list[Json]:
    """Consecutive text parts of the same kind become one (keeping the last signature)."""
    merged: list[Json] = []
    for part in parts:
        previous = merged[-1] if merged else None
        if (previous is not None and "text" in part and "text" in previous
                and bool(part.get("thought")) == bool(previous.get("thought"))):
            previous["text"] += part["text"]
            if "thoughtSignature" in part:
                previous["thoughtSignature"] = part["thoughtSignature"]
        else:
            merged.append(dict(part))
    return merged


def _error_body(code: int, status: str, message: str, details: list[Json] | None = None) -> bytes:
    error: Json = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return json.dumps({"error": error}, indent=2).encode()


def _key_invalid() -> bytes:
    info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
            "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}
    localized = {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                 "message": "API key not valid. Please pass a valid API key."}
    return _error_body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [info, localized])


def _unregistered() -> bytes:
    return _error_body(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                       "established identity). Please use API Key or other form of API consumer identity to "
                       "call this API.")


_RETRY_7S = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}

#: ``status-NNN`` scenario -> (model, received key) -> (status, Google error body)
_STATUS_ERRORS: dict[str, Callable[[str, str | None], tuple[int, bytes]]] = {
    "status-400": lambda model, key: (400, _error_body(
        400, "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).")),
    "status-400-key": lambda model, key: (400, _key_invalid()),
    "status-403": lambda model, key: (403, _error_body(
        403, "PERMISSION_DENIED", f"Permission denied: Consumer 'api_key:{key}' has been suspended.")),
    "status-404": lambda model, key: (404, _error_body(
        404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not supported for "
        "generateContent. Call ListModels to see the list of available models and their supported methods.")),
    "status-429": lambda model, key: (429, _error_body(
        429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details.",
        [_RETRY_7S])),
    "status-500": lambda model, key: (500, _error_body(
        500, "INTERNAL", "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting")),
    "status-503": lambda model, key: (503, _error_body(
        503, "UNAVAILABLE", "The model is overloaded. Please try again later.")),
}


_MID_STREAM_ERROR = _error_body(500, "INTERNAL", "An internal error has occurred mid-stream.")


# ------------------------------------------------------------------------------------- the mock


@dataclass(frozen=True)
class _Route:
    model: str
    method: str  # streamGenerateContent | generateContent


def _route(req: MockRequest) -> _Route | None:
    prefix = next((p for p in _PREFIXES if req.path.startswith(p)), None)
    if req.method != "POST" or prefix is None:
        return None
    model, sep, method = req.path[len(prefix):].rpartition(":")
    if not sep or not model or method not in ("streamGenerateContent", "generateContent"):
        return None
    return _Route(unquote(model), method)


class GeminiMock(MockUpstream):
    """A Gemini Developer API upstream with scripted scenarios.

    Every request received is appended to ``requests``; ``stats`` are the server counters once
    it is served with ``serve`` or ``serving_in_thread``.  ``knobs`` holds the defaults.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        ttft: float = 0.0,
        token_delay: float = 0.0,
        tokens: int = 20,
        token_text: str = "tok{i} ",
        thinking_tokens: int = 3,
        line_end: bytes = b"\r\n",
    ) -> None:
        self.knobs = GeminiKnobs(ttft, token_delay, tokens, token_text, thinking_tokens)
        super().__init__(api_key=api_key)
        self.line_end = line_end
        self._count = 0

    async def handle(self, req: MockRequest, send: Responder) -> None:
        """The server handler: routing, auth, validation, then the scenario."""
        self.requests.append(req)
        self._count += 1
        route = _route(req)
        key = req.headers.get("x-goog-api-key", req.query.get("key"))
        if route is None:
            message = f"The requested URL {req.path} was not found on this server."
            await _json(send, 404, _error_body(404, "NOT_FOUND", message))
        elif self.api_key is not None and not key:
            await _json(send, 403, _unregistered())
        elif self.api_key is not None and key != self.api_key:
            await _json(send, 400, _key_invalid())
        else:
            await self._generate(req, send, route, key)

    async def _generate(self, req: MockRequest, send: Responder, route: _Route, key: str | None) -> None:
        try:
            body = _validate(req)
            name, overrides = parse_model(route.model)
            if _requires_signatures(name):
                _check_signatures(body["contents"])
        except (_BadRequest, ValueError) as exc:
            code, status = (exc.code, exc.status) if isinstance(exc, _BadRequest) else (400, "INVALID_ARGUMENT")
            await _json(send, code, _error_body(code, status, str(exc)))
            return
        scenario = _scenario(name)
        if scenario in STATUS_SCENARIOS:
            await _json(send, *_STATUS_ERRORS[scenario](route.model, key))
            return
        knobs = dataclasses.replace(self.knobs, **overrides)
        answer = _BUILDERS[scenario](_Ctx(knobs, body))
        response_id = hashlib.blake2b(b"%d" % self._count, digest_size=9).hexdigest()
        renderer = _Renderer(answer, prompt_tokens(body), name, response_id)
        if route.method == "generateContent":
            await self._whole(send, renderer, knobs)
        elif req.query.get("alt") == "sse":
            await self._sse(send, renderer, knobs)
        else:
            await self._array(send, renderer, knobs)

    async def _paced(self, send: Responder, frames: list[bytes], knobs: GeminiKnobs) -> None:
        """Send ``frames`` as chunks: the first after ``ttft``, the others ``token_delay`` apart."""
        start = trio.current_time()
        for i, frame in enumerate(frames):
            due = knobs.ttft + i * knobs.token_delay
            if due > 0:
                await trio.sleep_until(start + due)
            await send.chunk(frame)

    async def _sse(self, send: Responder, renderer: _Renderer, knobs: GeminiKnobs) -> None:
        end = self.line_end
        frames = [b"data: " + _dumps(obj) + end + end for obj in renderer.chunks(knobs)]
        await send.start(200, (("content-type", "text/event-stream"), ("x-content-type-options", "nosniff")))
        await self._paced(send, frames, knobs)
        if renderer.answer.ending == "error":
            # Google reports a failure inside an SSE stream as raw JSON lines, not as an event.
            await send.chunk(_MID_STREAM_ERROR.replace(b"\n", end) + end)
        await _end(send, renderer.answer.ending)

    async def _array(self, send: Responder, renderer: _Renderer, knobs: GeminiKnobs) -> None:
        objects = [_dumps(obj) for obj in renderer.chunks(knobs)]
        frames = [(b"[" if i == 0 else b",\r\n") + obj for i, obj in enumerate(objects)]
        await send.start(200, (("content-type", "application/json; charset=UTF-8"),))
        await self._paced(send, frames, knobs)
        ending = renderer.answer.ending
        if ending == "error":
            await send.chunk(b",\r\n" + _MID_STREAM_ERROR + b"]")
        elif ending != "cut":
            await send.chunk(b"]" if objects else b"[]")
        await _end(send, ending)

    async def _whole(self, send: Responder, renderer: _Renderer, knobs: GeminiKnobs) -> None:
        await trio.sleep(knobs.ttft + max(len(renderer.answer.chunks) - 1, 0) * knobs.token_delay)
        if renderer.answer.ending == "error":
            await _json(send, 500, _MID_STREAM_ERROR)
            return
        payload = json.dumps(renderer.whole(knobs), indent=2, ensure_ascii=False).encode()
        if renderer.answer.ending == "cut":
            await send.start(200, (("content-type", "application/json; charset=UTF-8"),))
            await send.chunk(payload[: len(payload) // 2])
            await send.abort()
            return
        await _json(send, 200, payload)


async def _json(send: Responder, status: int, payload: bytes) -> None:
    await send.full(status, (("content-type", "application/json; charset=UTF-8"),), payload)


async def _end(send: Responder, ending: Ending) -> None:
    if ending == "cut":
        await send.abort()
    else:
        await send.end()


# ------------------------------------------------------------------------------------------ CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = mock_arguments("gemini_mock", "Mock Google Gemini Developer API upstream.", unit="chunk",
                            key_help="require x-goog-api-key KEY (or ?key=KEY)")
    parser.add_argument("--lf", action="store_true", help="end SSE lines with LF instead of CRLF")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock until SIGINT/SIGTERM; prints ``LISTENING <port>`` once bound."""
    args = _parse_args(argv)
    mock = GeminiMock(api_key=args.api_key, ttft=args.ttft, token_delay=args.token_delay, tokens=args.tokens,
                      token_text=args.token_text, line_end=b"\n" if args.lf else b"\r\n")
    return run_until_signal(mock, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())

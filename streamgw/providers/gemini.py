"""The Google Gemini Developer API dialect (``POST {base_url}/v1beta/models/{model}:streamGenerateContent``).

API reference: https://ai.google.dev/api/generate-content.  ``base_url`` is the API root
(``https://generativelanguage.googleapis.com``); the key travels as ``x-goog-api-key``,
never in the query string.  The upstream is always asked to stream (``alt=sse``); a
non-streamed client request is aggregated by the gateway from the same deltas.

Reasoning effort → ``generationConfig.thinkingConfig`` (``_THINKING_BUDGETS``):

=========  ==============  =================
effort     thinkingBudget  includeThoughts
=========  ==============  =================
none       0               (absent)
minimal    512             true
low        1024            true
medium     8192            true
high       24576           true
xhigh/max  24576           true
=========  ==============  =================

The budgets fit every Gemini 2.5 model's range (Flash 0-24576, Flash-Lite 512-24576,
Pro 128-32768, so ``none`` is refused by 2.5 Pro, which cannot stop thinking: that is
the upstream's own 400); Gemini 3 models map a budget onto their thinking levels.  A
``reasoning.summary`` without an effort asks for thought summaries only
(``includeThoughts: true``).

Thought signatures (a part's ``thoughtSignature``) travel in reasoning items' ``encrypted_content``
as our own blobs (``streamgw.core.blobs``), minted for this provider's config name:

* a ``functionCall`` part's signature becomes ``{"call_sigs": {call_id: sig}}`` in a
  ``ReasoningSignature`` emitted right before that call's ``ToolCallStart``: it seals the
  reasoning item the call's thoughts opened, or gets an empty reasoning item of its own;
* a signature on a thought part becomes ``{"text_sig": sig}`` on that thought's reasoning
  item; one on a visible text part (often an empty final part that carries only the
  signature) is held back and emitted after the text — before the next thought or call
  (then merged into the call's blob), at the finish, or when another one arrives — so the
  message is never split: its reasoning item follows the text it rode with.

On the next turn the builder decodes every reasoning item minted for this provider:
``call_sigs[call_id]`` goes back as ``thoughtSignature`` on the matching ``functionCall``
part, and each ``text_sig`` on the first visible text part (without one) of the model
turn the reasoning item belongs to (the model turn it follows, or else the next one).
Blobs of other providers decode to nothing and are dropped.

Call ids: Gemini's ``functionCall.id`` is usually absent; we mint ``call_`` + 24
alphanumerics then.  Replayed calls and responses carry ``id`` only when it is not one
of ours, so Gemini never sees an id it did not issue.
"""

from __future__ import annotations

import binascii
import json
import math
import mimetypes
import re
from base64 import b64decode
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from streamgw.config import ProviderConfig
from streamgw.core import jsontext
from streamgw.core.blobs import decode_blob, encode_blob
from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningSignature,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    UpstreamFailure,
    Usage,
)
from streamgw.core.request import ResponsesRequest
from streamgw.core.sse import SSEDecoder, TruncatedStream
from streamgw.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    clean_message,
)
from streamgw.providers.base import NO_ASSETS, Assets, Dialect, UpstreamRequest, WireDialect
from streamgw.providers.common import (
    InputItems,
    json_post,
    mint_call_id,
    reject,
    sampling_fields,
    token_count,
    upstream_headers,
)
from streamgw.providers.errors import ErrorBody, ErrorTable, bad_credentials, error_text, message_or_text

__all__ = [
    "DIALECT",
    "GeminiStreamTranslator",
    "build_request",
    "parse_error",
]

Json = dict[str, Any]
Part = dict[str, Any]

#: the call ids we mint; they are never sent back to Gemini as ``id``
MINTED_CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")

# --- request builder ---------------------------------------------------------------------------
#
# Responses request -> one Gemini streamGenerateContent request (our mapping, field by field).


@dataclass(slots=True)
class _Turn:
    """One ``contents[]`` entry being built; ``text_sigs`` go onto its text parts at the end."""

    role: str
    parts: list[Part]
    text_sigs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Contents:
    """Gemini ``contents`` and ``systemInstruction`` being built from Responses input items."""

    provider: str
    assets: Assets
    #: call_id -> function name, from every function_call item of the input
    names: dict[str, str]
    #: call_id -> thoughtSignature, from every reasoning blob of this provider
    call_sigs: dict[str, str]
    system: list[Part] = field(default_factory=list)
    turns: list[_Turn] = field(default_factory=list)
    #: text signatures read before the model turn they belong to was opened
    pending_sigs: list[str] = field(default_factory=list)

    def add(self, role: str, parts: list[Part]) -> None:
        """Append ``parts`` as a ``role`` turn, merged into the last turn when it has that role."""
        if not parts:
            return
        if self.turns and self.turns[-1].role == role:
            turn = self.turns[-1]
            turn.parts.extend(parts)
        else:
            turn = _Turn(role, list(parts))
            self.turns.append(turn)
        if role == "model" and self.pending_sigs:
            turn.text_sigs.extend(self.pending_sigs)
            self.pending_sigs.clear()

    def text_signature(self, signature: str) -> None:
        """A replayed text signature: for the model turn just built, or else the next one."""
        if self.turns and self.turns[-1].role == "model":
            self.turns[-1].text_sigs.append(signature)
        else:
            self.pending_sigs.append(signature)

    def finish(self) -> list[Json]:
        for turn in self.turns:
            _place_text_sigs(turn)
        return [{"role": turn.role, "parts": turn.parts} for turn in self.turns]


def _place_text_sigs(turn: _Turn) -> None:
    """Each signature onto the next visible text part that has none; extras are dropped."""
    signatures = iter(turn.text_sigs)
    for part in turn.parts:
        if "text" in part and not part.get("thought") and "thoughtSignature" not in part:
            signature = next(signatures, None)
            if signature is None:
                return
            part["thoughtSignature"] = signature


# - content parts -

_DATA_URL = re.compile(r"data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)


def _base64(data: str, param: str) -> str:
    try:
        b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        reject(param, f"Invalid '{param}': the data is not valid base64.", "invalid_value")
    return data


def _data_url(url: str, param: str) -> tuple[str, str]:
    """``(mime type, base64 data)`` of a ``data:<mime>;base64,<data>`` URL."""
    match = _DATA_URL.fullmatch(url)
    if match is None or ";base64" not in match["params"] or not match["mime"]:
        reject(param, f"Invalid '{param}': expected a base64 data URL (data:<mime>;base64,<data>).",
               "invalid_value")
    return match["mime"], _base64(match["data"], param)


def _no_file_id(part: Json, param: str, provider: str) -> None:
    if part.get("file_id") is not None:
        reject(
            param,
            f"{part['type']} with 'file_id' is not supported by provider {provider!r}: file ids live in "
            "the upstream's own file store. Send the content inline instead.",
        )


def _text_part(ctx: _Contents, part: Json, param: str) -> Part | None:
    return {"text": part["text"]} if part["text"] else None


def _image_part(ctx: _Contents, part: Json, param: str) -> Part | None:
    _no_file_id(part, param, ctx.provider)
    url: str = part["image_url"]
    if url.startswith("data:"):
        mime, data = _data_url(url, f"{param}.image_url")
    elif url.startswith(("http://", "https://")):
        fetched = ctx.assets.get(url)
        if fetched is None:
            reject(f"{param}.image_url", f"image {url!r} was not fetched; provider {ctx.provider!r} "
                   "takes images only as bytes.", "failed_to_download_image")
        mime, data = fetched
    else:
        reject(f"{param}.image_url", f"Invalid '{param}.image_url': expected an http(s) or data URL.",
               "invalid_value")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _file_part(ctx: _Contents, part: Json, param: str) -> Part | None:
    _no_file_id(part, param, ctx.provider)
    file_data = part.get("file_data")
    if file_data is None:
        reject(param, f"input_file with 'file_url' is not supported by provider {ctx.provider!r}; "
               "send 'file_data'.")
    if file_data.startswith("data:"):
        mime, data = _data_url(file_data, f"{param}.file_data")
    else:
        guessed = mimetypes.guess_type(part.get("filename") or "")[0]
        mime, data = guessed or "application/pdf", _base64(file_data, f"{param}.file_data")
    return {"inlineData": {"mimeType": mime, "data": data}}


_PartBuilder = Callable[[_Contents, Json, str], Part | None]

_USER_PARTS: dict[str, _PartBuilder] = {
    "input_text": _text_part,
    "input_image": _image_part,
    "input_file": _file_part,
}


def _parts(ctx: _Contents, parts: list[Json], param: str) -> list[Part]:
    built = (_USER_PARTS[part["type"]](ctx, part, f"{param}[{j}]") for j, part in enumerate(parts))
    return [part for part in built if part is not None]


def _texts(parts: list[Json], param: str, what: str, provider: str) -> list[Part]:
    """Text parts only (system and assistant content); empty texts are skipped."""
    out: list[Part] = []
    for j, part in enumerate(parts):
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            reject(f"{param}[{j}].type", f"{part['type']} parts in {what} are not supported by provider "
                   f"{provider!r}.")
        if text:
            out.append({"text": text})
    return out


# - input items -


def _user_message(ctx: _Contents, item: Json, param: str) -> None:
    ctx.add("user", _parts(ctx, item["content"], f"{param}.content"))


def _system_message(ctx: _Contents, item: Json, param: str) -> None:
    what = f"{item['role']} messages"
    ctx.system.extend(_texts(item["content"], f"{param}.content", what, ctx.provider))


def _assistant_message(ctx: _Contents, item: Json, param: str) -> None:
    ctx.add("model", _texts(item["content"], f"{param}.content", "assistant messages", ctx.provider))


def _call_args(arguments: str, param: str) -> Json:
    if not arguments.strip():
        return {}
    try:
        args = json.loads(arguments)
    except (ValueError, RecursionError):
        args = None
    if not isinstance(args, dict):
        reject(param, f"Invalid '{param}': Gemini needs the arguments as a JSON object.", "invalid_value")
    return args


def _function_call(ctx: _Contents, item: Json, param: str) -> None:
    call: Json = {"name": item["name"], "args": _call_args(item["arguments"], f"{param}.arguments")}
    if not MINTED_CALL_ID.fullmatch(item["call_id"]):
        call["id"] = item["call_id"]
    part: Part = {"functionCall": call}
    signature = ctx.call_sigs.get(item["call_id"])
    if signature:
        part["thoughtSignature"] = signature
    ctx.add("model", [part])


def _output_value(output: str) -> Any:
    """A tool's output as Gemini wants it: the parsed JSON value, or the string itself."""
    try:
        return json.loads(output)
    except (ValueError, RecursionError):
        return output


def _function_call_output(ctx: _Contents, item: Json, param: str) -> None:
    call_id: str = item["call_id"]
    name = ctx.names.get(call_id)
    if name is None:
        reject(f"{param}.call_id", f"function_call_output {param} refers to call_id {call_id!r}, but no "
               "function_call item in the input has it; Gemini needs the function's name.", "invalid_value")
    output, extra = item["output"], []
    if isinstance(output, list):
        # Text joins into the response; images and files ride along as parts of the same turn.
        texts = [part["text"] for part in output if part["type"] == "input_text"]
        extra = [
            built
            for j, part in enumerate(output)
            if part["type"] != "input_text" and (built := _USER_PARTS[part["type"]](ctx, part, f"{param}.output[{j}]"))
        ]
        output = "\n".join(texts)
    response: Json = {"name": name, "response": {"output": _output_value(output)}}
    if not MINTED_CALL_ID.fullmatch(call_id):
        response["id"] = call_id
    ctx.add("user", [{"functionResponse": response}, *extra])


def _reasoning(ctx: _Contents, item: Json, param: str) -> None:
    # Thought summaries are not replayed; only signatures minted for this provider are.
    blob = decode_blob(item.get("encrypted_content"), ctx.provider)
    signature = blob.get("text_sig") if blob else None
    if isinstance(signature, str) and signature:
        ctx.text_signature(signature)


_INPUT = InputItems[_Contents](
    user=_user_message, system=_system_message, assistant=_assistant_message,
    function_call=_function_call, function_call_output=_function_call_output, reasoning=_reasoning,
)


def _call_sigs(items: Sequence[Json], provider: str) -> dict[str, str]:
    """call_id -> thoughtSignature from every reasoning blob minted for ``provider``."""
    found: dict[str, str] = {}
    for item in items:
        if item["type"] != "reasoning":
            continue
        blob = decode_blob(item.get("encrypted_content"), provider)
        sigs = blob.get("call_sigs") if blob else None
        if isinstance(sigs, dict):
            found.update((k, v) for k, v in sigs.items() if isinstance(v, str) and v)
    return found


def _contents(request: ResponsesRequest, provider: str, assets: Assets) -> _Contents:
    names = {item["call_id"]: item["name"] for item in request.input if item["type"] == "function_call"}
    ctx = _Contents(provider, assets, names, _call_sigs(request.input, provider))
    if request.instructions:
        ctx.system.append({"text": request.instructions})
    _INPUT.add(ctx, request.input)
    if not ctx.turns:
        reject("input", f"provider {provider!r} needs at least one non-empty user or assistant item in "
               "'input'.", "invalid_value")
    return ctx


# - tools -


def _declaration(tool: Json, param: str, provider: str) -> Json:
    if tool["type"] != "function":
        reject(f"{param}.type", f"built-in tool {tool['type']!r} is not supported by provider {provider!r}; "
               "only function tools are.")
    declaration: Json = {"name": tool["name"]}
    if tool.get("description") is not None:
        declaration["description"] = tool["description"]
    if tool.get("parameters") is not None:
        declaration["parametersJsonSchema"] = tool["parameters"]
    return declaration


@dataclass(frozen=True, slots=True)
class _Choice:
    """A tool_choice in Gemini terms: a mode, names the model may call, names kept in the tool list."""

    mode: str
    allowed: tuple[str, ...] | None = None
    keep: frozenset[str] | None = None


_CHOICE_MODES = {"auto": _Choice("AUTO"), "none": _Choice("NONE"), "required": _Choice("ANY")}


def _allowed_tools_choice(choice: Json) -> _Choice:
    names = tuple(entry["name"] for entry in choice["tools"] if entry["type"] == "function" and "name" in entry)
    if choice["mode"] == "required":
        return _Choice("ANY", allowed=names)
    # allowedFunctionNames only counts with mode ANY: narrow the declarations instead.
    return _Choice("AUTO", keep=frozenset(names))


_CHOICE_OBJECTS: dict[str, Callable[[Json], _Choice]] = {
    "function": lambda choice: _Choice("ANY", allowed=(choice["name"],)),
    "allowed_tools": _allowed_tools_choice,
}


def _choice(choice: str | Json, provider: str) -> _Choice:
    if isinstance(choice, str):
        return _CHOICE_MODES[choice]
    convert = _CHOICE_OBJECTS.get(choice["type"])
    if convert is None:
        reject("tool_choice.type", f"tool_choice of type {choice['type']!r} is not supported by provider "
               f"{provider!r}.")
    return convert(choice)


def _tool_fields(request: ResponsesRequest, provider: str) -> Json:
    declarations = [_declaration(tool, f"tools[{i}]", provider) for i, tool in enumerate(request.tools)]
    choice = _choice(request.tool_choice, provider)
    if choice.keep is not None:
        declarations = [decl for decl in declarations if decl["name"] in choice.keep]
    if not declarations:
        return {}
    config: Json = {"mode": choice.mode}
    if choice.allowed is not None:
        config["allowedFunctionNames"] = list(choice.allowed)
    return {"tools": [{"functionDeclarations": declarations}], "toolConfig": {"functionCallingConfig": config}}


# - generationConfig -

#: reasoning.effort -> thinkingBudget (see the module docstring)
_THINKING_BUDGETS: dict[str, int] = {
    "none": 0,
    "minimal": 512,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
    "xhigh": 24576,
    "max": 24576,
}


def _thinking_config(reasoning: Json | None) -> Json:
    reasoning = reasoning or {}
    effort = reasoning.get("effort")
    summary = reasoning.get("summary") or reasoning.get("generate_summary")
    config: Json = {}
    if effort is not None:
        config["thinkingBudget"] = _THINKING_BUDGETS[effort]
    if effort not in (None, "none") or (summary is not None and effort is None):
        config["includeThoughts"] = True
    return config


def _format_fields(request: ResponsesRequest) -> Json:
    fmt = (request.text or {}).get("format") or {}
    kind = fmt.get("type", "text")
    if kind == "json_schema":
        return {"responseMimeType": "application/json", "responseJsonSchema": fmt["schema"]}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    return {}


def _generation_config(request: ResponsesRequest) -> Json:
    config = sampling_fields(request, temperature="temperature", top_p="topP", max_output_tokens="maxOutputTokens",
                             stop="stopSequences")
    config |= _format_fields(request)
    thinking = _thinking_config(request.reasoning)
    if thinking:
        config["thinkingConfig"] = thinking
    return config


def _headers(provider: ProviderConfig) -> dict[str, str]:
    return upstream_headers(provider, accept=None, key_header="x-goog-api-key", key_prefix="")


def stream_url(base_url: str, model: str) -> str:
    """The ``streamGenerateContent`` SSE URL of ``model`` (a bare id; a ``models/`` prefix is dropped)."""
    model = model.removeprefix("models/")
    return f"{base_url.rstrip('/')}/v1beta/models/{quote(model, safe='')}:streamGenerateContent?alt=sse"


def build_request(
    request: ResponsesRequest, provider: ProviderConfig, model: str, assets: Assets = NO_ASSETS
) -> UpstreamRequest:
    """Translate a validated Responses request into one streaming Gemini request.

    ``model`` is the upstream model id; ``assets`` holds the fetched bytes of every
    http(s) image URL.  Raises ``InvalidRequest`` naming ``param`` for what Gemini
    cannot take: built-in tools, ``file_id`` parts, ``file_url`` files, unresolvable
    ``item_reference`` items, tool outputs for unknown calls, non-object arguments.
    """
    ctx = _contents(request, provider.name, assets)
    body: Json = {"contents": ctx.finish()}
    if ctx.system:
        body["systemInstruction"] = {"parts": ctx.system}
    body |= _tool_fields(request, provider.name)
    config = _generation_config(request)
    if config:
        body["generationConfig"] = config
    return json_post(stream_url(provider.base_url, model), _headers(provider), body)


# --- stream translator ---------------------------------------------------------------------------

# Gemini ``finishReason`` → how the turn ended.  ``None`` marks a reason that means the upstream failed; a reason
# missing here (LANGUAGE, OTHER, FINISH_REASON_UNSPECIFIED, NO_IMAGE, new ones) completes
# the turn when it produced output and fails it otherwise.
_FINISH_REASONS: dict[str, FinishReason | None] = {
    "STOP": FinishReason.COMPLETED,
    "MAX_TOKENS": FinishReason.MAX_OUTPUT_TOKENS,
    "SAFETY": FinishReason.CONTENT_FILTER,
    "RECITATION": FinishReason.CONTENT_FILTER,
    "BLOCKLIST": FinishReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "SPII": FinishReason.CONTENT_FILTER,
    "IMAGE_SAFETY": FinishReason.CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": FinishReason.CONTENT_FILTER,
    "IMAGE_RECITATION": FinishReason.CONTENT_FILTER,
    "IMAGE_OTHER": FinishReason.CONTENT_FILTER,
    "MALFORMED_FUNCTION_CALL": None,
    "UNEXPECTED_TOOL_CALL": None,
    "TOO_MANY_TOOL_CALLS": None,
}

# A Google error's gRPC status (or HTTP code) → the Responses stream error code.
_STREAM_CODES: dict[object, str] = {
    "RESOURCE_EXHAUSTED": "rate_limit_exceeded",
    "INVALID_ARGUMENT": "invalid_prompt",
    "FAILED_PRECONDITION": "invalid_prompt",
    429: "rate_limit_exceeded",
    400: "invalid_prompt",
}

_ENDED_EARLY = "upstream stream ended before a finishReason"
_RAW_LIMIT = 64 * 1024  # the most raw (non-SSE) JSON text held while waiting for its braces to balance
_loads = jsontext.loads  # json.loads, but lone surrogates become U+FFFD (streamgw.core.jsontext)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _usage(raw: Json) -> Usage:
    """Gemini ``usageMetadata`` → ``Usage``."""
    thoughts = token_count(raw.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=token_count(raw.get("promptTokenCount")) + token_count(raw.get("toolUsePromptTokenCount")),
        output_tokens=token_count(raw.get("candidatesTokenCount")) + thoughts,
        cached_tokens=token_count(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _stream_failure(error: object, secrets: Sequence[str]) -> UpstreamFailure:
    """A Google error object seen inside the stream → failure (message redacted)."""
    status = code = message = None
    if isinstance(error, dict):
        status, code, message = error.get("status"), error.get("code"), error.get("message")
    elif isinstance(error, str):
        message = error
    if not isinstance(message, str) or not message:
        message = "upstream reported an error without a message"
    known = [_STREAM_CODES.get(v) for v in (status, code) if isinstance(v, str | int)]
    stream_code = next((c for c in known if c), "server_error")
    return UpstreamFailure(stream_code, clean_message(message, secrets))


def _first_candidate(candidates: list[Json]) -> Json | None:
    """Candidate 0 (``index`` absent counts as 0)."""
    first = candidates[0]
    if first.get("index", 0) == 0:
        return first
    return next((c for c in candidates if c.get("index", 0) == 0), None)


class _RawJson:
    """Collects raw lines until their braces balance outside strings (python-genai does the same).

    At most ``_RAW_LIMIT`` bytes are held: an object that never closes is dropped, not hoarded.
    """

    __slots__ = ("_depth", "_escaped", "_in_string", "_lines", "_size")

    def __init__(self) -> None:
        self._lines: list[bytes] = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def add(self, line: bytes) -> bytes | None:
        """Take one line; return the buffered JSON text once its braces balance."""
        if not self._lines and b"{" not in line:
            return None  # not the start of a JSON object: an unknown SSE field, ignored
        self._lines.append(line)
        self._size += len(line)
        for char in line.decode("utf-8", "replace"):
            self._step(char)
        if self._depth > 0 and self._size <= _RAW_LIMIT:
            return None
        text = b"\n".join(self._lines) if self._depth <= 0 else b""
        self._lines.clear()
        self._size = self._depth = 0
        self._in_string = self._escaped = False
        return text[text.find(b"{") : text.rfind(b"}") + 1]

    def _step(self, char: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
        elif char == '"':
            self._in_string = True
        elif char == "{":
            self._depth += 1
        elif char == "}":
            self._depth -= 1


class GeminiStreamTranslator:
    """Gemini ``streamGenerateContent?alt=sse`` body bytes → neutral deltas (``GenerateContentResponse`` chunks).

    Every ``data:`` event is a whole ``GenerateContentResponse`` whose parts are new:
    text → ``TextDelta``, ``thought: true`` text → ``ReasoningDelta``, a ``functionCall``
    (always whole) → start, one argument fragment, end.  Thought signatures become
    ``ReasoningSignature`` blobs (see the module docstring).  ``usageMetadata`` is
    cumulative: the last one is reported with ``Finish`` (and again at EOF if it changed).
    The stream has no end marker: EOF after a ``finishReason`` is the proper end, EOF
    before one is a failure.  An error object (a ``data:`` event or raw JSON lines)
    ends the stream with ``UpstreamFailure``; nothing is emitted after that.
    """

    __slots__ = (
        "_decoder",
        "_ended",
        "_finished",
        "_next_key",
        "_output",
        "_provider",
        "_raw",
        "_secrets",
        "_text_sig",
        "_usage",
        "_usage_sent",
        "_used_ids",
    )

    def __init__(self, *, provider: str, secrets: Sequence[str] = ()) -> None:
        """``provider`` (the config name) is minted into signature blobs; ``secrets`` are redacted."""
        # Raw JSON error lines (no SSE field) are kept by the decoder for ``_on_raw_lines``.
        self._decoder = SSEDecoder(keep_unknown_lines=True)
        self._raw = _RawJson()
        self._provider = provider
        self._secrets = tuple(secrets)
        self._ended = False  # failure emitted (or EOF handled): ignore everything after
        self._finished = False  # a Finish was emitted
        self._output = False  # any text, reasoning or call was emitted
        self._next_key = 0
        self._used_ids: dict[str, None] = {}  # a dict as a set: 64 bytes empty, not 216
        self._usage: Usage | None = None  # the last usageMetadata seen
        self._usage_sent: Usage | None = None
        self._text_sig: str | None = None  # a text part's signature, held until the next boundary

    def feed(self, chunk: bytes) -> list[Delta]:
        """Consume body bytes; return the deltas of every event they complete."""
        if self._ended:
            return []
        out: list[Delta] = []
        for event in self._decoder.feed(chunk):
            self._on_data(event.data, out)
            if self._ended:
                return out
        if self._decoder.unknown_lines:
            self._on_raw_lines(out)
        return out

    def finish(self) -> list[Delta]:
        """End of body: the proper end after a finishReason, else a failure."""
        if self._ended:
            return []
        out: list[Delta] = []
        try:
            self._decoder.finish()
        except TruncatedStream:
            pass  # a cut after the finishReason only loses trailing metadata
        if self._ended:
            return out
        self._ended = True
        if not self._finished:
            self._fail(out, "server_error", _ENDED_EARLY)
        elif self._usage != self._usage_sent:
            self._send_usage(out)
        return out

    # -- frames ---------------------------------------------------------------------------------

    def _on_data(self, data: str, out: list[Delta]) -> None:
        """One SSE event's data: one JSON ``GenerateContentResponse`` (or an error object)."""
        if not data:
            return
        try:
            chunk = _loads(data)
        except (ValueError, RecursionError) as exc:
            self._fail(out, "server_error", f"malformed upstream chunk: {exc}")
            return
        try:
            self._on_chunk(chunk, out)
        except (AttributeError, TypeError, IndexError, KeyError):
            # The JSON parsed but has the wrong shape somewhere (e.g. a list where an object goes).
            self._fail(out, "server_error", "malformed upstream chunk: unexpected structure")

    def _on_raw_lines(self, out: list[Delta]) -> None:
        """Lines outside any SSE field: Google sends a mid-stream error as raw JSON lines."""
        lines = self._decoder.unknown_lines[:]
        self._decoder.unknown_lines.clear()
        for line in lines:
            text = self._raw.add(line)
            if text is None:
                continue
            try:
                obj = _loads(text)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and obj.get("error") is not None:
                self._fail_with(out, _stream_failure(obj["error"], self._secrets))
                return

    def _on_chunk(self, chunk: Json, out: list[Delta]) -> None:
        """Translate one parsed chunk."""
        error = chunk.get("error")
        if error is not None:
            self._fail_with(out, _stream_failure(error, self._secrets))
            return
        usage = chunk.get("usageMetadata")
        if usage:
            self._usage = _usage(usage)
        candidates = chunk.get("candidates")
        if candidates:
            candidate = _first_candidate(candidates)
            if candidate is not None:
                self._on_candidate(candidate, out)
        elif not self._finished and (chunk.get("promptFeedback") or {}).get("blockReason"):
            self._finish(FinishReason.CONTENT_FILTER, out)  # the prompt itself was blocked

    def _on_candidate(self, candidate: Json, out: list[Delta]) -> None:
        content = candidate.get("content")
        parts = content.get("parts") if content else None
        if parts:
            for part in parts:
                self._on_part(part, out)
        reason = candidate.get("finishReason")
        if reason and not self._finished:
            self._on_finish_reason(reason, candidate, out)

    # -- parts ----------------------------------------------------------------------------------

    def _on_part(self, part: Json, out: list[Delta]) -> None:
        call = part.get("functionCall")
        if call is not None:
            self._on_call(call, part.get("thoughtSignature"), out)
            return
        text = part.get("text")
        signature = part.get("thoughtSignature")
        if type(text) is not str:
            text = ""
        if part.get("thought") is True:
            self._flush_text_sig(out)
            if text:
                out.append(ReasoningDelta(text))
                self._output = True
            if signature and type(signature) is str:
                out.append(ReasoningSignature(self._blob({"text_sig": signature})))
            return
        if text:
            out.append(TextDelta(text))
            self._output = True
        if signature and type(signature) is str:
            self._flush_text_sig(out)  # an earlier one keeps its own item
            self._text_sig = signature

    def _on_call(self, call: Json, signature: object, out: list[Delta]) -> None:
        """A whole function call: its signature first (see the module docstring), then the call."""
        call_id = self._call_id(call.get("id"))
        blob: Json = {}
        if signature and type(signature) is str:
            blob["call_sigs"] = {call_id: signature}
            if self._text_sig is not None:
                blob["text_sig"] = self._text_sig
                self._text_sig = None
        else:
            self._flush_text_sig(out)
        if blob:
            out.append(ReasoningSignature(self._blob(blob)))
        key = self._next_key
        self._next_key += 1
        name = call.get("name")
        args = call.get("args")
        out.append(ToolCallStart(key, call_id, name if type(name) is str else ""))
        out.append(ToolCallArgs(key, _dumps({} if args is None else args)))
        out.append(ToolCallEnd(key))
        self._output = True

    def _call_id(self, upstream_id: object) -> str:
        """Gemini's id when it gave a fresh one, else a minted one."""
        if upstream_id and type(upstream_id) is str and upstream_id not in self._used_ids:
            call_id = upstream_id
        else:
            call_id = mint_call_id()
        self._used_ids[call_id] = None
        return call_id

    def _blob(self, data: Json) -> str:
        return encode_blob(self._provider, data)

    def _flush_text_sig(self, out: list[Delta]) -> None:
        if self._text_sig is not None:
            out.append(ReasoningSignature(self._blob({"text_sig": self._text_sig})))
            self._text_sig = None

    # -- endings --------------------------------------------------------------------------------

    def _on_finish_reason(self, reason: object, candidate: Json, out: list[Delta]) -> None:
        if type(reason) is not str:  # a number, NaN or object is no reason (unknown strings are handled below)
            self._fail(out, "server_error", "malformed upstream chunk: finishReason is not a string")
            return
        if reason in _FINISH_REASONS:
            result = _FINISH_REASONS[reason]
        elif reason.startswith("IMAGE_"):
            result = FinishReason.CONTENT_FILTER
        else:
            result = FinishReason.COMPLETED if self._output else None
        if result is not None:
            self._finish(result, out)
            return
        message = f"upstream finishReason={reason}"
        detail = candidate.get("finishMessage")
        if isinstance(detail, str) and detail:
            message += f": {clean_message(detail, self._secrets)}"
        self._fail(out, "server_error", message)

    def _finish(self, reason: FinishReason, out: list[Delta]) -> None:
        self._flush_text_sig(out)
        self._finished = True
        if self._usage is not None:
            self._send_usage(out)
        out.append(Finish(reason))

    def _send_usage(self, out: list[Delta]) -> None:
        if self._usage is not None:
            out.append(self._usage)
            self._usage_sent = self._usage

    def _fail(self, out: list[Delta], code: str, message: str) -> None:
        self._fail_with(out, UpstreamFailure(code, message))

    def _fail_with(self, out: list[Delta], failure: UpstreamFailure) -> None:
        """Emit the one ``UpstreamFailure`` (after the last usage seen) and ignore the rest."""
        self._ended = True
        if self._usage is not None and self._usage != self._usage_sent:
            self._send_usage(out)
        out.append(failure)


# --- error parser --------------------------------------------------------------------------------

_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_DELAY = re.compile(r"(\d+(?:\.\d+)?)s")
_CONTEXT_MARKERS = ("exceeds the maximum number of tokens", "input token count")


@dataclass(frozen=True, slots=True)
class _GoogleError(ErrorBody):
    """A Google error body; ``retry_delay`` is RetryInfo's ``retryDelay`` in whole seconds."""

    status: str | None = None  # the gRPC status name, e.g. INVALID_ARGUMENT
    reasons: frozenset[str] = frozenset()  # google.rpc.ErrorInfo reasons, e.g. API_KEY_INVALID


def _error_object(parsed: object) -> Json:
    """``error`` of ``{"error": {...}}``; also of ``[{"error": {...}}]`` (the non-SSE stream form)."""
    if isinstance(parsed, list) and parsed:
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return error
    return {"message": error} if isinstance(error, str) else {}


def _details(error: Json) -> tuple[frozenset[str], str | None]:
    reasons: set[str] = set()
    delay = None
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if not isinstance(detail, dict):
            continue
        kind = detail.get("@type")
        if kind == _ERROR_INFO and isinstance(detail.get("reason"), str):
            reasons.add(detail["reason"])
        elif kind == _RETRY_INFO and isinstance(detail.get("retryDelay"), str):
            delay = detail["retryDelay"]
    return frozenset(reasons), delay


def _whole_seconds(delay: str | None) -> str | None:
    """RetryInfo's ``retryDelay`` (``"7.5s"``) as a ``retry-after`` value, rounded up."""
    match = _DELAY.fullmatch(delay.strip()) if delay else None
    return str(math.ceil(float(match[1]))) if match else None


def _read_error(status: int, body: bytes, secrets: Sequence[str]) -> _GoogleError:
    text, parsed = error_text(body)
    error = _error_object(parsed)
    grpc_status = error.get("status")
    reasons, delay = _details(error)
    return _GoogleError(clean_message(message_or_text(error.get("message"), status, text), secrets),
                        retry_delay=_whole_seconds(delay),
                        status=grpc_status if isinstance(grpc_status, str) else None, reasons=reasons)


def _invalid_request(status: int, err: _GoogleError, headers: Mapping[str, str]) -> GatewayError:
    if "API_KEY_INVALID" in err.reasons:
        return bad_credentials(status, err, headers)  # Gemini answers a wrong key with a 400
    lowered = err.message.lower()
    if any(marker in lowered for marker in _CONTEXT_MARKERS):
        code: str | None = "context_length_exceeded"
    else:
        code = err.status.lower() if err.status else None
    return InvalidRequest(err.message, code=code)


def _not_found(status: int, err: _GoogleError, headers: Mapping[str, str]) -> GatewayError:
    return NotFound(err.message, code="model_not_found")


# README "Errors"; every other status is an upstream failure (502).
_ERRORS = ErrorTable(_read_error, {400: _invalid_request, 409: _invalid_request, 422: _invalid_request,
                                   404: _not_found})


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()
) -> GatewayError:
    """A non-2xx Gemini answer → the ``GatewayError`` to report (README "Errors").

    ``{"error": {"code", "message", "status", "details"}}`` is read; the message is kept
    with ``secrets`` and anything key-shaped redacted.  400 with ``API_KEY_INVALID``,
    401 and 403 become a 502 (the gateway's own upstream key is at fault); 429 copies
    ``retry-after`` or derives it from ``google.rpc.RetryInfo``.
    """
    return _ERRORS.parse(status, headers, body, secrets)


#: the Gemini Developer API dialect (``type = "gemini"`` providers)
DIALECT: Dialect = WireDialect(
    name="gemini",
    build=build_request,
    translator=lambda request, provider, secrets: GeminiStreamTranslator(provider=provider.name, secrets=secrets),
    errors=parse_error,
    needs_image_bytes=True,
)

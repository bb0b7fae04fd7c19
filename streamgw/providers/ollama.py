"""The Ollama native dialect (``POST {base_url}/api/chat``, NDJSON stream).

The API: https://github.com/ollama/ollama/blob/main/docs/api.md.

``base_url`` is the server root (``http://localhost:11434``).  Ollama takes images only
as bare base64, so ``needs_image_bytes`` is set and the engine hands remote images over
as ``assets``.  Tool-call arguments travel as JSON *objects* both ways.

Decisions where Ollama has no equivalent (each a 400 naming ``param`` unless noted):

* ``tool_choice: "required"``, a forced function, or ``allowed_tools`` in ``required``
  mode are refused: Ollama has no ``tool_choice`` and cannot be made to call a tool, so
  accepting them would silently break the contract the client asked for.  ``"none"``
  omits ``tools``; ``allowed_tools`` in ``auto`` mode narrows the list.
* ``parallel_tool_calls: false`` is accepted and not enforced (no upstream control;
  the model may still emit several calls).
* ``reasoning.effort`` → ``think``: ``none`` → ``false``; ``minimal``/``low`` →
  ``"low"``; ``medium``, ``high`` as they are; ``xhigh``/``max`` → ``"high"``, the top
  level every thinking-capable Ollama version accepts.  No ``reasoning``: ``think`` is
  not sent (the model's default).
* ``input_file`` (PDF) and ``file_id`` parts are refused; ``item_reference`` too.
* Reasoning items are dropped (Ollama needs no thinking replay).
* A ``function_call`` becomes an assistant ``tool_calls`` entry ``{"id", "function": {"name",
  "arguments": <object>}}`` (invalid or non-object JSON arguments: 400); its output a ``tool``
  message with ``tool_name`` (looked up by ``call_id``; omitted when the call is not in the
  input) and ``tool_call_id``.  Servers that predate ``id``/``tool_call_id`` ignore them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from streamgw.config import ProviderConfig
from streamgw.core import jsontext
from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    UpstreamFailure,
    Usage,
)
from streamgw.core.ndjson import NDJSONDecoder
from streamgw.core.request import ResponsesRequest
from streamgw.errors import (
    GatewayError,
    NotFound,
    clean_message,
)
from streamgw.providers.base import NO_ASSETS, Assets, Dialect, UpstreamRequest, WireDialect
from streamgw.providers.common import InputItems, json_post, mint_call_id, reject, sampling_fields, upstream_headers
from streamgw.providers.errors import ErrorBody, ErrorTable, error_text, message_or_text

__all__ = [
    "DIALECT",
    "THINK_LEVELS",
    "OllamaStreamTranslator",
    "build_request",
    "parse_error",
]

# --- request builder ---------------------------------------------------------------------------

Message = dict[str, Any]


@dataclass(slots=True)
class _History:
    """Ollama messages being built from Responses input items, in order."""

    provider: str
    assets: Assets
    messages: list[Message] = field(default_factory=list)
    #: call_id -> function name, for ``tool_name`` on the matching tool message
    call_names: dict[str, str] = field(default_factory=dict)


# - content parts -

_DATA_URL_PREFIX = "data:"
_BASE64_MARKER = ";base64,"


def _image_base64(part: dict[str, Any], param: str, history: _History) -> str:
    """The bare base64 of an ``input_image``: a data URL stripped, or the fetched bytes of a URL."""
    if part.get("file_id") is not None:
        reject(
            f"{param}.file_id",
            f"input_image with 'file_id' is not supported by provider {history.provider!r}: file ids live "
            "in another upstream's file store. Send the image inline (a data URL) or as an http(s) URL.",
        )
    url: str = part["image_url"]
    if url.startswith(_DATA_URL_PREFIX):
        head, marker, data = url.partition(_BASE64_MARKER)
        if not marker or "," in head:
            reject(f"{param}.image_url", "Only base64 data URLs (data:<mime>;base64,...) are supported.",
                   "invalid_value")
        return data
    fetched = history.assets.get(url)
    if fetched is None:
        reject(
            f"{param}.image_url",
            f"image URL {url[:200]!r} cannot be sent to provider {history.provider!r}: it takes image bytes, "
            "and only http(s) URLs are fetched. Use an http(s) URL or a base64 data URL.",
            "invalid_value",
        )
    return fetched[1]


def _content(parts: list[dict[str, Any]], param: str, history: _History) -> tuple[str, list[str]]:
    """Joined text and bare-base64 images of user-side parts; anything else is refused."""
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(parts):
        kind = part["type"]
        if kind == "input_image":
            images.append(_image_base64(part, f"{param}[{j}]", history))
        elif kind == "input_file":
            reject(
                f"{param}[{j}].type",
                f"input_file parts (PDFs and other documents) are not supported by provider "
                f"{history.provider!r}: Ollama's chat API takes text and images only.",
            )
        else:
            texts.append(part.get("text", part.get("refusal", "")))
    return "\n".join(texts), images


def _text_only(parts: list[dict[str, Any]], param: str, history: _History, what: str) -> str:
    text, images = _content(parts, param, history)
    if images:
        j = next(j for j, part in enumerate(parts) if part["type"] == "input_image")
        reject(f"{param}[{j}].type", f"input_image parts in {what} are not supported by provider "
               f"{history.provider!r}.")
    return text


# - input items -


def _with_images(message: Message, images: list[str]) -> Message:
    if images:
        message["images"] = images
    return message


def _user_message(history: _History, item: dict[str, Any], param: str) -> None:
    text, images = _content(item["content"], f"{param}.content", history)
    history.messages.append(_with_images({"role": "user", "content": text}, images))


def _system_message(history: _History, item: dict[str, Any], param: str) -> None:
    text = _text_only(item["content"], f"{param}.content", history, f"{item['role']} messages")
    history.messages.append({"role": "system", "content": text})


def _assistant_message(history: _History, item: dict[str, Any], param: str) -> None:
    text = _text_only(item["content"], f"{param}.content", history, "assistant messages")
    history.messages.append({"role": "assistant", "content": text})


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _arguments(item: dict[str, Any], param: str) -> dict[str, Any]:
    """A call's ``arguments`` string as the JSON object Ollama wants ("" counts as ``{}``)."""
    try:
        value = json.loads(item["arguments"] or "{}", parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        reject(f"{param}.arguments", f"function_call arguments are not valid JSON: {exc}", "invalid_value")
    if not isinstance(value, dict):
        reject(f"{param}.arguments", "function_call arguments must be a JSON object: Ollama takes "
               "tool-call arguments as an object.", "invalid_value")
    return value


def _function_call(history: _History, item: dict[str, Any], param: str) -> None:
    call = {"id": item["call_id"], "function": {"name": item["name"], "arguments": _arguments(item, param)}}
    history.call_names[item["call_id"]] = item["name"]
    # Consecutive calls, and the assistant text just before them, are one assistant turn.
    if not history.messages or history.messages[-1]["role"] != "assistant":
        history.messages.append({"role": "assistant", "content": ""})
    history.messages[-1].setdefault("tool_calls", []).append(call)


def _function_call_output(history: _History, item: dict[str, Any], param: str) -> None:
    output = item["output"]
    images: list[str] = []
    if not isinstance(output, str):
        output, images = _content(output, f"{param}.output", history)
    message: Message = {"role": "tool", "content": output}
    name = history.call_names.get(item["call_id"])
    if name is not None:  # a call outside this input (not expanded): Ollama does without the name
        message["tool_name"] = name
    message["tool_call_id"] = item["call_id"]
    history.messages.append(_with_images(message, images))


def _reasoning(history: _History, item: dict[str, Any], param: str) -> None:
    """Reasoning items are dropped: Ollama needs no thinking replay."""


_INPUT = InputItems[_History](
    user=_user_message, system=_system_message, assistant=_assistant_message,
    function_call=_function_call, function_call_output=_function_call_output, reasoning=_reasoning,
)


def _messages(request: ResponsesRequest, provider: ProviderConfig, assets: Assets) -> list[Message]:
    history = _History(provider=provider.name, assets=assets)
    if request.instructions:
        history.messages.append({"role": "system", "content": request.instructions})
    _INPUT.add(history, request.input)
    return history.messages


# - tools -

_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(tool: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    if tool["type"] != "function":
        reject(
            f"{param}.type",
            f"built-in tool {tool['type']!r} is not supported by provider {provider!r}; only function tools are.",
        )
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or dict(_EMPTY_PARAMETERS)
    return {"type": "function", "function": function}


def _cannot_force(param: str, provider: str) -> NoReturn:
    reject(
        param,
        f"provider {provider!r} (Ollama) cannot force a tool call: it has no tool_choice. "
        "Use tool_choice 'auto' (the model decides) or 'none'.",
    )


def _tool_fields(request: ResponsesRequest, provider: str) -> dict[str, Any]:
    tools = [_tool(tool, f"tools[{i}]", provider) for i, tool in enumerate(request.tools)]
    choice = request.tool_choice
    if isinstance(choice, dict):
        if choice["type"] != "allowed_tools":
            _cannot_force("tool_choice", provider)
        if choice["mode"] != "auto":
            _cannot_force("tool_choice.mode", provider)
        allowed = {entry.get("name") for entry in choice["tools"] if entry["type"] == "function"}
        tools = [tool for tool in tools if tool["function"]["name"] in allowed]
    elif choice == "required":
        _cannot_force("tool_choice", provider)
    if not tools or choice == "none":
        return {}
    return {"tools": tools}


# - everything else -

#: ``reasoning.effort`` -> ``think``
THINK_LEVELS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "high",
}


def _format_fields(request: ResponsesRequest) -> dict[str, Any]:
    fmt = (request.text or {}).get("format") or {}
    kind = fmt.get("type")
    if kind == "json_object":
        return {"format": "json"}
    if kind == "json_schema":
        return {"format": fmt["schema"]}
    return {}


def _options(request: ResponsesRequest) -> dict[str, Any]:
    options = sampling_fields(request, temperature="temperature", top_p="top_p", max_output_tokens="num_predict",
                              stop="stop")
    return {"options": options} if options else {}


def _think(request: ResponsesRequest) -> dict[str, Any]:
    effort = (request.reasoning or {}).get("effort")
    return {} if effort is None else {"think": THINK_LEVELS[effort]}


def _headers(provider: ProviderConfig) -> dict[str, str]:
    return upstream_headers(provider, accept="application/x-ndjson")


def build_request(
    request: ResponsesRequest, provider: ProviderConfig, model: str, assets: Assets = NO_ASSETS
) -> UpstreamRequest:
    """Translate a validated Responses request into one streaming ``/api/chat`` request.

    ``model`` is the upstream model id; ``assets`` holds the fetched bytes of every
    http(s) image URL in the input.  ``stream: true`` is always sent explicitly: a
    non-streamed client request is aggregated by the gateway.  Raises ``InvalidRequest``
    naming ``param`` for what Ollama cannot take (see the module docstring).
    """
    body: dict[str, Any] = {"model": model, "messages": _messages(request, provider, assets), "stream": True}
    body |= _tool_fields(request, provider.name)
    body |= _options(request)
    body |= _format_fields(request)
    body |= _think(request)
    return json_post(f"{provider.base_url.rstrip('/')}/api/chat", _headers(provider), body)


# --- stream translator ---------------------------------------------------------------------------

# Ollama ``done_reason`` → how the turn ended; anything else (``load``, ``unload``, new values) completes.
_DONE_REASONS: dict[str, FinishReason] = {
    "stop": FinishReason.COMPLETED,
    "length": FinishReason.MAX_OUTPUT_TOKENS,
}

_ENDED_EARLY = "upstream stream ended before completion (no done line)"
_CUT_MID_LINE = "upstream stream ended before completion (cut mid-line)"
_BAD_SHAPE = "malformed upstream line: unexpected structure"
_RAW_BODY_LIMIT = 1000
_loads = jsontext.loads  # json.loads, but lone surrogates become U+FFFD (streamgw.core.jsontext)


def _count(value: object) -> int:
    """A token count; absent (Ollama omits zeros) or not an integer counts as 0.

    Stricter than ``common.token_count``: Ollama only ever sends integers, so a float is junk.
    """
    return value if type(value) is int else 0


def _compact(arguments: object) -> str:
    """A call's arguments as the JSON text Responses carries (``{}`` when absent)."""
    if arguments is None:
        return "{}"
    if type(arguments) is str:  # not Ollama's shape, but a proxy may stringify
        return arguments or "{}"
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class OllamaStreamTranslator:
    """Ollama ``/api/chat`` NDJSON body bytes → neutral deltas.

    Per line, in order: ``message.thinking`` (reasoning), ``message.content`` (text),
    each of ``message.tool_calls`` as one complete call (start, its whole arguments,
    end; keyed by a counter so keys stay unique across lines), then on ``done: true``
    the usage and the finish.  An ``{"error": ...}`` line, a line that is not a JSON
    object, or EOF without ``done: true`` is an ``UpstreamFailure``; nothing follows a
    failure or the done line.  Fragments are never coalesced, so any split of the same
    body gives the same deltas.
    """

    __slots__ = ("_calls", "_decoder", "_ended", "_secrets", "_used_ids")

    def __init__(self, *, secrets: Sequence[str] = ()) -> None:
        """``secrets`` are redacted from upstream error messages (key-shaped text always is)."""
        self._decoder = NDJSONDecoder()
        self._secrets = tuple(secrets)
        self._ended = False  # done line seen or failure emitted: ignore everything after
        self._calls = 0
        self._used_ids: dict[str, None] = {}  # a dict as a set: 64 bytes empty, not 216

    def feed(self, chunk: bytes) -> list[Delta]:
        """Consume body bytes; return the deltas of every line they complete."""
        if self._ended:
            return []
        out: list[Delta] = []
        for line in self._decoder.feed(chunk):
            self._on_line(line, out)
            if self._ended:
                break
        return out

    def finish(self) -> list[Delta]:
        """End of body: an unterminated last line still counts; no done line is a failure."""
        if self._ended:
            return []
        out: list[Delta] = []
        for line in self._decoder.finish():
            self._on_line(line, out, _CUT_MID_LINE)
        if not self._ended:
            self._fail(out, _ENDED_EARLY)
        return out

    def _on_line(self, line: bytes, out: list[Delta], unparsable: str | None = None) -> None:
        """One line; ``unparsable`` replaces the malformed-line message (an unterminated last line)."""
        try:
            frame = _loads(line)
        except (ValueError, RecursionError) as exc:
            self._fail(out, unparsable or f"malformed upstream line: {exc}")
            return
        if type(frame) is not dict:
            self._fail(out, _BAD_SHAPE)
            return
        try:
            self._on_frame(frame, out)
        except (AttributeError, TypeError, ValueError):
            # Valid JSON of the wrong shape (a list where an object goes, ...), or NaN in arguments.
            self._fail(out, _BAD_SHAPE)

    def _on_frame(self, frame: dict[str, Any], out: list[Delta]) -> None:
        error = frame.get("error")
        if error:
            text = error if type(error) is str else json.dumps(error, ensure_ascii=False)[:_RAW_BODY_LIMIT]
            self._fail(out, clean_message(text, self._secrets))
            return
        message = frame.get("message")
        if message:
            self._on_message(message, out)
        if frame.get("done") is True:
            self._on_done(frame, out)

    def _on_done(self, frame: dict[str, Any], out: list[Delta]) -> None:
        """The done line: usage (0 for an omitted count) and the finish; the stream is over."""
        out.append(Usage(input_tokens=_count(frame.get("prompt_eval_count")),
                         output_tokens=_count(frame.get("eval_count"))))
        reason = frame.get("done_reason")
        finish = _DONE_REASONS.get(reason, FinishReason.COMPLETED) if type(reason) is str else FinishReason.COMPLETED
        out.append(Finish(finish))
        self._ended = True

    def _on_message(self, message: dict[str, Any], out: list[Delta]) -> None:
        thinking = message.get("thinking")
        if thinking and type(thinking) is str:
            out.append(ReasoningDelta(thinking))
        content = message.get("content")
        if content and type(content) is str:
            out.append(TextDelta(content))
        calls = message.get("tool_calls")
        if calls:
            for call in calls:
                self._on_call(call, out)

    def _on_call(self, call: dict[str, Any], out: list[Delta]) -> None:
        """One whole tool call: start, its arguments, end."""
        function = call.get("function") or {}
        name = function.get("name")
        arguments = _compact(function.get("arguments"))  # may raise: before anything is emitted
        key = self._calls
        self._calls += 1
        out.append(ToolCallStart(key, self._call_id(call.get("id")), name if type(name) is str else ""))
        out.append(ToolCallArgs(key, arguments))
        out.append(ToolCallEnd(key))

    def _call_id(self, upstream_id: object) -> str:
        """The upstream id when it is a fresh string, else a minted one."""
        if upstream_id and type(upstream_id) is str and upstream_id not in self._used_ids:
            call_id = upstream_id
        else:
            call_id = mint_call_id()
        self._used_ids[call_id] = None
        return call_id

    def _fail(self, out: list[Delta], message: str) -> None:
        """Emit the one ``UpstreamFailure`` and ignore the rest of the stream."""
        self._ended = True
        out.append(UpstreamFailure("server_error", message))


# --- error parser --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _OllamaError(ErrorBody):
    """An upstream error body, and whether it was Ollama's JSON shape."""

    is_json: bool = False


def _error_text(parsed: object) -> str | None:
    """``{"error": "text"}`` (Ollama), or ``{"error": {"message": ...}}`` from a proxy in front."""
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    return error if isinstance(error, str) and error else None


def _read_error_body(status: int, body: bytes, secrets: Sequence[str]) -> _OllamaError:
    text, parsed = error_text(body)
    message = _error_text(parsed)
    return _OllamaError(clean_message(message_or_text(message, status, text), secrets), is_json=message is not None)


def _not_found(status: int, err: _OllamaError, headers: Mapping[str, str]) -> GatewayError:
    if err.is_json:  # e.g. model "x" not found, try pulling it first
        return NotFound(err.message, code="model_not_found")
    # A plain-text 404 is a route the server does not have: usually base_url is not the root.
    return NotFound(f"upstream has no /api/chat ({err.message}); is base_url the Ollama server root?")


# README "Errors"; every other status is an upstream failure (502).
_ERRORS = ErrorTable(_read_error_body, {404: _not_found})


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()
) -> GatewayError:
    """A non-2xx ``/api/chat`` answer → the ``GatewayError`` to report (README "Errors").

    Ollama sends ``{"error": "<text>"}``; the text is kept with ``secrets`` and anything
    key-shaped redacted.  A JSON 404 is an unknown model (``model_not_found``); a 429's
    ``retry-after`` is copied; 401/403 become a 502 (the gateway's own credential).
    """
    return _ERRORS.parse(status, headers, body, secrets)


#: the Ollama native dialect (``type = "ollama"`` providers)
DIALECT: Dialect = WireDialect(
    name="ollama",
    build=build_request,
    translator=lambda request, provider, secrets: OllamaStreamTranslator(secrets=secrets),
    errors=parse_error,
    needs_image_bytes=True,
)

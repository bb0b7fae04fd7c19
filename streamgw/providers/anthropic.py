"""The Anthropic Messages dialect (``POST {base_url}/v1/messages``, https://docs.anthropic.com/en/api/messages).

``base_url`` is the API root (``https://api.anthropic.com``).  The key goes up as
``x-api-key``, never as ``Authorization``.  The upstream is always asked to stream;
a non-streamed client request is aggregated by the gateway from the same deltas.

Choices this module makes where the Responses API and Anthropic's differ:

* ``max_tokens`` is required upstream: ``max_output_tokens``, else a per-model default
  (``_MODEL_TOKENS``).
* ``reasoning.effort`` becomes ``thinking: {"type": "enabled", "budget_tokens": B}``
  (``_THINKING_BUDGETS``).  With thinking on, ``temperature`` is not sent (Anthropic
  requires the default) and ``top_p`` is raised to at least 0.95.  A forced tool choice
  (``required`` or a named function) cannot be combined with thinking upstream: the
  forced tool wins and thinking is left off for that request.
* When both ``temperature`` and ``top_p`` are given only ``temperature`` is sent (newer
  Claude models reject the pair).
* Thinking blocks travel back through the reasoning item's ``encrypted_content``
  (``streamgw.core.blobs``); a blob minted for another provider is dropped.  Replayed
  reasoning is placed just before the next assistant content of the same turn; reasoning
  with no assistant content after it is dropped.
* A conversation may start with an assistant message: the current API accepts it, so
  nothing is inserted.  A final assistant message is a prefill, passed as is.
* ``text.format`` ``json_schema`` becomes ``output_config.format`` (newer models only; older
  ones answer 400, relayed); ``json_object`` becomes a system instruction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    RateLimited,
    UpstreamError,
    clean_message,
)
from streamgw.providers.base import Dialect, UpstreamRequest, WireDialect
from streamgw.providers.common import InputItems, json_post, reject, token_count, upstream_headers
from streamgw.providers.errors import ErrorBody, ErrorTable, error_text, failure_code, message_or_text, retry_after

__all__ = [
    "ANTHROPIC_VERSION",
    "DIALECT",
    "AnthropicStreamTranslator",
    "build_request",
    "default_max_tokens",
    "parse_error",
]

ANTHROPIC_VERSION = "2023-06-01"

# --- request builder ---------------------------------------------------------------------------

Block = dict[str, Any]
Message = dict[str, Any]


@dataclass(slots=True)
class _Conversation:
    """Anthropic messages being built from Responses input items, in order.

    Consecutive blocks of one role share a message.  Replayed thinking blocks wait in
    ``pending`` for the next assistant content and go just before it; a user turn in
    between drops them (thinking with no assistant content after it has nothing to sign).
    """

    provider: str
    system: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    pending: list[Block] = field(default_factory=list)

    def add(self, role: str, blocks: list[Block]) -> None:
        if not blocks:
            return
        if role == "assistant":
            blocks = [*self.pending, *blocks]
        self.pending.clear()
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == role:
            last["content"].extend(blocks)
        else:
            self.messages.append({"role": role, "content": blocks})

    def add_tool_result(self, block: Block) -> None:
        """Results go in one user message, after earlier results and before any user text."""
        self.pending.clear()
        last = self.messages[-1] if self.messages else None
        if last is None or last["role"] != "user":
            self.messages.append({"role": "user", "content": [block]})
            return
        content = last["content"]
        at = next((i for i, b in enumerate(content) if b["type"] != "tool_result"), len(content))
        content.insert(at, block)


# - content parts -

_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


def _data_url(url: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a base64 ``data:`` URL, else ``None``."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    params = head.split(";")
    if not sep or params[-1].strip().lower() != "base64":
        return None
    return params[0].strip().lower(), data


def _no_file_id(part: dict[str, Any], param: str, provider: str) -> None:
    if part.get("file_id") is not None:
        reject(
            param,
            f"{part['type']} with 'file_id' is not supported by provider {provider!r}: file ids live in "
            "the upstream's own file store. Send the content inline instead.",
        )


def _text_block(part: dict[str, Any], param: str, provider: str) -> Block:
    return {"type": "text", "text": part["text"]}


def _image_block(part: dict[str, Any], param: str, provider: str) -> Block:
    _no_file_id(part, param, provider)
    url: str = part["image_url"]
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    inline = _data_url(url)
    if inline is None:
        reject(f"{param}.image_url", "image_url must be an http(s) URL or a base64 data URL.", "invalid_value")
    media_type, data = inline
    if media_type not in _IMAGE_TYPES:
        reject(
            f"{param}.image_url",
            f"image type {media_type!r} is not supported by provider {provider!r}; "
            f"use one of {', '.join(sorted(_IMAGE_TYPES))}.",
            "invalid_image_format",
        )
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document_source(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    if part.get("file_data") is None:
        return {"type": "url", "url": part["file_url"]}
    file_data: str = part["file_data"]
    media_type, data = _data_url(file_data) or ("application/pdf", file_data)  # bare base64: a PDF
    if media_type != "application/pdf":
        reject(
            f"{param}.file_data",
            f"input_file of type {media_type!r} is not supported by provider {provider!r}; only PDF is.",
            "invalid_value",
        )
    return {"type": "base64", "media_type": media_type, "data": data}


def _file_block(part: dict[str, Any], param: str, provider: str) -> Block:
    _no_file_id(part, param, provider)
    block: Block = {"type": "document", "source": _document_source(part, param, provider)}
    if part.get("filename"):
        block["title"] = part["filename"]
    return block


_USER_PARTS: dict[str, Callable[[dict[str, Any], str, str], Block]] = {
    "input_text": _text_block,
    "input_image": _image_block,
    "input_file": _file_block,
}


def _user_blocks(parts: list[dict[str, Any]], param: str, provider: str) -> list[Block]:
    blocks = [_USER_PARTS[part["type"]](part, f"{param}[{j}]", provider) for j, part in enumerate(parts)]
    # Anthropic rejects empty text blocks; an empty string says nothing anyway.
    return [block for block in blocks if block["type"] != "text" or block["text"]]


def _texts(parts: list[dict[str, Any]], param: str, what: str, provider: str) -> list[str]:
    """The text of each part; anything but text is refused."""
    texts = []
    for j, part in enumerate(parts):
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            reject(
                f"{param}[{j}].type",
                f"{part['type']} parts in {what} are not supported by provider {provider!r}.",
            )
        texts.append(text)
    return texts


# - input items -


def _user_message(conv: _Conversation, item: dict[str, Any], param: str) -> None:
    conv.add("user", _user_blocks(item["content"], f"{param}.content", conv.provider))


def _system_message(conv: _Conversation, item: dict[str, Any], param: str) -> None:
    texts = _texts(item["content"], f"{param}.content", f"{item['role']} messages", conv.provider)
    conv.system.append("\n".join(texts))


def _assistant_message(conv: _Conversation, item: dict[str, Any], param: str) -> None:
    texts = _texts(item["content"], f"{param}.content", "assistant messages", conv.provider)
    conv.add("assistant", [{"type": "text", "text": text} for text in texts if text])


def _function_call(conv: _Conversation, item: dict[str, Any], param: str) -> None:
    try:
        arguments = json.loads(item["arguments"].strip() or "{}")
    except (ValueError, RecursionError):
        reject(f"{param}.arguments", f"function_call {item['call_id']!r}: arguments are not valid JSON.",
               "invalid_value")
    if not isinstance(arguments, dict):
        reject(f"{param}.arguments", f"function_call {item['call_id']!r}: arguments must be a JSON object.",
               "invalid_value")
    conv.add("assistant", [{"type": "tool_use", "id": item["call_id"], "name": item["name"], "input": arguments}])


def _function_call_output(conv: _Conversation, item: dict[str, Any], param: str) -> None:
    output = item["output"]
    if not isinstance(output, str):
        output = _user_blocks(output, f"{param}.output", conv.provider)
    conv.add_tool_result({"type": "tool_result", "tool_use_id": item["call_id"], "content": output})


def _thinking_block(data: dict[str, Any] | None) -> Block | None:
    """The block a decoded blob stands for; ``None`` when it cannot be replayed."""
    if data is None:
        return None
    redacted = data.get("redacted")
    if isinstance(redacted, str) and redacted:
        return {"type": "redacted_thinking", "data": redacted}
    thinking, signature = data.get("thinking"), data.get("signature")
    if isinstance(thinking, str) and isinstance(signature, str) and signature:
        return {"type": "thinking", "thinking": thinking, "signature": signature}
    return None  # a thinking block that was never signed (a cut stream) cannot be verified


def _reasoning(conv: _Conversation, item: dict[str, Any], param: str) -> None:
    block = _thinking_block(decode_blob(item.get("encrypted_content"), conv.provider))
    if block is not None:
        conv.pending.append(block)


_INPUT = InputItems[_Conversation](
    user=_user_message, system=_system_message, assistant=_assistant_message,
    function_call=_function_call, function_call_output=_function_call_output, reasoning=_reasoning,
)


def _conversation(request: ResponsesRequest, provider: ProviderConfig) -> _Conversation:
    conv = _Conversation(provider=provider.name)
    if request.instructions:
        conv.system.append(request.instructions)
    _INPUT.add(conv, request.input)
    return conv


# - tools -


def _tool(tool: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    if tool["type"] != "function":
        reject(
            f"{param}.type",
            f"built-in tool {tool['type']!r} is not supported by provider {provider!r}; "
            "only function tools are.",
        )
    out: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description"):
        out["description"] = tool["description"]
    schema = tool.get("parameters") or {"type": "object", "properties": {}}
    out["input_schema"] = schema if "type" in schema else {"type": "object", **schema}
    return out


_CHOICE_MODES: dict[str, dict[str, Any]] = {
    "auto": {"type": "auto"},
    "none": {"type": "none"},
    "required": {"type": "any"},
}


def _anthropic_choice(choice: str | dict[str, Any], provider: str) -> dict[str, Any]:
    if isinstance(choice, str):
        return dict(_CHOICE_MODES[choice])
    if choice["type"] != "function":
        reject(
            "tool_choice.type",
            f"tool_choice of type {choice['type']!r} is not supported by provider {provider!r}.",
        )
    return {"type": "tool", "name": choice["name"]}


def _tool_fields(request: ResponsesRequest, provider: str) -> dict[str, Any]:
    tools = [_tool(tool, f"tools[{i}]", provider) for i, tool in enumerate(request.tools)]
    choice = request.tool_choice
    if isinstance(choice, dict) and choice["type"] == "allowed_tools":
        allowed = {entry.get("name") for entry in choice["tools"] if entry["type"] == "function"}
        tools = [tool for tool in tools if tool["name"] in allowed]
        choice = choice["mode"]
    if not tools:
        return {}  # Anthropic refuses a tool_choice without tools
    fields: dict[str, Any] = {"tools": tools}
    upstream = _anthropic_choice(choice, provider)
    if not request.parallel_tool_calls and upstream["type"] != "none":
        upstream["disable_parallel_tool_use"] = True
    if upstream != {"type": "auto"}:
        fields["tool_choice"] = upstream
    return fields


# - max_tokens and thinking -

# (model id prefix, default max_tokens, the model's output limit); the longest matching prefix wins.
_MODEL_TOKENS: tuple[tuple[str, int, int], ...] = (
    ("claude-3-haiku", 4096, 4096),
    ("claude-3-sonnet", 4096, 4096),
    ("claude-3-opus", 4096, 4096),
    ("claude-3-5-", 8192, 8192),
    ("claude-3-7-sonnet", 16384, 64000),
    ("claude-sonnet-4", 16384, 64000),
    ("claude-haiku-4", 16384, 64000),
    ("claude-opus-4", 16384, 64000),
    ("claude-opus-4-0", 16384, 32000),
    ("claude-opus-4-1", 16384, 32000),
    ("claude-opus-4-2025", 16384, 32000),  # claude-opus-4-20250514
)
_FALLBACK_MAX_TOKENS = 8192

# reasoning.effort -> thinking budget_tokens (Anthropic's minimum is 1024)
_THINKING_BUDGETS: dict[str, int] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
    "xhigh": 32768,
    "max": 49152,
}
_MIN_BUDGET = 1024
_FORCED_CHOICES = frozenset({"any", "tool"})


def _model_tokens(model: str) -> tuple[int, int | None]:
    """``(default max_tokens, output limit or None)`` for ``model``."""
    best: tuple[str, int, int] | None = None
    for entry in _MODEL_TOKENS:
        if model.startswith(entry[0]) and (best is None or len(entry[0]) > len(best[0])):
            best = entry
    return (best[1], best[2]) if best is not None else (_FALLBACK_MAX_TOKENS, None)


def default_max_tokens(model: str) -> int:
    """The ``max_tokens`` sent for ``model`` when the client gives no ``max_output_tokens``."""
    return _model_tokens(model)[0]


def _thinking_budget(request: ResponsesRequest, tool_choice: dict[str, Any] | None) -> int | None:
    """The thinking budget the request asks for, or ``None`` for no thinking."""
    effort = (request.reasoning or {}).get("effort")
    budget = _THINKING_BUDGETS.get(effort) if isinstance(effort, str) else None
    if budget is None or (tool_choice is not None and tool_choice["type"] in _FORCED_CHOICES):
        return None  # a forced tool cannot be combined with thinking upstream: the tool wins
    return budget


def _token_fields(request: ResponsesRequest, model: str, budget: int | None) -> dict[str, Any]:
    """``max_tokens``, and ``thinking`` when on (``budget_tokens`` < ``max_tokens``, as required)."""
    default, limit = _model_tokens(model)
    cap = default if request.max_output_tokens is None else request.max_output_tokens
    if budget is None:
        return {"max_tokens": cap}
    if limit is not None:
        budget = max(_MIN_BUDGET, min(budget, limit // 2))
    # The client's cap counts thinking too (as OpenAI's does) unless it leaves no room for
    # the budget: then it is room for the answer on top of the budget.
    max_tokens = cap if cap > budget else budget + max(cap, 1)
    if limit is not None:
        max_tokens = max(budget + 1, min(max_tokens, limit))
    thinking: dict[str, Any] = {"type": "enabled", "budget_tokens": budget}
    reasoning = request.reasoning or {}
    if reasoning.get("summary") or reasoning.get("generate_summary"):
        thinking["display"] = "summarized"
    return {"max_tokens": max_tokens, "thinking": thinking}


# - everything else -

_JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no prose and no code fences."
)


def _format_fields(request: ResponsesRequest, conv: _Conversation) -> dict[str, Any]:
    fmt = (request.text or {}).get("format") or {}
    kind = fmt.get("type", "text")
    if kind == "json_object":
        conv.system.append(_JSON_OBJECT_INSTRUCTION)
    elif kind == "json_schema":
        return {"output_config": {"format": {"type": "json_schema", "schema": fmt["schema"]}}}
    return {}


def _sampling_fields(request: ResponsesRequest, thinking: bool) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if request.temperature is not None and not thinking:
        fields["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None and "temperature" not in fields:
        fields["top_p"] = max(request.top_p, 0.95) if thinking else request.top_p
    if request.stop:
        fields["stop_sequences"] = list(request.stop)
    user = request.safety_identifier or request.user
    if user:
        fields["metadata"] = {"user_id": user}
    return fields


def _headers(provider: ProviderConfig) -> dict[str, str]:
    return upstream_headers(provider, accept="text/event-stream", key_header="x-api-key", key_prefix="",
                            extra={"anthropic-version": ANTHROPIC_VERSION})


def build_request(request: ResponsesRequest, provider: ProviderConfig, model: str) -> UpstreamRequest:
    """Translate a validated Responses request into one streaming Anthropic Messages request.

    ``model`` is the upstream model id.  Raises ``InvalidRequest`` naming ``param`` for what
    Anthropic cannot take: built-in tools, ``file_id`` parts, non-PDF files, unsupported image
    types, ``item_reference`` items, non-text system content, function-call arguments that are
    not a JSON object.
    """
    conv = _conversation(request, provider)
    tools = _tool_fields(request, provider.name)
    budget = _thinking_budget(request, tools.get("tool_choice"))
    body: dict[str, Any] = {"model": model, "messages": conv.messages}
    body |= _token_fields(request, model, budget)
    body |= _format_fields(request, conv)
    if conv.system:
        body["system"] = "\n\n".join(conv.system)
    body |= _sampling_fields(request, budget is not None)
    body |= tools
    body["stream"] = True
    return json_post(f"{provider.base_url.rstrip('/')}/v1/messages", _headers(provider), body)


# --- stream translator ---------------------------------------------------------------------------

# Anthropic ``stop_reason`` → how the turn ended; unknown reasons count as completed.
_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": FinishReason.COMPLETED,
    "stop_sequence": FinishReason.COMPLETED,
    "tool_use": FinishReason.COMPLETED,
    "pause_turn": FinishReason.COMPLETED,  # server tools only; we serve none
    "max_tokens": FinishReason.MAX_OUTPUT_TOKENS,
    "model_context_window_exceeded": FinishReason.MAX_OUTPUT_TOKENS,
    "refusal": FinishReason.CONTENT_FILTER,
}

# An ``error`` event's ``error.type`` → the Responses stream error code (else ``server_error``).
_STREAM_ERROR_CODES: dict[str, str] = {
    "rate_limit_error": "rate_limit_exceeded",
    "billing_error": "rate_limit_exceeded",
    "invalid_request_error": "invalid_prompt",
    "request_too_large": "invalid_prompt",
}

_ENDED_EARLY = "upstream stream ended before message_stop"
_loads = jsontext.loads  # json.loads, but lone surrogates become U+FFFD (streamgw.core.jsontext)


class _Malformed(Exception):
    """Internal: an event parsed as JSON but has the wrong shape."""


@dataclass(slots=True)
class _Block:
    """One open upstream content block."""

    kind: str
    thinking: list[str] = field(default_factory=list)
    signature: str = ""
    args_given: bool = False  # a tool_use block that carried its whole input at start


_UsageCounts = dict[str, int]
_USAGE_FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def _merge_usage(counts: _UsageCounts, raw: object) -> None:
    """Take every count ``raw`` reports (``message_delta`` counts are cumulative)."""
    if not isinstance(raw, dict):
        return
    for name in _USAGE_FIELDS:
        if raw.get(name) is not None:
            counts[name] = token_count(raw[name])
    details = raw.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        counts["thinking_tokens"] = token_count(details["thinking_tokens"])


def _usage(counts: _UsageCounts) -> Usage:
    """Anthropic usage → ``Usage``: input counts every prompt token."""
    written = counts.get("cache_creation_input_tokens", 0)
    read = counts.get("cache_read_input_tokens", 0)
    return Usage(
        input_tokens=counts.get("input_tokens", 0) + written + read,
        output_tokens=counts.get("output_tokens", 0),
        cached_tokens=read,
        cache_write_tokens=written,
        reasoning_tokens=counts.get("thinking_tokens", 0),
    )


def _index(event: dict[str, Any]) -> int:
    index = event.get("index")
    if type(index) is not int:
        raise _Malformed("content block event without an integer index")
    return index


class AnthropicStreamTranslator:
    """Anthropic Messages SSE body bytes → neutral deltas (https://docs.anthropic.com/en/api/messages-streaming).

    Tool calls are keyed by the content block ``index``; a call's end is held until the next
    block starts or the message stops, and a call still held when the stop reason is
    ``max_tokens`` is left open (its input was cut).  A thinking block ends with a
    ``ReasoningSignature`` carrying ``encode_blob(provider, {"thinking", "signature"})``, a
    redacted one with ``{"redacted": data}``, so the reasoning item can be replayed to the
    same provider.  ``Usage`` follows every ``message_delta`` with usage; ``Finish`` comes at
    ``message_stop``.  A body that ends before ``message_stop``, an ``error`` event or a
    malformed event ends the stream with one ``UpstreamFailure``; nothing follows it.
    """

    __slots__ = ("_blocks", "_decoder", "_ended", "_held_end", "_provider", "_secrets", "_stop_reason", "_usage")

    def __init__(self, *, provider: str, secrets: Sequence[str] = ()) -> None:
        """``provider`` is the config name blobs are minted for; ``secrets`` are redacted from errors."""
        self._decoder = SSEDecoder()
        self._provider = provider
        self._secrets = tuple(secrets)
        self._blocks: dict[int, _Block] = {}
        self._usage: _UsageCounts = {}
        self._stop_reason: str | None = None
        # The last stopped tool_use block: its end waits for the next block or message_stop,
        # so a call cut by max_tokens stays open and the emitter marks it incomplete.
        self._held_end: int | None = None
        self._ended = False

    def feed(self, chunk: bytes) -> list[Delta]:
        """Consume body bytes; return the deltas of every event they complete."""
        if self._ended:
            return []
        out: list[Delta] = []
        for event in self._decoder.feed(chunk):
            self._on_event(event.event, event.data, out)
            if self._ended:
                break
        return out

    def finish(self) -> list[Delta]:
        """End of body: anything but a ``message_stop`` before it is a cut stream."""
        if self._ended:
            return []
        out: list[Delta] = []
        try:
            for event in self._decoder.finish():
                self._on_event(event.event, event.data, out)
        except TruncatedStream:
            pass
        if not self._ended:
            self._fail(out, "server_error", _ENDED_EARLY)
        return out

    def _on_event(self, name: str, data: str, out: list[Delta]) -> None:
        """One SSE event: its JSON ``data`` dispatched on ``data.type`` (the event name as fallback)."""
        if not data:
            return
        try:
            payload = _loads(data)
        except (ValueError, RecursionError) as exc:
            self._fail(out, "server_error", f"malformed upstream event: {exc}")
            return
        if not isinstance(payload, dict):
            self._fail(out, "server_error", "malformed upstream event: not a JSON object")
            return
        kind = payload.get("type") or name
        if not isinstance(kind, str):  # an array or object ``type`` is no event (and no dict key)
            self._fail(out, "server_error", "malformed upstream event: its type is not a string")
            return
        handler = _EVENT_HANDLERS.get(kind)
        if handler is None:
            return  # ping, and event types newer than this module
        try:
            handler(self, payload, out)
        except (_Malformed, AttributeError, TypeError, KeyError) as exc:
            detail = str(exc) if isinstance(exc, _Malformed) else "unexpected structure"
            self._fail(out, "server_error", f"malformed upstream event: {detail}")

    # -- events --

    def _on_message_start(self, event: dict[str, Any], out: list[Delta]) -> None:
        _merge_usage(self._usage, (event.get("message") or {}).get("usage"))

    def _on_block_start(self, event: dict[str, Any], out: list[Delta]) -> None:
        index = _index(event)
        self._release_held(out)
        block = event["content_block"]
        start = _BLOCK_STARTS.get(block.get("type"))
        if start is not None:
            self._blocks[index] = _Block(block["type"])
            start(self, index, block, out)

    def _on_block_delta(self, event: dict[str, Any], out: list[Delta]) -> None:
        index = _index(event)
        block = self._blocks.get(index)
        delta = event["delta"]
        handler = _BLOCK_DELTAS.get(delta.get("type"))
        if block is not None and handler is not None:
            handler(self, index, block, delta, out)

    def _on_block_stop(self, event: dict[str, Any], out: list[Delta]) -> None:
        index = _index(event)
        block = self._blocks.pop(index, None)
        if block is not None:
            self._close_block(index, block, out)

    def _on_message_delta(self, event: dict[str, Any], out: list[Delta]) -> None:
        reason = (event.get("delta") or {}).get("stop_reason")
        if isinstance(reason, str):
            self._stop_reason = reason
        if isinstance(event.get("usage"), dict):
            _merge_usage(self._usage, event["usage"])
            out.append(_usage(self._usage))

    def _on_message_stop(self, event: dict[str, Any], out: list[Delta]) -> None:
        for index, block in list(self._blocks.items()):  # lenient: blocks the upstream never stopped
            self._close_block(index, block, out)
        self._blocks.clear()
        reason = _STOP_REASONS.get(self._stop_reason or "", FinishReason.COMPLETED)
        if reason is not FinishReason.MAX_OUTPUT_TOKENS:
            self._release_held(out)
        out.append(Finish(reason))
        self._ended = True

    def _on_error(self, event: dict[str, Any], out: list[Delta]) -> None:
        error = event.get("error")
        error = error if isinstance(error, dict) else {}
        etype, message = error.get("type"), error.get("message")
        if not isinstance(message, str) or not message:
            message = f"upstream error event ({etype or 'unknown type'})"
        code = _STREAM_ERROR_CODES.get(etype, "server_error") if isinstance(etype, str) else "server_error"
        self._fail(out, code, clean_message(message, self._secrets))

    # -- blocks --

    def _start_text(self, index: int, block: dict[str, Any], out: list[Delta]) -> None:
        text = block.get("text")
        if text and type(text) is str:
            out.append(TextDelta(text))

    def _start_thinking(self, index: int, block: dict[str, Any], out: list[Delta]) -> None:
        state = self._blocks[index]
        thinking, signature = block.get("thinking"), block.get("signature")
        if thinking and type(thinking) is str:
            state.thinking.append(thinking)
            out.append(ReasoningDelta(thinking))
        if signature and type(signature) is str:
            state.signature = signature

    def _start_redacted(self, index: int, block: dict[str, Any], out: list[Delta]) -> None:
        data = block.get("data")
        if isinstance(data, str) and data:
            out.append(ReasoningSignature(encode_blob(self._provider, {"redacted": data})))

    def _start_tool(self, index: int, block: dict[str, Any], out: list[Delta]) -> None:
        call_id, name = block.get("id"), block.get("name")
        out.append(ToolCallStart(index, call_id if isinstance(call_id, str) else "",
                                 name if isinstance(name, str) else ""))
        given = block.get("input")
        if isinstance(given, dict) and given:  # some compatible servers send the whole input here
            self._blocks[index].args_given = True
            out.append(ToolCallArgs(index, json.dumps(given, ensure_ascii=False)))

    def _text_delta(self, index: int, block: _Block, delta: dict[str, Any], out: list[Delta]) -> None:
        text = delta.get("text")
        if text and type(text) is str and block.kind == "text":
            out.append(TextDelta(text))

    def _thinking_delta(self, index: int, block: _Block, delta: dict[str, Any], out: list[Delta]) -> None:
        text = delta.get("thinking")
        if text and type(text) is str and block.kind == "thinking":
            block.thinking.append(text)
            out.append(ReasoningDelta(text))

    def _signature_delta(self, index: int, block: _Block, delta: dict[str, Any], out: list[Delta]) -> None:
        signature = delta.get("signature")
        if isinstance(signature, str):
            block.signature += signature

    def _json_delta(self, index: int, block: _Block, delta: dict[str, Any], out: list[Delta]) -> None:
        fragment = delta.get("partial_json")
        if fragment and type(fragment) is str and block.kind == "tool_use" and not block.args_given:
            out.append(ToolCallArgs(index, fragment))

    def _close_block(self, index: int, block: _Block, out: list[Delta]) -> None:
        if block.kind == "tool_use":
            self._release_held(out)
            self._held_end = index
        elif block.kind == "thinking":
            blob = {"thinking": "".join(block.thinking), "signature": block.signature}
            out.append(ReasoningSignature(encode_blob(self._provider, blob)))

    def _release_held(self, out: list[Delta]) -> None:
        if self._held_end is not None:
            out.append(ToolCallEnd(self._held_end))
            self._held_end = None

    def _fail(self, out: list[Delta], code: str, message: str) -> None:
        """Emit the one ``UpstreamFailure`` and ignore the rest of the stream."""
        self._release_held(out)  # that call's block was complete
        self._ended = True
        out.append(UpstreamFailure(code, message))


_EventHandler = Callable[[AnthropicStreamTranslator, dict[str, Any], list[Delta]], None]
_EVENT_HANDLERS: dict[str, _EventHandler] = {
    "message_start": AnthropicStreamTranslator._on_message_start,
    "content_block_start": AnthropicStreamTranslator._on_block_start,
    "content_block_delta": AnthropicStreamTranslator._on_block_delta,
    "content_block_stop": AnthropicStreamTranslator._on_block_stop,
    "message_delta": AnthropicStreamTranslator._on_message_delta,
    "message_stop": AnthropicStreamTranslator._on_message_stop,
    "error": AnthropicStreamTranslator._on_error,
}

_BlockStart = Callable[[AnthropicStreamTranslator, int, dict[str, Any], list[Delta]], None]
# Server-tool blocks (server_tool_use, web_search_tool_result, ...) are not listed: ignored.
_BLOCK_STARTS: dict[str, _BlockStart] = {
    "text": AnthropicStreamTranslator._start_text,
    "thinking": AnthropicStreamTranslator._start_thinking,
    "redacted_thinking": AnthropicStreamTranslator._start_redacted,
    "tool_use": AnthropicStreamTranslator._start_tool,
}

_BlockDelta = Callable[[AnthropicStreamTranslator, int, _Block, dict[str, Any], list[Delta]], None]
# citations_delta is not listed: annotations are not carried yet.
_BLOCK_DELTAS: dict[str, _BlockDelta] = {
    "text_delta": AnthropicStreamTranslator._text_delta,
    "thinking_delta": AnthropicStreamTranslator._thinking_delta,
    "signature_delta": AnthropicStreamTranslator._signature_delta,
    "input_json_delta": AnthropicStreamTranslator._json_delta,
}


# --- error parser --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _AnthropicError(ErrorBody):
    """An upstream error body with Anthropic's ``error.type``."""

    type: str | None = None


def _read_error_body(status: int, body: bytes, secrets: Sequence[str]) -> _AnthropicError:
    """Parse ``{"type":"error","error":{"type","message"}}``; fall back to the raw text (truncated)."""
    text, parsed = error_text(body)
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, str):
        error = {"message": error}
    error = error if isinstance(error, dict) else {}
    message, etype = message_or_text(error.get("message"), status, text), error.get("type")
    return _AnthropicError(clean_message(message, secrets), type=etype if isinstance(etype, str) and etype else None)


_CONTEXT_MARKERS = ("prompt is too long", "context window", "context length")


def _invalid_request(status: int, err: _AnthropicError, headers: Mapping[str, str]) -> GatewayError:
    lowered = err.message.lower()
    code = "context_length_exceeded" if any(m in lowered for m in _CONTEXT_MARKERS) else None
    return InvalidRequest(err.message, code=code)


def _not_found(status: int, err: _AnthropicError, headers: Mapping[str, str]) -> GatewayError:
    return NotFound(err.message, code="model_not_found" if "model" in err.message.lower() else None)


def _rate_limited(status: int, err: _AnthropicError, headers: Mapping[str, str]) -> GatewayError:
    code = "insufficient_quota" if status == 402 else "rate_limit_exceeded"
    return RateLimited(err.message, code=code, headers=retry_after(headers))


# Anthropic ``error.type`` of a 5xx → our ``code``.
_SERVER_CODES: dict[str, str] = {"overloaded_error": "overloaded", "timeout_error": "upstream_timeout"}


def _upstream_failed(status: int, err: _AnthropicError, headers: Mapping[str, str]) -> GatewayError:
    if status == 529:
        code = "overloaded"
    elif err.type in _SERVER_CODES:
        code = _SERVER_CODES[err.type]
    else:
        code = failure_code(status)
    return UpstreamError(f"upstream error (HTTP {status}): {err.message}", code=code, headers=retry_after(headers))


# README "Errors"; every other status (5xx, 529, 408, ...) is an upstream failure (502).
_ERRORS = ErrorTable(
    _read_error_body,
    {
        400: _invalid_request,
        409: _invalid_request,
        422: _invalid_request,
        404: _not_found,
        402: _rate_limited,  # billing_error
        429: _rate_limited,
        408: _upstream_failed,
        504: _upstream_failed,
    },
    fallback=_upstream_failed,
)


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()
) -> GatewayError:
    """A non-2xx Anthropic answer → the ``GatewayError`` to report (README "Errors").

    The upstream message is kept with ``secrets`` and anything key-shaped redacted.  429 and
    402 (billing) become 429 with ``retry-after`` copied; 401/403 become 502 (the gateway's own
    key is at fault); 5xx and 529 (code ``overloaded``) become 502, ``retry-after`` kept.
    """
    return _ERRORS.parse(status, headers, body, secrets)


#: the Anthropic Messages dialect (``type = "anthropic"`` providers); Anthropic fetches
#: http(s) image URLs itself, so no image bytes are needed; blobs are minted for ``provider.name``
DIALECT: Dialect = WireDialect(
    name="anthropic",
    build=lambda request, provider, model, assets: build_request(request, provider, model),
    translator=lambda request, provider, secrets: AnthropicStreamTranslator(provider=provider.name, secrets=secrets),
    errors=parse_error,
)

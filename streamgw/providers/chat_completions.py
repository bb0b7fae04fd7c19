"""The OpenAI-compatible Chat Completions dialect (``POST {base_url}/chat/completions``).

Spoken by OpenAI, Groq, OpenRouter, DeepSeek, xAI, vLLM, Ollama's ``/v1`` and many
more (https://platform.openai.com/docs/api-reference/chat).  Vendor differences are data (``ChatFlags``), not code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamgw.config import ChatFlags, ProviderConfig
from streamgw.core import jsontext
from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    RefusalDelta,
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
    RateLimited,
    clean_message,
    safe_code,
    safe_param,
)
from streamgw.providers.base import Dialect, UpstreamRequest, WireDialect
from streamgw.providers.common import (
    InputItems,
    json_post,
    mint_call_id,
    reject,
    sampling_fields,
    token_count,
    upstream_headers,
)
from streamgw.providers.errors import ErrorBody, ErrorTable, error_text, message_or_text, retry_after

# --- request builder ---------------------------------------------------------------------------
#
# Responses request -> one Chat Completions request (our mapping, field by field).  The
# upstream is always asked to stream: a non-streamed client request is aggregated by
# the gateway from the same deltas.  Unknown Responses fields are not forwarded: a
# Chat server would reject most of them.

Message = dict[str, Any]


@dataclass(slots=True)
class _History:
    """Chat messages being built from Responses input items, in order."""

    provider: str
    system_role: str
    messages: list[Message] = field(default_factory=list)
    #: reasoning text read since the last message; it belongs to the next assistant message
    pending_reasoning: list[str] = field(default_factory=list)
    #: message index -> replayed reasoning text, kept only if that message gets tool_calls
    reasoning_at: dict[int, str] = field(default_factory=dict)

    def add(self, message: Message) -> None:
        if self.pending_reasoning and message["role"] == "assistant":
            self.reasoning_at[len(self.messages)] = "\n\n".join(self.pending_reasoning)
        self.pending_reasoning.clear()
        self.messages.append(message)

    def finish(self, replay_field: str | None) -> list[Message]:
        # Vendors in thinking mode (DeepSeek, Xiaomi, Z.ai) require the reasoning replayed on
        # assistant turns that called tools, an empty string when it was lost; on other turns
        # it is only noise. Vendors without a replay field never see it.
        if replay_field is None:
            return self.messages
        for index, message in enumerate(self.messages):
            if message["role"] == "assistant" and "tool_calls" in message:
                text = self.reasoning_at.get(index)
                if text is not None or replay_field == "reasoning_content":
                    message[replay_field] = text or ""
        return self.messages


# - content parts -

_IMAGE_DETAIL = {"auto": "auto", "low": "low", "high": "high", "original": "high"}


def _no_file_id(part: dict[str, Any], param: str, provider: str) -> None:
    if part.get("file_id") is not None:
        reject(
            param,
            f"{part['type']} with 'file_id' is not supported by provider {provider!r}: file ids live in "
            "the upstream's own file store. Send the content inline instead.",
        )


def _text_part(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    return {"type": "text", "text": part["text"]}


def _image_part(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    _no_file_id(part, param, provider)
    image: dict[str, Any] = {"url": part["image_url"]}
    detail = part.get("detail")
    if detail is not None:
        image["detail"] = _IMAGE_DETAIL[detail]
    return {"type": "image_url", "image_url": image}


def _file_part(part: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    _no_file_id(part, param, provider)
    if part.get("file_data") is None:
        reject(
            param,
            f"input_file with 'file_url' is not supported by provider {provider!r}; send 'file_data'.",
        )
    file: dict[str, Any] = {"file_data": part["file_data"]}
    if part.get("filename") is not None:
        file["filename"] = part["filename"]
    return {"type": "file", "file": file}


_USER_PARTS: dict[str, Callable[[dict[str, Any], str, str], dict[str, Any]]] = {
    "input_text": _text_part,
    "input_image": _image_part,
    "input_file": _file_part,
}


def _text_only(parts: list[dict[str, Any]], param: str, what: str, provider: str) -> str:
    """Join the text of ``parts``; anything but text is refused (Chat takes only text here)."""
    texts = []
    for j, part in enumerate(parts):
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            reject(
                f"{param}[{j}].type",
                f"{part['type']} parts in {what} are not supported by provider {provider!r}.",
            )
        texts.append(text)
    return "\n".join(texts)


# - input items -


def _user_message(history: _History, item: dict[str, Any], param: str) -> None:
    parts = [
        _USER_PARTS[part["type"]](part, f"{param}.content[{j}]", history.provider)
        for j, part in enumerate(item["content"])
    ]
    texts = [part["text"] for part in parts if part["type"] == "text"]
    content: str | list[dict[str, Any]] = "\n".join(texts) if len(texts) == len(parts) else parts  # text only: a string
    history.add({"role": "user", "content": content})


def _system_message(history: _History, item: dict[str, Any], param: str) -> None:
    text = _text_only(item["content"], f"{param}.content", f"{item['role']} messages", history.provider)
    history.add({"role": history.system_role, "content": text})


def _assistant_message(history: _History, item: dict[str, Any], param: str) -> None:
    text = _text_only(item["content"], f"{param}.content", "assistant messages", history.provider)
    history.add({"role": "assistant", "content": text})


def _function_call(history: _History, item: dict[str, Any], param: str) -> None:
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }
    # Consecutive calls, and the assistant text just before them, are one Chat turn: Chat
    # servers want every tool_calls message followed directly by its tool messages.
    if not history.messages or history.messages[-1]["role"] != "assistant":
        history.add({"role": "assistant", "content": None})
    elif history.pending_reasoning:  # reasoning between the text and the call
        last = len(history.messages) - 1
        history.reasoning_at.setdefault(last, "\n\n".join(history.pending_reasoning))
        history.pending_reasoning.clear()
    history.messages[-1].setdefault("tool_calls", []).append(call)


def _function_call_output(history: _History, item: dict[str, Any], param: str) -> None:
    output = item["output"]
    if not isinstance(output, str):
        output = _text_only(output, f"{param}.output", "function_call_output", history.provider)
    history.add({"role": "tool", "tool_call_id": item["call_id"], "content": output})


def _reasoning(history: _History, item: dict[str, Any], param: str) -> None:
    # Raw reasoning text is the faithful replay; the summary is the fallback.
    for key in ("content", "summary"):
        texts = [entry["text"] for entry in item.get(key) or ()]
        if texts:
            history.pending_reasoning.append("\n\n".join(texts))
            return


_INPUT = InputItems[_History](
    user=_user_message, system=_system_message, assistant=_assistant_message,
    function_call=_function_call, function_call_output=_function_call_output, reasoning=_reasoning,
)


def _messages(request: ResponsesRequest, provider: ProviderConfig) -> list[Message]:
    history = _History(provider=provider.name, system_role=provider.chat.system_role)
    if request.instructions:
        history.add({"role": provider.chat.system_role, "content": request.instructions})
    _INPUT.add(history, request.input)
    return history.finish(provider.chat.replay_reasoning)


# - tools -


def _tool(tool: dict[str, Any], param: str, provider: str) -> dict[str, Any]:
    if tool["type"] != "function":
        reject(
            f"{param}.type",
            f"built-in tool {tool['type']!r} is not supported by provider {provider!r}; "
            "only function tools are.",
        )
    function = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any], provider: str) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice["type"] != "function":
        reject(
            "tool_choice.type",
            f"tool_choice of type {choice['type']!r} is not supported by provider {provider!r}.",
        )
    return {"type": "function", "function": {"name": choice["name"]}}


def _tool_fields(request: ResponsesRequest, provider: str) -> dict[str, Any]:
    tools = [_tool(tool, f"tools[{i}]", provider) for i, tool in enumerate(request.tools)]
    choice = request.tool_choice
    if isinstance(choice, dict) and choice["type"] == "allowed_tools":
        # Not every Chat server knows allowed_tools: narrow the tool list instead.
        allowed = {entry.get("name") for entry in choice["tools"] if entry["type"] == "function"}
        tools = [tool for tool in tools if tool["function"]["name"] in allowed]
        choice = choice["mode"]
    fields: dict[str, Any] = {}
    if tools:
        fields["tools"] = tools
        if not request.parallel_tool_calls:
            fields["parallel_tool_calls"] = False
    # "auto" is every server's default; "none" without tools means nothing.  Anything
    # else goes up as asked, so a bad combination gets the upstream's own 400.
    if choice != "auto" and (tools or choice != "none"):
        fields["tool_choice"] = _chat_tool_choice(choice, provider)
    return fields


# - everything else -


def _json_schema_format(fmt: dict[str, Any]) -> dict[str, Any]:
    schema = {
        key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None
    }
    return {"type": "json_schema", "json_schema": schema}


_FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "json_object": lambda fmt: {"type": "json_object"},
    "json_schema": _json_schema_format,
}


def _format_fields(request: ResponsesRequest) -> dict[str, Any]:
    fmt = (request.text or {}).get("format") or {}
    convert = _FORMATS.get(fmt.get("type", "text"))
    return {} if convert is None else {"response_format": convert(fmt)}


_REASONING_STYLES: dict[str, Callable[[str], dict[str, Any]]] = {
    "reasoning_effort": lambda effort: {"reasoning_effort": effort},
    "openrouter": lambda effort: {"reasoning": {"effort": effort}},
    "thinking": lambda effort: {"thinking": {"type": "disabled" if effort == "none" else "enabled"}},
    "enable_thinking": lambda effort: {"enable_thinking": effort != "none"},
    "none": lambda effort: {},
}


def _sampling_fields(request: ResponsesRequest, flags: ChatFlags) -> dict[str, Any]:
    fields = sampling_fields(request, temperature="temperature", top_p="top_p",
                             max_output_tokens=flags.max_tokens_param, stop="stop")
    if len(request.stop) == 1:
        fields["stop"] = request.stop[0]
    effort = (request.reasoning or {}).get("effort")
    if effort is not None:
        fields.update(_REASONING_STYLES[flags.reasoning_style](effort))
    if request.user is not None:
        fields["user"] = request.user
    if request.safety_identifier is not None:
        fields["safety_identifier"] = request.safety_identifier
    return fields


def _headers(provider: ProviderConfig) -> dict[str, str]:
    return upstream_headers(provider, accept="text/event-stream")


def build_request(request: ResponsesRequest, provider: ProviderConfig, model: str) -> UpstreamRequest:
    """Translate a validated Responses request into one streaming Chat Completions request.

    ``model`` is the upstream model id (the route's, not necessarily ``request.model``).
    Raises ``InvalidRequest`` naming ``param`` for what a Chat server cannot take: built-in
    tools, ``file_id`` parts, ``item_reference`` items, non-text system content.
    """
    body: dict[str, Any] = {"model": model, "messages": _messages(request, provider), "stream": True}
    if provider.chat.stream_usage:
        body["stream_options"] = {"include_usage": True}
    body |= _sampling_fields(request, provider.chat)
    body |= _tool_fields(request, provider.name)
    body |= _format_fields(request)
    return json_post(f"{provider.base_url.rstrip('/')}/chat/completions", _headers(provider), body)


# --- stream translator ---------------------------------------------------------------------------

_ToolKey = int | str

# Chat ``finish_reason`` → how the turn ended.  ``None`` marks a reason that means the upstream failed.
_FINISH_REASONS: dict[str, FinishReason | None] = {
    "stop": FinishReason.COMPLETED,
    "tool_calls": FinishReason.COMPLETED,
    "function_call": FinishReason.COMPLETED,
    "length": FinishReason.MAX_OUTPUT_TOKENS,
    "content_filter": FinishReason.CONTENT_FILTER,
    "error": None,  # OpenRouter, when the provider behind it failed mid-stream
}

# An upstream error's ``type``/``code`` text → the Responses stream error code; first match wins.
_STREAM_CODE_MARKERS: tuple[tuple[str, str], ...] = (
    ("rate_limit", "rate_limit_exceeded"),
    ("ratelimit", "rate_limit_exceeded"),
    ("rate limit", "rate_limit_exceeded"),
    ("insufficient_quota", "rate_limit_exceeded"),
    ("invalid_request", "invalid_prompt"),
)
# Several proxies (OpenRouter, old vLLM) put the HTTP status in ``code``.
_NUMERIC_STREAM_CODES: dict[int, str] = {
    429: "rate_limit_exceeded",
    400: "invalid_prompt",
    422: "invalid_prompt",
}

_ENDED_EARLY = "upstream stream ended before completion"
_loads = jsontext.loads  # json.loads, but lone surrogates become U+FFFD (streamgw.core.jsontext)


def _usage(raw: dict[str, Any]) -> Usage:
    """Chat Completions ``usage`` → ``Usage``."""
    prompt = raw.get("prompt_tokens_details") or {}
    completion = raw.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=token_count(raw.get("prompt_tokens")),
        output_tokens=token_count(raw.get("completion_tokens")),
        # DeepSeek reports cache hits beside the OpenAI field (or instead of it).
        cached_tokens=token_count(prompt.get("cached_tokens")) or token_count(raw.get("prompt_cache_hit_tokens")),
        cache_write_tokens=token_count(prompt.get("cache_write_tokens")),
        reasoning_tokens=token_count(completion.get("reasoning_tokens")),
    )


def _stream_code(error_type: object, code: object) -> str:
    """The Responses ``error.code`` for an upstream error object seen mid-stream."""
    if type(code) is int and code in _NUMERIC_STREAM_CODES:
        return _NUMERIC_STREAM_CODES[code]
    text = f"{error_type} {code}".lower()
    for marker, stream_code in _STREAM_CODE_MARKERS:
        if marker in text:
            return stream_code
    return "server_error"


def _stream_failure(error: object, secrets: Sequence[str]) -> UpstreamFailure:
    """A ``{"error": ...}`` payload (an object, or a bare string on some servers) → failure."""
    if isinstance(error, dict):
        message, error_type, code = error.get("message"), error.get("type"), error.get("code")
    else:
        message, error_type, code = error, None, None
    if not isinstance(message, str) or not message:
        message = "upstream reported an error without a message"
    return UpstreamFailure(_stream_code(error_type, code), clean_message(message, secrets))


def _first_choice(choices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The choice with ``index`` 0, if this chunk has one."""
    return next((choice for choice in choices if choice.get("index", 0) == 0), None)


#: the tool-call state of a translator that has seen no call yet (empty, shared, never written to)
_NO_CALLS: dict[Any, Any] = {}


class ChatStreamTranslator:
    """Chat Completions SSE body bytes → neutral deltas.

    The chunk format: https://platform.openai.com/docs/api-reference/chat-streaming.

    Tool calls are keyed by the upstream ``index`` (by the upstream ``id`` when a
    server omits ``index``) and stay open until ``finish_reason``, ``[DONE]`` or a
    clean EOF, because servers interleave the fragments of parallel calls.  Within a
    chunk the order is: reasoning, text, refusal, tool calls, usage, then the ends of
    open calls and ``Finish``.  Fragments are never coalesced, so any split of the
    same body gives the same deltas.  After an ``UpstreamFailure`` nothing more is
    emitted.
    """

    __slots__ = (
        "_by_id",
        "_decoder",
        "_ended",
        "_finished",
        "_last_key",
        "_open",
        "_secrets",
        "_started",
        "_used_ids",
    )

    def __init__(self, *, secrets: Sequence[str] = ()) -> None:
        """``secrets`` are redacted from upstream error messages (key-shaped text always is)."""
        self._decoder = SSEDecoder()
        self._secrets = tuple(secrets)
        self._ended = False  # [DONE] seen or failure emitted: ignore everything after
        self._finished = False  # a finish_reason was seen
        # Dicts as sets (an empty set is 216 bytes, an empty dict 64), and until the first tool call all four
        # are the one shared empty ``_NO_CALLS``, never written to: most answers call no tool, and a stream
        # holds its translator for as long as it lasts.  ``_start_call`` makes them.
        self._open: dict[_ToolKey, None] = _NO_CALLS  # open calls, in start order
        self._started: dict[_ToolKey, None] = _NO_CALLS
        self._by_id: dict[str, _ToolKey] = _NO_CALLS  # upstream call id → key, for fragments without index
        self._used_ids: dict[str, None] = _NO_CALLS
        self._last_key: _ToolKey | None = None

    def feed(self, chunk: bytes) -> list[Delta]:
        """Consume body bytes; return the deltas of every event they complete."""
        if self._ended:
            return []
        out: list[Delta] = []
        for event in self._decoder.feed(chunk):
            self._on_data(event.data, out)
            if self._ended:
                break
        return out

    def finish(self) -> list[Delta]:
        """End of body: close open calls, or report a stream cut before its finish."""
        if self._ended:
            return []
        out: list[Delta] = []
        try:
            for event in self._decoder.finish():
                self._on_data(event.data, out)
        except TruncatedStream:
            pass  # a cut after finish_reason only loses trailing metadata (the usage chunk)
        if self._ended:
            return out
        if self._finished:
            self._close_calls(out)
            self._ended = True
        else:
            self._fail(out, "server_error", _ENDED_EARLY)
        return out

    def _on_data(self, data: str, out: list[Delta]) -> None:
        """One SSE event's data: ``[DONE]``, or one JSON chunk."""
        if not data:
            return
        if data[0] == "[" and data.startswith("[DONE]"):
            self._on_done(out)
            return
        try:
            chunk = _loads(data)
        except (ValueError, RecursionError) as exc:
            self._fail(out, "server_error", f"malformed upstream chunk: {exc}")
            return
        try:
            self._on_chunk(chunk, out)
        except (AttributeError, TypeError, IndexError):
            # The JSON parsed but has the wrong shape somewhere (e.g. a list where an object goes).
            self._fail(out, "server_error", "malformed upstream chunk: unexpected structure")

    def _on_chunk(self, chunk: dict[str, Any], out: list[Delta]) -> None:
        """Translate one parsed ``chat.completion.chunk`` (or an error payload)."""
        error = chunk.get("error")
        if error is not None:
            self._ended = True
            out.append(_stream_failure(error, self._secrets))
            return
        choices = chunk.get("choices")
        reason = self._on_choices(choices, out) if choices else None
        usage = chunk.get("usage")
        if usage is None and "x_groq" in chunk:  # Groq's own place for the final usage
            usage = (chunk["x_groq"] or {}).get("usage")
        if usage:
            out.append(_usage(usage))
        if reason is not None and not self._finished:
            if type(reason) is not str:  # a number, NaN or object is no reason (unknown strings are "stop")
                self._fail(out, "server_error", "malformed upstream chunk: finish_reason is not a string")
                return
            self._on_finish_reason(reason, out)

    def _on_choices(self, choices: list[dict[str, Any]], out: list[Delta]) -> Any:
        """Translate choice 0's delta; return its ``finish_reason`` (others are ignored)."""
        choice = choices[0]
        if choice.get("index", 0) != 0:  # n > 1: rare, so the common case stays one lookup
            found = _first_choice(choices)
            if found is None:
                return None
            choice = found
        delta = choice.get("delta")
        if delta:
            content = delta.get("content")
            if len(delta) == 1 and content is not None:  # the usual chunk: text and nothing else
                if type(content) is str and content:
                    out.append(TextDelta(content))
                return choice.get("finish_reason")
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning and type(reasoning) is str:
                out.append(ReasoningDelta(reasoning))
            if content and type(content) is str:
                out.append(TextDelta(content))
            refusal = delta.get("refusal")
            if refusal and type(refusal) is str:
                out.append(RefusalDelta(refusal))
            calls = delta.get("tool_calls")
            if calls:
                self._on_tool_calls(calls, out)
        return choice.get("finish_reason")

    def _on_tool_calls(self, calls: list[dict[str, Any]], out: list[Delta]) -> None:
        """Start calls on a new key, then pass their non-empty argument fragments on."""
        for call in calls:
            key = self._key_for(call)
            function = call.get("function") or {}
            if key not in self._started:
                self._start_call(key, call.get("id"), function.get("name"), out)
            elif key not in self._open:
                continue  # a fragment for a call already closed by finish_reason
            arguments = function.get("arguments")
            if arguments and type(arguments) is str:
                out.append(ToolCallArgs(key, arguments))
            elif isinstance(arguments, dict) and arguments:  # a few servers send the object itself
                out.append(ToolCallArgs(key, json.dumps(arguments, ensure_ascii=False)))

    def _key_for(self, call: dict[str, Any]) -> _ToolKey:
        """The call's key: its ``index``; else its ``id``; else the last call, unless it names a new one."""
        index = call.get("index")
        if type(index) is int:
            return index
        upstream_id = call.get("id")
        if upstream_id and type(upstream_id) is str:
            return self._by_id.get(upstream_id, upstream_id)
        named = (call.get("function") or {}).get("name")
        if self._last_key is not None and not named:
            return self._last_key
        return mint_call_id()

    def _start_call(self, key: _ToolKey, upstream_id: object, name: object, out: list[Delta]) -> None:
        """Emit ``ToolCallStart``; a missing or already used upstream id gets a minted one."""
        if self._started is _NO_CALLS:  # the answer's first call
            self._open, self._started, self._by_id, self._used_ids = {}, {}, {}, {}
        candidate = upstream_id if upstream_id and type(upstream_id) is str else key
        if type(candidate) is str and candidate not in self._used_ids:
            call_id = candidate
        else:
            call_id = mint_call_id()
        self._used_ids[call_id] = None
        if upstream_id and type(upstream_id) is str:
            self._by_id.setdefault(upstream_id, key)
        self._started[key] = None
        self._open[key] = None
        self._last_key = key
        out.append(ToolCallStart(key, call_id, name if type(name) is str else ""))

    def _on_finish_reason(self, reason: str, out: list[Delta]) -> None:
        """Close open calls and emit ``Finish`` (or a failure for ``finish_reason: "error"``)."""
        result = _FINISH_REASONS.get(reason, FinishReason.COMPLETED)
        if result is None:
            self._fail(out, "server_error", f"upstream finish_reason={reason}")
            return
        self._finished = True
        self._close_calls(out)
        out.append(Finish(result))

    def _on_done(self, out: list[Delta]) -> None:
        """``data: [DONE]``: the proper end; a missing finish_reason counts as ``stop``."""
        self._close_calls(out)
        if not self._finished:
            self._finished = True
            out.append(Finish(FinishReason.COMPLETED))
        self._ended = True

    def _close_calls(self, out: list[Delta]) -> None:
        """``ToolCallEnd`` for every open call, in start order."""
        if self._open:  # (never clears the shared ``_NO_CALLS``)
            out.extend(ToolCallEnd(key) for key in self._open)
            self._open.clear()

    def _fail(self, out: list[Delta], code: str, message: str) -> None:
        """Emit the one ``UpstreamFailure`` and ignore the rest of the stream."""
        self._ended = True
        out.append(UpstreamFailure(code, message))


# --- error parser --------------------------------------------------------------------------------

def _error_object(parsed: object) -> dict[str, Any] | None:
    """The error object of the OpenAI envelope, or of the variants compatible servers send."""
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if isinstance(parsed.get("message"), str):  # vLLM's top-level ErrorResponse
        return parsed
    if isinstance(parsed.get("detail"), str):  # FastAPI-style servers
        return {"message": parsed["detail"]}
    return None


def _read_error_body(status: int, body: bytes, secrets: Sequence[str]) -> ErrorBody:
    """Parse the envelope; fall back to the raw text (truncated) when it is not one."""
    text, parsed = error_text(body)
    error = _error_object(parsed) or {}
    return ErrorBody(
        message=clean_message(message_or_text(error.get("message"), status, text), secrets),
        param=safe_param(error.get("param"), secrets),
        code=safe_code(error.get("code"), secrets),  # not plain: the status decides the code instead
    )


def _billing_limited(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    return RateLimited(err.message, code=err.code or "insufficient_quota", headers=retry_after(headers))


# README "Errors"; every other status is an upstream failure (502).
# 402: OpenRouter is out of credits; a billing limit, like Anthropic's 402.
_ERRORS = ErrorTable(_read_error_body, {402: _billing_limited})


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()
) -> GatewayError:
    """A non-2xx Chat Completions answer → the ``GatewayError`` to report (README "Errors").

    The upstream message is kept, with ``secrets`` and anything key-shaped redacted;
    a 429's ``retry-after`` is copied.  401/403 become a 502: the credential at fault
    is the gateway's own upstream key, not the client's.
    """
    return _ERRORS.parse(status, headers, body, secrets)


#: the OpenAI-compatible Chat Completions dialect (``type = "chat"`` providers)
DIALECT: Dialect = WireDialect(
    name="chat",
    build=lambda request, provider, model, assets: build_request(request, provider, model),
    translator=lambda request, provider, secrets: ChatStreamTranslator(secrets=secrets),
    errors=parse_error,
)

"""The built-in ``demo`` provider: a deterministic synthetic answer, paced like a real model.

It needs no key and no network, so every feature can be tried right after
cloning: text, reasoning (when ``reasoning.effort`` is set), a function call
(when function tools are given), the answer to a ``function_call_output``, and
``max_output_tokens`` truncation.  The script is pure; the engine plays it with
``trio.sleep`` pacing (``LOCAL`` registers it in ``streamgw.providers.registry``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from streamgw.config import ProviderConfig
from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from streamgw.core.request import ResponsesRequest


def _input_text(request: ResponsesRequest) -> str:
    """The text of the last user message, for the demo's echo."""
    for item in reversed(request.input):
        if item.get("type") == "message" and item.get("role") == "user":
            return " ".join(p.get("text", "") for p in item.get("content", []) if p.get("type") == "input_text")
    return ""


def _count_tokens(request: ResponsesRequest) -> int:
    chars = len(json.dumps(request.input)) + len(request.instructions or "")
    return max(1, chars // 4)


def _words(text: str) -> list[str]:
    """Split into word tokens that keep their leading space, so they join back exactly."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def _example_value(schema: dict[str, Any], name: str) -> Any:
    match schema.get("type"):
        case "integer":
            return 42
        case "number":
            return 21.5
        case "boolean":
            return True
        case "array":
            return []
        case "object":
            return {}
        case _:
            return f"demo-{name}"


def _call_arguments(tool: dict[str, Any]) -> str:
    params = tool.get("parameters") or {}
    props: dict[str, Any] = params.get("properties") or {}
    required = params.get("required") or list(props)
    args = {name: _example_value(props.get(name) or {}, name) for name in required}
    return json.dumps(args, separators=(",", ":"))


def _pending_tool_output(request: ResponsesRequest) -> str | None:
    last = request.input[-1] if request.input else {}
    if last.get("type") != "function_call_output":
        return None
    output = last.get("output")
    if isinstance(output, list):
        output = " ".join(p.get("text", "") for p in output if isinstance(p, dict))
    return str(output)


def script(request: ResponsesRequest) -> list[Delta]:
    """Every delta the demo answer consists of, in order (without pacing)."""
    deltas: list[Delta] = []
    effort = (request.reasoning or {}).get("effort")
    if effort and effort != "none":
        deltas += [ReasoningDelta(w) for w in _words(f"The user asked for a demo answer at {effort} effort.")]
    tool_output = _pending_tool_output(request)
    functions = [t for t in request.tools if t.get("type") == "function"]
    if functions and tool_output is None and request.tool_choice != "none":
        tool = functions[0]
        digest = hashlib.sha256(json.dumps(request.input, sort_keys=True).encode()).hexdigest()[:24]
        arguments = _call_arguments(tool)
        deltas.append(ToolCallStart(0, f"call_{digest}", tool["name"]))
        deltas += [ToolCallArgs(0, arguments[i : i + 8]) for i in range(0, len(arguments), 8)]
        deltas.append(ToolCallEnd(0))
        answer_tokens = len(arguments) // 8 + 1
        deltas += [Finish(FinishReason.COMPLETED), Usage(_count_tokens(request), answer_tokens)]
        return deltas
    if tool_output is not None:
        text = f"The tool returned: {tool_output[:200]}. That is what the demo provider knows."
    else:
        said = _input_text(request)[:120] or "nothing"
        text = (
            f"Hello from the streamgw demo provider. You said: \u201c{said}\u201d. "
            "This answer is synthetic and deterministic, streamed token by token so you can "
            "try streaming, tools and errors without any API key."
        )
    tokens = _words(text)
    limit = request.max_output_tokens
    reason = FinishReason.COMPLETED
    if limit is not None and limit < len(tokens):
        tokens, reason = tokens[:limit], FinishReason.MAX_OUTPUT_TOKENS
    deltas += [TextDelta(t) for t in tokens]
    reasoning_tokens = sum(isinstance(d, ReasoningDelta) for d in deltas)
    output_tokens = len(tokens) + reasoning_tokens
    deltas += [Finish(reason), Usage(_count_tokens(request), output_tokens, reasoning_tokens=reasoning_tokens)]
    return deltas


class DemoProvider:
    """The demo as a ``LocalProvider``: its script, paced by ``[providers.NAME]`` settings."""

    name = "demo"
    listed_model = "demo"

    def script(self, request: ResponsesRequest) -> list[Delta]:
        return script(request)

    def pacing(self, provider: ProviderConfig) -> tuple[float, float]:
        return provider.demo.first_token_delay, provider.demo.tokens_per_second


LOCAL = DemoProvider()


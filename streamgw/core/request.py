"""Parse and validate a Responses API request body (``POST /v1/responses``).

Pure: standard library only.  ``parse_request`` turns the raw body into a frozen
``ResponsesRequest`` or raises ``InvalidRequest`` naming the offending field path
(``input[2].content[0].type``, ``tools[1].name``, ``temperature``) in ``param``.
``echo_fields`` gives the request fields every ``response`` snapshot echoes, with
OpenAI's defaults filled in (https://platform.openai.com/docs/api-reference/responses).

Input items are normalised so that later stages see one shape: a string ``input``
becomes one user message, message items always carry ``"type": "message"`` and a
list ``content``.  Built-in tools are accepted here (a native Responses upstream
may serve them); each dialect's request builder decides whether it can.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import Any, NoReturn

from streamgw.errors import InvalidRequest

__all__ = [
    "MAX_DEPTH",
    "MAX_INPUT_ITEMS",
    "MAX_TOOLS",
    "ResponsesRequest",
    "echo_builder",
    "echo_fields",
    "load_object",
    "parse_request",
    "request_from_object",
]

#: deepest nesting of objects and arrays a request may have (the body itself is level 1).  Every
#: later stage (dialect builders, ``json.dumps`` of snapshots and stored records) may then recurse
#: over a request without coming near Python's recursion limit.
MAX_DEPTH = 64
#: most ``input`` items one request may carry (after ``previous_response_id`` the chain adds more)
MAX_INPUT_ITEMS = 10_000
#: most tools a request may declare (OpenAI's documented limit for function tools)
MAX_TOOLS = 128


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A validated ``POST /v1/responses`` body.

    ``raw`` is the body as the client sent it (unknown fields included) for native
    passthrough; ``extra`` holds only the top-level fields this class does not model.
    ``provider`` is the gateway's routing hint and never goes upstream.
    """

    raw: dict[str, Any]
    model: str
    input: tuple[dict[str, Any], ...]
    instructions: str | None = None
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    stop: tuple[str, ...] = ()
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    stream: bool = False
    store: bool = True
    background: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    provider: str | None = None
    previous_response_id: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    truncation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- helpers -------------------------------------------------------------------------------------

Parser = Callable[[Any, str], Any]

_JSON_KINDS: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


def _fail(param: str | None, message: str, code: str = "invalid_value") -> NoReturn:
    raise InvalidRequest(message, param=param, code=code)


def _wrong_type(param: str, expected: str, value: Any) -> NoReturn:
    got = _JSON_KINDS.get(type(value), type(value).__name__)
    _fail(param, f"Invalid type for '{param}': expected {expected}, but got {got} instead.", "invalid_type")


def _missing(param: str, why: str = "") -> NoReturn:
    _fail(param, f"Missing required parameter: '{param}'.{why}", "missing_required_parameter")


def _bad_value(param: str, value: Any, allowed: tuple[str, ...]) -> NoReturn:
    _fail(param, f"Invalid value for '{param}': {value!r}. Supported values are: {', '.join(allowed)}.")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        _wrong_type(param, "a string", value)
    return value


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        _wrong_type(param, "a boolean", value)
    return value


def _out_of_range(param: str, value: Any, where: str, code: str) -> NoReturn:
    _fail(param, f"Invalid '{param}': {value} is {where}.", code)


def _number_between(low: float, high: float) -> Parser:
    def parse(value: Any, param: str) -> float:
        if not _is_number(value):
            _wrong_type(param, "a number", value)
        if value < low:
            _out_of_range(param, value, f"below the minimum {low}", "decimal_below_min_value")
        if value > high:
            _out_of_range(param, value, f"above the maximum {high}", "decimal_above_max_value")
        return float(value)

    return parse


def _int_between(low: int, high: int | None = None) -> Parser:
    def parse(value: Any, param: str) -> int:
        if not _is_int(value):
            _wrong_type(param, "an integer", value)
        if value < low:
            _out_of_range(param, value, f"below the minimum {low}", "integer_below_min_value")
        if high is not None and value > high:
            _out_of_range(param, value, f"above the maximum {high}", "integer_above_max_value")
        return int(value)

    return parse


def _enum(*allowed: str) -> Parser:
    def parse(value: Any, param: str) -> str:
        if value not in allowed:
            _bad_value(param, value, allowed)
        return str(value)

    return parse


def _check_optional(obj: dict[str, Any], key: str, param: str, parse: Parser) -> None:
    """Validate ``obj[key]`` with ``parse`` when it is present and not null."""
    value = obj.get(key)
    if value is not None:
        parse(value, f"{param}.{key}")


def _required_str(obj: dict[str, Any], key: str, param: str) -> str:
    if obj.get(key) is None:
        _missing(f"{param}.{key}")
    return _string(obj[key], f"{param}.{key}")


def _object(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _wrong_type(param, "an object", value)
    return value


def _array(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        _wrong_type(param, "an array", value)
    return value


def _max_length(values: list[Any], param: str, limit: int) -> list[Any]:
    if len(values) > limit:
        _fail(param, f"Invalid '{param}': array too long. Expected an array with maximum length {limit}, "
                     f"but got an array with length {len(values)} instead.", "array_above_max_length")
    return values


# --- content parts -------------------------------------------------------------------------------

_IMAGE_DETAILS = ("low", "high", "auto", "original")


def _text_part(part: dict[str, Any], param: str) -> None:
    _required_str(part, "text", param)


def _refusal_part(part: dict[str, Any], param: str) -> None:
    _required_str(part, "refusal", param)


def _image_part(part: dict[str, Any], param: str) -> None:
    if part.get("image_url") is None and part.get("file_id") is None:
        _missing(f"{param}.image_url", " An input_image needs 'image_url' or 'file_id'.")
    _check_optional(part, "image_url", param, _string)
    _check_optional(part, "file_id", param, _string)
    _check_optional(part, "detail", param, _enum(*_IMAGE_DETAILS))


def _file_part(part: dict[str, Any], param: str) -> None:
    sources = ("file_data", "file_id", "file_url")
    if all(part.get(key) is None for key in sources):
        _missing(f"{param}.file_data", " An input_file needs 'file_data', 'file_id' or 'file_url'.")
    for key in (*sources, "filename"):
        _check_optional(part, key, param, _string)


_PART_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "input_text": _text_part,
    "input_image": _image_part,
    "input_file": _file_part,
    "output_text": _text_part,
    "refusal": _refusal_part,
}
_INPUT_PARTS = ("input_text", "input_image", "input_file")
# Assistant history also takes input_text: many clients replay their own text that way.
_ASSISTANT_PARTS = ("output_text", "refusal", "input_text")
_ROLE_PARTS: dict[str, tuple[str, ...]] = {
    "user": _INPUT_PARTS,
    "system": _INPUT_PARTS,
    "developer": _INPUT_PARTS,
    "assistant": _ASSISTANT_PARTS,
}
_STRING_CONTENT_PART = {"user": "input_text", "system": "input_text", "developer": "input_text"}


def _part(value: Any, param: str, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    part = _object(value, param)
    if part.get("type") is None:
        _missing(f"{param}.type")
    kind = _string(part["type"], f"{param}.type")
    if kind not in allowed:
        _fail(
            f"{param}.type",
            f"Invalid value for '{param}.type': {kind!r} is not allowed in {where}. "
            f"Supported values are: {', '.join(allowed)}.",
        )
    _PART_CHECKS[kind](part, param)
    return part


def _parts(value: Any, param: str, allowed: tuple[str, ...], where: str) -> list[dict[str, Any]]:
    return [_part(p, f"{param}[{j}]", allowed, where) for j, p in enumerate(_array(value, param))]


# --- input items ---------------------------------------------------------------------------------


def _message_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role is None:
        _missing(f"{param}.role")
    if not isinstance(role, str) or role not in _ROLE_PARTS:  # a list or object role is unhashable
        _bad_value(f"{param}.role", role, tuple(_ROLE_PARTS))
    content = item.get("content")
    if content is None:
        _missing(f"{param}.content")
    if isinstance(content, str):
        parts = [{"type": _STRING_CONTENT_PART.get(role, "output_text"), "text": content}]
    elif isinstance(content, list):
        parts = _parts(content, f"{param}.content", _ROLE_PARTS[role], f"a '{role}' message")
    else:
        _wrong_type(f"{param}.content", "a string or an array of content parts", content)
    return {**item, "type": "message", "content": parts}


def _function_call_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    for key in ("call_id", "name", "arguments"):
        _required_str(item, key, param)
    return item


def _function_call_output_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    _required_str(item, "call_id", param)
    output = item.get("output")
    if output is None:
        _missing(f"{param}.output")
    if not isinstance(output, str):
        if not isinstance(output, list):
            _wrong_type(f"{param}.output", "a string or an array of content parts", output)
        _parts(output, f"{param}.output", _INPUT_PARTS, "a function_call_output")
    return item


def _reasoning_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    for key in ("summary", "content"):
        entries = item.get(key)
        if entries is None:
            continue
        for j, entry in enumerate(_array(entries, f"{param}.{key}")):
            _required_str(_object(entry, f"{param}.{key}[{j}]"), "text", f"{param}.{key}[{j}]")
    _check_optional(item, "encrypted_content", param, _string)
    return item


def _item_reference_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    _required_str(item, "id", param)
    return {**item, "type": "item_reference"}


_ITEM_PARSERS: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "message": _message_item,
    "function_call": _function_call_item,
    "function_call_output": _function_call_output_item,
    "reasoning": _reasoning_item,
    "item_reference": _item_reference_item,
}

# Items of the Responses API's built-in tools (output item types of the Responses API): real, but not served here yet.
_BUILTIN_ITEMS = frozenset(
    {
        "file_search_call", "web_search_call", "computer_call", "computer_call_output",
        "image_generation_call", "code_interpreter_call", "local_shell_call", "local_shell_call_output",
        "shell_call", "shell_call_output", "apply_patch_call", "apply_patch_call_output",
        "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "mcp_call",
        "custom_tool_call", "custom_tool_call_output", "tool_search_call", "tool_search_call_output",
        "compaction", "compaction_trigger", "additional_tools", "program", "program_output",
    }
)  # fmt: skip


def _item_type(item: dict[str, Any], param: str) -> str:
    kind = item.get("type")
    if kind is None:
        # Easy-form messages omit ``type``; so may item references (``item_reference``).
        if "role" in item:
            return "message"
        if "id" in item:
            return "item_reference"
        _missing(f"{param}.type", " An input item needs a 'type' (or a 'role' for a message).")
    kind = _string(kind, f"{param}.type")
    if kind in _ITEM_PARSERS:
        return kind
    if kind in _BUILTIN_ITEMS:
        _fail(
            f"{param}.type",
            f"Input item type {kind!r} belongs to a built-in tool, which this gateway does not support yet.",
        )
    _bad_value(f"{param}.type", kind, tuple(_ITEM_PARSERS))


def _input(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        _missing("input")
    if isinstance(value, str):
        return ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]},)
    if not isinstance(value, list):
        _wrong_type("input", "a string or an array of input items", value)
    if not value:
        _fail("input", "Invalid 'input': empty array. Expected at least one input item.", "empty_array")
    _max_length(value, "input", MAX_INPUT_ITEMS)
    items = []
    for i, raw_item in enumerate(value):
        param = f"input[{i}]"
        item = _object(raw_item, param)
        items.append(_ITEM_PARSERS[_item_type(item, param)](item, param))
    return tuple(items)


# --- tools, tool_choice, text, reasoning ---------------------------------------------------------

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def _name(value: Any, param: str) -> str:
    name = _string(value, param)
    if not _NAME.fullmatch(name):
        _fail(param, f"Invalid '{param}': {name!r} must match ^[a-zA-Z0-9_-]{{1,64}}$.", "invalid_value")
    return name


def _function_tool(tool: dict[str, Any], param: str) -> None:
    if tool.get("name") is None:
        _missing(f"{param}.name")
    _name(tool["name"], f"{param}.name")
    _check_optional(tool, "parameters", param, _object)
    _check_optional(tool, "description", param, _string)
    _check_optional(tool, "strict", param, _boolean)


def _tool(value: Any, param: str) -> dict[str, Any]:
    tool = _object(value, param)
    if tool.get("type") is None:
        _missing(f"{param}.type")
    kind = _string(tool["type"], f"{param}.type")
    if kind == "function":
        _function_tool(tool, param)
    return tool


def _tools(value: Any, param: str) -> tuple[dict[str, Any], ...]:
    tools = _max_length(_array(value, param), param, MAX_TOOLS)
    return tuple(_tool(t, f"{param}[{i}]") for i, t in enumerate(tools))


def _choice_function(choice: dict[str, Any], param: str) -> None:
    _required_str(choice, "name", param)


def _choice_allowed_tools(choice: dict[str, Any], param: str) -> None:
    if choice.get("mode") is None:
        _missing(f"{param}.mode")
    _enum("auto", "required")(choice["mode"], f"{param}.mode")
    if choice.get("tools") is None:
        _missing(f"{param}.tools")
    tools = _max_length(_array(choice["tools"], f"{param}.tools"), f"{param}.tools", MAX_TOOLS)
    for i, entry in enumerate(tools):
        _tool(entry, f"{param}.tools[{i}]")


_CHOICE_CHECKS: dict[str, Callable[[dict[str, Any], str], None]] = {
    "function": _choice_function,
    "allowed_tools": _choice_allowed_tools,
}
_CHOICE_MODES = ("none", "auto", "required")


def _tool_choice(value: Any, param: str) -> str | dict[str, Any]:
    if isinstance(value, str):
        if value not in _CHOICE_MODES:
            _bad_value(param, value, _CHOICE_MODES)
        return value
    choice = _object(value, param)
    if choice.get("type") is None:
        _missing(f"{param}.type")
    kind = _string(choice["type"], f"{param}.type")
    check = _CHOICE_CHECKS.get(kind)
    if check is not None:
        check(choice, param)
    return choice


def _json_schema_format(fmt: dict[str, Any], param: str) -> None:
    if fmt.get("name") is None:
        _missing(f"{param}.name")
    _name(fmt["name"], f"{param}.name")
    if fmt.get("schema") is None:
        _missing(f"{param}.schema")
    _object(fmt["schema"], f"{param}.schema")
    _check_optional(fmt, "strict", param, _boolean)
    _check_optional(fmt, "description", param, _string)


_FORMAT_CHECKS: dict[str, Callable[[dict[str, Any], str], None] | None] = {
    "text": None,
    "json_object": None,
    "json_schema": _json_schema_format,
}


def _text_format(value: Any, param: str) -> None:
    fmt = _object(value, param)
    if fmt.get("type") is None:
        _missing(f"{param}.type")
    kind = _string(fmt["type"], f"{param}.type")
    if kind not in _FORMAT_CHECKS:
        _bad_value(f"{param}.type", kind, tuple(_FORMAT_CHECKS))
    check = _FORMAT_CHECKS[kind]
    if check is not None:
        check(fmt, param)


def _text(value: Any, param: str) -> dict[str, Any]:
    text = _object(value, param)
    _check_optional(text, "format", param, _text_format)
    _check_optional(text, "verbosity", param, _enum("low", "medium", "high"))
    return text


_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_SUMMARIES = ("auto", "concise", "detailed")


def _reasoning(value: Any, param: str) -> dict[str, Any]:
    reasoning = _object(value, param)
    _check_optional(reasoning, "effort", param, _enum(*_EFFORTS))
    _check_optional(reasoning, "summary", param, _enum(*_SUMMARIES))
    _check_optional(reasoning, "generate_summary", param, _enum(*_SUMMARIES))
    return reasoning


# --- scalar fields -------------------------------------------------------------------------------


def _metadata(value: Any, param: str) -> dict[str, str]:
    metadata = _object(value, param)
    if len(metadata) > 16:
        _fail(param, f"Invalid '{param}': at most 16 key-value pairs, got {len(metadata)}.")
    for key, item in metadata.items():
        if len(key) > 64:
            _fail(param, f"Invalid '{param}': key {key[:64]!r}... is longer than 64 characters.")
        _string(item, f"{param}.{key}")
        if len(item) > 512:
            _fail(f"{param}.{key}", f"Invalid '{param}.{key}': value is longer than 512 characters.")
    return dict(metadata)


def _stop(value: Any, param: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    stops = _array(value, param)
    if len(stops) > 4:
        message = f"Invalid '{param}': at most 4 stop sequences, got {len(stops)}."
        _fail(param, message, "array_above_max_length")
    return tuple(_string(s, f"{param}[{i}]") for i, s in enumerate(stops))


# field -> (parser, default when absent or null); ``model`` and ``input`` are handled apart.
_FIELDS: dict[str, tuple[Parser, Any]] = {
    "instructions": (_string, None),
    "tools": (_tools, ()),
    "tool_choice": (_tool_choice, "auto"),
    "parallel_tool_calls": (_boolean, True),
    "temperature": (_number_between(0, 2), None),
    "top_p": (_number_between(0, 1), None),
    "max_output_tokens": (_int_between(0), None),
    "max_tool_calls": (_int_between(0), None),
    "top_logprobs": (_int_between(0, 20), None),
    "stop": (_stop, ()),
    "text": (_text, None),
    "reasoning": (_reasoning, None),
    "stream": (_boolean, False),
    "store": (_boolean, True),
    "background": (_boolean, False),
    "metadata": (_metadata, {}),
    "provider": (_string, None),
    "previous_response_id": (_string, None),
    "user": (_string, None),
    "safety_identifier": (_string, None),
    "prompt_cache_key": (_string, None),
    "service_tier": (_string, None),
    "truncation": (_enum("auto", "disabled"), None),
}
_MODELLED = frozenset({"model", "input", *_FIELDS})
_PARSERS = tuple((name, parse) for name, (parse, _) in _FIELDS.items())
_DEFAULTS: dict[str, Any] = {name: default for name, (_, default) in _FIELDS.items()}
#: the defaults a request object could change in place: each request gets its own copy
_MUTABLE_DEFAULTS = tuple((name, default) for name, default in _DEFAULTS.items() if isinstance(default, dict | list))


def _reject_constant(name: str) -> NoReturn:
    # Python's json accepts NaN/Infinity; JSON does not, and they would poison every range check.
    raise ValueError(f"{name} is not valid JSON")


#: one decoder for every body (``json.loads`` with an argument builds a new one per call)
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


# A JSON escape of a UTF-16 surrogate, and of a low one.  Only a lone such escape, or bytes that are
# not UTF-8, can put a lone surrogate into a parsed string; a lone surrogate cannot be encoded to
# UTF-8, so every later ``json.dumps(...).encode()`` (upstream bodies, events) would fail.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LOW_ESCAPE = re.compile(r"\\u[dD][c-fC-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTAINERS = (dict, list)


def _too_deep(value: Any, depth: int) -> bool:
    """True when containers nest deeper than ``MAX_DEPTH`` (the fast check; ``_walk`` names where)."""
    if depth > MAX_DEPTH:
        return True
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if (kind is dict or kind is list) and _too_deep(item, depth + 1):
            return True
    return False


class _Rejected(Exception):
    """Raised deep in ``_walk``; collects the JSON path on its way up."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem  # "depth" or "unicode"
        self.path: list[str | int] = []


def _bad_text(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def _walk(value: Any, depth: int, strings: bool) -> None:
    """Raise ``_Rejected`` for nesting deeper than ``MAX_DEPTH`` or (``strings``) a lone surrogate.

    Recursion is safe: it stops at ``MAX_DEPTH``.  Scalars other than strings are not visited.
    """
    if depth > MAX_DEPTH:
        raise _Rejected("depth")
    if type(value) is dict:
        for key, item in value.items():
            try:
                if strings and _bad_text(key):
                    raise _Rejected("unicode")
                if type(item) in _CONTAINERS or (strings and type(item) is str):
                    _walk(item, depth + 1, strings)
            except _Rejected as rejected:
                rejected.path.append(key)
                raise
    elif type(value) is list:
        for index, item in enumerate(value):
            try:
                if type(item) in _CONTAINERS or (strings and type(item) is str):
                    _walk(item, depth + 1, strings)
            except _Rejected as rejected:
                rejected.path.append(index)
                raise
    elif type(value) is str and _bad_text(value):
        raise _Rejected("unicode")


def _path(segments: list[str | int]) -> str | None:
    """``["input", 0, "content"]`` → ``input[0].content``; surrogates in keys shown as ``\\udXXX``."""
    text = ""
    for segment in reversed(segments):
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            key = segment.encode("utf-8", "backslashreplace").decode() if _bad_text(segment) else segment
            text += f".{key}" if text else key
    return text or None


def _escapes_surrogate(text: str) -> bool:
    """True when the JSON ``text`` has a lone surrogate escape.

    Valid pairs (emoji from ASCII-only encoders) do not count, so they cost no walk over the
    parsed strings; nor does ``\\\\ud800`` (an escaped backslash, then text).
    """
    if "\\u" not in text:
        return False
    pair_end = -1
    for match in _SURROGATE_ESCAPE.finditer(text):
        start = match.start()
        if start == pair_end or _escaped(text, start):
            continue  # the low half of a pair seen already, or literal text after a ``\\``
        if text[start + 3] in "89abAB" and _LOW_ESCAPE.match(text, start + 6):
            pair_end = start + 6
            continue
        return True
    return False


def _escaped(text: str, start: int) -> bool:
    """True when the backslash at ``start`` is itself escaped (an odd run of backslashes before it)."""
    run = 0
    while start > run and text[start - run - 1] == "\\":
        run += 1
    return run % 2 == 1


def _decode(data: str | bytes) -> tuple[str, bool]:
    """The text of ``data`` and whether it may hold lone surrogates (so its strings must be checked).

    Bytes that are not UTF-8 are kept as lone surrogates (``surrogateescape``) so that the
    string holding them can be named; strict UTF-8 also refuses encoded surrogates, which
    ``json.loads(bytes)`` would let through.
    """
    if isinstance(data, str):  # a WebSocket text frame: already text
        return data, _bad_text(data) or _escapes_surrogate(data)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True
    return text, _escapes_surrogate(text)


def load_object(data: str | bytes, what: str = "request body") -> dict[str, Any]:
    """Parse ``data`` as a JSON object whose strings are valid Unicode and whose nesting is bounded.

    ``InvalidRequest`` (400) otherwise: ``invalid_json`` for bytes that are no JSON object,
    ``invalid_unicode`` naming the string (``metadata.k``, ``input[0].content[0].text``) that
    holds a lone surrogate or bytes that are not UTF-8, ``nesting_too_deep`` naming where
    the nesting passes ``MAX_DEPTH``.
    """
    text, check_strings = _decode(data)
    try:
        if text.startswith("\ufeff"):  # what json.loads says of it (the decoder alone does not check)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        raw = _JSON.decode(text)
    except (ValueError, RecursionError) as exc:
        detail = str(exc).encode("utf-8", "backslashreplace").decode()
        _fail(None, f"The {what} is not valid JSON: {detail}", "invalid_json")
    if not isinstance(raw, dict):
        _fail(None, f"The {what} must be a JSON object.", "invalid_json")
    # Most bodies have fewer brackets than the depth limit; the walk that names the param runs only
    # when something is wrong.
    if check_strings or (text.count("{") + text.count("[") > MAX_DEPTH and _too_deep(raw, 1)):
        try:
            _walk(raw, 1, check_strings)
        except _Rejected as rejected:
            _reject_tree(rejected, what)
    return raw


def _reject_tree(rejected: _Rejected, what: str) -> NoReturn:
    param = _path(rejected.path)
    where = f"'{param}'" if param else f"the {what}"
    if rejected.problem == "depth":
        _fail(param, f"Invalid {where}: objects and arrays are nested deeper than {MAX_DEPTH} levels.",
              "nesting_too_deep")
    _fail(param, f"Invalid {where}: the string is not valid Unicode (a lone UTF-16 surrogate escape, "
                 "or bytes that are not UTF-8).", "invalid_unicode")


def _model(value: Any) -> str:
    if value is None:
        _missing("model")
    model = _string(value, "model")
    if not model.strip():
        _fail("model", "Invalid 'model': expected a non-empty string.", "empty_string")
    return model


def parse_request(body: bytes) -> ResponsesRequest:
    """Parse a ``POST /v1/responses`` body; raise ``InvalidRequest`` (400, ``param`` set) if it is wrong."""
    return request_from_object(load_object(body))


def request_from_object(raw: dict[str, Any]) -> ResponsesRequest:
    """Validate an already parsed body (from ``load_object``, which bounds its depth and checks its Unicode)."""
    model = _model(raw.get("model"))
    items = _input(raw.get("input"))
    values = _DEFAULTS.copy()  # most fields are absent from most bodies
    for name, default in _MUTABLE_DEFAULTS:
        values[name] = copy.copy(default)
    get = raw.get
    for name, parse in _PARSERS:  # in ``_FIELDS`` order: the first wrong field is the one named
        value = get(name)
        if value is not None:
            values[name] = parse(value, name)
    extra = {key: value for key, value in raw.items() if key not in _MODELLED}
    return ResponsesRequest(raw=raw, model=model, input=items, extra=extra, **values)


# --- echo ----------------------------------------------------------------------------------------

class _Shared(dict):  # type: ignore[type-arg]
    """A dict that every response shares (a default echoed as is): reading, ``==`` and JSON as a dict's, any change
    a ``TypeError`` (one response's change would otherwise show in every other's); a copy is a plain dict."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("a shared echo default is read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type[dict], tuple[dict[str, Any]]]:  # type: ignore[type-arg]
        return dict, (dict(self),)  # a copy (or a pickle) is an ordinary dict


_DEFAULT_TEXT: dict[str, Any] = _Shared(format=_Shared(type="text"), verbosity="medium")
_DEFAULT_REASONING: dict[str, Any] = _Shared(effort=None, summary=None)
_NO_METADATA: dict[str, str] = _Shared()


def _over(defaults: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """``defaults`` updated with ``given``'s non-null values (a null ``text.format`` still echoes the default):
    ``defaults`` itself when there are none."""
    if not given:
        return defaults
    present = {key: value for key, value in given.items() if value is not None}
    return {**defaults, **present} if present else defaults


def _echo_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return dict(tool)
    strict = tool.get("strict")
    return {
        **tool,
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": True if strict is None else strict,
    }


def echo_fields(req: ResponsesRequest) -> dict[str, Any]:
    """The request fields echoed into every ``response`` snapshot, defaults filled (OpenAI's ``Response`` object).

    The returned dict is fresh; the values in it (``text``, ``reasoning``, ``metadata``,
    tool schemas) may be shared with ``req`` or, when the request left them out, with
    every other response (one default each, not a copy held by every open stream) and
    must not be mutated.  No deep copy: a client's deeply nested schema must not cost a
    recursion per snapshot.
    """
    return _echo(*_ECHOED(req))


def echo_builder(req: ResponsesRequest) -> Callable[[], dict[str, Any]]:
    """What makes ``echo_fields(req)`` when called, holding only the values it reads: not ``req``, whose body's
    JSON and input the lifecycle lets go of once the upstream request is made."""
    return partial(_echo, *_ECHOED(req))


_ECHOED = attrgetter(
    "background", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "parallel_tool_calls",
    "previous_response_id", "prompt_cache_key", "reasoning", "safety_identifier", "service_tier", "store",
    "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
)


def _echo(background: Any, instructions: Any, max_output_tokens: Any, max_tool_calls: Any, metadata: Any,
          parallel_tool_calls: Any, previous_response_id: Any, prompt_cache_key: Any, reasoning: Any,
          safety_identifier: Any, service_tier: Any, store: Any, temperature: Any, text: Any, tool_choice: Any,
          tools: Any, top_logprobs: Any, top_p: Any, truncation: Any, user: Any) -> dict[str, Any]:
    return {
        "background": background,
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "max_tool_calls": max_tool_calls,
        "metadata": dict(metadata) if metadata else _NO_METADATA,
        "parallel_tool_calls": parallel_tool_calls,
        "previous_response_id": previous_response_id,
        "prompt_cache_key": prompt_cache_key,
        "reasoning": _over(_DEFAULT_REASONING, reasoning),
        "safety_identifier": safety_identifier,
        "service_tier": service_tier or "auto",
        "store": store,
        "temperature": 1.0 if temperature is None else temperature,
        "text": _over(_DEFAULT_TEXT, text),
        "tool_choice": tool_choice if isinstance(tool_choice, str) else dict(tool_choice),
        "tools": [_echo_tool(tool) for tool in tools] if tools else [],
        "top_logprobs": top_logprobs or 0,
        "top_p": 1.0 if top_p is None else top_p,
        "truncation": truncation or "disabled",
        "user": user,
    }

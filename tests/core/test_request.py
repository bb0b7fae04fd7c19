"""parse_request / echo_fields: validation (each rule a 400 naming its param), normalisation, echo."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
from typing import Any

import pytest

from streamgw.core.request import (
    MAX_DEPTH,
    MAX_INPUT_ITEMS,
    MAX_TOOLS,
    ResponsesRequest,
    echo_builder,
    echo_fields,
    parse_request,
)
from streamgw.errors import InvalidRequest


def encode(**fields: Any) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "input": "hi"}
    body.update(fields)
    return json.dumps(body).encode()


def parse(**fields: Any) -> ResponsesRequest:
    return parse_request(encode(**fields))


def rejected(body: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(body)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.message
    return info.value


def user(*parts: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


# --- body ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"not json", b"[1, 2]", b'"text"', b"null", b"\xff\xfe{", b'{"model": NaN}', b"[" * 100_000],
)
def test_body_not_a_json_object(body: bytes) -> None:
    error = rejected(body)
    assert error.param is None
    assert error.code == "invalid_json"


# --- model and input -----------------------------------------------------------------------------


def test_model_missing() -> None:
    error = rejected(json.dumps({"input": "hi"}).encode())
    assert (error.param, error.code) == ("model", "missing_required_parameter")


@pytest.mark.parametrize("model", [5, "", "   ", ["m"], True])
def test_model_not_a_non_empty_string(model: Any) -> None:
    assert rejected(encode(model=model)).param == "model"


def test_input_missing() -> None:
    error = rejected(json.dumps({"model": "m"}).encode())
    assert (error.param, error.code) == ("input", "missing_required_parameter")


@pytest.mark.parametrize("value", [5, {"role": "user", "content": "x"}, True])
def test_input_not_string_or_array(value: Any) -> None:
    error = rejected(encode(input=value))
    assert (error.param, error.code) == ("input", "invalid_type")


def test_input_empty_array() -> None:
    assert rejected(encode(input=[])).param == "input"


# (input, param) pairs: every item/part rule names the exact path of the offending field.
ITEM_ERRORS: list[tuple[list[Any], str]] = [
    (["hello"], "input[0]"),
    ([user({"type": "input_text", "text": "a"}), 7], "input[1]"),
    ([{"content": "no type, no role"}], "input[0].type"),
    ([{"type": "banana"}], "input[0].type"),
    ([{"type": 3, "role": "user", "content": "x"}], "input[0].type"),
    ([{"role": "tool", "content": "x"}], "input[0].role"),
    ([{"type": "message", "content": "x"}], "input[0].role"),
    ([{"role": "user"}], "input[0].content"),
    ([{"role": "user", "content": 5}], "input[0].content"),
    ([{"role": "user", "content": {"type": "input_text", "text": "x"}}], "input[0].content"),
    ([user("text")], "input[0].content[0]"),
    ([user({"text": "no type"})], "input[0].content[0].type"),
    ([user({"type": "input_text", "text": "a"}, {"type": "input_audio"})], "input[0].content[1].type"),
    ([user({"type": "output_text", "text": "a"})], "input[0].content[0].type"),
    ([{"role": "system", "content": [{"type": "refusal", "refusal": "no"}]}], "input[0].content[0].type"),
    (
        [{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}],
        "input[0].content[0].type",
    ),
    ([user({"type": "input_text"})], "input[0].content[0].text"),
    ([user({"type": "input_text", "text": 5})], "input[0].content[0].text"),
    ([user({"type": "input_image"})], "input[0].content[0].image_url"),
    ([user({"type": "input_image", "image_url": {"url": "u"}})], "input[0].content[0].image_url"),
    ([user({"type": "input_image", "file_id": 12})], "input[0].content[0].file_id"),
    ([user({"type": "input_image", "image_url": "u", "detail": "ultra"})], "input[0].content[0].detail"),
    ([user({"type": "input_file", "filename": "a.pdf"})], "input[0].content[0].file_data"),
    ([user({"type": "input_file", "file_url": 5})], "input[0].content[0].file_url"),
    ([user({"type": "input_file", "file_data": "AAAA", "filename": 1})], "input[0].content[0].filename"),
    ([{"role": "assistant", "content": [{"type": "output_text"}]}], "input[0].content[0].text"),
    ([{"role": "assistant", "content": [{"type": "refusal"}]}], "input[0].content[0].refusal"),
    ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
    ([{"type": "function_call", "call_id": "c", "arguments": "{}"}], "input[0].name"),
    ([{"type": "function_call", "call_id": "c", "name": "f"}], "input[0].arguments"),
    ([{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}], "input[0].arguments"),
    ([{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
    ([{"type": "function_call_output", "call_id": "c"}], "input[0].output"),
    ([{"type": "function_call_output", "call_id": "c", "output": 5}], "input[0].output"),
    (
        [{"type": "function_call_output", "call_id": "c", "output": [{"type": "output_text", "text": "x"}]}],
        "input[0].output[0].type",
    ),
    ([{"type": "reasoning", "summary": "thinking"}], "input[0].summary"),
    ([{"type": "reasoning", "summary": [{"type": "summary_text"}]}], "input[0].summary[0].text"),
    ([{"type": "reasoning", "summary": [], "encrypted_content": 5}], "input[0].encrypted_content"),
    ([{"type": "item_reference"}], "input[0].id"),
]


@pytest.mark.parametrize(("items", "param"), ITEM_ERRORS)
def test_input_item_errors_name_the_path(items: list[Any], param: str) -> None:
    assert rejected(encode(input=items)).param == param


def test_builtin_tool_item_rejected_with_clear_message() -> None:
    error = rejected(encode(input=[user({"type": "input_text", "text": "a"}), {"type": "web_search_call"}]))
    assert error.param == "input[1].type"
    assert "web_search_call" in error.message
    assert "built-in" in error.message


def test_unknown_item_type_lists_supported_types() -> None:
    error = rejected(encode(input=[{"type": "banana"}]))
    assert "banana" in error.message
    assert "function_call_output" in error.message


# --- top-level fields ----------------------------------------------------------------------------

FIELD_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"instructions": 5}, "instructions", "invalid_type"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"store": 1}, "store", "invalid_type"),
    ({"parallel_tool_calls": "false"}, "parallel_tool_calls", "invalid_type"),
    ({"background": 0}, "background", "invalid_type"),
    ({"metadata": ["a"]}, "metadata", "invalid_type"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
    ({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k", "invalid_value"),
    ({"metadata": {"k": 5}}, "metadata.k", "invalid_type"),
    ({"temperature": "1"}, "temperature", "invalid_type"),
    ({"temperature": True}, "temperature", "invalid_type"),
    ({"temperature": 2.01}, "temperature", "decimal_above_max_value"),
    ({"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ({"top_p": -1}, "top_p", "decimal_below_min_value"),
    ({"top_p": [1]}, "top_p", "invalid_type"),
    ({"max_output_tokens": -1}, "max_output_tokens", "integer_below_min_value"),
    ({"max_output_tokens": 1.5}, "max_output_tokens", "invalid_type"),
    ({"max_output_tokens": True}, "max_output_tokens", "invalid_type"),
    ({"max_output_tokens": "100"}, "max_output_tokens", "invalid_type"),
    ({"max_tool_calls": -3}, "max_tool_calls", "integer_below_min_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
    ({"stop": 5}, "stop", "invalid_type"),
    ({"stop": ["a", 5]}, "stop[1]", "invalid_type"),
    ({"tools": {"type": "function"}}, "tools", "invalid_type"),
    ({"tools": [5]}, "tools[0]", "invalid_type"),
    ({"tools": [{"name": "f"}]}, "tools[0].type", "missing_required_parameter"),
    ({"tools": [{"type": 5}]}, "tools[0].type", "invalid_type"),
    (
        {"tools": [{"type": "function", "name": "ok"}, {"type": "function"}]},
        "tools[1].name",
        "missing_required_parameter",
    ),
    (
        {"tools": [{"type": "web_search"}, {"type": "function", "name": "a b"}]},
        "tools[1].name",
        "invalid_value",
    ),
    ({"tools": [{"type": "function", "name": "x" * 65}]}, "tools[0].name", "invalid_value"),
    ({"tools": [{"type": "function", "name": 5}]}, "tools[0].name", "invalid_type"),
    (
        {"tools": [{"type": "function", "name": "f", "parameters": "{}"}]},
        "tools[0].parameters",
        "invalid_type",
    ),
    ({"tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "tools[0].strict", "invalid_type"),
    (
        {"tools": [{"type": "function", "name": "f", "description": 1}]},
        "tools[0].description",
        "invalid_type",
    ),
    ({"tool_choice": "always"}, "tool_choice", "invalid_value"),
    ({"tool_choice": 5}, "tool_choice", "invalid_type"),
    ({"tool_choice": {"name": "f"}}, "tool_choice.type", "missing_required_parameter"),
    ({"tool_choice": {"type": "function"}}, "tool_choice.name", "missing_required_parameter"),
    (
        {"tool_choice": {"type": "allowed_tools", "mode": "sometimes", "tools": []}},
        "tool_choice.mode",
        "invalid_value",
    ),
    (
        {"tool_choice": {"type": "allowed_tools", "mode": "auto"}},
        "tool_choice.tools",
        "missing_required_parameter",
    ),
    ({"text": "json"}, "text", "invalid_type"),
    ({"text": {"format": "json"}}, "text.format", "invalid_type"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type", "invalid_value"),
    ({"text": {"format": {}}}, "text.format.type", "missing_required_parameter"),
    (
        {"text": {"format": {"type": "json_schema", "schema": {}}}},
        "text.format.name",
        "missing_required_parameter",
    ),
    (
        {"text": {"format": {"type": "json_schema", "name": "n"}}},
        "text.format.schema",
        "missing_required_parameter",
    ),
    (
        {"text": {"format": {"type": "json_schema", "name": "n", "schema": "{}"}}},
        "text.format.schema",
        "invalid_type",
    ),
    (
        {"text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}}},
        "text.format.name",
        "invalid_value",
    ),
    ({"text": {"verbosity": "loud"}}, "text.verbosity", "invalid_value"),
    ({"reasoning": "high"}, "reasoning", "invalid_type"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "invalid_value"),
    ({"reasoning": {"summary": "long"}}, "reasoning.summary", "invalid_value"),
    ({"previous_response_id": 5}, "previous_response_id", "invalid_type"),
    ({"provider": ["groq"]}, "provider", "invalid_type"),
    ({"user": 5}, "user", "invalid_type"),
    ({"top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"top_logprobs": -1}, "top_logprobs", "integer_below_min_value"),
    ({"top_logprobs": "3"}, "top_logprobs", "invalid_type"),
    ({"truncation": "sometimes"}, "truncation", "invalid_value"),
]


@pytest.mark.parametrize(("fields", "param", "code"), FIELD_ERRORS)
def test_field_errors(fields: dict[str, Any], param: str, code: str) -> None:
    error = rejected(encode(**fields))
    assert (error.param, error.code) == (param, code)


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 0},
        {"temperature": 2},
        {"top_p": 0},
        {"top_p": 1.0},
        {"max_output_tokens": 0},
        {"top_logprobs": 20},
        {"stop": ["a", "b", "c", "d"]},
        {"metadata": {f"k{i}": "v" * 512 for i in range(16)}},
        {"tools": [{"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}]},
        {"tools": [{"type": "function", "name": "get_weather-2", "parameters": None, "strict": None}]},
        {"tool_choice": {"type": "web_search_preview"}},
        {
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "f"}],
            }
        },
        {"text": {"format": {"type": "json_object"}}},
        {
            "text": {
                "format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}
            }
        },
        *(
            {"reasoning": {"effort": effort}}
            for effort in ("none", "minimal", "low", "medium", "high", "xhigh", "max")
        ),
    ],
)
def test_valid_values_accepted(fields: dict[str, Any]) -> None:
    request = parse(**fields)
    for name in fields:
        assert request.raw[name] == fields[name]


def test_null_fields_take_defaults() -> None:
    nulls = (
        "instructions",
        "temperature",
        "top_p",
        "max_output_tokens",
        "stream",
        "store",
        "metadata",
        "tools",
    )
    request = parse(**dict.fromkeys(nulls), parallel_tool_calls=None, text=None, reasoning=None)
    assert request.instructions is None
    assert request.temperature is None
    assert request.stream is False
    assert request.store is True
    assert request.parallel_tool_calls is True
    assert request.metadata == {}
    assert request.tools == ()


def test_typed_fields_are_parsed() -> None:
    request = parse(
        instructions="be brief",
        temperature=1,
        top_p=0.5,
        max_output_tokens=256,
        stop="END",
        stream=True,
        store=False,
        parallel_tool_calls=False,
        metadata={"team": "a"},
        previous_response_id="resp_1",
        user="u-1",
        tool_choice="required",
    )
    assert request.instructions == "be brief"
    assert request.temperature == 1.0 and isinstance(request.temperature, float)
    assert request.top_p == 0.5
    assert request.max_output_tokens == 256
    assert request.stop == ("END",)
    assert request.stream is True
    assert request.store is False
    assert request.parallel_tool_calls is False
    assert request.metadata == {"team": "a"}
    assert request.previous_response_id == "resp_1"
    assert request.user == "u-1"
    assert request.tool_choice == "required"


def test_defaults() -> None:
    request = parse()
    assert request.model == "gpt-4o-mini"
    assert request.tool_choice == "auto"
    assert request.parallel_tool_calls is True
    assert request.store is True
    assert request.stream is False
    assert request.stop == ()
    assert request.provider is None


# --- normalisation -------------------------------------------------------------------------------


def test_string_input_becomes_one_user_message() -> None:
    assert parse(input="Hello").input == (
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
    )


@pytest.mark.parametrize(
    ("role", "part_type"),
    [
        ("user", "input_text"),
        ("system", "input_text"),
        ("developer", "input_text"),
        ("assistant", "output_text"),
    ],
)
def test_string_content_becomes_one_part(role: str, part_type: str) -> None:
    (item,) = parse(input=[{"role": role, "content": "words"}]).input
    assert item == {"type": "message", "role": role, "content": [{"type": part_type, "text": "words"}]}


def test_normalisation_leaves_raw_untouched() -> None:
    request = parse(input=[{"role": "user", "content": "x"}, {"id": "msg_1"}])
    assert request.raw["input"] == [{"role": "user", "content": "x"}, {"id": "msg_1"}]
    assert request.input[0]["type"] == "message"
    assert request.input[1] == {"type": "item_reference", "id": "msg_1"}


def test_items_of_every_supported_type_are_kept_in_order() -> None:
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
        user(
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "https://x/a.png", "detail": "low"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA", "filename": "a.pdf"},
        ),
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "call_1",
            "output": [{"type": "input_text", "text": "42"}],
        },
        {"type": "item_reference", "id": "msg_9"},
    ]
    request = parse(input=items)
    types = [item["type"] for item in request.input]
    assert types == [
        "message",
        "message",
        "reasoning",
        "message",
        "function_call",
        "function_call_output",
        "item_reference",
    ]
    assert request.input[1]["content"] == items[1]["content"]
    assert request.input[4] == items[4]


def test_unknown_fields_kept_in_raw_and_extra() -> None:
    request = parse(seed=7, top_k=40, include=["reasoning.encrypted_content"], temperature=0.3)
    assert request.raw["seed"] == 7
    assert request.raw["top_k"] == 40
    assert request.extra == {"seed": 7, "top_k": 40, "include": ["reasoning.encrypted_content"]}


def test_provider_hint_parsed_and_not_extra() -> None:
    request = parse(provider="groq")
    assert request.provider == "groq"
    assert "provider" not in request.extra
    assert "provider" not in echo_fields(request)


def test_request_is_frozen() -> None:
    request = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.model = "other"  # type: ignore[misc]


# --- echo_fields ---------------------------------------------------------------------------------


def test_echo_defaults() -> None:
    assert echo_fields(parse()) == {
        "background": False,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "auto",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "user": None,
    }


def test_echo_given_values() -> None:
    schema_format = {"type": "json_schema", "name": "out", "schema": {"type": "object"}}
    echo = echo_fields(
        parse(
            instructions="sys",
            max_output_tokens=100,
            max_tool_calls=3,
            metadata={"a": "b"},
            parallel_tool_calls=False,
            previous_response_id="resp_0",
            prompt_cache_key="pck",
            reasoning={"effort": "high"},
            safety_identifier="sid",
            service_tier="flex",
            store=False,
            temperature=0.2,
            text={"format": schema_format},
            tool_choice={"type": "function", "name": "f"},
            top_logprobs=5,
            top_p=0.9,
            truncation="auto",
            user="u",
            background=True,
        )
    )
    assert echo["instructions"] == "sys"
    assert echo["max_output_tokens"] == 100
    assert echo["max_tool_calls"] == 3
    assert echo["metadata"] == {"a": "b"}
    assert echo["parallel_tool_calls"] is False
    assert echo["previous_response_id"] == "resp_0"
    assert echo["prompt_cache_key"] == "pck"
    assert echo["reasoning"] == {"effort": "high", "summary": None}
    assert echo["safety_identifier"] == "sid"
    assert echo["service_tier"] == "flex"
    assert echo["store"] is False
    assert echo["temperature"] == 0.2
    assert echo["text"] == {"format": schema_format, "verbosity": "medium"}
    assert echo["tool_choice"] == {"type": "function", "name": "f"}
    assert echo["top_logprobs"] == 5
    assert echo["top_p"] == 0.9
    assert echo["truncation"] == "auto"
    assert echo["user"] == "u"
    assert echo["background"] is True


def test_echo_zero_values_are_not_replaced_by_defaults() -> None:
    echo = echo_fields(parse(temperature=0, top_p=0, max_output_tokens=0))
    assert echo["temperature"] == 0.0
    assert echo["top_p"] == 0.0
    assert echo["max_output_tokens"] == 0


def test_echo_tools_get_defaults_filled() -> None:
    tools = [
        {"type": "function", "name": "a"},
        {
            "type": "function",
            "name": "b",
            "description": "B",
            "parameters": {"type": "object"},
            "strict": False,
        },
        {"type": "function", "name": "c", "strict": None},
        {"type": "web_search"},
    ]
    assert echo_fields(parse(tools=tools))["tools"] == [
        {"type": "function", "name": "a", "description": None, "parameters": None, "strict": True},
        {
            "type": "function",
            "name": "b",
            "description": "B",
            "parameters": {"type": "object"},
            "strict": False,
        },
        {"type": "function", "name": "c", "description": None, "parameters": None, "strict": True},
        {"type": "web_search"},
    ]


def test_echo_null_text_format_and_verbosity_keep_defaults() -> None:
    echo = echo_fields(parse(text={"format": None, "verbosity": "low"}))
    assert echo["text"] == {"format": {"type": "text"}, "verbosity": "low"}


def test_echo_is_fresh_at_top_level() -> None:
    request = parse(metadata={"a": "b"}, tools=[{"type": "function", "name": "f"}])
    echo = echo_fields(request)
    echo["metadata"]["x"] = "y"
    echo["tools"].append({"type": "web_search"})
    echo["tools"][0]["name"] = "changed"
    assert request.metadata == {"a": "b"}
    assert request.tools == ({"type": "function", "name": "f"},)


def test_echo_defaults_are_shared_and_read_only() -> None:
    """A request that leaves ``text``, ``reasoning`` and ``metadata`` out echoes one shared default of each (not a
    copy held by each open stream); such a default cannot be changed through one response, and copies of it are
    ordinary dicts."""
    first, second = echo_fields(parse()), echo_fields(parse(text={"format": None}, reasoning={"summary": None}))
    for key in ("text", "reasoning", "metadata"):
        assert first[key] is second[key], key
        with pytest.raises(TypeError):
            first[key]["x"] = 1
        with pytest.raises(TypeError):
            first[key].update(x=1)
        with pytest.raises(TypeError):
            first[key].clear()
        assert type(copy.deepcopy(first[key])) is dict and type(dict(first[key])) is dict
    with pytest.raises(TypeError):
        first["text"]["format"]["type"] = "json_object"
    assert json.loads(json.dumps(first)) == echo_fields(parse())  # encoded and compared as dicts
    assert echo_fields(parse())["text"] == {"format": {"type": "text"}, "verbosity": "medium"}
    given = echo_fields(parse(text={"verbosity": "low"}, reasoning={"effort": "low"}, metadata={"a": "b"}))
    assert given["text"] is not first["text"] and type(given["text"]) is dict  # given values: a dict of its own
    given["metadata"]["c"] = "d"
    assert (first["text"]["verbosity"], first["reasoning"]["effort"], first["metadata"]) == ("medium", None, {})


def test_echo_builder_makes_the_echo_without_holding_the_request() -> None:
    request = parse(instructions="sys", metadata={"a": "b"}, tools=[{"type": "function", "name": "f"}],
                    text={"verbosity": "low"}, tool_choice={"type": "function", "name": "f"}, temperature=0)
    build = echo_builder(request)
    assert build() == echo_fields(request) and build() is not build()
    assert request not in gc.get_referents(build) and not any(request in gc.get_referents(o)
                                                              for o in gc.get_referents(build))
    first = build()
    first["metadata"]["x"] = "y"  # a fresh copy each time, as echo_fields gives
    assert build()["metadata"] == {"a": "b"} and request.metadata == {"a": "b"}


# --- Unicode, nesting depth and counts (checked on the raw body, before any field) ---------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (rb'{"model":"m","input":"hi","metadata":{"k":"\ud800"}}', "metadata.k"),
        (rb'{"model":"m","input":"a\ud800b"}', "input"),
        (rb'{"model":"m","input":"hi","instructions":"\uDFFF"}', "instructions"),
        (rb'{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"x\udc00"}]}]}',
         "input[0].content[0].text"),
        (rb'{"model":"m","input":"hi","tools":[{"type":"function","name":"f","parameters":'
         rb'{"type":"object","properties":{"a":{"description":"\ud83d"}}}}]}',
         "tools[0].parameters.properties.a.description"),
        (rb'{"model":"m","input":"hi","x":["ok","\\\ud800"]}', "x[1]"),  # an escaped backslash, then a real escape
        (rb'{"model":"m","input":"hi","metadata":{"k":"\ud83d\ud83d\ude00"}}', "metadata.k"),  # high, then a pair
        (b'{"model":"m","input":"a\xffb"}', "input"),  # a byte that is not UTF-8
        (b'{"model":"m","input":"a\xed\xa0\x80b"}', "input"),  # an encoded surrogate (json.loads(bytes) takes it)
        (b'{"model":"m","input":"hi","metadata":{"k":"\xc3"}}', "metadata.k"),  # a truncated sequence
    ],
)
def test_lone_surrogates_and_bad_utf8_name_the_string(body: bytes, param: str) -> None:
    error = rejected(body)
    assert (error.param, error.code) == (param, "invalid_unicode")
    json.dumps(error.envelope(), ensure_ascii=False).encode()  # the answer itself is valid UTF-8


def test_a_lone_surrogate_in_a_key_is_named_escaped() -> None:
    error = rejected(rb'{"model":"m","input":"hi","metadata":{"\ud800":"v"}}')
    assert (error.param, error.code) == ("metadata.\\ud800", "invalid_unicode")
    json.dumps(error.envelope(), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "text",
    [r"\ud83d\ude00", r"\uD83D\uDE00 and \ud83c\udf89", r"\\ud800", r"\\\\ud800", r"\ud55c\uac00", "plain"],
)
def test_valid_escapes_are_accepted(text: str) -> None:
    body = ('{"model":"m","input":"' + text + '","metadata":{"k":"' + text + '"}}').encode()
    request = parse_request(body)
    assert request.metadata["k"] == json.loads('"' + text + '"')
    json.dumps(request.raw, ensure_ascii=False).encode()


def nested(levels: int) -> bytes:
    """A body whose deepest container is at ``levels`` (the body object is level 1)."""
    return b'{"model":"m","input":"hi","x":' + b"[" * (levels - 1) + b"1" + b"]" * (levels - 1) + b"}"


def test_nesting_up_to_the_limit_is_accepted_one_more_is_not() -> None:
    assert parse_request(nested(MAX_DEPTH)).raw["x"]
    error = rejected(nested(MAX_DEPTH + 1))
    assert error.code == "nesting_too_deep"
    assert error.param == "x" + "[0]" * (MAX_DEPTH - 1)  # the list at level 65


def deep_schema(levels: int) -> str:
    schema = '{"type":"string"}'
    for _ in range(levels):
        schema = '{"type":"object","properties":{"a":' + schema + "}}"
    return schema


def test_a_deeply_nested_tool_schema_is_a_400_naming_the_tool() -> None:
    # 805 levels: json.loads copes, a dialect's builder or json.dumps did not (RecursionError, a 500).
    body = '{"model":"m","input":"hi","tools":[{"type":"function","name":"f","parameters":%s}]}'
    error = rejected((body % deep_schema(400)).encode())
    assert error.code == "nesting_too_deep"
    assert error.param is not None and error.param.startswith("tools[0].parameters.properties.a.properties.a")


def test_the_deepest_accepted_request_survives_every_dialect_and_json_dumps() -> None:
    """Nothing after the parser recurses into a RecursionError for an accepted request, even on a deep stack."""
    from streamgw.config import ProviderConfig
    from streamgw.providers.registry import dialects

    levels = (MAX_DEPTH - 4) // 2  # body > tools > [0] > parameters: 4 levels, then 2 per schema level
    body = '{"model":"m","input":"hi","tools":[{"type":"function","name":"f","parameters":%s}],' \
           '"text":{"format":{"type":"json_schema","name":"out","schema":%s}}}'
    request = parse_request((body % (deep_schema(levels), deep_schema(levels - 1))).encode())

    def everything() -> list[bytes]:
        bodies = [json.dumps(echo_fields(request)).encode()]
        for kind, dialect in dialects().items():
            provider = ProviderConfig(name="p", type=kind, base_url="http://127.0.0.1:1/v1")
            bodies.append(dialect.build_request(request, provider, "m").body)
        return bodies

    def at_depth(frames: int) -> list[bytes]:  # the gateway calls these from a deep trio/hypercorn stack
        return at_depth(frames - 1) if frames else everything()

    bodies = at_depth(600)
    assert len(bodies) == 1 + len(dialects()) and all(b'"f"' in body for body in bodies[1:])


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f"}] * (MAX_TOOLS + 1)}, "tools"),
        ({"input": ["x"] * (MAX_INPUT_ITEMS + 1)}, "input"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto",
                          "tools": [{"type": "function", "name": "f"}] * (MAX_TOOLS + 1)}}, "tool_choice.tools"),
    ],
)
def test_counts_are_bounded(fields: dict[str, Any], param: str) -> None:
    error = rejected(encode(**fields))
    assert (error.param, error.code) == (param, "array_above_max_length")


def test_counts_at_the_limit_are_accepted() -> None:
    request = parse(tools=[{"type": "function", "name": f"f{i}"} for i in range(MAX_TOOLS)],
                    input=[{"role": "user", "content": "x"}] * MAX_INPUT_ITEMS)
    assert (len(request.tools), len(request.input)) == (MAX_TOOLS, MAX_INPUT_ITEMS)


@pytest.mark.parametrize("role", [[], {}, ["user"], {"user": 1}])
def test_unhashable_role_is_a_400(role: Any) -> None:
    # Found by tests/fuzz: an array or object role reached a dict lookup and raised TypeError (a 500).
    error = rejected(json.dumps({"model": "m", "input": [{"role": role, "content": "x"}]}).encode())
    assert (error.param, error.code) == ("input[0].role", "invalid_value")

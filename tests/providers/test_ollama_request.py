"""Ollama request builder: Responses request -> one ``POST /api/chat`` body, field by field."""

from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

import pytest

from streamgw.config import ProviderConfig, Secret
from streamgw.core.request import parse_request
from streamgw.errors import InvalidRequest
from streamgw.providers.base import Assets, UpstreamRequest
from streamgw.providers.ollama import DIALECT, THINK_LEVELS, build_request

KEY = "sk-hosted-ollama-0123456789"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
REMOTE = "https://images.test/cat.png"
ASSETS: Assets = MappingProxyType({REMOTE: ("image/png", PNG_B64)})


def provider(
    key: str = "", headers: tuple[tuple[str, str], ...] = (), base_url: str = "http://gpu-box:11434"
) -> ProviderConfig:
    return ProviderConfig(name="local", type="ollama", base_url=base_url, api_key=Secret(key), headers=headers)


def upstream(prov: ProviderConfig | None = None, assets: Assets = ASSETS, **fields: Any) -> UpstreamRequest:
    body = {"model": "local/llama3.2", "input": "hi", **fields}
    return build_request(parse_request(json.dumps(body).encode()), prov or provider(), "llama3.2", assets)


def ollama(prov: ProviderConfig | None = None, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(upstream(prov, **fields).body)
    return result


def rejected(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        upstream(**fields)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "input_text", "text": value}


def image(url: str) -> dict[str, Any]:
    return {"type": "input_image", "image_url": url}


def call(call_id: str, name: str = "get_weather", arguments: str = '{"city":"Paris"}') -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def result(call_id: str, output: Any = "18C") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
CLOCK = {"type": "function", "name": "get_time"}


# --- envelope ------------------------------------------------------------------------------------


def test_minimal_request() -> None:
    up = upstream()
    assert up.method == "POST"
    assert up.url == "http://gpu-box:11434/api/chat"
    assert json.loads(up.body) == {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.mark.parametrize("stream", [True, False])
def test_stream_true_is_always_explicit(stream: bool) -> None:
    up = upstream(stream=stream)
    assert b'"stream":true' in up.body  # Ollama streams by default, but we never rely on defaults


def test_body_is_compact_utf8() -> None:
    body = upstream(input="héllo → 世界").body
    assert "héllo → 世界".encode() in body
    assert b", " not in body and b": " not in body


def test_headers_without_key() -> None:
    assert upstream().headers == {
        "content-type": "application/json",
        "accept": "application/x-ndjson",
        "accept-encoding": "identity",
    }


def test_bearer_key_only_when_configured() -> None:
    headers = upstream(provider(key=KEY)).headers
    assert headers["authorization"] == f"Bearer {KEY}"


def test_provider_headers_are_added_lower_case() -> None:
    headers = upstream(provider(headers=(("CF-Access-Client-Id", "abc"),))).headers
    assert headers["cf-access-client-id"] == "abc"
    assert "authorization" not in headers


def test_base_url_trailing_slash() -> None:
    assert upstream(provider(base_url="http://127.0.0.1:11434/")).url == "http://127.0.0.1:11434/api/chat"


def test_unknown_fields_metadata_and_hints_not_forwarded() -> None:
    body = ollama(provider="local", metadata={"a": "b"}, seed=1, store=False, user="u", truncation="auto",
                  parallel_tool_calls=False, top_logprobs=3)
    assert set(body) == {"model", "messages", "stream"}


def test_dialect_object_builds_the_same_request() -> None:
    request = parse_request(b'{"model": "m", "input": "hi"}')
    assert DIALECT.build_request(request, provider(), "m") == build_request(request, provider(), "m")


# --- messages ------------------------------------------------------------------------------------


def test_instructions_become_first_system_message() -> None:
    developer = {"role": "developer", "content": "Use metric."}
    messages = ollama(instructions="Be terse.", input=[developer, user(text("hi"))])["messages"]
    assert messages == [
        {"role": "system", "content": "Be terse."},
        {"role": "system", "content": "Use metric."},
        {"role": "user", "content": "hi"},
    ]


def test_empty_instructions_are_omitted() -> None:
    assert ollama(instructions="")["messages"] == [{"role": "user", "content": "hi"}]


def test_user_text_parts_are_joined() -> None:
    assert ollama(input=[user(text("a"), text("b"))])["messages"] == [{"role": "user", "content": "a\nb"}]


def test_data_url_image_becomes_bare_base64() -> None:
    [message] = ollama(input=[user(text("what is this?"), image(f"data:image/png;base64,{PNG_B64}"))])["messages"]
    assert message == {"role": "user", "content": "what is this?", "images": [PNG_B64]}


def test_remote_image_comes_from_assets() -> None:
    [message] = ollama(input=[user(image(REMOTE), image(REMOTE))])["messages"]
    assert message == {"role": "user", "content": "", "images": [PNG_B64, PNG_B64]}


def test_remote_image_missing_from_assets_is_rejected() -> None:
    err = rejected(assets=MappingProxyType({}), input=[user(text("x"), image("https://other.test/a.png"))])
    assert err.param == "input[0].content[1].image_url"


@pytest.mark.parametrize("url", ["data:image/svg+xml,<svg/>", "data:image/png;charset=x,abc", "ftp://x/y.png"])
def test_unusable_image_urls_are_rejected(url: str) -> None:
    assert rejected(input=[user(image(url))]).param == "input[0].content[0].image_url"


def test_image_file_id_is_rejected() -> None:
    err = rejected(input=[user(text("x"), {"type": "input_image", "file_id": "file-1"})])
    assert err.param == "input[0].content[1].file_id" and "file_id" in err.message


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"},
        {"type": "input_file", "file_id": "file-1"},
        {"type": "input_file", "file_url": "https://x.test/a.pdf"},
    ],
)
def test_files_are_rejected_naming_the_part(part: dict[str, Any]) -> None:
    err = rejected(input=[user(text("read this"), part)])
    assert err.param == "input[0].content[1].type" and "input_file" in err.message


def test_image_in_system_message_rejected() -> None:
    err = rejected(input=[{"role": "system", "content": [image(f"data:image/png;base64,{PNG_B64}")]}])
    assert err.param == "input[0].content[0].type"


def test_assistant_history_is_a_content_string() -> None:
    assistant = {"role": "assistant", "content": [{"type": "output_text", "text": "Hi"},
                                                  {"type": "refusal", "refusal": "No."}]}
    messages = ollama(input=[user(text("q")), assistant, user(text("again"))])["messages"]
    assert messages[1] == {"role": "assistant", "content": "Hi\nNo."}


def test_reasoning_items_are_dropped() -> None:
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}],
                 "encrypted_content": "gw1:xyz"}
    messages = ollama(input=[user(text("q")), reasoning, {"role": "assistant", "content": "A"}])["messages"]
    assert messages == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "A"}]


def test_item_reference_rejected() -> None:
    assert rejected(input=[{"type": "item_reference", "id": "msg_1"}]).param == "input[0]"


# --- tool round trip -----------------------------------------------------------------------------


def test_function_call_round_trip() -> None:
    messages = ollama(input=[user(text("weather?")), call("call_1"), result("call_1", '{"temp_c":18}')],
                      tools=[WEATHER])["messages"]
    assert messages[1:] == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp_c":18}', "tool_name": "get_weather", "tool_call_id": "call_1"},
    ]


def test_calls_merge_with_preceding_assistant_text_and_outputs_find_their_names() -> None:
    messages = ollama(input=[
        user(text("both?")),
        {"role": "assistant", "content": "Checking."},
        call("call_a"),
        call("call_b", "get_time", '{"tz":"UTC"}'),
        result("call_b", "12:00"),
        result("call_a"),
    ])["messages"]
    assert messages[1] == {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_a", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "call_b", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}},
    ]}
    assert [(m["tool_name"], m["content"]) for m in messages[2:]] == [("get_time", "12:00"), ("get_weather", "18C")]


def test_calls_after_a_tool_result_start_a_new_assistant_message() -> None:
    messages = ollama(input=[user(text("q")), call("c1"), result("c1"), call("c2")])["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[3]["content"] == ""


def test_empty_arguments_are_an_empty_object() -> None:
    messages = ollama(input=[user(text("q")), call("c1", arguments="")])["messages"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {}


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"text"', "null", '{"x": NaN}'])
def test_arguments_that_are_not_a_json_object_are_rejected(arguments: str) -> None:
    err = rejected(input=[user(text("q")), call("c1", arguments=arguments)])
    assert err.param == "input[1].arguments"


def test_output_for_an_unknown_call_has_no_tool_name() -> None:
    messages = ollama(input=[user(text("q")), result("call_elsewhere", "x")])["messages"]
    assert messages[1] == {"role": "tool", "content": "x", "tool_call_id": "call_elsewhere"}


def test_list_output_joins_text_and_carries_images() -> None:
    output = [text("line 1"), text("line 2"), image(f"data:image/png;base64,{PNG_B64}")]
    messages = ollama(input=[user(text("q")), call("c1"), result("c1", output)])["messages"]
    assert messages[2]["content"] == "line 1\nline 2" and messages[2]["images"] == [PNG_B64]


# --- tools and tool_choice -----------------------------------------------------------------------


def test_function_tools_in_chat_shape() -> None:
    tools = ollama(tools=[WEATHER, CLOCK])["tools"]
    assert tools == [
        {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                          "parameters": WEATHER["parameters"]}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]


def test_builtin_tool_rejected() -> None:
    err = rejected(tools=[WEATHER, {"type": "web_search"}])
    assert err.param == "tools[1].type" and "web_search" in err.message


def test_tool_choice_none_omits_tools() -> None:
    assert "tools" not in ollama(tools=[WEATHER], tool_choice="none")


def test_tool_choice_auto_sends_tools_and_no_choice() -> None:
    body = ollama(tools=[WEATHER], tool_choice="auto")
    assert len(body["tools"]) == 1 and "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "param"),
    [
        ("required", "tool_choice"),
        ({"type": "function", "name": "get_weather"}, "tool_choice"),
        ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]},
         "tool_choice.mode"),
        ({"type": "web_search"}, "tool_choice"),
    ],
)
def test_forcing_a_tool_call_is_rejected(choice: Any, param: str) -> None:
    err = rejected(tools=[WEATHER], tool_choice=choice)
    assert err.param == param and "cannot force" in err.message


def test_allowed_tools_auto_filters_the_list() -> None:
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_time"}]}
    assert [t["function"]["name"] for t in ollama(tools=[WEATHER, CLOCK], tool_choice=choice)["tools"]] == ["get_time"]


def test_no_tools_no_tool_fields() -> None:
    assert "tools" not in ollama()


# --- options, format, think ----------------------------------------------------------------------


def test_options() -> None:
    body = ollama(temperature=0.2, top_p=0.9, max_output_tokens=64, stop=["END", "STOP"])
    assert body["options"] == {"temperature": 0.2, "top_p": 0.9, "num_predict": 64, "stop": ["END", "STOP"]}


def test_single_stop_is_a_list() -> None:
    assert ollama(stop="END")["options"] == {"stop": ["END"]}


def test_no_options_when_unset() -> None:
    assert "options" not in ollama()


def test_json_object_format() -> None:
    assert ollama(text={"format": {"type": "json_object"}})["format"] == "json"


def test_json_schema_format_is_the_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    body = ollama(text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}})
    assert body["format"] == schema


def test_text_format_sends_nothing() -> None:
    assert "format" not in ollama(text={"format": {"type": "text"}, "verbosity": "low"})


@pytest.mark.parametrize(
    ("effort", "think"),
    [("none", False), ("minimal", "low"), ("low", "low"), ("medium", "medium"), ("high", "high"),
     ("xhigh", "high"), ("max", "high")],
)
def test_think_from_reasoning_effort(effort: str, think: bool | str) -> None:
    assert ollama(reasoning={"effort": effort})["think"] == think
    assert THINK_LEVELS[effort] == think


def test_no_think_without_effort() -> None:
    assert "think" not in ollama()
    assert "think" not in ollama(reasoning={"summary": "auto"})

"""Anthropic request builder: Responses request -> one Messages request, field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamgw.config import ProviderConfig, Secret
from streamgw.core.blobs import encode_blob
from streamgw.core.request import parse_request
from streamgw.errors import InvalidRequest
from streamgw.providers.anthropic import ANTHROPIC_VERSION, build_request, default_max_tokens
from streamgw.providers.base import UpstreamRequest

KEY = "sk-ant-api03-test-0123456789abcdef"
NAME = "claude"


def provider(
    key: str = KEY, headers: tuple[tuple[str, str], ...] = (), base_url: str = "https://api.test"
) -> ProviderConfig:
    return ProviderConfig(name=NAME, type="anthropic", base_url=base_url, api_key=Secret(key), headers=headers)


def upstream(prov: ProviderConfig | None = None, model: str = "claude-sonnet-4-5", **fields: Any) -> UpstreamRequest:
    body = {"model": f"claude/{model}", "input": "hi", **fields}
    return build_request(parse_request(json.dumps(body).encode()), prov or provider(), model)


def anthropic(prov: ProviderConfig | None = None, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(upstream(prov, **fields).body)
    return result


def messages(**fields: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = anthropic(**fields)["messages"]
    return result


def rejected(**fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        upstream(**fields)
    assert info.value.status == 400
    return info.value


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "input_text", "text": value}


def said(value: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "output_text", "text": value, "annotations": []}]}


def call(call_id: str, name: str = "get_weather", arguments: str = '{"city":"Paris"}') -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def result(call_id: str, output: Any = "18C") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def reasoning(blob: str | None, summary: str = "thought") -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": summary}]}
    if blob is not None:
        item["encrypted_content"] = blob
    return item


def thinking_blob(thinking: str = "Let me think.", signature: str = "sig-1", provider_name: str = NAME) -> str:
    return encode_blob(provider_name, {"thinking": thinking, "signature": signature})


def tb(value: str) -> dict[str, Any]:
    """An Anthropic text block."""
    return {"type": "text", "text": value}


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
    assert up.url == "https://api.test/v1/messages"
    assert json.loads(up.body) == {
        "model": "claude-sonnet-4-5",
        "messages": [{"role": "user", "content": [tb("hi")]}],
        "max_tokens": 16384,
        "stream": True,
    }


def test_stream_is_always_requested() -> None:
    assert anthropic(stream=False)["stream"] is True


def test_headers_use_x_api_key_never_authorization() -> None:
    assert upstream().headers == {
        "x-api-key": KEY,
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
        "accept": "text/event-stream",
        "accept-encoding": "identity",
    }
    assert ANTHROPIC_VERSION == "2023-06-01"


def test_no_key_header_when_key_is_empty() -> None:
    headers = upstream(provider(key="")).headers
    assert "x-api-key" not in headers and "authorization" not in headers


def test_provider_headers_are_added_and_may_override() -> None:
    prov = provider(headers=(("Anthropic-Beta", "output-128k-2025-02-19"), ("anthropic-version", "2024-01-01")))
    headers = upstream(prov).headers
    assert headers["anthropic-beta"] == "output-128k-2025-02-19"
    assert headers["anthropic-version"] == "2024-01-01"
    assert headers["x-api-key"] == KEY


def test_base_url_is_the_api_root() -> None:
    assert upstream(provider(base_url="http://127.0.0.1:9/")).url == "http://127.0.0.1:9/v1/messages"
    assert upstream(provider(base_url="https://gw.test/anthropic")).url == "https://gw.test/anthropic/v1/messages"


def test_body_is_compact_utf8() -> None:
    body = upstream(input="héllo → 世界").body
    assert "héllo → 世界".encode() in body
    assert b", " not in body and b": " not in body


def test_fields_anthropic_does_not_take_are_not_forwarded() -> None:
    body = anthropic(provider="claude", metadata={"a": "b"}, store=False, truncation="auto", top_logprobs=3,
                     service_tier="flex", prompt_cache_key="k", seed=1, text={"verbosity": "low"})
    assert set(body) == {"model", "messages", "max_tokens", "stream"}


# --- system --------------------------------------------------------------------------------------


def test_instructions_and_system_messages_join_into_system() -> None:
    items = [
        {"role": "system", "content": [text("rule 1"), text("rule 2")]},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": "rule 3"},
    ]
    body = anthropic(instructions="Be terse.", input=items)
    assert body["system"] == "Be terse.\n\nrule 1\nrule 2\n\nrule 3"
    assert body["messages"] == [{"role": "user", "content": [tb("hi")]}]


def test_empty_instructions_are_omitted() -> None:
    assert "system" not in anthropic(instructions="")


def test_image_in_system_message_rejected() -> None:
    items = [{"role": "developer", "content": [text("x"), {"type": "input_image", "image_url": "https://i.test/a.png"}]},
             {"role": "user", "content": "hi"}]
    err = rejected(input=items)
    assert err.param == "input[0].content[1].type" and "claude" in err.message


# --- user content --------------------------------------------------------------------------------


def test_images_by_url_and_inline() -> None:
    items = [user(text("compare"),
                  {"type": "input_image", "image_url": "https://img.test/a.png", "detail": "low"},
                  {"type": "input_image", "image_url": "data:image/webp;base64,UklGRg=="})]
    assert messages(input=items)[0]["content"] == [
        tb("compare"),
        {"type": "image", "source": {"type": "url", "url": "https://img.test/a.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/webp", "data": "UklGRg=="}},
    ]


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/bmp;base64,Qk0=", "invalid_image_format"),
        ("data:image/png,rawbytes", "invalid_value"),
        ("ftp://img.test/a.png", "invalid_value"),
    ],
)
def test_bad_images_rejected(url: str, code: str) -> None:
    err = rejected(input=[user(text("x"), {"type": "input_image", "image_url": url})])
    assert err.param == "input[0].content[1].image_url" and err.code == code


def test_pdf_documents() -> None:
    items = [user({"type": "input_file", "file_data": "data:application/pdf;base64,JVBERi0xLjQK", "filename": "r.pdf"},
                  {"type": "input_file", "file_data": "JVBERi0xLjcK"},
                  {"type": "input_file", "file_url": "https://docs.test/spec.pdf"},
                  text("summarise"))]
    assert messages(input=items)[0]["content"] == [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"},
         "title": "r.pdf"},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjcK"}},
        {"type": "document", "source": {"type": "url", "url": "https://docs.test/spec.pdf"}},
        tb("summarise"),
    ]


def test_non_pdf_file_rejected() -> None:
    err = rejected(input=[user({"type": "input_file", "file_data": "data:text/csv;base64,YSxi"})])
    assert err.param == "input[0].content[0].file_data"


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "file_id": "file-123"},
        {"type": "input_file", "file_id": "file-123"},
    ],
)
def test_file_ids_rejected_naming_the_part(part: dict[str, Any]) -> None:
    err = rejected(input=[user(text("look"), part)])
    assert err.param == "input[0].content[1]" and "file_id" in err.message


def test_empty_text_blocks_are_dropped_and_same_role_turns_merge() -> None:
    items = [user(text(""), text("one")), {"role": "user", "content": "two"}]
    assert messages(input=items) == [{"role": "user", "content": [tb("one"), tb("two")]}]


# --- assistant history, tool calls ---------------------------------------------------------------


def test_assistant_history_becomes_text_blocks() -> None:
    items = [{"role": "user", "content": "hi"}, said("Hello."),
             {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
             {"role": "user", "content": "why"}]
    assert messages(input=items) == [
        {"role": "user", "content": [tb("hi")]},
        {"role": "assistant", "content": [tb("Hello."), tb("No.")]},
        {"role": "user", "content": [tb("why")]},
    ]


def test_conversation_may_start_with_the_assistant() -> None:
    items = [said("How can I help?"), {"role": "user", "content": "weather"}]
    assert [m["role"] for m in messages(input=items)] == ["assistant", "user"]


def test_tool_round_trip() -> None:
    items = [
        {"role": "user", "content": "weather in Paris and Oslo?"},
        said("Checking."),
        call("toolu_1"),
        call("toolu_2", arguments='{"city":"Oslo"}'),
        result("toolu_1"),
        result("toolu_2", [text("-2C"), {"type": "input_image", "image_url": "https://img.test/oslo.png"}]),
        {"role": "user", "content": "and tomorrow?"},
    ]
    assert messages(input=items, tools=[WEATHER]) == [
        {"role": "user", "content": [tb("weather in Paris and Oslo?")]},
        {"role": "assistant", "content": [
            tb("Checking."),
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                tb("-2C"), {"type": "image", "source": {"type": "url", "url": "https://img.test/oslo.png"}}]},
            tb("and tomorrow?"),
        ]},
    ]


def test_tool_results_go_before_user_text_given_first() -> None:
    items = [{"role": "user", "content": "go"}, call("toolu_1"), call("toolu_2"),
             {"role": "user", "content": "note"}, result("toolu_1"), result("toolu_2")]
    assert [b["type"] for b in messages(input=items)[2]["content"]] == ["tool_result", "tool_result", "text"]
    assert [b.get("tool_use_id") for b in messages(input=items)[2]["content"]] == ["toolu_1", "toolu_2", None]


@pytest.mark.parametrize("arguments", ["", "  "])
def test_empty_arguments_are_an_empty_object(arguments: str) -> None:
    items = [{"role": "user", "content": "go"}, call("toolu_1", arguments=arguments), result("toolu_1")]
    assert messages(input=items)[1]["content"][0]["input"] == {}


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]", '"Paris"'])
def test_bad_arguments_rejected_naming_the_item(arguments: str) -> None:
    items = [{"role": "user", "content": "go"}, call("toolu_7", arguments=arguments)]
    err = rejected(input=items)
    assert err.param == "input[1].arguments" and "toolu_7" in err.message


def test_item_reference_rejected() -> None:
    err = rejected(input=[{"type": "item_reference", "id": "msg_1"}])
    assert err.param == "input[0]"


# --- reasoning replay ----------------------------------------------------------------------------


def test_thinking_is_replayed_first_in_the_next_assistant_message() -> None:
    items = [{"role": "user", "content": "27 * 453?"}, reasoning(thinking_blob()), said("12231"),
             {"role": "user", "content": "thanks"}]
    assert messages(input=items)[1] == {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig-1"}, tb("12231")]}


def test_thinking_before_tool_use_and_interleaved() -> None:
    items = [{"role": "user", "content": "go"}, reasoning(thinking_blob("a", "s1")), call("toolu_1"),
             reasoning(thinking_blob("b", "s2")), call("toolu_2"), result("toolu_1"), result("toolu_2")]
    assert [(b["type"], b.get("thinking") or b.get("id")) for b in messages(input=items)[1]["content"]] == [
        ("thinking", "a"), ("tool_use", "toolu_1"), ("thinking", "b"), ("tool_use", "toolu_2")]


def test_redacted_thinking_is_replayed() -> None:
    items = [{"role": "user", "content": "x"}, reasoning(encode_blob(NAME, {"redacted": "EmwKAhgB"}), ""),
             said("ok")]
    assert messages(input=items)[1]["content"][0] == {"type": "redacted_thinking", "data": "EmwKAhgB"}


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(thinking_blob(provider_name="other-claude"), id="another-providers-blob"),
        pytest.param("gAAAAABopaque-openai-encrypted-content", id="openai-blob"),
        pytest.param(None, id="no-encrypted-content"),
        pytest.param(thinking_blob(signature=""), id="unsigned"),
    ],
)
def test_unusable_reasoning_is_dropped(blob: str | None) -> None:
    items = [{"role": "user", "content": "x"}, reasoning(blob), said("ok")]
    assert messages(input=items)[1] == {"role": "assistant", "content": [tb("ok")]}


def test_reasoning_without_assistant_content_after_it_is_dropped() -> None:
    items = [{"role": "user", "content": "x"}, reasoning(thinking_blob()), {"role": "user", "content": "y"}]
    assert messages(input=items) == [{"role": "user", "content": [tb("x"), tb("y")]}]
    assert messages(input=[{"role": "user", "content": "x"}, reasoning(thinking_blob())]) == [
        {"role": "user", "content": [tb("x")]}]


# --- tools and tool_choice -----------------------------------------------------------------------


def test_tools() -> None:
    tools = anthropic(tools=[WEATHER, CLOCK, {"type": "function", "name": "f", "parameters": {"properties": {}}}])
    assert tools["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        {"name": "f", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in tools


def test_builtin_tool_rejected_naming_it() -> None:
    err = rejected(tools=[WEATHER, {"type": "web_search"}])
    assert err.param == "tools[1].type" and "web_search" in err.message


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", True, None),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("none", True, {"type": "none"}),
        ("none", False, {"type": "none"}),
        ("required", True, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ({"type": "function", "name": "get_time"}, True, {"type": "tool", "name": "get_time"}),
        ({"type": "function", "name": "get_time"}, False,
         {"type": "tool", "name": "get_time", "disable_parallel_tool_use": True}),
    ],
)
def test_tool_choice(choice: Any, parallel: bool, expected: dict[str, Any] | None) -> None:
    body = anthropic(tools=[WEATHER, CLOCK], tool_choice=choice, parallel_tool_calls=parallel)
    assert body.get("tool_choice") == expected


def test_allowed_tools_filter_the_list() -> None:
    choice = {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]}
    body = anthropic(tools=[WEATHER, CLOCK], tool_choice=choice)
    assert [t["name"] for t in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == {"type": "any"}


def test_no_tools_no_tool_choice() -> None:
    body = anthropic(tool_choice="required", parallel_tool_calls=False)
    assert "tools" not in body and "tool_choice" not in body


def test_unsupported_tool_choice_rejected() -> None:
    err = rejected(tools=[WEATHER], tool_choice={"type": "file_search"})
    assert err.param == "tool_choice.type"


# --- max_tokens and thinking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "tokens"),
    [
        ("claude-3-haiku-20240307", 4096),
        ("claude-3-opus-20240229", 4096),
        ("claude-3-5-sonnet-latest", 8192),
        ("claude-3-5-haiku-20241022", 8192),
        ("claude-3-7-sonnet-20250219", 16384),
        ("claude-sonnet-4-5", 16384),
        ("claude-opus-4-1", 16384),
        ("claude-haiku-4-5", 16384),
        ("some-proxy-model", 8192),
    ],
)
def test_default_max_tokens(model: str, tokens: int) -> None:
    assert default_max_tokens(model) == tokens
    assert anthropic(model=model)["max_tokens"] == tokens


def test_max_output_tokens_is_max_tokens() -> None:
    assert anthropic(max_output_tokens=77)["max_tokens"] == 77


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("minimal", 1024), ("low", 2048), ("medium", 8192), ("high", 24576), ("xhigh", 32000), ("max", 32000)],
)
def test_effort_becomes_a_thinking_budget(effort: str, budget: int) -> None:
    body = anthropic(reasoning={"effort": effort})
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] > budget
    assert body["max_tokens"] <= 64000  # claude-sonnet-4-5's output limit


def test_budget_and_max_tokens_respect_a_smaller_model_limit() -> None:
    body = anthropic(model="claude-opus-4-1-20250805", reasoning={"effort": "max"})
    assert body["thinking"]["budget_tokens"] == 16000
    assert body["max_tokens"] == 16384


def test_max_output_tokens_counts_thinking_when_it_fits() -> None:
    body = anthropic(reasoning={"effort": "low"}, max_output_tokens=5000)
    assert (body["max_tokens"], body["thinking"]["budget_tokens"]) == (5000, 2048)


def test_max_tokens_is_raised_above_the_budget_when_needed() -> None:
    body = anthropic(reasoning={"effort": "low"}, max_output_tokens=300)
    assert (body["max_tokens"], body["thinking"]["budget_tokens"]) == (2048 + 300, 2048)


def test_effort_none_means_no_thinking() -> None:
    assert "thinking" not in anthropic(reasoning={"effort": "none"})
    assert "thinking" not in anthropic(reasoning={"summary": "auto"})


def test_summary_asks_for_summarized_display() -> None:
    body = anthropic(reasoning={"effort": "medium", "summary": "detailed"})
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192, "display": "summarized"}


def test_thinking_drops_temperature_and_raises_top_p() -> None:
    body = anthropic(reasoning={"effort": "low"}, temperature=0.2)
    assert "temperature" not in body and "thinking" in body
    assert anthropic(reasoning={"effort": "low"}, top_p=0.5)["top_p"] == 0.95
    assert anthropic(reasoning={"effort": "low"}, top_p=0.99)["top_p"] == 0.99


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
def test_a_forced_tool_wins_over_thinking(choice: Any) -> None:
    body = anthropic(reasoning={"effort": "high"}, tools=[WEATHER], tool_choice=choice, temperature=0.3)
    assert "thinking" not in body
    assert body["tool_choice"]["type"] in ("any", "tool")
    assert body["temperature"] == 0.3 and body["max_tokens"] == 16384


def test_thinking_keeps_auto_and_none_tool_choice() -> None:
    body = anthropic(reasoning={"effort": "low"}, tools=[WEATHER], tool_choice="none")
    assert body["tool_choice"] == {"type": "none"} and body["thinking"]["budget_tokens"] == 2048


# --- sampling, stop, metadata, format ------------------------------------------------------------


def test_temperature_is_clamped_to_one() -> None:
    assert anthropic(temperature=1.7)["temperature"] == 1.0
    assert anthropic(temperature=0.4)["temperature"] == 0.4


def test_top_p_alone_and_with_temperature() -> None:
    assert anthropic(top_p=0.8)["top_p"] == 0.8
    body = anthropic(top_p=0.8, temperature=0.5)
    assert body["temperature"] == 0.5 and "top_p" not in body


def test_stop_becomes_stop_sequences() -> None:
    assert anthropic(stop="END")["stop_sequences"] == ["END"]
    assert anthropic(stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_end_user_becomes_metadata_user_id() -> None:
    assert anthropic(user="u-1")["metadata"] == {"user_id": "u-1"}
    assert anthropic(user="u-1", safety_identifier="hash-9")["metadata"] == {"user_id": "hash-9"}


def test_json_schema_becomes_output_config() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    body = anthropic(text={"format": {"type": "json_schema", "name": "num", "schema": schema, "strict": True}})
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "system" not in body


def test_json_object_becomes_a_system_instruction() -> None:
    body = anthropic(instructions="Be brief.", text={"format": {"type": "json_object"}})
    first, instruction = body["system"].split("\n\n")
    assert first == "Be brief." and "JSON object" in instruction
    assert "output_config" not in body
    assert "system" not in anthropic(text={"format": {"type": "text"}})

"""Chat Completions request builder: Responses request -> one upstream Chat request, field by field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamgw.config import ChatFlags, ProviderConfig, Secret
from streamgw.core.request import parse_request
from streamgw.errors import InvalidRequest
from streamgw.providers.base import UpstreamRequest
from streamgw.providers.chat_completions import build_request

KEY = "sk-test-0123456789abcdef"


def provider(key: str = KEY, headers: tuple[tuple[str, str], ...] = (), **flags: Any) -> ProviderConfig:
    return ProviderConfig(
        name="groq",
        type="chat",
        base_url="https://upstream.test/openai/v1",
        api_key=Secret(key),
        chat=ChatFlags(**flags),
        headers=headers,
    )


def upstream(prov: ProviderConfig | None = None, **fields: Any) -> UpstreamRequest:
    body = {"model": "groq/llama-3.3", "input": "hi", **fields}
    return build_request(parse_request(json.dumps(body).encode()), prov or provider(), "llama-3.3")


def chat(prov: ProviderConfig | None = None, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(upstream(prov, **fields).body)
    return result


def rejected(prov: ProviderConfig | None = None, **fields: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        upstream(prov, **fields)
    assert info.value.status == 400
    return info.value


def user(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "input_text", "text": value}


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


# --- envelope ------------------------------------------------------------------------------------


def test_minimal_request() -> None:
    up = upstream()
    assert up.method == "POST"
    assert up.url == "https://upstream.test/openai/v1/chat/completions"
    assert json.loads(up.body) == {
        "model": "llama-3.3",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_stream_is_always_requested_and_usage_follows_flag() -> None:
    body = chat(provider(stream_usage=False), stream=False)
    assert body["stream"] is True
    assert "stream_options" not in body


def test_body_is_compact_utf8() -> None:
    body = upstream(input="héllo → 世界").body
    assert "héllo → 世界".encode() in body
    assert b'"stream":true' in body
    assert b", " not in body and b": " not in body


def test_headers_with_key() -> None:
    headers = upstream().headers
    assert headers == {
        "authorization": f"Bearer {KEY}",
        "content-type": "application/json",
        "accept": "text/event-stream",
        "accept-encoding": "identity",
    }


def test_no_authorization_when_key_is_empty() -> None:
    headers = upstream(provider(key="")).headers
    assert not any(name.lower() == "authorization" for name in headers)
    assert headers["content-type"] == "application/json"


def test_provider_headers_are_added() -> None:
    prov = provider(headers=(("HTTP-Referer", "https://me.test"), ("X-Title", "gw")))
    headers = upstream(prov).headers
    assert headers["http-referer"] == "https://me.test"
    assert headers["x-title"] == "gw"
    assert headers["authorization"] == f"Bearer {KEY}"


def test_base_url_trailing_slash() -> None:
    prov = ProviderConfig(name="local", type="chat", base_url="http://127.0.0.1:9/v1/")
    assert upstream(prov).url == "http://127.0.0.1:9/v1/chat/completions"


def test_unknown_fields_metadata_and_provider_hint_not_forwarded() -> None:
    body = chat(provider="groq", metadata={"a": "b"}, seed=1, top_k=5, store=False, truncation="auto")
    assert set(body) == {"model", "messages", "stream", "stream_options"}


# --- instructions and roles ----------------------------------------------------------------------


def test_instructions_become_first_system_message() -> None:
    messages = chat(instructions="Be terse.", input=[{"role": "user", "content": "hi"}])["messages"]
    assert messages == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]


def test_instructions_use_developer_role_when_flagged() -> None:
    messages = chat(provider(system_role="developer"), instructions="Be terse.")["messages"]
    assert messages[0] == {"role": "developer", "content": "Be terse."}


def test_empty_instructions_are_omitted() -> None:
    assert chat(instructions="")["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("system_role", ["system", "developer"])
@pytest.mark.parametrize("role", ["system", "developer"])
def test_system_and_developer_messages_use_configured_role(role: str, system_role: str) -> None:
    items = [{"role": role, "content": [text("rule 1"), text("rule 2")]}, {"role": "user", "content": "hi"}]
    messages = chat(provider(system_role=system_role), input=items)["messages"]
    assert messages[0] == {"role": system_role, "content": "rule 1\nrule 2"}


def test_image_in_system_message_rejected() -> None:
    items = [{"role": "system", "content": [text("x"), {"type": "input_image", "image_url": "https://i"}]}]
    assert rejected(input=items).param == "input[0].content[1].type"


# --- user content --------------------------------------------------------------------------------


def test_text_only_parts_join_into_a_string() -> None:
    messages = chat(input=[user(text("first"), text("second"))])["messages"]
    assert messages == [{"role": "user", "content": "first\nsecond"}]


def test_image_url_parts() -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    items = [
        user(
            text("compare"),
            {"type": "input_image", "image_url": "https://img.test/a.png", "detail": "low"},
            {"type": "input_image", "image_url": data_url},
            {"type": "input_image", "image_url": "https://img.test/b.png", "detail": "original"},
        )
    ]
    assert chat(input=items)["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": "https://img.test/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": data_url}},
        {"type": "image_url", "image_url": {"url": "https://img.test/b.png", "detail": "high"}},
    ]


def test_pdf_file_data() -> None:
    pdf = "data:application/pdf;base64,JVBERi0xLjQK"
    items = [user({"type": "input_file", "file_data": pdf, "filename": "report.pdf"}, text("summarise"))]
    assert chat(input=items)["messages"][0]["content"] == [
        {"type": "file", "file": {"file_data": pdf, "filename": "report.pdf"}},
        {"type": "text", "text": "summarise"},
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "file_id": "file-abc"},
        {"type": "input_file", "file_id": "file-abc"},
        {"type": "input_file", "file_url": "https://files.test/a.pdf"},
    ],
)
def test_file_ids_and_file_urls_rejected(part: dict[str, Any]) -> None:
    error = rejected(input=[user(text("see"), part)])
    assert error.param == "input[0].content[1]"
    assert "groq" in error.message


# --- assistant history and tools round trip ------------------------------------------------------


def test_assistant_history_is_a_content_string() -> None:
    items = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "part one", "annotations": []}],
        },
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        {"role": "user", "content": "and?"},
    ]
    assert chat(input=items)["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "assistant", "content": "part one"},
        {"role": "assistant", "content": "I can't."},
        {"role": "user", "content": "and?"},
    ]


def test_function_call_round_trip() -> None:
    items = [{"role": "user", "content": "weather?"}, call("call_1"), result("call_1")]
    assert chat(input=items, tools=[WEATHER])["messages"] == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]


def test_consecutive_calls_merge_with_preceding_assistant_text() -> None:
    items = [
        {"role": "user", "content": "two cities"},
        {"role": "assistant", "content": "Checking both."},
        call("call_a", arguments='{"city":"Paris"}'),
        call("call_b", arguments='{"city":"Oslo"}'),
        result("call_a", "18C"),
        result("call_b", "4C"),
    ]
    messages = chat(input=items)["messages"]
    assert len(messages) == 4
    assert messages[1]["role"] == "assistant"
    assert messages[1]["content"] == "Checking both."
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_a", "call_b"]
    assert [m["tool_call_id"] for m in messages[2:]] == ["call_a", "call_b"]


def test_calls_after_a_tool_result_start_a_new_assistant_message() -> None:
    items = [{"role": "user", "content": "go"}, call("c1"), result("c1"), call("c2"), result("c2")]
    roles = [m["role"] for m in chat(input=items)["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant", "tool"]


def test_list_output_joins_text_parts() -> None:
    items = [{"role": "user", "content": "go"}, call("c1"), result("c1", [text("line 1"), text("line 2")])]
    assert chat(input=items)["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": "line 1\nline 2",
    }


def test_image_in_function_output_rejected() -> None:
    output = [text("see"), {"type": "input_image", "image_url": "https://i"}]
    items = [{"role": "user", "content": "go"}, call("c1"), result("c1", output)]
    assert rejected(input=items).param == "input[2].output[1].type"


def test_reasoning_items_are_dropped_without_tool_calls() -> None:
    items = [
        {"role": "user", "content": "q"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {"role": "assistant", "content": "a"},
    ]
    assert chat(input=items)["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_reasoning_replayed_on_assistant_message_with_tool_calls() -> None:
    reasoning = {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "summary"}],
        "content": [{"type": "reasoning_text", "text": "raw thoughts"}],
    }
    items = [{"role": "user", "content": "q"}, reasoning, call("c1"), result("c1")]
    deepseek = provider(replay_reasoning="reasoning_content")
    messages = chat(deepseek, input=items)["messages"]
    assert messages[1]["reasoning_content"] == "raw thoughts"
    assert messages[1]["tool_calls"][0]["id"] == "c1"
    vllm = chat(provider(replay_reasoning="reasoning"), input=items)["messages"]
    assert vllm[1]["reasoning"] == "raw thoughts" and "reasoning_content" not in vllm[1]
    plain = chat(input=items)["messages"]
    assert "reasoning_content" not in plain[1] and "reasoning" not in plain[1]


def test_deepseek_rule_sends_empty_reasoning_when_it_was_lost() -> None:
    items = [{"role": "user", "content": "q"}, call("c1"), result("c1"), {"role": "assistant", "content": "done"}]
    messages = chat(provider(replay_reasoning="reasoning_content"), input=items)["messages"]
    assert messages[1]["reasoning_content"] == ""
    assert "reasoning_content" not in messages[3]


def test_reasoning_summary_is_the_fallback() -> None:
    reasoning = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}]}
    items = [{"role": "user", "content": "q"}, reasoning, {"role": "assistant", "content": "ok"}, call("c1")]
    messages = chat(provider(replay_reasoning="reasoning_content"), input=items)["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": "ok",
        "tool_calls": [call_json("c1")],
        "reasoning_content": "plan",
    }


def call_json(call_id: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }


def test_item_reference_rejected() -> None:
    error = rejected(input=[{"role": "user", "content": "q"}, {"type": "item_reference", "id": "msg_1"}])
    assert error.param == "input[1]"
    assert "msg_1" in error.message


# --- tools and tool_choice -----------------------------------------------------------------------


def test_function_tools() -> None:
    tools = [WEATHER, {"type": "function", "name": "now"}]
    assert chat(tools=tools)["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]


def test_builtin_tool_rejected() -> None:
    error = rejected(tools=[WEATHER, {"type": "web_search"}])
    assert error.param == "tools[1].type"
    assert "web_search" in error.message
    assert "groq" in error.message


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", "none"),
        ("required", "required"),
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_tool_choice_forms(choice: Any, expected: Any) -> None:
    assert chat(tools=[WEATHER], tool_choice=choice)["tool_choice"] == expected


def test_tool_choice_auto_is_the_default_and_omitted() -> None:
    body = chat(tools=[WEATHER], tool_choice="auto")
    assert "tool_choice" not in body
    assert len(body["tools"]) == 1


def test_allowed_tools_filters_the_tool_list() -> None:
    tools = [WEATHER, {"type": "function", "name": "now"}, {"type": "function", "name": "sum"}]
    choice = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "now"}, {"type": "function", "name": "sum"}],
    }
    body = chat(tools=tools, tool_choice=choice)
    assert [t["function"]["name"] for t in body["tools"]] == ["now", "sum"]
    assert body["tool_choice"] == "required"


def test_allowed_tools_auto_mode() -> None:
    choice = {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_weather"}]}
    body = chat(tools=[WEATHER, {"type": "function", "name": "now"}], tool_choice=choice)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert "tool_choice" not in body


def test_builtin_tool_choice_rejected() -> None:
    assert rejected(tools=[WEATHER], tool_choice={"type": "file_search"}).param == "tool_choice.type"


def test_no_tools_no_tool_fields() -> None:
    body = chat(tool_choice="none", parallel_tool_calls=False)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)


def test_parallel_tool_calls_only_when_false() -> None:
    assert chat(tools=[WEATHER], parallel_tool_calls=False)["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in chat(tools=[WEATHER], parallel_tool_calls=True)


# --- response_format -----------------------------------------------------------------------------


def test_text_format_text_sends_nothing() -> None:
    assert "response_format" not in chat(text={"format": {"type": "text"}, "verbosity": "low"})


def test_json_object_format() -> None:
    assert chat(text={"format": {"type": "json_object"}})["response_format"] == {"type": "json_object"}


def test_json_schema_format_is_nested() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    fmt = {"type": "json_schema", "name": "point", "schema": schema, "strict": True, "description": "A point"}
    assert chat(text={"format": fmt})["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "point", "description": "A point", "schema": schema, "strict": True},
    }


def test_json_schema_format_without_optionals() -> None:
    fmt = {"type": "json_schema", "name": "p", "schema": {"type": "object"}}
    assert chat(text={"format": fmt})["response_format"]["json_schema"] == {
        "name": "p",
        "schema": {"type": "object"},
    }


# --- sampling and the rest -----------------------------------------------------------------------


def test_max_output_tokens_uses_legacy_param_by_default() -> None:
    body = chat(max_output_tokens=300)
    assert body["max_tokens"] == 300
    assert "max_completion_tokens" not in body


def test_max_output_tokens_uses_configured_param() -> None:
    body = chat(provider(max_tokens_param="max_completion_tokens"), max_output_tokens=300)
    assert body["max_completion_tokens"] == 300
    assert "max_tokens" not in body


def test_sampling_fields() -> None:
    body = chat(temperature=0, top_p=0.25, user="u-1", safety_identifier="sid-1")
    assert body["temperature"] == 0
    assert body["top_p"] == 0.25
    assert body["user"] == "u-1"
    assert body["safety_identifier"] == "sid-1"


def test_sampling_fields_absent_when_unset() -> None:
    assert not {"temperature", "top_p", "max_tokens", "stop", "user", "reasoning_effort"} & set(chat())


def test_stop_single_and_many() -> None:
    assert chat(stop="END")["stop"] == "END"
    assert chat(stop=["END"])["stop"] == "END"
    assert chat(stop=["a", "b"])["stop"] == ["a", "b"]


@pytest.mark.parametrize("effort", ["none", "low", "high"])
def test_reasoning_effort(effort: str) -> None:
    assert chat(reasoning={"effort": effort, "summary": "auto"})["reasoning_effort"] == effort


def test_reasoning_effort_dropped_when_unsupported() -> None:
    assert "reasoning_effort" not in chat(provider(reasoning_style="none"), reasoning={"effort": "high"})


@pytest.mark.parametrize(
    ("style", "effort", "expected"),
    [
        ("openrouter", "high", {"reasoning": {"effort": "high"}}),
        ("thinking", "high", {"thinking": {"type": "enabled"}}),
        ("thinking", "none", {"thinking": {"type": "disabled"}}),
        ("enable_thinking", "low", {"enable_thinking": True}),
        ("enable_thinking", "none", {"enable_thinking": False}),
    ],
)
def test_reasoning_styles(style: str, effort: str, expected: dict[str, Any]) -> None:
    body = chat(provider(reasoning_style=style), reasoning={"effort": effort})
    assert "reasoning_effort" not in body
    assert {k: body[k] for k in expected} == expected

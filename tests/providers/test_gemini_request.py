"""Gemini request builder: Responses request -> one streamGenerateContent request, field by field."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest

from streamgw.config import ProviderConfig, Secret
from streamgw.core.blobs import encode_blob
from streamgw.core.emitter import ResponseEmitter
from streamgw.core.request import echo_fields, parse_request
from streamgw.errors import InvalidRequest
from streamgw.providers.base import Assets, UpstreamRequest
from streamgw.providers.gemini import DIALECT, GeminiStreamTranslator, build_request

KEY = "AIzaSyTest0123456789abcdefghijklmnop"
MINTED = "call_" + "A1b2C3d4" * 3
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
PDF = base64.b64encode(b"%PDF-1.4 fake").decode()
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
TIME = {"type": "function", "name": "get_time"}


def provider(key: str = KEY, headers: tuple[tuple[str, str], ...] = (), name: str = "gem") -> ProviderConfig:
    return ProviderConfig(name=name, type="gemini", base_url="https://gemini.test/", api_key=Secret(key),
                          headers=headers)


def upstream(prov: ProviderConfig | None = None, assets: Assets | None = None, model: str = "gemini-2.5-flash",
             **fields: Any) -> UpstreamRequest:
    body = {"model": "gem/gemini-2.5-flash", "input": "hi", **fields}
    request = parse_request(json.dumps(body).encode())
    return build_request(request, prov or provider(), model, assets or {})


def gemini(prov: ProviderConfig | None = None, assets: Assets | None = None, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(upstream(prov, assets, **fields).body)
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


def call(call_id: str, name: str = "get_weather", arguments: str = '{"city":"Paris"}') -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def result(call_id: str, output: Any = "18C") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def reasoning(blob: str | None, summary: str = "thought") -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning", "summary": [{"type": "summary_text", "text": summary}]}
    if blob is not None:
        item["encrypted_content"] = blob
    return item


def contents(**fields: Any) -> list[dict[str, Any]]:
    result_: list[dict[str, Any]] = gemini(**fields)["contents"]
    return result_


# --- envelope ------------------------------------------------------------------------------------


def test_minimal_request() -> None:
    up = upstream()
    assert up.method == "POST"
    assert up.url == "https://gemini.test/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert "key=" not in up.url
    assert up.headers == {"content-type": "application/json", "accept-encoding": "identity", "x-goog-api-key": KEY}
    assert json.loads(up.body) == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    assert b" " not in up.body  # compact


def test_model_in_the_path() -> None:
    assert "/models/gemini-2.5-pro:stream" in upstream(model="models/gemini-2.5-pro").url
    assert "/models/odd%2Fname%3Av1:stream" in upstream(model="odd/name:v1").url


def test_no_key_and_extra_headers() -> None:
    up = upstream(provider(key="", headers=(("X-Goog-User-Project", "p1"), ("Accept-Encoding", "gzip"))))
    assert "x-goog-api-key" not in up.headers and "authorization" not in up.headers
    assert up.headers["x-goog-user-project"] == "p1" and up.headers["accept-encoding"] == "gzip"


def test_the_key_never_appears_in_repr() -> None:
    assert KEY not in repr(upstream())


def test_unicode_is_sent_as_is() -> None:
    assert "Grüße 👋".encode() in upstream(input="Grüße 👋").body


# --- messages --------------------------------------------------------------------------------------


def test_instructions_and_system_messages_become_system_instruction() -> None:
    body = gemini(instructions="Be brief.", input=[
        {"role": "system", "content": "Sys one."}, user(text("q")),
        {"role": "developer", "content": [text("Dev two.")]},
    ])
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "Sys one."}, {"text": "Dev two."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "q"}]}]


def test_non_text_system_content_is_refused() -> None:
    image = {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"}
    err = rejected(input=[{"role": "system", "content": [text("a"), image]}, user(text("q"))])
    assert err.param == "input[0].content[1].type"


def test_roles_and_merging() -> None:
    items = [
        user(text("one"), text("two")),
        {"role": "user", "content": "three"},
        {"role": "assistant",
         "content": [{"type": "output_text", "text": "ans"}, {"type": "refusal", "refusal": "no"}]},
        {"role": "assistant", "content": "more"},
        {"role": "user", "content": [text(""), text("four")]},
    ]
    assert contents(input=items) == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}, {"text": "three"}]},
        {"role": "model", "parts": [{"text": "ans"}, {"text": "no"}, {"text": "more"}]},
        {"role": "user", "parts": [{"text": "four"}]},
    ]


def test_input_without_any_turn_is_refused() -> None:
    err = rejected(input=[{"role": "system", "content": "only system"}, user(text(""))])
    assert err.param == "input"


def test_item_reference_is_refused() -> None:
    assert rejected(input=[{"type": "item_reference", "id": "msg_1"}]).param == "input[0]"


# --- images and files --------------------------------------------------------------------------------


def image(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "input_image", "image_url": url, **extra}


def test_data_url_image() -> None:
    parts = contents(input=[user(text("see"), image(f"data:image/png;base64,{PNG}", detail="high"))])[0]["parts"]
    assert parts == [{"text": "see"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}]


def test_remote_image_comes_from_assets() -> None:
    url = "https://img.test/cat.png"
    body = gemini(assets={url: ("image/jpeg", PNG)}, input=[user(image(url))])
    assert body["contents"][0]["parts"] == [{"inlineData": {"mimeType": "image/jpeg", "data": PNG}}]
    assert url not in json.dumps(body)


@pytest.mark.parametrize(
    ("part", "param"),
    [
        (image("https://img.test/missing.png"), "input[0].content[0].image_url"),
        (image("ftp://img.test/x.png"), "input[0].content[0].image_url"),
        (image("data:image/png,notbase64"), "input[0].content[0].image_url"),
        (image("data:;base64,AAAA"), "input[0].content[0].image_url"),
        (image("data:image/png;base64,@@@"), "input[0].content[0].image_url"),
        ({"type": "input_image", "file_id": "file-1"}, "input[0].content[0]"),
        ({"type": "input_file", "file_id": "file-1"}, "input[0].content[0]"),
        ({"type": "input_file", "file_url": "https://x.test/a.pdf"}, "input[0].content[0]"),
        ({"type": "input_file", "file_data": "not base64!"}, "input[0].content[0].file_data"),
    ],
)
def test_unusable_parts_are_refused(part: dict[str, Any], param: str) -> None:
    assert rejected(input=[user(part)]).param == param


def test_pdf_files() -> None:
    parts = contents(input=[user(
        {"type": "input_file", "file_data": PDF, "filename": "report.pdf"},
        {"type": "input_file", "file_data": PDF},
        {"type": "input_file", "file_data": f"data:application/pdf;base64,{PDF}", "filename": "x"},
        {"type": "input_file", "file_data": PDF, "filename": "notes.txt"},
    )])[0]["parts"]
    assert [p["inlineData"]["mimeType"] for p in parts] == ["application/pdf"] * 3 + ["text/plain"]
    assert all(p["inlineData"]["data"] == PDF for p in parts)


# --- function calls ----------------------------------------------------------------------------------


def test_function_call_and_output() -> None:
    items = [user(text("weather?")), call("gem-1"), result("gem-1", '{"temp_c": 18}'), user(text("thanks"))]
    assert contents(input=items) == [
        {"role": "user", "parts": [{"text": "weather?"}]},
        {"role": "model",
         "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}, "id": "gem-1"}}]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": {"temp_c": 18}}, "id": "gem-1"}},
            {"text": "thanks"},
        ]},
    ]


def test_minted_ids_are_not_sent_and_outputs_share_one_turn() -> None:
    items = [user(text("q")), {"role": "assistant", "content": "Checking."}, call(MINTED),
             call("call_other", "get_time", ""), result(MINTED, "sunny"), result("call_other", "[1, 2]")]
    assert contents(input=items)[1:] == [
        {"role": "model", "parts": [
            {"text": "Checking."},
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_time", "args": {}, "id": "call_other"}},
        ]},
        {"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": "sunny"}}},
            {"functionResponse": {"name": "get_time", "response": {"output": [1, 2]}, "id": "call_other"}},
        ]},
    ]


def test_list_output_joins_text_and_keeps_media() -> None:
    output = [text("line one"), image(f"data:image/png;base64,{PNG}"), text("line two")]
    turn = contents(input=[user(text("q")), call("c1"), result("c1", output)])[2]
    assert turn["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"output": "line one\nline two"}, "id": "c1"}},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
    ]


def test_output_for_an_unknown_call_is_refused() -> None:
    err = rejected(input=[user(text("q")), call("c1"), result("c2")])
    assert err.param == "input[2].call_id" and "'c2'" in err.message


@pytest.mark.parametrize("arguments", ["[1]", "{nope", '"text"'])
def test_arguments_must_be_an_object(arguments: str) -> None:
    err = rejected(input=[user(text("q")), call("c1", arguments=arguments), result("c1")])
    assert err.param == "input[1].arguments"


# --- thought signatures ------------------------------------------------------------------------------


def test_call_signatures_are_restored_by_call_id() -> None:
    blob = encode_blob("gem", {"call_sigs": {"c1": "SIG1"}})
    items = [user(text("q")), reasoning(blob), call("c1"), call("c2", "get_time"), result("c1"), result("c2")]
    model = contents(input=items)[1]
    assert model["parts"][0]["thoughtSignature"] == "SIG1"
    assert "thoughtSignature" not in model["parts"][1]
    assert "thought" not in json.dumps(model["parts"][0]["functionCall"])  # summaries are not replayed


def test_foreign_and_bad_blobs_are_dropped() -> None:
    for blob in (encode_blob("anthropic", {"call_sigs": {"c1": "THEIRS"}}), "gw1:@@@", "opaque-openai-blob", None):
        items = [user(text("q")), reasoning(blob), call("c1"), result("c1")]
        body = upstream(input=items).body
        assert b"thoughtSignature" not in body and b"THEIRS" not in body


def test_blobs_are_per_provider_name() -> None:
    blob = encode_blob("gem-eu", {"call_sigs": {"c1": "SIG"}})
    items = [user(text("q")), reasoning(blob), call("c1"), result("c1")]
    assert b"SIG" not in upstream(input=items).body
    assert b'"thoughtSignature":"SIG"' in upstream(provider(name="gem-eu"), input=items).body


def test_text_signatures_go_to_the_first_text_of_their_turn() -> None:
    after = encode_blob("gem", {"text_sig": "AFTER"})
    before = encode_blob("gem", {"text_sig": "BEFORE"})
    items = [
        user(text("q1")), {"role": "assistant", "content": "one"}, reasoning(after),
        user(text("q2")), reasoning(before), {"role": "assistant", "content": "two"},
        {"role": "assistant", "content": "three"},
        user(text("q3")), reasoning(encode_blob("gem", {"text_sig": "ORPHAN"})), user(text("q4")),
    ]
    turns = contents(input=items)
    assert turns[1]["parts"] == [{"text": "one", "thoughtSignature": "AFTER"}]
    assert turns[3]["parts"] == [{"text": "two", "thoughtSignature": "BEFORE"}, {"text": "three"}]
    assert turns[4] == {"role": "user", "parts": [{"text": "q3"}, {"text": "q4"}]}
    assert "ORPHAN" not in json.dumps(turns)


def replayed_output(fixture_body: bytes, prov: ProviderConfig) -> list[dict[str, Any]]:
    """What a client replays: the output items the gateway built from an upstream stream."""
    request = parse_request(b'{"model": "gem/m", "input": "q"}')
    translator = DIALECT.new_translator(request, prov)
    assert isinstance(translator, GeminiStreamTranslator)
    deltas = translator.feed(fixture_body) + translator.finish()
    counter = itertools.count()
    emitter = ResponseEmitter(model="gem/m", provider=prov.name, echo=echo_fields(request),
                              new_id=lambda prefix: f"{prefix}{next(counter)}")
    emitter.start()
    emitter.feed(deltas)
    emitter.finish()
    return list(emitter.response["output"])


def test_round_trip_through_the_emitter() -> None:
    """Thoughts + two calls (signature on the first) + text signature: all back where they came from."""
    stream = (
        b'data: {"candidates": [{"content": {"parts": [{"text": "hmm", "thought": true}], "role": "model"}}]}\n\n'
        b'data: {"candidates": [{"content": {"parts": [{"text": "Checking.", "thoughtSignature": "TS"}, '
        b'{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "S1"}, '
        b'{"functionCall": {"name": "get_time", "args": {}}}], "role": "model"}, "finishReason": "STOP"}]}\n\n'
    )
    prov = provider()
    output = replayed_output(stream, prov)
    assert [item["type"] for item in output] == ["reasoning", "message", "reasoning", "function_call", "function_call"]
    first, second = output[3]["call_id"], output[4]["call_id"]
    items = [user(text("q")), *output, result(first, "18C"), result(second, "noon")]
    turns = gemini(prov, input=items)["contents"]
    assert turns[1] == {"role": "model", "parts": [
        {"text": "Checking.", "thoughtSignature": "TS"},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "S1"},
        {"functionCall": {"name": "get_time", "args": {}}},
    ]}
    assert [p["functionResponse"]["name"] for p in turns[2]["parts"]] == ["get_weather", "get_time"]


# --- tools -------------------------------------------------------------------------------------------


def test_tools_become_one_function_declarations_entry() -> None:
    body = gemini(tools=[WEATHER, TIME])
    assert body["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Weather for a city", "parametersJsonSchema": WEATHER["parameters"]},
        {"name": "get_time"},
    ]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_built_in_tools_are_refused() -> None:
    err = rejected(tools=[WEATHER, {"type": "web_search"}])
    assert err.param == "tools[1].type" and "web_search" in err.message


@pytest.mark.parametrize(
    ("choice", "config", "names"),
    [
        ("auto", {"mode": "AUTO"}, ["get_weather", "get_time"]),
        ("none", {"mode": "NONE"}, ["get_weather", "get_time"]),
        ("required", {"mode": "ANY"}, ["get_weather", "get_time"]),
        ({"type": "function", "name": "get_time"}, {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
         ["get_weather", "get_time"]),
        ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]},
         {"mode": "ANY", "allowedFunctionNames": ["get_time"]}, ["get_weather", "get_time"]),
        ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "get_time"}]},
         {"mode": "AUTO"}, ["get_time"]),
    ],
)
def test_tool_choice(choice: Any, config: dict[str, Any], names: list[str]) -> None:
    body = gemini(tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False)
    assert body["toolConfig"] == {"functionCallingConfig": config}
    assert [d["name"] for d in body["tools"][0]["functionDeclarations"]] == names


def test_other_tool_choices_are_refused() -> None:
    assert rejected(tools=[WEATHER], tool_choice={"type": "web_search_preview"}).param == "tool_choice.type"


def test_no_tools_no_tool_config() -> None:
    body = gemini(tool_choice="required")
    assert "tools" not in body and "toolConfig" not in body


# --- generationConfig --------------------------------------------------------------------------------


def test_sampling_fields() -> None:
    body = gemini(temperature=0.3, top_p=0.9, max_output_tokens=77, stop="END", user="u1", metadata={"a": "b"},
                  store=False, safety_identifier="s", prompt_cache_key="k", service_tier="flex", top_logprobs=2)
    assert body["generationConfig"] == {"temperature": 0.3, "topP": 0.9, "maxOutputTokens": 77,
                                        "stopSequences": ["END"]}
    assert set(body) == {"contents", "generationConfig"}


@pytest.mark.parametrize(
    ("fmt", "config"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"responseMimeType": "application/json"}),
        ({"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True},
         {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}),
    ],
)
def test_text_format(fmt: dict[str, Any], config: dict[str, Any] | None) -> None:
    assert gemini(text={"format": fmt}).get("generationConfig") == config


@pytest.mark.parametrize(
    ("reasoning_", "thinking"),
    [
        ({"effort": "none"}, {"thinkingBudget": 0}),
        ({"effort": "minimal"}, {"thinkingBudget": 512, "includeThoughts": True}),
        ({"effort": "low"}, {"thinkingBudget": 1024, "includeThoughts": True}),
        ({"effort": "medium", "summary": "auto"}, {"thinkingBudget": 8192, "includeThoughts": True}),
        ({"effort": "high"}, {"thinkingBudget": 24576, "includeThoughts": True}),
        ({"effort": "xhigh"}, {"thinkingBudget": 24576, "includeThoughts": True}),
        ({"effort": "max"}, {"thinkingBudget": 24576, "includeThoughts": True}),
        ({"summary": "detailed"}, {"includeThoughts": True}),
        ({"generate_summary": "concise"}, {"includeThoughts": True}),
        ({"effort": "none", "summary": "auto"}, {"thinkingBudget": 0}),
        ({}, None),
    ],
)
def test_reasoning_effort_table(reasoning_: dict[str, Any], thinking: dict[str, Any] | None) -> None:
    config = gemini(reasoning=reasoning_).get("generationConfig") or {}
    assert config.get("thinkingConfig") == thinking

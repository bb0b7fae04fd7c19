"""Chat Completions stream translator: golden transcripts and edge cases.

Each ``tests/fixtures/streams/chat/<name>.sse`` is an upstream body as an
OpenAI-compatible server sends it (LF line ends); ``<name>.deltas.json`` is the
expected delta list in the encoding of ``encode`` below.  Every transcript is
replayed with LF, CRLF and CR line ends: whole, one byte at a time, and split into
two chunks at every offset.  The translator never coalesces fragments, so every
replay must give the identical list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

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
from streamgw.providers.chat_completions import DIALECT, ChatStreamTranslator
from streamgw.testing.harness import MINTED_CALL_ID, Transcripts

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "chat"


# --- helpers -------------------------------------------------------------------------------------


def check_invariants(deltas: list[Delta]) -> None:
    """Tool calls start once (key and call_id), fragments only while open, nothing after a failure."""
    started: set[int | str] = set()
    call_ids: set[str] = set()
    ended: set[int | str] = set()
    for position, delta in enumerate(deltas):
        match delta:
            case ToolCallStart(key, call_id, _):
                assert key not in started and call_id not in call_ids
                started.add(key)
                call_ids.add(call_id)
            case ToolCallArgs(key, fragment):
                assert key in started and key not in ended and fragment
            case ToolCallEnd(key):
                assert key in started and key not in ended
                ended.add(key)
            case UpstreamFailure():
                assert position == len(deltas) - 1
            case TextDelta(text) | RefusalDelta(text) | ReasoningDelta(text):
                assert text
    assert sum(isinstance(d, Finish) for d in deltas) <= 1
    if any(isinstance(d, Finish) for d in deltas):
        assert started == ended


GOLDEN = Transcripts(FIXTURES, lambda secrets: ChatStreamTranslator(secrets=secrets),
                     invariants=check_invariants)
NAMES = GOLDEN.names
body, expected, replay, run = GOLDEN.body, GOLDEN.expected, GOLDEN.replay, GOLDEN.run


# --- golden transcripts ----------------------------------------------------------------------------


def test_fixtures_present() -> None:
    GOLDEN.check_present(15, "deltas")


test_golden = GOLDEN.golden_test()


# --- edge cases ------------------------------------------------------------------------------------


def sse(*payloads: object) -> bytes:
    """An SSE body: dicts as compact JSON data, strings verbatim as data."""
    out = b""
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        out += b"data: " + data.encode() + b"\n\n"
    return out


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **top: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice], **top}


def deltas_of(data: bytes) -> list[Delta]:
    return replay([data])


def test_dialect_new_translator_is_fresh() -> None:
    from streamgw.config import ProviderConfig
    from streamgw.core.request import parse_request

    request = parse_request(b'{"model": "m", "input": "hi"}')
    provider = ProviderConfig(name="p", type="chat", base_url="http://x")
    first, second = DIALECT.new_translator(request, provider), DIALECT.new_translator(request, provider)
    assert isinstance(first, ChatStreamTranslator) and first is not second


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ({"message": "m", "type": "requests", "code": "rate_limit_exceeded"}, "rate_limit_exceeded"),
        ({"message": "m", "type": "rate_limit_error", "code": None}, "rate_limit_exceeded"),
        ({"message": "m", "code": 429}, "rate_limit_exceeded"),
        ({"message": "m", "type": "insufficient_quota", "code": "insufficient_quota"}, "rate_limit_exceeded"),
        (
            {"message": "m", "type": "invalid_request_error", "code": "context_length_exceeded"},
            "invalid_prompt",
        ),
        ({"message": "m", "code": 400}, "invalid_prompt"),
        ({"message": "m", "type": "server_error", "code": None}, "server_error"),
        ({"message": "m", "code": 502}, "server_error"),
        ({"message": "m"}, "server_error"),
    ],
)
def test_error_payload_codes(error: dict[str, Any], code: str) -> None:
    assert deltas_of(sse({"error": error})) == [UpstreamFailure(code, "m")]


def test_error_payload_bare_string_and_missing_message() -> None:
    assert deltas_of(sse({"error": "Internal error"})) == [UpstreamFailure("server_error", "Internal error")]
    [failure] = deltas_of(sse({"error": {"type": "server_error"}}))
    assert isinstance(failure, UpstreamFailure) and failure.message


def test_error_payload_is_redacted() -> None:
    payload = {"error": {"message": "bad key sk-live-abcdef1234567890 and hunter2-secret", "type": "x"}}
    translator = ChatStreamTranslator(secrets=["hunter2-secret"])
    [failure] = translator.feed(sse(payload))
    assert isinstance(failure, UpstreamFailure)
    assert "sk-live" not in failure.message and "hunter2" not in failure.message
    assert translator.finish() == []


def test_openrouter_error_with_choices_is_a_failure_only() -> None:
    payload = chunk({"content": "x"}, "error", error={"code": 502, "message": "Provider disconnected"})
    assert deltas_of(sse(payload)) == [UpstreamFailure("server_error", "Provider disconnected")]


def test_finish_reason_error_without_payload_fails() -> None:
    assert deltas_of(sse(chunk({"content": "a"}, "error"))) == [
        TextDelta("a"),
        UpstreamFailure("server_error", "upstream finish_reason=error"),
    ]


def test_unknown_finish_reason_completes() -> None:
    assert deltas_of(sse(chunk({}, "eos"), "[DONE]")) == [Finish(FinishReason.COMPLETED)]


def test_only_first_finish_reason_counts() -> None:
    data = sse(chunk({}, "length"), chunk({}, "stop"), "[DONE]")
    assert deltas_of(data) == [Finish(FinishReason.MAX_OUTPUT_TOKENS)]


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "42", "null"])
def test_json_that_is_not_an_object_is_malformed(payload: str) -> None:
    [failure] = deltas_of(sse(payload))
    assert failure == UpstreamFailure("server_error", "malformed upstream chunk: unexpected structure")


@pytest.mark.parametrize(
    "payload",
    [
        {"choices": "nope"},
        {"choices": [{"index": 0, "delta": ["x"]}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": "f"}]}}]},
        {"choices": [], "usage": {"prompt_tokens_details": "x"}},
    ],
)
def test_wrong_shape_is_malformed(payload: dict[str, Any]) -> None:
    [failure] = deltas_of(sse(payload, "[DONE]"))
    assert isinstance(failure, UpstreamFailure) and failure.code == "server_error"


def test_nothing_after_done() -> None:
    translator = ChatStreamTranslator()
    assert translator.feed(sse("[DONE]")) == [Finish(FinishReason.COMPLETED)]
    assert translator.feed(sse(chunk({"content": "late"}))) == []
    assert translator.finish() == []


def test_empty_body_fails() -> None:
    assert deltas_of(b"") == [UpstreamFailure("server_error", "upstream stream ended before completion")]


def test_comments_and_empty_data_are_ignored() -> None:
    data = b": keepalive\n\ndata:\n\n" + sse(chunk({"content": "a"}, "stop"), "[DONE]")
    assert deltas_of(data) == [TextDelta("a"), Finish(FinishReason.COMPLETED)]


def test_cut_inside_the_usage_chunk_after_finish_is_accepted() -> None:
    data = sse(chunk({"content": "a"}), chunk({}, "stop")) + b'data: {"choices":[],"usage":{"prompt'
    assert deltas_of(data) == [TextDelta("a"), Finish(FinishReason.COMPLETED)]


def test_eof_after_finish_closes_calls_opened_later() -> None:
    # A call after finish_reason is not expected, but if it comes it still gets its end.
    data = sse(chunk({}, "stop"), chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}))
    assert deltas_of(data) == [Finish(FinishReason.COMPLETED), ToolCallStart(0, "c", "f"), ToolCallEnd(0)]


def test_fragments_of_closed_calls_are_dropped() -> None:
    first = {"index": 0, "id": "c", "function": {"name": "f", "arguments": "{"}}
    data = sse(
        chunk({"tool_calls": [first]}, "tool_calls"),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}),
        "[DONE]",
    )
    assert deltas_of(data) == [
        ToolCallStart(0, "c", "f"),
        ToolCallArgs(0, "{"),
        ToolCallEnd(0),
        Finish(FinishReason.COMPLETED),
    ]


def test_fragments_keyed_by_id_without_index() -> None:
    data = sse(
        chunk({"tool_calls": [{"index": 3, "id": "call_x", "function": {"name": "f", "arguments": ""}}]}),
        chunk({"tool_calls": [{"id": "call_x", "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"function": {"arguments": " "}}]}),
        "[DONE]",
    )
    assert deltas_of(data) == [
        ToolCallStart(3, "call_x", "f"),
        ToolCallArgs(3, "{}"),
        ToolCallArgs(3, " "),
        ToolCallEnd(3),
        Finish(FinishReason.COMPLETED),
    ]


def test_arguments_sent_as_an_object() -> None:
    call = {"id": "call_o", "function": {"name": "f", "arguments": {"city": "Zürich"}}}
    data = sse(chunk({"tool_calls": [call]}, "tool_calls"))
    assert deltas_of(data) == [
        ToolCallStart("call_o", "call_o", "f"),
        ToolCallArgs("call_o", '{"city": "Zürich"}'),
        ToolCallEnd("call_o"),
        Finish(FinishReason.COMPLETED),
    ]


def test_minted_call_ids_are_well_formed_and_unique() -> None:
    calls = [{"index": i, "function": {"name": "f", "arguments": "{}"}} for i in range(50)]
    starts = [
        d for d in deltas_of(sse(chunk({"tool_calls": calls}), "[DONE]")) if isinstance(d, ToolCallStart)
    ]
    assert len({s.call_id for s in starts}) == 50
    assert all(MINTED_CALL_ID.fullmatch(s.call_id) for s in starts)


def test_groq_usage_in_x_groq() -> None:
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    data = sse(chunk({}, "stop", x_groq={"id": "req_1", "usage": usage}), "[DONE]")
    assert deltas_of(data) == [Usage(7, 3), Finish(FinishReason.COMPLETED)]


def test_usage_with_null_details_and_odd_numbers() -> None:
    usage = {
        "prompt_tokens": 7.0,
        "completion_tokens": None,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
        "prompt_cache_hit_tokens": 2,
    }
    data = sse({"choices": [], "usage": usage}, "[DONE]")
    assert deltas_of(data) == [Usage(7, 0, cached_tokens=2), Finish(FinishReason.COMPLETED)]


def test_non_string_content_is_ignored() -> None:
    data = sse(chunk({"content": ["part"], "refusal": 3, "reasoning": {"x": 1}}), "[DONE]")
    assert deltas_of(data) == [Finish(FinishReason.COMPLETED)]


@pytest.mark.parametrize(("delta", "expected"), [
    ({"content": "hi"}, [TextDelta("hi")]),
    ({"content": ""}, []),
    ({"content": None}, []),
    ({"content": 7}, []),
    ({"content": ["part"]}, []),
    ({"role": "assistant", "content": "hi"}, [TextDelta("hi")]),
    ({"reasoning_content": "think", "content": "hi"}, [ReasoningDelta("think"), TextDelta("hi")]),
])
def test_text_only_deltas_and_their_neighbours(delta: dict[str, Any], expected: list[Delta]) -> None:
    """A delta holding only ``content`` (the usual chunk) takes a short path: same deltas as the long one."""
    data = sse(chunk(delta), chunk({"content": "!"}, finish="stop"), "[DONE]")
    assert deltas_of(data) == [*expected, TextDelta("!"), Finish(FinishReason.COMPLETED)]


def test_nan_and_infinite_counts_are_zero() -> None:
    data = b'data: {"choices":[],"usage":{"prompt_tokens":NaN,"completion_tokens":Infinity}}\n\n'
    assert deltas_of(data + sse("[DONE]")) == [Usage(0, 0), Finish(FinishReason.COMPLETED)]


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    [failure] = deltas_of(sse("[" * 100_000 + "]" * 100_000))
    assert isinstance(failure, UpstreamFailure)
    assert failure.message.startswith("malformed upstream chunk")


# --- found by tests/fuzz -------------------------------------------------------------------------


def test_lone_surrogate_escape_becomes_a_replacement_character() -> None:
    # "\ud800" reached a TextDelta as a str with no UTF-8 form: encoding its event raised.
    deltas = deltas_of(sse(chunk({"content": "a\ud800b"}), chunk(finish="stop"), "[DONE]"))
    assert deltas[0] == TextDelta("a\ufffdb")
    assert deltas_of(sse(chunk({"content": "\ud83d\ude00"}), "[DONE]"))[0] == TextDelta("\U0001f600")



@pytest.mark.parametrize("reason", ["NaN", "1", "true", "[]"])
def test_non_string_finish_reason_is_malformed_not_completed(reason: str) -> None:
    # Found by tests/fuzz: "finish_reason": NaN (or 1) counted as an unknown reason, i.e. "stop".
    body = sse(chunk({"content": "Done."}), '{"choices":[{"index":0,"delta":{},"finish_reason":' + reason + "}]}")
    deltas = deltas_of(body)
    assert deltas[0] == TextDelta("Done.")
    assert isinstance(deltas[-1], UpstreamFailure) and "finish_reason" in deltas[-1].message

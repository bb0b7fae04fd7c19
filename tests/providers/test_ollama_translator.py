"""Ollama NDJSON stream translator: golden transcripts, the Responses output they give, edge cases.

Each ``tests/fixtures/streams/ollama/<name>.ndjson`` is an ``/api/chat`` body as Ollama sends it
(LF line ends); ``<name>.deltas.json`` is the expected delta list (the encoding of
``test_chat_translator.encode``).  Every transcript is replayed with LF and CRLF line ends:
whole, one byte at a time, and split into two chunks at every offset.  The translator never
coalesces, so every replay must give the identical list.  Each transcript is also run through
``ResponseEmitter`` and ``check_events``.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    UpstreamFailure,
    Usage,
)
from streamgw.core.emitter import ResponseEmitter
from streamgw.providers.ollama import DIALECT, OllamaStreamTranslator
from streamgw.testing.harness import MINTED_CALL_ID, Transcripts
from streamgw.testing.invariants import check_events, output_text
from tests.providers.test_chat_translator import check_invariants

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "ollama"
BAD_SHAPE = UpstreamFailure("server_error", "malformed upstream line: unexpected structure")
HEAD = {"model": "llama3.2", "created_at": "2025-07-07T20:22:19.18Z"}


# --- helpers -------------------------------------------------------------------------------------


def lines(*frames: object) -> bytes:
    """An NDJSON body: dicts as compact JSON, strings verbatim, each ending in LF."""
    out = b""
    for frame in frames:
        text = frame if isinstance(frame, str) else json.dumps(frame, separators=(",", ":"))
        out += text.encode() + b"\n"
    return out


def chunk(message: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {**HEAD, "message": {"role": "assistant", "content": "", **(message or {})}, "done": False, **top}


def done(reason: str = "stop", **counts: Any) -> dict[str, Any]:
    return {**HEAD, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason, **counts}


def emit(deltas: list[Delta]) -> list[dict[str, Any]]:
    """The Responses events the emitter makes of ``deltas`` (one delta per batch)."""
    counter = itertools.count()
    emitter = ResponseEmitter(model="llama3.2", provider="local", echo={"tools": []},
                              new_id=lambda prefix: f"{prefix}{next(counter)}", clock=lambda: 1700000000.0)
    events = emitter.start()
    for delta in deltas:
        events += emitter.feed([delta])
    events += emitter.finish()
    return [json.loads(json.dumps(event)) for event in events]


def final_response(name: str) -> dict[str, Any]:
    events = emit(replay([body(name, "lf")]))
    return check_events(events)


GOLDEN = Transcripts(FIXTURES, lambda secrets: OllamaStreamTranslator(secrets=secrets),
                     invariants=check_invariants, suffix=".ndjson", line_ends={"lf": b"\n", "crlf": b"\r\n"})
NAMES = GOLDEN.names
body, expected, replay, run = GOLDEN.body, GOLDEN.expected, GOLDEN.replay, GOLDEN.run


# --- golden transcripts ----------------------------------------------------------------------------


def test_fixtures_present() -> None:
    GOLDEN.check_present(14, "deltas")


test_golden = GOLDEN.golden_test()


@pytest.mark.parametrize("name", NAMES)
def test_every_transcript_makes_a_valid_responses_stream(name: str) -> None:
    final = final_response(name)
    failed = expected(name)[-1][0] == "failure"
    assert (final["status"] == "failed") is failed


# --- what the Responses output looks like ------------------------------------------------------------


def test_text_response() -> None:
    final = final_response("text")
    assert final["status"] == "completed"
    assert output_text(final) == "The sky is blue — ünïcode ✓."
    assert final["usage"]["input_tokens"] == 169 and final["usage"]["output_tokens"] == 15
    assert final["usage"]["total_tokens"] == 184


def test_tool_call_response_keeps_the_upstream_id_and_object_arguments() -> None:
    [call] = final_response("tool_call")["output"]
    assert call["type"] == "function_call" and call["status"] == "completed"
    assert call["call_id"] == "call_k3j5x8aa" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Tokyo", "unit": "celsius"}


@pytest.mark.parametrize("name", ["two_tool_calls_one_chunk", "two_tool_calls_across_chunks"])
def test_two_tool_calls_are_two_items(name: str) -> None:
    calls = [item for item in final_response(name)["output"] if item["type"] == "function_call"]
    assert len(calls) == 2 and len({call["call_id"] for call in calls}) == 2
    assert json.loads(calls[0]["arguments"])["city"] == "Paris"


def test_minted_ids_for_calls_without_id() -> None:
    calls = final_response("two_tool_calls_one_chunk")["output"]
    assert all(MINTED_CALL_ID.fullmatch(call["call_id"]) for call in calls)


def test_thinking_then_text_is_reasoning_then_message() -> None:
    final = final_response("thinking_then_text")
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["summary"] == [{"type": "summary_text", "text": "The user wants 2+2."}]
    assert message["type"] == "message" and output_text(final) == "4."


def test_thinking_then_tool_call() -> None:
    reasoning, call = final_response("thinking_then_tool_call")["output"]
    assert reasoning["type"] == "reasoning" and call["type"] == "function_call"
    assert json.loads(call["arguments"]) == {"q": 'weather "Paris"'}


def test_length_is_incomplete() -> None:
    final = final_response("length")
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("error_midstream", "an error was encountered while running the model: unexpected EOF"),
        ("cut_between_lines", "upstream stream ended before completion (no done line)"),
        ("cut_mid_line", "upstream stream ended before completion (cut mid-line)"),
    ],
)
def test_failures_are_response_failed(name: str, message: str) -> None:
    final = final_response(name)
    assert final["status"] == "failed"
    assert final["error"] == {"code": "server_error", "message": message}


def test_malformed_line_fails_naming_the_problem() -> None:
    final = final_response("malformed_line")
    assert final["error"]["code"] == "server_error"
    assert final["error"]["message"].startswith("malformed upstream line")
    assert output_text(final) == "Fine"


# --- edge cases ------------------------------------------------------------------------------------


def test_dialect_new_translator_is_fresh() -> None:
    from streamgw.config import ProviderConfig
    from streamgw.core.request import parse_request

    request = parse_request(b'{"model": "m", "input": "hi"}')
    provider = ProviderConfig(name="local", type="ollama", base_url="http://x")
    first, second = DIALECT.new_translator(request, provider), DIALECT.new_translator(request, provider)
    assert isinstance(first, OllamaStreamTranslator) and first is not second


def test_empty_body_fails() -> None:
    assert replay([b""]) == [UpstreamFailure("server_error", "upstream stream ended before completion (no done line)")]


def test_nothing_after_done() -> None:
    translator = OllamaStreamTranslator()
    assert translator.feed(lines(done(), chunk({"content": "late"}))) == [Usage(), Finish(FinishReason.COMPLETED)]
    assert translator.feed(lines(chunk({"content": "later"}))) == []
    assert translator.finish() == []


def test_nothing_after_a_failure() -> None:
    translator = OllamaStreamTranslator()
    assert translator.feed(lines({"error": "boom"})) == [UpstreamFailure("server_error", "boom")]
    assert translator.feed(lines(done())) == []
    assert translator.finish() == []


def test_error_line_is_redacted() -> None:
    data = lines({"error": "upstream key sk-live-abcdef1234567890 and hunter2-secret rejected"})
    [failure] = replay([data], secrets=("hunter2-secret",))
    assert isinstance(failure, UpstreamFailure) and failure.code == "server_error"
    assert "sk-live" not in failure.message and "hunter2" not in failure.message
    assert "rejected" in failure.message


def test_error_object_is_kept_as_text() -> None:
    [failure] = replay([lines({"error": {"message": "nested", "code": 7}})])
    assert failure == UpstreamFailure("server_error", '{"message": "nested", "code": 7}')


def test_error_with_content_in_the_same_line_is_only_a_failure() -> None:
    assert replay([lines({**chunk({"content": "x"}), "error": "bad"})]) == [UpstreamFailure("server_error", "bad")]


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_malformed(payload: str) -> None:
    assert replay([lines(payload)]) == [BAD_SHAPE]


@pytest.mark.parametrize(
    "frame",
    [
        {"message": "text", "done": False},
        {"message": {"tool_calls": {"function": {}}}, "done": False},
        {"message": {"tool_calls": ["call"]}, "done": False},
        {"message": {"tool_calls": [{"function": "f"}]}, "done": False},
        {"message": {"tool_calls": [{"function": {"name": "f", "arguments": {"x": float("nan")}}}]}},
    ],
)
def test_wrong_shape_is_malformed(frame: dict[str, Any]) -> None:
    assert replay([lines(frame, done())]) == [BAD_SHAPE]


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    [failure] = replay([lines("[" * 100_000 + "]" * 100_000)])
    assert isinstance(failure, UpstreamFailure) and failure.message.startswith("malformed upstream line")


def test_arguments_variants() -> None:
    calls = [
        {"function": {"name": "a", "arguments": '{"already":"text"}'}},
        {"function": {"name": "b", "arguments": None}},
        {"function": {"name": "c", "arguments": {"ü": "ß"}}},
        {"function": {"name": 5, "arguments": {}}},
    ]
    deltas = replay([lines(chunk({"tool_calls": calls}), done())])
    assert [d.fragment for d in deltas if isinstance(d, ToolCallArgs)] == [
        '{"already":"text"}', "{}", '{"ü":"ß"}', "{}",
    ]
    assert [d.name for d in deltas if isinstance(d, ToolCallStart)] == ["a", "b", "c", ""]


def test_keys_are_unique_across_lines_and_calls_are_closed_at_once() -> None:
    call = {"id": "call_x", "function": {"name": "f", "arguments": {}}}
    deltas = replay([lines(chunk({"tool_calls": [call]}), chunk({"tool_calls": [call, call]}), done())])
    starts = [d for d in deltas if isinstance(d, ToolCallStart)]
    assert [s.key for s in starts] == [0, 1, 2]
    assert starts[0].call_id == "call_x" and len({s.call_id for s in starts}) == 3
    assert deltas[:3] == [ToolCallStart(0, "call_x", "f"), ToolCallArgs(0, "{}"), ToolCallEnd(0)]


def test_minted_call_ids_are_well_formed_and_unique() -> None:
    calls = [{"function": {"name": "f", "arguments": {"i": i}}} for i in range(50)]
    starts = [d for d in replay([lines(chunk({"tool_calls": calls}), done())]) if isinstance(d, ToolCallStart)]
    assert len({s.call_id for s in starts}) == 50
    assert all(MINTED_CALL_ID.fullmatch(s.call_id) for s in starts)


def test_order_within_one_line() -> None:
    call = {"id": "c1", "function": {"name": "f", "arguments": {}}}
    frame = {**chunk({"thinking": "t", "content": "c", "tool_calls": [call]}), "done": True,
             "done_reason": "length", "prompt_eval_count": 4, "eval_count": 2}
    assert replay([lines(frame)]) == [
        ReasoningDelta("t"), TextDelta("c"), ToolCallStart(0, "c1", "f"), ToolCallArgs(0, "{}"), ToolCallEnd(0),
        Usage(4, 2), Finish(FinishReason.MAX_OUTPUT_TOKENS),
    ]


@pytest.mark.parametrize("reason", ["load", "unload", "stop", None, 3, ["x"]])
def test_done_reasons_that_complete(reason: object) -> None:
    frame = {**done(), "done_reason": reason}
    assert replay([lines(frame)])[-1] == Finish(FinishReason.COMPLETED)


def test_odd_counts_are_zero() -> None:
    frame = {**done(), "prompt_eval_count": 7.5, "eval_count": "3"}
    assert replay([lines(frame)])[0] == Usage(0, 0)


def test_non_string_text_fields_are_ignored() -> None:
    data = lines(chunk({"content": ["x"], "thinking": 4}), done())
    assert replay([data]) == [Usage(), Finish(FinishReason.COMPLETED)]


def test_done_false_or_missing_is_not_the_end() -> None:
    data = lines({**chunk({"content": "a"}), "done": "true"}, {**HEAD, "message": {"content": "b"}})
    assert replay([data]) == [
        TextDelta("a"), TextDelta("b"),
        UpstreamFailure("server_error", "upstream stream ended before completion (no done line)"),
    ]


def test_surrogates_never_reach_a_delta() -> None:
    # Found by tests/fuzz: an escaped lone surrogate, or its raw 3-byte form (which json.loads
    # decodes from bytes with "surrogatepass"), reached a TextDelta that could not be encoded.
    escaped = replay([lines(chunk({"content": "a\ud800b"}), done())])
    assert escaped[0] == TextDelta("a\ufffdb")
    raw = b'{"model":"m","message":{"role":"assistant","content":"\xed\xa0\x80"},"done":false}\n'
    [failure] = replay([raw])
    assert isinstance(failure, UpstreamFailure) and "malformed upstream line" in failure.message

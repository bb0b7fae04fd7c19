"""Anthropic stream translator: golden transcripts, through the emitter too, and edge cases.

Each ``tests/fixtures/streams/anthropic/<name>.sse`` is an upstream body as the Messages API
sends it (LF line ends); ``<name>.deltas.json`` is the expected delta list in the encoding of
``encode`` below (a reasoning blob is shown decoded), and ``<name>.response.json`` a summary of
the Responses output the emitter builds from those deltas.  Every transcript is replayed with
LF, CRLF and CR line ends: whole, one byte at a time, and split in two at every offset.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from streamgw.config import ProviderConfig
from streamgw.core.blobs import decode_blob, encode_blob
from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningSignature,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    UpstreamFailure,
    Usage,
)
from streamgw.core.emitter import ResponseEmitter
from streamgw.core.request import parse_request
from streamgw.providers.anthropic import DIALECT, AnthropicStreamTranslator
from streamgw.testing.harness import Transcripts
from streamgw.testing.invariants import check_events

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "anthropic"
PROVIDER = "claude"
ECHO: dict[str, Any] = {"instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True}


# --- helpers -------------------------------------------------------------------------------------


def check_invariants(deltas: list[Delta]) -> None:
    """Calls start once and end once, fragments only while open, nothing after a failure or finish."""
    started: set[int | str] = set()
    ended: set[int | str] = set()
    for position, delta in enumerate(deltas):
        match delta:
            case ToolCallStart(key, _, _):
                assert key not in started
                started.add(key)
            case ToolCallArgs(key, fragment):
                assert key in started and key not in ended and fragment
            case ToolCallEnd(key):
                assert key in started and key not in ended
                ended.add(key)
            case UpstreamFailure() | Finish():
                assert position == len(deltas) - 1
            case TextDelta(text) | ReasoningDelta(text):
                assert text
    if deltas and isinstance(deltas[-1], Finish):
        open_calls = started - ended
        # Only a call cut by max_tokens may be left open (the emitter marks it incomplete).
        assert not open_calls or (deltas[-1].reason is FinishReason.MAX_OUTPUT_TOKENS and len(open_calls) == 1)


def emit(deltas: list[Delta], batch: int = 1) -> dict[str, Any]:
    """The deltas through the real emitter, every event checked; the final response."""
    counter = itertools.count()
    emitter = ResponseEmitter(model="claude/m", provider=PROVIDER, echo=dict(ECHO),
                              new_id=lambda prefix: f"{prefix}{next(counter)}", clock=lambda: 1700000000.0)
    events = emitter.start()
    for i in range(0, len(deltas), batch):
        events += emitter.feed(deltas[i : i + batch])
    events += emitter.finish()
    return check_events(json.loads(json.dumps(events)))


def summarise_item(item: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": item["type"], "status": item.get("status")}
    if item["type"] == "message":
        out["content"] = [part.get("text", part.get("refusal")) for part in item["content"]]
    elif item["type"] == "reasoning":
        out["summary"] = [part["text"] for part in item["summary"]]
        out["encrypted"] = decode_blob(item.get("encrypted_content"), PROVIDER)
    else:
        out |= {"call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"]}
    return out


def summarise(final: dict[str, Any]) -> dict[str, Any]:
    """What a ``.response.json`` file holds: the terminal state and every output item."""
    return {
        "status": final["status"],
        "incomplete_details": final["incomplete_details"],
        "error": final["error"],
        "usage": final["usage"],
        "output": [summarise_item(item) for item in final["output"]],
    }


GOLDEN = Transcripts(FIXTURES, lambda secrets: AnthropicStreamTranslator(provider=PROVIDER, secrets=secrets),
                     invariants=check_invariants, provider=PROVIDER)
NAMES = GOLDEN.names
body, expected, replay, run = GOLDEN.body, GOLDEN.expected, GOLDEN.replay, GOLDEN.run


# --- golden transcripts ----------------------------------------------------------------------------


def test_fixtures_present() -> None:
    GOLDEN.check_present(20, "deltas", "response")


test_golden = GOLDEN.golden_test()


@pytest.mark.parametrize("batch", [1, 3, 1000])
@pytest.mark.parametrize("name", NAMES)
def test_through_the_emitter(name: str, batch: int) -> None:
    final = emit(replay([body(name, "lf")]), batch)
    assert summarise(final) == expected(name, "response")


# --- what the golden files say, spelled out ---------------------------------------------------------


def test_thinking_blob_carries_text_and_signature() -> None:
    final = emit(replay([body("thinking_text", "lf")]))
    reasoning, message = final["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Let me work this out: 27 * 453 = 12231."}]
    blob = decode_blob(reasoning["encrypted_content"], PROVIDER)
    assert blob is not None and blob["thinking"] == "Let me work this out: 27 * 453 = 12231."
    assert blob["signature"].startswith("EqQBCgIYAhIM")
    assert decode_blob(reasoning["encrypted_content"], "other-provider") is None
    assert message["content"][0]["text"] == "27 * 453 = 12,231."


def test_redacted_thinking_is_an_empty_reasoning_item() -> None:
    final = emit(replay([body("redacted_thinking", "lf")]))
    assert [item["type"] for item in final["output"]] == ["reasoning", "reasoning", "message"]
    redacted = final["output"][0]
    assert redacted["summary"] == []
    assert decode_blob(redacted["encrypted_content"], PROVIDER) == {"redacted": expected_redacted()}


def expected_redacted() -> str:
    start = next(line for line in (FIXTURES / "redacted_thinking.sse").read_text().splitlines() if "redacted" in line)
    data: str = json.loads(start.removeprefix("data: "))["content_block"]["data"]
    return data


def test_fragmented_tool_input_joins_to_json() -> None:
    final = emit(replay([body("tool_fragmented", "lf")]))
    call = final["output"][1]
    assert call["call_id"] == "toolu_01A09q90qw90lq917835lq9"
    assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "celsius"}


def test_usage_counts_cache_into_input() -> None:
    [usage] = [d for d in replay([body("usage_cache", "lf")]) if isinstance(d, Usage)]
    assert usage == Usage(input_tokens=25 + 1500 + 3000, output_tokens=310, cached_tokens=3000,
                          cache_write_tokens=1500, reasoning_tokens=200)


# --- edge cases ------------------------------------------------------------------------------------


def sse(*payloads: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + p["type"].encode() + b"\ndata: " + json.dumps(p).encode() + b"\n\n" for p in payloads
    )


def test_dialect_translator_mints_blobs_for_the_configured_provider_name() -> None:
    request = parse_request(b'{"model": "m", "input": "hi"}')
    provider = ProviderConfig(name="my-claude", type="anthropic", base_url="http://x")
    translator = DIALECT.new_translator(request, provider)
    assert translator is not DIALECT.new_translator(request, provider)
    deltas = translator.feed(body("thinking_text", "lf"))
    [signature] = [d for d in deltas if isinstance(d, ReasoningSignature)]
    assert decode_blob(signature.encrypted_content, "my-claude") is not None
    assert decode_blob(signature.encrypted_content, PROVIDER) is None


def test_registry_picks_the_dialect_up() -> None:
    from streamgw.providers.registry import dialects

    assert dialects()["anthropic"] is DIALECT


def test_error_event_message_is_redacted() -> None:
    message = "key sk-ant-api03-abcdefgh12345 and s3cr3t-v"
    payload = {"type": "error", "error": {"type": "api_error", "message": message}}
    translator = AnthropicStreamTranslator(provider=PROVIDER, secrets=["s3cr3t-v"])
    [failure] = translator.feed(sse(payload))
    assert isinstance(failure, UpstreamFailure) and failure.code == "server_error"
    assert "sk-ant" not in failure.message and "s3cr3t-v" not in failure.message
    assert translator.feed(sse({"type": "message_stop"})) == [] and translator.finish() == []


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, "server_error", "Overloaded"),
        ({"type": "rate_limit_error", "message": "slow"}, "rate_limit_exceeded", "slow"),
        ({"type": "billing_error", "message": "pay"}, "rate_limit_exceeded", "pay"),
        ({"type": "invalid_request_error", "message": "bad"}, "invalid_prompt", "bad"),
        ({"type": "api_error", "message": "boom"}, "server_error", "boom"),
        ({"type": "overloaded_error"}, "server_error", "upstream error event (overloaded_error)"),
        ({}, "server_error", "upstream error event (unknown type)"),
    ],
)
def test_error_event_codes(error: dict[str, Any], code: str, message: str) -> None:
    assert replay([sse({"type": "error", "error": error})]) == [UpstreamFailure(code, message)]


def test_empty_body_is_a_failure() -> None:
    assert replay([]) == [UpstreamFailure("server_error", "upstream stream ended before message_stop")]


def test_non_object_json_is_malformed() -> None:
    [failure] = replay([b"event: message_start\ndata: [1, 2]\n\n"])
    assert isinstance(failure, UpstreamFailure) and "not a JSON object" in failure.message


def test_event_name_is_the_fallback_type() -> None:
    data = b'event: message_stop\ndata: {"no_type": true}\n\n'
    assert replay([data]) == [Finish(FinishReason.COMPLETED)]


@pytest.mark.parametrize("kind", [[None], {"a": 1}, ["message_stop"]])
def test_non_string_type_is_malformed(kind: Any) -> None:
    # Found by tests/fuzz: an array or object ``type`` was looked up as a handler key and raised TypeError.
    data = f'event: content_block_delta\ndata: {json.dumps({"type": kind})}\n\n'.encode()
    [failure] = replay([data])
    assert isinstance(failure, UpstreamFailure) and "malformed upstream event" in failure.message


def test_tool_input_given_whole_at_start_is_used_once() -> None:
    block = {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": 1}}
    deltas = replay([sse(
        {"type": "content_block_start", "index": 0, "content_block": block},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"},
    )])
    assert deltas == [ToolCallStart(0, "toolu_9", "f"), ToolCallArgs(0, '{"a": 1}'), ToolCallEnd(0),
                      Finish(FinishReason.COMPLETED)]


def test_unsigned_thinking_still_seals_its_item() -> None:
    deltas = replay([sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "a"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "b"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"},
    )])
    assert deltas == [ReasoningDelta("a"), ReasoningDelta("b"),
                      ReasoningSignature(encode_blob(PROVIDER, {"thinking": "ab", "signature": ""})),
                      Finish(FinishReason.COMPLETED)]


def test_lone_surrogate_escape_becomes_a_replacement_character() -> None:
    # Found by tests/fuzz: "\ud800" reached a TextDelta as a str with no UTF-8 form.
    deltas = replay([sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "a\udfffb"}},
        {"type": "message_stop"},
    )])
    assert deltas == [TextDelta("a\ufffdb"), Finish(FinishReason.COMPLETED)]

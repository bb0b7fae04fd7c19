"""Gemini stream translator: golden transcripts, the Responses output they give, and edge cases.

Each ``tests/fixtures/streams/gemini/<name>.sse`` is an upstream body as Gemini sends it with
``alt=sse`` (JSON written Google's way; LF line ends, except ``text_crlf``, stored with CRLF);
``<name>.deltas.json`` is the expected delta list (signature blobs decoded, minted call ids
normalised) and ``<name>.response.json`` the final Responses object the emitter builds from
it (ids deterministic).  Gemini's line ends are unverified, so every transcript is replayed
with LF, CRLF and CR: whole, one byte at a time, and split into two chunks at every offset.
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
from streamgw.core.request import echo_fields, parse_request
from streamgw.providers.gemini import DIALECT, GeminiStreamTranslator
from streamgw.testing.harness import MINTED_CALL_ID, Transcripts, normalise_minted
from streamgw.testing.invariants import check_events

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "gemini"
PROVIDER = "gem"
REQUEST = parse_request(b'{"model": "gem/gemini-2.5-flash", "input": "hi"}')


# --- helpers -------------------------------------------------------------------------------------


def check_invariants(deltas: list[Delta]) -> None:
    """Calls start once, get exactly one fragment and end at once; nothing after a failure."""
    call_ids: set[str] = set()
    for position, delta in enumerate(deltas):
        match delta:
            case ToolCallStart(key, call_id, _):
                assert call_id not in call_ids
                call_ids.add(call_id)
                args, end = deltas[position + 1], deltas[position + 2]
                assert isinstance(args, ToolCallArgs) and args.key == key and end == ToolCallEnd(key)
                json.loads(args.fragment)
            case UpstreamFailure():
                assert position == len(deltas) - 1
            case TextDelta(text) | ReasoningDelta(text):
                assert text
    assert sum(isinstance(d, Finish) for d in deltas) <= 1
    assert not (any(isinstance(d, Finish) for d in deltas) and any(isinstance(d, UpstreamFailure) for d in deltas))


def respond(deltas: list[Delta]) -> dict[str, Any]:
    """The final Responses object the emitter builds from ``deltas`` (checked by ``check_events``)."""
    counter = itertools.count()
    emitter = ResponseEmitter(model=REQUEST.model, provider=PROVIDER, echo=echo_fields(REQUEST),
                              new_id=lambda prefix: f"{prefix}{next(counter)}", clock=lambda: 1_700_000_000.0)
    events = emitter.start() + emitter.feed(deltas) + emitter.finish()
    final = check_events(events)
    return final


def summary(final: dict[str, Any]) -> dict[str, Any]:
    """What the ``.response.json`` files hold: the outcome, with blobs decoded and minted ids normalised."""
    output = []
    for item in final["output"]:
        item = dict(item)
        if "encrypted_content" in item:
            item["encrypted_content"] = decode_blob(item["encrypted_content"], PROVIDER)
        output.append(item)
    kept = {key: final[key] for key in ("status", "incomplete_details", "error", "usage")}
    result: dict[str, Any] = normalise_minted({**kept, "output": output})
    return result


GOLDEN = Transcripts(FIXTURES, lambda secrets: GeminiStreamTranslator(provider=PROVIDER, secrets=secrets),
                     invariants=check_invariants, provider=PROVIDER)
NAMES = GOLDEN.names
body, expected, replay, run = GOLDEN.body, GOLDEN.expected, GOLDEN.replay, GOLDEN.run


# --- golden transcripts ----------------------------------------------------------------------------


def test_fixtures_present() -> None:
    GOLDEN.check_present(15, "deltas", "response")


test_golden = GOLDEN.golden_test()


@pytest.mark.parametrize("name", NAMES)
def test_responses_output(name: str) -> None:
    assert summary(respond(replay([body(name, "lf")]))) == expected(name, "response")


def test_crlf_fixture_as_stored() -> None:
    data = (FIXTURES / "text_crlf.sse").read_bytes()
    assert b"\r\n\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    assert run([data]) == run([data[i : i + 1] for i in range(len(data))]) == expected("text_crlf")


def test_signature_replays_onto_its_call() -> None:
    """The reasoning item right before a call carries that call's signature under its call_id."""
    final = respond(replay([body("thought_then_call", "lf")]))
    reasoning, call = final["output"]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Need the weather."}]
    blob = decode_blob(reasoning["encrypted_content"], PROVIDER)
    assert blob == {"call_sigs": {"gem-call-1": "CiQcallSig=="}} and call["call_id"] == "gem-call-1"
    assert decode_blob(reasoning["encrypted_content"], "other-provider") is None


# --- edge cases ------------------------------------------------------------------------------------


def sse(*payloads: object) -> bytes:
    """An SSE body: dicts as JSON data, strings verbatim as data."""
    out = b""
    for payload in payloads:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out += b"data: " + data.encode() + b"\n\n"
    return out


def chunk(*parts: dict[str, Any], finish: str | None = None, **top: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **top}


def deltas_of(data: bytes) -> list[Delta]:
    deltas = replay([data])
    check_invariants(deltas)
    return deltas


def blob(**data: Any) -> ReasoningSignature:
    return ReasoningSignature(encode_blob(PROVIDER, data))


def test_dialect_translator_is_fresh_and_signs_for_the_provider() -> None:
    provider = ProviderConfig(name="vertexish", type="gemini", base_url="http://x")
    first, second = DIALECT.new_translator(REQUEST, provider), DIALECT.new_translator(REQUEST, provider)
    assert first is not second
    text, sig, finish = first.feed(sse(chunk({"text": "a", "thoughtSignature": "S"}, finish="STOP")))
    assert (text, finish) == (TextDelta("a"), Finish(FinishReason.COMPLETED)) and first.finish() == []
    assert isinstance(sig, ReasoningSignature)
    assert decode_blob(sig.encrypted_content, "vertexish") == {"text_sig": "S"}
    assert decode_blob(sig.encrypted_content, PROVIDER) is None
    data = sse(chunk({"functionCall": {"name": "f", "args": {}, "id": "c1"}, "thoughtSignature": "S"}))
    [call_sig, *_] = second.feed(data)
    assert isinstance(call_sig, ReasoningSignature)
    assert decode_blob(call_sig.encrypted_content, "vertexish") == {"call_sigs": {"c1": "S"}}


@pytest.mark.parametrize(
    ("reason", "result"),
    [
        ("STOP", Finish(FinishReason.COMPLETED)),
        ("MAX_TOKENS", Finish(FinishReason.MAX_OUTPUT_TOKENS)),
        ("RECITATION", Finish(FinishReason.CONTENT_FILTER)),
        ("BLOCKLIST", Finish(FinishReason.CONTENT_FILTER)),
        ("SPII", Finish(FinishReason.CONTENT_FILTER)),
        ("IMAGE_SAFETY", Finish(FinishReason.CONTENT_FILTER)),
        ("IMAGE_SOMETHING_NEW", Finish(FinishReason.CONTENT_FILTER)),
        ("LANGUAGE", Finish(FinishReason.COMPLETED)),
        ("FINISH_REASON_UNSPECIFIED", Finish(FinishReason.COMPLETED)),
        ("SOMETHING_NEW", Finish(FinishReason.COMPLETED)),
        ("UNEXPECTED_TOOL_CALL", UpstreamFailure("server_error", "upstream finishReason=UNEXPECTED_TOOL_CALL")),
        ("TOO_MANY_TOOL_CALLS", UpstreamFailure("server_error", "upstream finishReason=TOO_MANY_TOOL_CALLS")),
    ],
)
def test_finish_reasons_after_output(reason: str, result: Delta) -> None:
    assert deltas_of(sse(chunk({"text": "x"}, finish=reason))) == [TextDelta("x"), result]


@pytest.mark.parametrize("reason", ["OTHER", "LANGUAGE", "NO_IMAGE", "FINISH_REASON_UNSPECIFIED"])
def test_vague_finish_reasons_without_output_fail(reason: str) -> None:
    assert deltas_of(sse(chunk(finish=reason))) == [UpstreamFailure("server_error", f"upstream finishReason={reason}")]


def test_only_the_first_finish_reason_counts() -> None:
    data = sse(chunk({"text": "a"}, finish="MAX_TOKENS"), chunk(finish="STOP"))
    assert deltas_of(data) == [TextDelta("a"), Finish(FinishReason.MAX_OUTPUT_TOKENS)]


def test_call_ids_from_upstream_minted_and_deduplicated() -> None:
    calls = [{"functionCall": {"name": "f", "args": {"i": i}, "id": "same"}} for i in range(2)]
    calls.append({"functionCall": {"name": "g"}})  # no id, no args
    starts = [d for d in deltas_of(sse(chunk(*calls, finish="STOP"))) if isinstance(d, ToolCallStart)]
    assert starts[0] == ToolCallStart(0, "same", "f")
    assert MINTED_CALL_ID.fullmatch(starts[1].call_id) and MINTED_CALL_ID.fullmatch(starts[2].call_id)
    assert [s.key for s in starts] == [0, 1, 2]
    assert ToolCallArgs(2, "{}") in deltas_of(sse(chunk(*calls, finish="STOP")))


def test_arguments_are_compact_json_with_unicode() -> None:
    call = {"functionCall": {"name": "f", "args": {"city": "Zürich", "n": [1, 2]}, "id": "c"}}
    assert ToolCallArgs(0, '{"city":"Zürich","n":[1,2]}') in deltas_of(sse(chunk(call, finish="STOP")))


def test_text_signature_placement() -> None:
    signed_call = {"functionCall": {"name": "f", "args": {}, "id": "c1"}, "thoughtSignature": "C"}
    plain_call = {"functionCall": {"name": "g", "args": {}, "id": "c2"}}
    # held past later text, merged into the next signed call's blob
    data = sse(chunk({"text": "a", "thoughtSignature": "T1"}, {"text": "b"}, signed_call, finish="STOP"))
    assert deltas_of(data)[:3] == [TextDelta("a"), TextDelta("b"), blob(call_sigs={"c1": "C"}, text_sig="T1")]
    # flushed alone before an unsigned call and before a thought
    data = sse(chunk({"text": "a", "thoughtSignature": "T1"}, plain_call, finish="STOP"))
    assert deltas_of(data)[:3] == [TextDelta("a"), blob(text_sig="T1"), ToolCallStart(0, "c2", "g")]
    data = sse(chunk({"text": "a", "thoughtSignature": "T1"}, {"text": "hm", "thought": True}, finish="STOP"))
    assert deltas_of(data)[:3] == [TextDelta("a"), blob(text_sig="T1"), ReasoningDelta("hm")]
    # a second one pushes the first out; the last goes out with the finish
    data = sse(chunk({"text": "a", "thoughtSignature": "T1"}, {"text": "b", "thoughtSignature": "T2"}, finish="STOP"))
    assert deltas_of(data) == [TextDelta("a"), TextDelta("b"), blob(text_sig="T1"), blob(text_sig="T2"),
                               Finish(FinishReason.COMPLETED)]


def test_signature_on_a_thought_seals_that_thought() -> None:
    data = sse(chunk({"text": "think", "thought": True, "thoughtSignature": "T"}, {"text": "x"}, finish="STOP"))
    assert deltas_of(data) == [ReasoningDelta("think"), blob(text_sig="T"), TextDelta("x"),
                               Finish(FinishReason.COMPLETED)]


def test_a_text_signature_is_lost_with_a_failure() -> None:
    data = sse(chunk({"text": "a", "thoughtSignature": "T"}))
    ended = UpstreamFailure("server_error", "upstream stream ended before a finishReason")
    assert deltas_of(data) == [TextDelta("a"), ended]


def test_other_parts_are_ignored() -> None:
    parts = [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}, {"executableCode": {"code": "1"}},
             {"text": ""}, {"text": 5}, {"thought": True}]
    assert deltas_of(sse(chunk(*parts, finish="STOP"))) == [Finish(FinishReason.COMPLETED)]


def test_other_candidates_are_ignored() -> None:
    second = {"content": {"parts": [{"text": "other"}]}, "index": 1, "finishReason": "SAFETY"}
    first = {"content": {"parts": [{"text": "mine"}]}, "finishReason": "STOP"}
    assert deltas_of(sse({"candidates": [second, first]})) == [TextDelta("mine"), Finish(FinishReason.COMPLETED)]
    assert deltas_of(sse({"candidates": [second]}, chunk(finish="STOP"))) == [Finish(FinishReason.COMPLETED)]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ({"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}, "rate_limit_exceeded"),
        ({"code": 400, "message": "m", "status": "INVALID_ARGUMENT"}, "invalid_prompt"),
        ({"code": 400, "message": "m", "status": "FAILED_PRECONDITION"}, "invalid_prompt"),
        ({"code": 429, "message": "m"}, "rate_limit_exceeded"),
        ({"code": 503, "message": "m", "status": "UNAVAILABLE"}, "server_error"),
        ({"message": "m"}, "server_error"),
    ],
)
def test_error_objects(error: dict[str, Any], code: str) -> None:
    assert deltas_of(sse({"error": error})) == [UpstreamFailure(code, "m")]
    raw = json.dumps({"error": error}, indent=2).encode() + b"\n"
    assert deltas_of(sse(chunk({"text": "a"})) + raw) == [TextDelta("a"), UpstreamFailure(code, "m")]


def test_error_messages_are_redacted_and_never_empty() -> None:
    leaky = {"error": {"message": "key AIzaSyA1234567890abcdefghijklmno and hunter2-secret", "code": 500}}
    for data in (sse(leaky), json.dumps(leaky).encode() + b"\n"):
        [failure] = replay([data], secrets=("hunter2-secret",))
        assert isinstance(failure, UpstreamFailure)
        assert "AIza" not in failure.message and "hunter2" not in failure.message
    [failure] = deltas_of(sse({"error": {"code": 500}}))
    assert isinstance(failure, UpstreamFailure) and failure.message


def test_usage_goes_out_before_a_failure() -> None:
    usage = {"promptTokenCount": 3, "candidatesTokenCount": 1}
    data = sse(chunk({"text": "a"}, usageMetadata=usage), {"error": {"message": "m"}})
    assert deltas_of(data) == [TextDelta("a"), Usage(3, 1), UpstreamFailure("server_error", "m")]


def test_raw_lines_that_are_no_error_are_ignored() -> None:
    data = b"foo: bar\n" + b'{"note": {"x": "}"}}\n\n' + sse(chunk({"text": "a"}, finish="STOP"))
    assert deltas_of(data) == [TextDelta("a"), Finish(FinishReason.COMPLETED)]


def test_nothing_after_a_failure() -> None:
    translator = GeminiStreamTranslator(provider=PROVIDER)
    assert translator.feed(sse({"error": {"message": "m"}})) == [UpstreamFailure("server_error", "m")]
    assert translator.feed(sse(chunk({"text": "late"}, finish="STOP"))) == []
    assert translator.finish() == []


def test_empty_body_fails() -> None:
    assert deltas_of(b"") == [UpstreamFailure("server_error", "upstream stream ended before a finishReason")]


def test_comments_and_empty_data_are_ignored() -> None:
    data = b": keepalive\n\ndata:\n\n" + sse(chunk({"text": "a"}, finish="STOP"))
    assert deltas_of(data) == [TextDelta("a"), Finish(FinishReason.COMPLETED)]


def test_cut_after_the_finish_is_accepted() -> None:
    data = sse(chunk({"text": "a"}, finish="STOP")) + b'data: {"usageMetadata": {"prompt'
    assert deltas_of(data) == [TextDelta("a"), Finish(FinishReason.COMPLETED)]


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "42", "null", "{nope"])
def test_json_that_is_not_an_object_is_malformed(payload: str) -> None:
    [failure] = deltas_of(sse(payload))
    assert isinstance(failure, UpstreamFailure) and failure.message.startswith("malformed upstream chunk")


@pytest.mark.parametrize(
    "payload",
    [
        {"candidates": "nope"},
        {"candidates": [{"content": {"parts": {"text": "x"}}}]},
        {"candidates": [{"content": {"parts": ["x"]}}]},
        {"candidates": [], "usageMetadata": [1]},
        {"promptFeedback": "blocked"},
    ],
)
def test_wrong_shape_is_malformed(payload: dict[str, Any]) -> None:
    [failure] = deltas_of(sse(payload))
    assert failure == UpstreamFailure("server_error", "malformed upstream chunk: unexpected structure")


def test_odd_usage_numbers_count_as_zero() -> None:
    data = b'data: {"usageMetadata": {"promptTokenCount": NaN, "candidatesTokenCount": 2.0, ' \
           b'"thoughtsTokenCount": "3"}, "candidates": [{"finishReason": "STOP"}]}\n\n'
    assert deltas_of(b'data: {"candidates": [{"content": {"parts": [{"text": "a"}]}}]}\n\n' + data) == [
        TextDelta("a"), Usage(0, 2), Finish(FinishReason.COMPLETED)]


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    [failure] = deltas_of(sse("[" * 100_000 + "]" * 100_000))
    assert isinstance(failure, UpstreamFailure) and failure.message.startswith("malformed upstream chunk")


def test_an_unclosed_raw_object_is_dropped_not_hoarded() -> None:
    junk = b'{"never": "closed",\n' + b'"x": 1,\n' * 10_000
    error = json.dumps({"error": {"message": "m", "code": 500}}).encode() + b"\n"
    data = sse(chunk({"text": "a"})) + junk + error
    assert deltas_of(data) == [TextDelta("a"), UpstreamFailure("server_error", "m")]


@pytest.mark.parametrize("error", [{"status": ["x"], "code": {"y": 1}, "message": "m"}, ["m"], 7])
def test_odd_error_objects_still_fail_cleanly(error: Any) -> None:
    raw = json.dumps({"error": error}).encode() + b"\n"
    for data in (sse({"error": error}), raw):
        [failure] = deltas_of(data)
        assert isinstance(failure, UpstreamFailure) and failure.code == "server_error" and failure.message


def test_status_wins_over_code_and_code_is_the_fallback() -> None:
    assert deltas_of(sse({"error": {"code": 429, "status": "UNKNOWN", "message": "m"}})) == [
        UpstreamFailure("rate_limit_exceeded", "m")]
    assert deltas_of(sse({"error": {"code": 500, "status": "INVALID_ARGUMENT", "message": "m"}})) == [
        UpstreamFailure("invalid_prompt", "m")]


def test_lone_surrogate_escape_becomes_a_replacement_character() -> None:
    # Found by tests/fuzz: "\ud800" reached a TextDelta as a str with no UTF-8 form.
    deltas = deltas_of(sse(chunk({"text": "a\ud800b"}, finish="STOP")))
    assert deltas[0] == TextDelta("a\ufffdb")


@pytest.mark.parametrize("reason", ["NaN", "1", "true", '{"a":1}'])
def test_non_string_finish_reason_is_malformed_not_completed(reason: str) -> None:
    # Found by tests/fuzz: "finishReason": NaN became "nan", an unknown reason, i.e. completed.
    body = sse(chunk({"text": "a"}), '{"candidates":[{"index":0,"finishReason":' + reason + "}]}")
    deltas = replay([body])
    assert deltas[0] == TextDelta("a")
    assert isinstance(deltas[-1], UpstreamFailure) and "finishReason is not a string" in deltas[-1].message

"""Tests for the sans-IO SSE decoder and encoders (``streamgw.core.sse``)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
import re
from collections.abc import Iterable
from typing import Any

import pytest

from streamgw.core.emitter import ResponseEmitter
from streamgw.core.sse import Snapshot, SSEDecoder, SSEEvent, TruncatedStream, encode_comment, encode_event

BOM = b"\xef\xbb\xbf"

# A Chat Completions stream as OpenAI sends it (tool call + usage chunk + [DONE]).
OPENAI_DATA = [
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741476542,"model":"m","choices":[{"index":0,'
    '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741476542,"model":"m","choices":[{"index":0,'
    '"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather",'
    '"arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741476542,"model":"m","choices":[{"index":0,'
    '"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":\\"Paris\\"}"}}]},"logprobs":null,'
    '"finish_reason":null}],"usage":null}',
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741476542,"model":"m","choices":[{"index":0,'
    '"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}',
    '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1741476542,"model":"m","choices":[],'
    '"usage":{"prompt_tokens":61,"completion_tokens":16,"total_tokens":77,"prompt_tokens_details":'
    '{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}',
    "[DONE]",
]
OPENAI_STREAM = "".join(f"data: {d}\n\n" for d in OPENAI_DATA).encode()

# An Anthropic Messages stream as Anthropic sends it (text block, ping, tool_use block).
ANTHROPIC_DATA = [
    '{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",'
    '"model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,"usage":'
    '{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":2}}}',
    '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    '{"type":"ping"}',
    '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking."}}',
    '{"type":"content_block_stop","index":0}',
    '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01",'
    '"name":"get_weather","input":{}}}',
    '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}',
    '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    '"partial_json":"{\\"city\\": \\"Paris\\"}"}}',
    '{"type":"content_block_stop","index":1}',
    '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":54}}',
    '{"type":"message_stop"}',
]
ANTHROPIC_STREAM = "".join(f"event: {json.loads(d)['type']}\ndata: {d}\n\n" for d in ANTHROPIC_DATA).encode()

OPENAI_EXPECTED = [SSEEvent("", d, None, None) for d in OPENAI_DATA]
ANTHROPIC_EXPECTED = [SSEEvent(json.loads(d)["type"], d, None, None) for d in ANTHROPIC_DATA]
STREAMS = [
    pytest.param(OPENAI_STREAM, OPENAI_EXPECTED, id="openai"),
    pytest.param(ANTHROPIC_STREAM, ANTHROPIC_EXPECTED, id="anthropic"),
]
ENDINGS = [pytest.param(b"\n", id="LF"), pytest.param(b"\r\n", id="CRLF"), pytest.param(b"\r", id="CR")]


def decode(chunks: Iterable[bytes]) -> list[SSEEvent]:
    """Feed every chunk to a fresh decoder, finish it, and return all events."""
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.finish())
    return events


def with_endings(stream: bytes, ending: bytes) -> bytes:
    """Rewrite an LF-only stream with another line ending."""
    return stream.replace(b"\n", ending)


def bytewise(stream: bytes) -> list[bytes]:
    """Split a stream into one-byte chunks."""
    return [stream[i : i + 1] for i in range(len(stream))]


# --- fixtures sanity -------------------------------------------------------------------------------


def test_fixture_payloads_are_json_documents() -> None:
    for data in OPENAI_DATA[:-1] + ANTHROPIC_DATA:
        assert isinstance(json.loads(data), dict)
    assert OPENAI_STREAM.count(b"\n\n") == 6
    assert ANTHROPIC_STREAM.count(b"\n\n") == 11


# --- basic field rules -----------------------------------------------------------------------------


def test_single_event_defaults() -> None:
    assert decode([b"data: hello\n\n"]) == [SSEEvent(event="", data="hello", id=None, retry=None)]


def test_event_is_returned_by_the_feed_that_completes_it() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("", "a", None, None)]
    assert decoder.feed(b"data: b\n\ndata: c\n\nda") == [
        SSEEvent("", "b", None, None),
        SSEEvent("", "c", None, None),
    ]
    assert decoder.feed(b"ta: d\n\n") == [SSEEvent("", "d", None, None)]
    assert decoder.finish() == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"data:x", "x"),
        (b"data: x", "x"),
        (b"data:  x", " x"),
        (b"data: x ", "x "),
        (b"data:\tx", "\tx"),
        (b"data: a:b: c", "a:b: c"),
        (b"data:", ""),
        (b"data: ", ""),
        (b"data", ""),
    ],
)
def test_data_value_and_single_optional_space(line: bytes, expected: str) -> None:
    assert decode([line + b"\n\n"]) == [SSEEvent("", expected, None, None)]


def test_multiple_data_lines_joined_with_lf() -> None:
    assert decode([b"data: one\ndata:two\ndata\ndata:  four\n\n"])[0].data == "one\ntwo\n\n four"


def test_two_empty_data_lines_give_a_single_lf() -> None:
    assert decode([b"data\ndata\n\n"]) == [SSEEvent("", "\n", None, None)]


def test_comments_are_ignored() -> None:
    stream = b": keepalive\n\n:\n\ndata: a\n: in the middle\ndata: b\n\n:no space\n"
    assert decode([stream]) == [SSEEvent("", "a\nb", None, None)]


def test_comment_only_stream_has_no_events() -> None:
    assert decode([b": ping\n\n: ping\n\n"]) == []


def test_unknown_and_wrong_case_fields_are_ignored() -> None:
    stream = b"foo: bar\nData: nope\nEVENT: nope\ndata: yes\nx\n\n"
    assert decode([stream]) == [SSEEvent("", "yes", None, None)]


def test_unknown_lines_are_kept_only_when_asked() -> None:
    stream = b'foo: bar\n{"error": {"code": 500,\nretry: 5\n"status": "x"}}\ndata: yes\n\n'
    keeping = SSEDecoder(keep_unknown_lines=True)
    assert keeping.feed(stream) == [SSEEvent("", "yes", None, 5)]
    assert keeping.unknown_lines == [b"foo: bar", b'{"error": {"code": 500,', b'"status": "x"}}']
    plain = SSEDecoder()
    assert plain.feed(stream) == [SSEEvent("", "yes", None, 5)]
    assert len(plain.unknown_lines) == 0


def test_event_field_names_the_event_and_is_reset_after_dispatch() -> None:
    stream = b"event: first\ndata: 1\n\ndata: 2\n\nevent:third\nevent: fourth\ndata: 3\n\n"
    assert [(e.event, e.data) for e in decode([stream])] == [("first", "1"), ("", "2"), ("fourth", "3")]


def test_event_without_data_is_not_dispatched_but_its_fields_are_reset() -> None:
    stream = b"event: lonely\nretry: 500\n\ndata: x\n\n"
    assert decode([stream]) == [SSEEvent("", "x", None, None)]


def test_blank_lines_alone_dispatch_nothing() -> None:
    assert decode([b"\n\n\n\ndata: x\n\n\n\n"]) == [SSEEvent("", "x", None, None)]


def test_event_line_without_colon_sets_empty_event_name() -> None:
    assert decode([b"event: a\nevent\ndata: x\n\n"]) == [SSEEvent("", "x", None, None)]


# --- id and retry ----------------------------------------------------------------------------------


def test_id_persists_across_events_like_the_last_event_id_buffer() -> None:
    stream = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n"
    assert [e.id for e in decode([stream])] == ["1", "1", "2"]


def test_id_in_a_block_without_data_still_updates_last_event_id() -> None:
    assert [e.id for e in decode([b"id: 7\n\ndata: a\n\n"])] == ["7"]


def test_id_containing_nul_is_ignored() -> None:
    stream = b"id: good\ndata: a\n\nid: b\x00ad\ndata: b\n\n"
    assert [e.id for e in decode([stream])] == ["good", "good"]


def test_empty_id_resets_last_event_id_to_empty_string() -> None:
    stream = b"id: 1\ndata: a\n\nid\ndata: b\n\nid:\ndata: c\n\n"
    assert [e.id for e in decode([stream])] == ["1", "", ""]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"3000", 3000),
        (b"0", 0),
        (b"007", 7),
        (b"", None),
        (b"1.5", None),
        (b"-1", None),
        (b"12a", None),
        (b" 5", None),
        (b"5 ", None),
        ("\uff15".encode(), None),  # FULLWIDTH DIGIT FIVE: a digit, but not ASCII
        ("\u0665".encode(), None),  # ARABIC-INDIC DIGIT FIVE
    ],
)
def test_retry_accepts_only_ascii_digits(value: bytes, expected: int | None) -> None:
    assert decode([b"retry: " + value + b"\ndata: x\n\n"])[0].retry == expected


def test_retry_belongs_to_its_own_event() -> None:
    stream = b"retry: 10\ndata: a\n\ndata: b\n\nretry: 20\nretry: bad\ndata: c\n\n"
    assert [e.retry for e in decode([stream])] == [10, None, 20]


# --- line endings ----------------------------------------------------------------------------------

LOGICAL = (
    b": hello\n\nevent: greet\nid: 42\nretry: 1000\ndata: line one\ndata: line two\n\n"
    b"data: second\n\n\n\nevent: bye\ndata:\n\n"
)
LOGICAL_EXPECTED = [
    SSEEvent("greet", "line one\nline two", "42", 1000),
    SSEEvent("", "second", "42", None),
    SSEEvent("bye", "", "42", None),
]


@pytest.mark.parametrize("ending", ENDINGS)
def test_same_logical_stream_with_each_line_ending(ending: bytes) -> None:
    assert decode([with_endings(LOGICAL, ending)]) == LOGICAL_EXPECTED


@pytest.mark.parametrize("ending", ENDINGS)
def test_each_line_ending_split_at_every_offset(ending: bytes) -> None:
    stream = with_endings(LOGICAL, ending)
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == LOGICAL_EXPECTED, cut
    assert decode(bytewise(stream)) == LOGICAL_EXPECTED


def test_mixed_line_endings() -> None:
    stream = b"data: a\rdata: b\r\ndata: c\n\r\ndata: d\r\rdata: e\n\r"
    assert decode([stream]) == [
        SSEEvent("", "a\nb\nc", None, None),
        SSEEvent("", "d", None, None),
        SSEEvent("", "e", None, None),
    ]


def test_cr_then_lf_in_the_next_chunk_is_one_line_end() -> None:
    # Were the LF read as a second line end, "x" would be dispatched on its own.
    assert decode([b"data: x\r", b"\ndata: y\r\n\r\n"]) == [SSEEvent("", "x\ny", None, None)]


def test_cr_then_lf_across_an_empty_chunk_is_one_line_end() -> None:
    assert decode([b"data: x\r", b"", b"\n", b"data: y\n\n"]) == [SSEEvent("", "x\ny", None, None)]


def test_cr_at_chunk_end_then_cr_is_two_line_ends() -> None:
    assert decode([b"data: x\r", b"\rdata: y\r\r"]) == [
        SSEEvent("", "x", None, None),
        SSEEvent("", "y", None, None),
    ]


def test_cr_and_lf_as_lone_chunks() -> None:
    chunks = [b"data: x", b"\r", b"\n", b"\r", b"\n", b"data: y", b"\r", b"\r"]
    assert decode(chunks) == [SSEEvent("", "x", None, None), SSEEvent("", "y", None, None)]


def test_lf_after_a_consumed_crlf_still_counts() -> None:
    # CR LF | LF: the chunk-leading LF is a real (blank) line, since the CR already had its LF.
    assert decode([b"data: x\r\n", b"\n"]) == [SSEEvent("", "x", None, None)]


def test_lone_cr_in_value_terminates_the_line() -> None:
    assert decode([b"data: a\rb: ignored\rdata: c\n\n"]) == [SSEEvent("", "a\nc", None, None)]


# --- BOM -------------------------------------------------------------------------------------------


def test_leading_bom_is_skipped() -> None:
    assert decode([BOM + b"data: x\n\n"]) == [SSEEvent("", "x", None, None)]


def test_leading_bom_split_byte_by_byte() -> None:
    assert decode(bytewise(BOM + b"event: e\ndata: x\n\n")) == [SSEEvent("e", "x", None, None)]


def test_leading_bom_as_its_own_chunks() -> None:
    assert decode([BOM[:2], BOM[2:], b"data: x\n\n"]) == [SSEEvent("", "x", None, None)]


def test_bom_later_in_the_stream_is_not_skipped() -> None:
    # The second BOM becomes part of the field name "\ufeffdata", an unknown field.
    assert decode([BOM + b"data: a\n\n" + BOM + b"data: b\n\n"]) == [SSEEvent("", "a", None, None)]


def test_only_one_bom_is_skipped() -> None:
    assert decode([BOM + BOM + b"data: x\n\n"]) == []


def test_short_first_chunks_that_are_not_a_bom() -> None:
    assert decode([b"d", b"at", b"a: x\n\n"]) == [SSEEvent("", "x", None, None)]
    assert decode([b"\n", b"data: x\n\n"]) == [SSEEvent("", "x", None, None)]


def test_bom_prefix_that_is_not_a_bom_is_kept() -> None:
    # 0xEF 0xBB then "d": not a BOM, so those bytes stay in the (now unknown) field name.
    assert decode([b"\xef\xbb", b"data: x\n\ndata: y\n\n"]) == [SSEEvent("", "y", None, None)]


def test_stream_of_only_a_bom_finishes_cleanly() -> None:
    assert decode([BOM]) == []


# --- UTF-8 -----------------------------------------------------------------------------------------


def test_multibyte_utf8_split_at_every_offset() -> None:
    stream = "event: grüße\ndata: héllo 👋\ndata: 中文\n\n".encode()
    expected = [SSEEvent("grüße", "héllo 👋\n中文", None, None)]
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == expected, cut
    assert decode(bytewise(stream)) == expected


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode([b"data: a\xffb\xe2\x82\n\n"]) == [SSEEvent("", "a\ufffdb\ufffd", None, None)]


def test_non_ascii_ids_and_separators_are_not_line_ends() -> None:
    # U+2028 / U+0085 are not SSE line terminators.
    stream = "id: ü\ndata: a\u2028b\u0085c\n\n".encode()
    assert decode([stream]) == [SSEEvent("", "a\u2028b\u0085c", "ü", None)]


# --- realistic streams, every chunking -------------------------------------------------------------


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
@pytest.mark.parametrize("ending", ENDINGS)
def test_realistic_stream_whole_and_bytewise(stream: bytes, expected: list[SSEEvent], ending: bytes) -> None:
    stream = with_endings(stream, ending)
    assert decode([stream]) == expected
    assert decode(bytewise(stream)) == expected


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
@pytest.mark.parametrize("ending", ENDINGS)
def test_realistic_stream_every_two_chunk_split(
    stream: bytes, expected: list[SSEEvent], ending: bytes
) -> None:
    stream = with_endings(stream, ending)
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == expected, cut


@pytest.mark.parametrize(("stream", "expected"), STREAMS)
@pytest.mark.parametrize("ending", ENDINGS)
def test_realistic_stream_three_chunk_splits(stream: bytes, expected: list[SSEEvent], ending: bytes) -> None:
    stream = with_endings(stream, ending)
    size = len(stream)
    rng = random.Random(size)
    pairs = [(i, j) for i in range(0, size + 1, 23) for j in range(i, size + 1, 29)]
    for _ in range(300):
        i, j = sorted(rng.sample(range(size + 1), 2))
        pairs.append((i, j))
    for i, j in pairs:
        assert decode([stream[:i], stream[i:j], stream[j:]]) == expected, (i, j)


def test_realistic_openai_payloads_parse() -> None:
    events = decode([OPENAI_STREAM])
    assert events[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in events[:-1]]
    args = chunks[2]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(args) == {"city": "Paris"}
    assert chunks[3]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[4]["usage"]["total_tokens"] == 77


def test_realistic_anthropic_event_names_match_payload_type() -> None:
    events = decode([ANTHROPIC_STREAM])
    assert [e.event for e in events][:3] == ["message_start", "content_block_start", "ping"]
    assert events[-1].event == "message_stop"
    assert all(json.loads(e.data)["type"] == e.event for e in events)


# --- finish() and truncation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b'data: {"a":'], id="mid-line"),
        pytest.param([b"data: x\n"], id="data-without-blank-line"),
        pytest.param([b"data: x\r"], id="data-then-cr-only"),
        pytest.param([b"data: x\r\n"], id="data-then-crlf-only"),
        pytest.param([b"data: a\n\ndata: b\n"], id="second-event-unterminated"),
        pytest.param([b"event: foo\n"], id="event-field-only"),
        pytest.param([b"id: 1\n"], id="id-field-only"),
        pytest.param([b"data: a\n\n: keepal"], id="partial-comment-line"),
        pytest.param([b"data: a\n\nd"], id="one-byte-partial"),
        pytest.param([b"\xef\xbb"], id="partial-bom"),
        pytest.param([OPENAI_STREAM[:-1]], id="openai-missing-last-lf"),
        pytest.param([ANTHROPIC_STREAM[:-30]], id="anthropic-cut"),
    ],
)
def test_finish_detects_truncation(chunks: list[bytes]) -> None:
    decoder = SSEDecoder()
    for chunk in chunks:
        decoder.feed(chunk)
    with pytest.raises(TruncatedStream):
        decoder.finish()


def test_truncation_keeps_events_already_returned() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [SSEEvent("", "a", None, None)]
    with pytest.raises(TruncatedStream):
        decoder.finish()


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"data: x\n\n", id="lf"),
        pytest.param(b"data: x\r\r", id="cr"),
        pytest.param(b"data: x\r\n\r\n", id="crlf"),
        pytest.param(b"data: x\n\n: keepalive\n", id="trailing-comment"),
        pytest.param(b"data: x\n\n\n\n", id="extra-blank-lines"),
        pytest.param(b"event: e\n\n", id="dataless-block-closed"),
        pytest.param(OPENAI_STREAM, id="openai"),
        pytest.param(ANTHROPIC_STREAM, id="anthropic"),
    ],
)
def test_finish_accepts_cleanly_ended_streams(stream: bytes) -> None:
    decoder = SSEDecoder()
    decoder.feed(stream)
    assert decoder.finish() == []


def test_truncated_stream_is_a_value_error() -> None:
    assert issubclass(TruncatedStream, ValueError)


def test_decoder_is_done_after_finish() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: x\n\n")
    decoder.finish()
    with pytest.raises(RuntimeError):
        decoder.feed(b"data: y\n\n")
    with pytest.raises(RuntimeError):
        decoder.finish()


def test_decoder_is_done_even_after_a_truncation_error() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: x")
    with pytest.raises(TruncatedStream):
        decoder.finish()
    with pytest.raises(RuntimeError):
        decoder.feed(b"\n\n")


# --- SSEEvent --------------------------------------------------------------------------------------


def test_decoded_events_are_real_frozen_sseevents() -> None:
    event = decode([b"event: e\nid: 1\nretry: 2\ndata: d\n\n"])[0]
    assert type(event) is SSEEvent
    assert (event.event, event.data, event.id, event.retry) == ("e", "d", "1", 2)
    assert event == SSEEvent("e", "d", "1", 2)
    assert hash(event) == hash(SSEEvent("e", "d", "1", 2))
    assert repr(event) == "SSEEvent(event='e', data='d', id='1', retry=2)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "changed"  # type: ignore[misc]


# --- encoders --------------------------------------------------------------------------------------


def test_encode_event_is_byte_exact() -> None:
    out = encode_event({"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1"}})
    assert out == (
        b"event: response.created\n"
        b'data: {"type":"response.created","sequence_number":0,"response":{"id":"resp_1"}}\n\n'
    )


def test_encode_event_keeps_non_ascii_literal_and_escapes_newlines() -> None:
    out = encode_event({"type": "response.output_text.delta", "delta": "héllo 👋\nbye\r"})
    assert out == (
        b"event: response.output_text.delta\n"
        + 'data: {"type":"response.output_text.delta","delta":"héllo 👋\\nbye\\r"}\n\n'.encode()
    )
    assert out.count(b"\n") == 3
    assert b"\r" not in out


def test_encode_event_rejects_bad_types() -> None:
    with pytest.raises(ValueError):
        encode_event({"type": "a\nb"})
    with pytest.raises(ValueError):
        encode_event({"type": "a\rb"})
    with pytest.raises(TypeError):
        encode_event({"type": 3})
    with pytest.raises(KeyError):
        encode_event({"delta": "x"})


def test_encode_comment_is_byte_exact() -> None:
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert encode_comment("") == b": \n\n"
    assert encode_comment("ümlaut") == ": ümlaut\n\n".encode()


@pytest.mark.parametrize("text", ["a\nb", "a\rb", "\r\n", "trailing\n"])
def test_encode_comment_rejects_line_breaks(text: str) -> None:
    with pytest.raises(ValueError):
        encode_comment(text)


ROUND_TRIP_EVENTS: list[dict[str, Any]] = [
    {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "output": []}},
    {"type": "response.output_text.delta", "sequence_number": 1, "delta": "héllo 👋"},
    {"type": "response.output_text.delta", "sequence_number": 2, "delta": 'line\nbreak\r\u2028 and "quotes"'},
    {"type": "response.completed", "sequence_number": 3, "response": {"usage": {"total_tokens": 5}}},
]


def test_round_trip_encode_then_decode_at_every_split() -> None:
    stream = encode_comment("start") + b"".join(encode_event(e) for e in ROUND_TRIP_EVENTS)
    stream += encode_comment("keepalive")
    for cut in range(len(stream) + 1):
        events = decode([stream[:cut], stream[cut:]])
        assert [e.event for e in events] == [e["type"] for e in ROUND_TRIP_EVENTS], cut
        assert [json.loads(e.data) for e in events] == ROUND_TRIP_EVENTS, cut


# --- randomised comparison with a naive reference parser ------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")


def reference_parse(stream: bytes) -> list[SSEEvent]:
    """A deliberately simple, whole-stream implementation of the WHATWG rules."""
    text = stream.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = _LINE_END.split(text)
    lines.pop()  # text after the last line end is not a line (our streams end with one)
    events: list[SSEEvent] = []
    data: str | None = None
    etype, last_id, retry = "", None, None
    for line in lines:
        if line == "":
            if data is not None:
                events.append(SSEEvent(etype, data.removesuffix("\n"), last_id, retry))
            data, etype, retry = None, "", None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data = (data or "") + value + "\n"
        elif name == "event":
            etype = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all("0" <= c <= "9" for c in value):
            retry = int(value)
    return events


_RANDOM_LINES = [
    "data: plain",
    "data:nospace",
    "data:  two spaces",
    "data",
    "data:",
    "data: héllo 👋",
    "data: a:b",
    "event: custom",
    "event",
    "id: 9",
    "id",
    "id: bad\0id",
    "retry: 250",
    "retry: x1",
    "retry",
    ": comment",
    ":",
    "unknown: field",
    "Data: wrong case",
    "",
    "",
    "",
]


def random_stream(rng: random.Random) -> bytes:
    """Build a random, blank-line-terminated stream with random line endings."""
    lines = [rng.choice(_RANDOM_LINES) for _ in range(rng.randint(0, 25))]
    out = "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in lines).encode()
    # A final LF LF always ends the last line (even after a CR) and then dispatches.
    return (BOM if rng.random() < 0.2 else b"") + out + b"\n\n"


def random_chunks(rng: random.Random, stream: bytes) -> list[bytes]:
    """Cut a stream at random offsets (including empty chunks)."""
    cuts = sorted(rng.randint(0, len(stream)) for _ in range(rng.randint(0, 8)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def test_random_streams_match_reference_parser_under_random_chunking() -> None:
    rng = random.Random(20240917)
    dispatched = 0
    for _ in range(1500):
        stream = random_stream(rng)
        expected = reference_parse(stream)
        dispatched += len(expected)
        assert decode([stream]) == expected, stream
        assert decode(random_chunks(rng, stream)) == expected, stream
    assert dispatched > 1000  # the generator really produces events


# -- the text-delta fast path ------------------------------------------------------------------


def _generic(event: dict[str, Any]) -> bytes:
    payload = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return ("event: " + event["type"] + "\ndata: " + payload + "\n\n").encode()


def _delta(text: str, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "response.output_text.delta", "item_id": "msg_abc", "output_index": 2,
                             "content_index": 1, "delta": text, "logprobs": [], "sequence_number": 17}
    event.update(overrides)
    return event


@pytest.mark.parametrize("text", ["", "plain", 'quo"te\\back', "line\nfeed\r\ttab", "\x00\x1f\x7f",
                                  "é ü 中文 😀", "\u2028\u2029", "</script>"])
def test_text_delta_fast_path_is_byte_identical(text: str) -> None:
    event = _delta(text)
    assert encode_event(event) == _generic(event)
    assert json.loads(encode_event(event).split(b"data: ", 1)[1]) == event


def test_text_delta_fast_path_random_text() -> None:
    rng = random.Random(3)
    alphabet = [chr(c) for c in range(0, 0x250)] + ["😀", "\u2028", '"', "\\"]
    for _ in range(500):
        event = _delta("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))),
                       sequence_number=rng.randint(0, 10**6), output_index=rng.randint(0, 50))
        assert encode_event(event) == _generic(event)


@pytest.mark.parametrize("overrides", [
    {"logprobs": [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]},
    {"output_index": True},
    {"obfuscation": "xyz"},
    {"delta": None},
])
def test_other_delta_shapes_take_the_generic_path(overrides: dict[str, Any]) -> None:
    event = _delta("text", **overrides)
    assert encode_event(event) == _generic(event)


# --- the generic encoder and the shared snapshot -----------------------------------------------------


def test_generic_encoder_matches_json_dumps_on_every_value_kind() -> None:
    event = {"type": "x", "f": 1.0, "g": -2.5e-300, "big": 10**30, "neg": -0, "t": True, "n": None,
             "nested": {"list": [1, "é", {"deep": [[], {}]}], "nan": math.nan, "inf": math.inf},
             "esc": "\u2028\x00\"\\", "emoji": "😀"}
    assert encode_event(event) == _generic(event)


def test_generic_encoder_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_event({"type": "x", "value": object()})
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_event({"type": "x", "value": {1, 2}})


def _created_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    emitter = ResponseEmitter(model="m", provider="p", echo={"metadata": {"k": "vé"}, "temperature": 0.7,
                                                             "tools": [{"type": "function", "name": "f"}]})
    created, in_progress = emitter.start()
    return created, in_progress


def test_created_and_in_progress_share_one_snapshot_encoded_once() -> None:
    created, in_progress = _created_pair()
    snapshot = created["response"]
    assert isinstance(snapshot, Snapshot) and in_progress["response"] is snapshot
    assert snapshot.text is None
    first = encode_event(created)
    assert snapshot.text is not None  # kept for the next event that carries it
    second = encode_event(in_progress)
    assert first == _generic(created) and second == _generic(in_progress)
    assert json.loads(second.split(b"data: ", 1)[1])["response"]["output"] == []


def test_a_snapshot_in_another_shape_takes_the_generic_path() -> None:
    created, _ = _created_pair()
    extra = {**created, "extra": 1}
    assert encode_event(extra) == _generic(extra)
    reordered = {"type": created["type"], "sequence_number": 0, "response": created["response"]}
    assert encode_event(reordered) == _generic(reordered)
    flagged = {**created, "sequence_number": True}
    assert encode_event(flagged) == _generic(flagged)

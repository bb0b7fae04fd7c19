"""Native Responses relay: golden transcripts through the translator and ``RelayEmitter``.

Each ``tests/fixtures/streams/openai/<name>.sse`` is an upstream body as a Responses
server sends it (LF line ends); ``<name>.out.sse`` is exactly what the gateway must send
for it (provider ``oai``).  Every transcript is replayed with LF, CRLF and CR line ends:
whole, one byte at a time, and split into two chunks at every offset (around every line
end for CRLF and CR); every replay must give the identical bytes.  Independently of the
goldens, a clean transcript must come out as its input with only ``"provider":"oai"``
added to each ``response`` snapshot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from streamgw.core.deltas import UpstreamFailure
from streamgw.core.relay import RelayedEvent, RelayEmitter, RelayOutput
from streamgw.core.sse import SSEDecoder, encode_event
from streamgw.providers.base import Dialect, WireDialect
from streamgw.providers.openai_responses import DIALECT, ResponsesRelayTranslator
from streamgw.providers.registry import dialects
from streamgw.testing.invariants import TERMINAL, check_events

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "streams" / "openai"
NAMES = sorted(p.name.removesuffix(".sse") for p in FIXTURES.glob("*.sse") if not p.name.endswith(".out.sse"))
LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}
PROVIDER = "oai"
SECRET = "upstream-secret-not-key-shaped"

#: transcripts with a proper upstream ending and nothing for the relay to repair
CLEAN = (
    "text", "function_call", "reasoning_summary", "parallel_tool_calls", "incomplete_length", "refusal",
    "non_ascii", "keepalive_and_builtin_tool", "background_queued", "upstream_failed_after_item",
)
#: transcripts that fail before any output: the translator reports one failure and drops the snapshots
#: (the engine answers with an HTTP error), so the relay alone sends only its own response.failed
BEFORE_OUTPUT = ("error_event_first", "eof_after_snapshots", "not_an_event", "failed_before_output")
#: transcripts that must end in our own (or a repaired) response.failed: name -> (code, message part)
FAILURES = {
    "error_event": ("rate_limit_exceeded", "Rate limit reached for gpt-5-mini"),
    "error_event_first": ("rate_limit_exceeded", "You exceeded your current quota"),
    "cut_mid_event": ("server_error", "cut off"),
    "cut_in_function_call": ("server_error", "without a terminal event"),
    "cut_in_reasoning_text": ("server_error", "without a terminal event"),
    "malformed_json": ("server_error", "malformed upstream event"),
    "not_an_event": ("server_error", "not a Responses event object"),
    "eof_without_terminal": ("server_error", "without a terminal event"),
    "eof_after_snapshots": ("server_error", "ended before any output"),
    "failed_before_output": ("rate_limit_exceeded", "Rate limit reached for requests."),
    "upstream_failed_open_item": ("server_error", "The model failed to generate a response."),
}


# --- helpers -------------------------------------------------------------------------------------


def new_emitter() -> RelayEmitter:
    ids = count()
    return RelayEmitter(model="oai/gpt-5-mini", provider=PROVIDER, echo={"tools": []},
                        new_id=lambda prefix: f"{prefix}placeholder{next(ids)}", clock=lambda: 1741476500.0)


def relay(chunks: Iterable[bytes]) -> bytes:
    """Drive translator and emitter the way ``ResponseRun`` does; return the bytes sent."""
    translator = ResponsesRelayTranslator(secrets=[SECRET])
    emitter = new_emitter()
    out: list[RelayOutput] = emitter.start()
    for chunk in chunks:
        out += emitter.feed(translator.feed(chunk))
    out += emitter.feed(translator.finish())
    out += emitter.finish()
    assert emitter.done
    return b"".join(encode_event(event) for event in out)


def with_line_ends(body: bytes, end: bytes) -> bytes:
    return body.replace(b"\n", end)


def splits(body: bytes, *, every: bool) -> Iterator[list[bytes]]:
    """Whole, byte by byte, then two chunks at every offset (``every``) or around each CR/LF.

    Away from line ends a CRLF or CR body splits exactly like its LF twin, so for those
    the offsets next to a line end (where a CR may wait for its LF) are the ones to try.
    """
    yield [body]
    yield [body[i : i + 1] for i in range(len(body))]
    near = {i + d for i, byte in enumerate(body) if byte in b"\r\n" for d in (-1, 0, 1, 2)}
    for cut in range(1, len(body)):
        if every or cut in near:
            yield [body[:cut], body[cut:]]


def decode(body: bytes) -> list[dict[str, Any]]:
    """Parse our output, checking the exact framing: ``event:`` equal to ``data.type``, one data line."""
    decoder = SSEDecoder()
    events = []
    for sse in decoder.feed(body):
        payload = json.loads(sse.data)
        assert sse.event == payload["type"]
        events.append(payload)
    decoder.finish()
    assert body.count(b"\n\n") == len(events) and b"\r" not in body
    assert body.count(b"\ndata: ") == len(events), "one data: line per event"
    return events


_SNAPSHOT = re.compile(
    rb'^(data: \{"type":"response\.(?:created|in_progress|queued|completed|incomplete|failed)","response":\{.*)'
    rb'(\},"sequence_number":\d+\})$',
    re.MULTILINE,
)


def with_provider(body: bytes) -> bytes:
    """The input with comments dropped and ``"provider"`` added to each snapshot, by text alone."""
    blocks = [block for block in body.split(b"\n\n") if block and not block.startswith(b":")]
    text = b"".join(block + b"\n\n" for block in blocks)
    return _SNAPSHOT.sub(rb'\1,"provider":"' + PROVIDER.encode() + rb'"\2', text)


def compact(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def without_provider(event: dict[str, Any]) -> dict[str, Any]:
    if "response" not in event:
        return event
    response = {key: value for key, value in event["response"].items() if key != "provider"}
    return {**event, "response": response}


def golden(name: str) -> bytes:
    return (FIXTURES / f"{name}.out.sse").read_bytes()


# --- golden transcripts --------------------------------------------------------------------------


def test_every_transcript_is_classified() -> None:
    others = {"after_terminal", "completed_empty_output", "no_event_lines", "odd_framing"}
    assert set(NAMES) == set(CLEAN) | set(FAILURES) | others
    assert all((FIXTURES / f"{name}.out.sse").is_file() for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("line_end", sorted(LINE_ENDS))
def test_transcript_gives_the_golden_output_for_every_split(name: str, line_end: str) -> None:
    body = with_line_ends((FIXTURES / f"{name}.sse").read_bytes(), LINE_ENDS[line_end])
    expected = golden(name)
    for chunks in splits(body, every=line_end == "lf"):
        assert relay(chunks) == expected, f"{name} split into {len(chunks)} chunks ({line_end})"


@pytest.mark.parametrize("name", CLEAN)
def test_clean_transcripts_relay_byte_for_byte_except_provider(name: str) -> None:
    body = (FIXTURES / f"{name}.sse").read_bytes()
    out = relay([body])
    assert out == with_provider(body)
    assert out != body.replace(b": keepalive\n\n", b"")  # the provider injection did happen
    snapshots = [e for e in decode(out) if "response" in e]
    assert snapshots and all(e["response"]["provider"] == PROVIDER for e in snapshots)


@pytest.mark.parametrize("name", NAMES)
def test_outputs_pass_the_stream_invariants(name: str) -> None:
    events = decode(golden(name))
    terminals = [e for e in events if e["type"] in TERMINAL]
    assert len(terminals) == 1 and events[-1] is terminals[0]
    assert [e["sequence_number"] for e in events] == list(range(events[0]["sequence_number"], len(events)))
    if name == "background_queued" or name in BEFORE_OUTPUT:
        return  # check_events wants created+in_progress first; asserted in the tests below
    final = check_events(events)
    assert final["provider"] == PROVIDER


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_failures_end_with_one_response_failed_numbered_next(name: str) -> None:
    upstream = [e.data for e in SSEDecoder().feed((FIXTURES / f"{name}.sse").read_bytes())]
    events = decode(golden(name))
    final = events[-1]
    code, message = FAILURES[name]
    assert final["type"] == "response.failed"
    assert final["response"]["error"]["code"] == code and message in final["response"]["error"]["message"]
    assert final["response"]["usage"] is None and final["response"]["status"] == "failed"
    # A prefix went out exactly as it came (snapshots aside), then only our own events.
    texts = [compact(without_provider(event)) for event in events]
    relayed = next(i for i, text in enumerate(texts) if text not in upstream)
    assert texts[:relayed] == upstream[:relayed]
    assert not set(texts[relayed:]) & set(upstream)
    assert final["sequence_number"] == events[0]["sequence_number"] + len(events) - 1


@pytest.mark.parametrize("name", BEFORE_OUTPUT)
def test_a_failure_before_output_is_our_failed_alone_at_zero(name: str) -> None:
    events = decode(golden(name))
    assert [e["type"] for e in events] == ["response.failed"]
    response = events[0]["response"]
    assert events[0]["sequence_number"] == 0
    assert response["id"] == "resp_placeholder0" and response["model"] == "oai/gpt-5-mini"
    assert response["provider"] == PROVIDER and response["output"] == []


def test_background_stream_keeps_queued() -> None:
    events = decode(golden("background_queued"))
    assert [e["type"] for e in events[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert events[-1]["response"]["background"] is True and events[-1]["type"] == "response.completed"


def test_open_items_are_closed_as_incomplete_before_our_failed() -> None:
    events = decode(golden("cut_in_reasoning_text"))
    kinds = [e["type"] for e in events[-4:]]
    assert kinds == ["response.reasoning_text.done", "response.content_part.done",
                     "response.output_item.done", "response.failed"]
    item = events[-2]["item"]
    assert item["status"] == "incomplete" and item["content"] == [{"type": "reasoning_text", "text": "Let me think"}]
    assert events[-1]["response"]["output"] == [item]


def test_upstream_failed_with_an_open_item_is_repaired() -> None:
    upstream = list(SSEDecoder().feed((FIXTURES / "upstream_failed_open_item.sse").read_bytes()))
    events = decode(golden("upstream_failed_open_item"))
    assert len(events) == len(upstream) + 3  # text done, part done, item done inserted before the terminal
    final = events[-1]["response"]
    assert final["error"] == {"code": "server_error", "message": "The model failed to generate a response."}
    assert final["output"][0]["content"][0]["text"] == "Partial answer"


def test_events_after_the_terminal_are_dropped() -> None:
    events = decode(golden("after_terminal"))
    assert events[-1]["type"] == "response.completed"
    assert "late" not in golden("after_terminal").decode()


def test_empty_terminal_output_is_rebuilt_from_done_items() -> None:
    events = decode(golden("completed_empty_output"))
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert events[-1]["response"]["output"] == done and done


def test_unusual_framing_is_normalised() -> None:
    events = decode(golden("no_event_lines"))
    assert events[-1]["type"] == "response.completed"
    odd = golden("odd_framing").decode()
    assert "event: message" not in odd and '"type": ' not in odd  # renamed, and re-serialised compactly
    assert [e["sequence_number"] for e in decode(golden("odd_framing"))] == list(range(9))


# --- translator ----------------------------------------------------------------------------------

CREATED = b'event: response.created\ndata: {"type":"response.created","response":{"id":"r"},"sequence_number":0}\n\n'
DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",  "delta":"x"}\n\n'


def test_translator_passes_data_through_untouched() -> None:
    translator = ResponsesRelayTranslator()
    (item,) = translator.feed(DELTA)
    assert item == RelayedEvent("response.output_text.delta", '{"type":"response.output_text.delta",  "delta":"x"}', {})
    assert translator.feed(b": keepalive\n\nevent: ping\n\n") == []
    assert translator.finish() == []


def test_translator_holds_snapshots_until_the_first_output() -> None:
    translator = ResponsesRelayTranslator()
    assert translator.feed(CREATED) == []
    out = translator.feed(DELTA + CREATED.replace(b"created", b"in_progress"))
    assert [item.type for item in out if isinstance(item, RelayedEvent)] == [
        "response.created", "response.output_text.delta", "response.in_progress"]


@pytest.mark.parametrize(
    ("tail", "failure"),
    [
        (b'event: error\ndata: {"type":"error","code":"rate_limit_exceeded","message":"slow"}\n\n',
         UpstreamFailure("rate_limit_exceeded", "slow")),
        (b'event: response.failed\ndata: {"type":"response.failed","response":{"error":'
         b'{"code":"invalid_prompt","message":"flagged"}}}\n\n', UpstreamFailure("invalid_prompt", "flagged")),
        (b"data: {oops}\n\n", None),
        (b"", UpstreamFailure("server_error", "upstream stream ended before any output")),
        (b"data: {", UpstreamFailure("server_error", "upstream stream was cut off "
                                                     "(event stream ended in the middle of a line)")),
    ],
)
def test_a_failure_before_output_is_one_failure_without_the_snapshots(
    tail: bytes, failure: UpstreamFailure | None
) -> None:
    translator = ResponsesRelayTranslator()
    out = translator.feed(CREATED + tail) + translator.finish()
    assert len(out) == 1 and isinstance(out[0], UpstreamFailure)
    if failure is None:
        assert out[0].code == "server_error" and out[0].message.startswith("malformed upstream event")
    else:
        assert out[0] == failure
    assert translator.feed(DELTA) == [] and translator.finish() == []


def test_after_output_failures_follow_the_events_and_end_the_translation() -> None:
    translator = ResponsesRelayTranslator()
    error = b'event: error\ndata: {"type":"error","code":"server_error","message":"boom"}\n\n'
    out = translator.feed(CREATED + DELTA + error + DELTA)
    assert [type(item).__name__ for item in out] == ["RelayedEvent", "RelayedEvent", "UpstreamFailure"]
    assert translator.finish() == []


def test_translator_redacts_secrets_in_error_messages() -> None:
    translator = ResponsesRelayTranslator(secrets=[SECRET, ""])
    failed = {"type": "response.failed", "response": {"error": {"code": "server_error", "message": f"k={SECRET}"}}}
    body = DELTA + f"event: response.failed\ndata: {json.dumps(failed)}\n\n".encode()
    _, relayed = translator.feed(body)
    assert isinstance(relayed, RelayedEvent)
    assert relayed.payload["response"]["error"]["message"] == "k=[redacted]"  # what the relay re-serialises
    early = ResponsesRelayTranslator(secrets=[SECRET])
    (failure,) = early.feed(f'data: {{"type":"error","message":"bad {SECRET}"}}\n\n'.encode())
    assert failure == UpstreamFailure("server_error", "bad [redacted]")


def test_dialect_is_registered_and_relays() -> None:
    dialect: Dialect = dialects()["openai"]
    assert dialect is DIALECT and isinstance(dialect, WireDialect)
    assert (dialect.name, dialect.relays_events, dialect.needs_image_bytes) == ("openai", True, False)


# --- found by tests/fuzz -------------------------------------------------------------------------


def test_a_configured_secret_is_redacted_from_any_relayed_event() -> None:
    # An ``error`` event whose type was garbled is relayed as an unknown event, verbatim: the
    # upstream's echo of our key went out with it.
    odd = b'event: x\ndata: {"type":"x.unknown","message":"bad key ' + SECRET.encode() + b'"}\n\n'
    wire = relay([CREATED, DELTA, odd])
    assert SECRET.encode() not in wire and b'"message":"bad key [redacted]"' in wire


def test_numbers_beyond_a_double_are_malformed_not_infinity() -> None:
    # 1e999 parsed to inf and a re-serialised snapshot carried ``Infinity``, which is no JSON.
    translator = ResponsesRelayTranslator()
    [failure] = translator.feed(CREATED.replace(b'"id":"r"', b'"id":"r","temperature":1e999') + DELTA)
    assert isinstance(failure, UpstreamFailure) and "out of the range" in failure.message

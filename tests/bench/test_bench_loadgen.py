"""The load generator's parsing and bookkeeping (no timing thresholds: a benchmark is not a test)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from bench.loadgen import (
    Exchange,
    PhaseSpec,
    ProtocolError,
    ResponseParser,
    SseScanner,
    TargetSpec,
    TargetTally,
    check_samples,
    parse_sse_events,
    run_phases,
)
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.server import serving_in_thread

# ------------------------------------------------------------------------------------------ helpers


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def feed_all(parser: ResponseParser, data: bytes, splits: list[int]) -> bytes:
    body = b""
    last = 0
    for cut in [*splits, len(data)]:
        body += parser.feed(data[last:cut])
        last = cut
    return body


def every_split(data: bytes) -> Iterator[list[int]]:
    yield []
    yield list(range(1, len(data)))  # one byte at a time
    for i in range(1, len(data)):
        yield [i]


def responses_event(kind: str, seq: int, **extra: Any) -> bytes:
    payload = {"type": kind, "sequence_number": seq, **extra}
    return b"event: %b\ndata: %b\n\n" % (kind.encode(), json.dumps(payload).encode())


def tally(*, dialect: str = "responses", stream: bool = True, measure_from: float = 0.0,
          samples: int = 5) -> TargetTally:
    return TargetTally("t", dialect, stream, measure_from, gap_cap=1000, sample_cap=samples)


# ------------------------------------------------------------------------------------ HTTP/1.1


BODY = chunked(b"data: a\n\n", b"data: bb\n\n", b"x" * 300)


@pytest.mark.parametrize("splits", list(every_split(SSE_HEAD + BODY)))
def test_chunked_response_any_split(splits: list[int]) -> None:
    parser = ResponseParser()
    body = feed_all(parser, SSE_HEAD + BODY, splits)
    assert body == b"data: a\n\ndata: bb\n\n" + b"x" * 300
    assert parser.done and parser.status == 200 and parser.keep_alive
    assert parser.headers[b"content-type"] == b"text/event-stream"


def test_content_length_and_interim_response() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
    for splits in every_split(data):
        parser = ResponseParser()
        assert feed_all(parser, data, splits) == b"hello"
        assert parser.status == 404 and parser.done and not parser.keep_alive


def test_body_until_close() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\nabc") == b"abc"
    assert parser.feed(b"def") == b"def"
    assert not parser.done and not parser.keep_alive
    parser.feed_eof()
    assert parser.done


def test_no_body_statuses() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n") == b""
    assert parser.done


def test_chunk_extensions_and_trailers() -> None:
    parser = ResponseParser()
    data = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n"
    assert parser.feed(data) == b"abc"
    assert parser.done


@pytest.mark.parametrize("data", [
    b"SPDY/3 200 OK\r\n\r\n",
    b"HTTP/1.1 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nabX",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nabc",
])
def test_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(data)


def test_early_close_is_an_error() -> None:
    parser = ResponseParser()
    parser.feed(SSE_HEAD + b"5\r\nab")
    with pytest.raises(ProtocolError):
        parser.feed_eof()


# ----------------------------------------------------------------------------------------- SSE


def scan(data: bytes, splits: list[int]) -> list[bytes]:
    scanner = SseScanner()
    blocks: list[bytes] = []
    last = 0
    for cut in [*splits, len(data)]:
        blocks += scanner.feed(data[last:cut])
        last = cut
    return blocks


STREAM = b": keepalive\n\nevent: a\ndata: 1\n\ndata: 2\ndata: 3\n\n\n\n: c\ndata: 4\n\nid: 7\n\n"


@pytest.mark.parametrize("splits", list(every_split(STREAM)))
def test_sse_blocks_any_split(splits: list[int]) -> None:
    assert scan(STREAM, splits) == [b"event: a\ndata: 1", b"data: 2\ndata: 3", b": c\ndata: 4"]


@pytest.mark.parametrize("splits", list(every_split(STREAM.replace(b"\n", b"\r\n"))))
def test_sse_crlf_any_split(splits: list[int]) -> None:
    assert scan(STREAM.replace(b"\n", b"\r\n"), splits) == [b"event: a\ndata: 1", b"data: 2\ndata: 3",
                                                            b": c\ndata: 4"]


def test_sse_lone_cr_and_pending() -> None:
    scanner = SseScanner()
    assert scanner.feed(b"data: x\r\rdata: y") == [b"data: x"]
    assert scanner.pending


def test_parse_sse_events() -> None:
    blocks = [b"event: x\ndata: {\"a\":\ndata: 1}", b"data:{\"b\":2}", b"data: [DONE]"]
    assert parse_sse_events(blocks) == [{"a": 1}, {"b": 2}]


# ------------------------------------------------------------------------------------ exchange


def gateway_stream(terminal: str = "response.completed") -> list[bytes]:
    """A well-formed Responses stream of one text message (two deltas), split into reads."""
    rid, item = "resp_1", "msg_1"
    response = {"id": rid, "object": "response", "status": "in_progress", "output": []}
    msg = {"id": item, "type": "message", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    done_msg = {**msg, "status": "completed", "content": [{**part, "text": "ab"}]}
    status = terminal.removeprefix("response.")
    final = {**response, "status": status, "output": [done_msg] if status != "failed" else []}
    head = [
        responses_event("response.created", 0, response=response),
        responses_event("response.in_progress", 1, response=response),
        responses_event("response.output_item.added", 2, output_index=0, item=msg),
        responses_event("response.content_part.added", 3, output_index=0, item_id=item, content_index=0,
                        part=part),
    ]
    d = {"output_index": 0, "item_id": item, "content_index": 0}
    return [
        b"".join(head) + responses_event("response.output_text.delta", 4, delta="a", **d),
        responses_event("response.output_text.delta", 5, delta="b", **d),
        responses_event("response.output_text.done", 6, text="ab", **d)
        + responses_event("response.content_part.done", 7, part={**part, "text": "ab"}, **d)
        + responses_event("response.output_item.done", 8, output_index=0, item=done_msg)
        + responses_event(terminal, 9, response=final),
    ]


def run_exchange(ex: Exchange, reads: list[bytes], status: int = 200) -> None:
    ex.head(status, 1.0)
    for i, data in enumerate(reads):
        ex.body(data, 2.0 + i)
    ex.finish(9.0)


def test_exchange_measures_a_responses_stream() -> None:
    t = tally()
    ex = Exchange(t, 0.5)
    run_exchange(ex, gateway_stream())
    assert ex.error == ""
    assert ex.events == 10
    assert (ex.t_head, ex.t_first, ex.t_token, ex.t_end) == (1.0, 2.0, 2.0, 9.0)
    assert ex.max_gap == 1.0
    assert t.gaps == [0.0] * 4 + [1.0, 1.0, 0.0, 0.0, 0.0]
    rec = t.records
    assert rec["first_event"] == [1.5] and rec["total"] == [8.5] and rec["events"] == [10]
    assert sum(t.done_hist.values()) == 1 and sum(t.event_hist.values()) == 10
    assert check_samples(t) == {"checked": 1, "failures": []}


@pytest.mark.parametrize(("terminal", "error"), [("response.failed", "failed"), ("response.incomplete", "")])
def test_exchange_terminal_verdicts(terminal: str, error: str) -> None:
    ex = Exchange(tally(), 0.0)
    run_exchange(ex, gateway_stream(terminal))
    assert ex.error == error


def test_exchange_without_terminal_and_bad_status() -> None:
    t = tally()
    ex = Exchange(t, 0.0)
    run_exchange(ex, gateway_stream()[:2])
    assert ex.error == "no_terminal"
    ex = Exchange(t, 0.0)
    run_exchange(ex, [b'{"error": {}}'], status=502)
    assert ex.error == "status_502"
    assert t.errors == {"no_terminal": 1, "status_502": 1}
    assert not t.samples  # failed exchanges are not sampled


def test_sampled_stream_that_breaks_invariants_is_reported() -> None:
    t = tally()
    reads = gateway_stream()
    run_exchange(Exchange(t, 0.0), [reads[0], reads[2]])  # a delta is missing: text no longer joins
    result = check_samples(t)
    assert result["checked"] == 1 and len(result["failures"]) == 1


def test_exchange_chat_dialect_first_token() -> None:
    role = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
    tok = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    t = tally(dialect="chat")
    ex = Exchange(t, 0.0)
    run_exchange(ex, [role, tok, b"data: [DONE]\n\n"])
    assert ex.error == "" and ex.events == 3 and ex.t_first == 2.0 and ex.t_token == 3.0
    ex = Exchange(t, 0.0)
    run_exchange(ex, [role, b'data: {"error": {"message": "boom"}}\n\n'])
    assert ex.error == "failed"


def test_exchange_non_streamed() -> None:
    t = tally(stream=False)
    ex = Exchange(t, 0.0)
    run_exchange(ex, [b'{"object": "response", "status": "completed",', b' "output": []}'])
    assert ex.error == "" and ex.events == 0 and ex.t_first == 2.0
    assert check_samples(t) == {"checked": 1, "failures": []}
    ex = Exchange(t, 0.0)
    run_exchange(ex, [b'{"object": "response", "status'])
    assert ex.error == "bad_body"


def test_warmup_cancel_and_hold_are_not_records() -> None:
    t = tally(measure_from=10.0, samples=1)
    run_exchange(Exchange(t, 5.0), gateway_stream())  # warm-up: counted in the histograms only
    assert t.records["start"] == [] and sum(t.done_hist.values()) == 1
    ex = Exchange(t, 11.0)
    ex.head(200, 11.5)
    ex.body(gateway_stream()[0], 12.0)
    ex.cancel(12.5)
    assert t.records["cancel_at"] == [12.5] and t.records["error"] == [""] and not t.samples
    held = Exchange(t, 13.0)
    held.hold(14.0)
    assert t.held == 1 and len(t.records["start"]) == 1


def test_pending_gate_released_once() -> None:
    released: list[int] = []
    ex = Exchange(tally(), 0.0, lambda: released.append(1))
    ex.head(200, 1.0)
    ex.fail("reset", 2.0)
    assert released == [1] and ex.error == "reset"


def test_phase_spec_json_round_trip() -> None:
    target = TargetSpec("g", "http://127.0.0.1:1/v1/responses", "{}", headers=(("authorization", "Bearer k"),))
    spec = PhaseSpec("p", (target,), 4, duration=1.0, cancel_after_events=3)
    assert PhaseSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


# ------------------------------------------------------------------------- against a real server


def test_load_against_the_chat_mock() -> None:
    mock = ChatCompletionsMock()
    with serving_in_thread(lambda: mock.handle, stats=mock.stats) as port:
        body = json.dumps({"model": "text:tokens=5", "messages": [{"role": "user", "content": "hi"}],
                           "stream": True})
        target = TargetSpec("direct", f"http://127.0.0.1:{port}/v1/chat/completions", body, "chat")
        cancel_body = body.replace("tokens=5", "tokens=50,token_delay=0.01")
        cancel = TargetSpec("cancel", target.url, cancel_body, "chat")
        phases = [PhaseSpec("load", (target,), 3, requests=4),
                  PhaseSpec("cancel", (cancel,), 1, requests=2, cancel_after_events=3)]
        load, cancelled = trio.run(run_phases, phases)
    records = load["targets"][0]["records"]
    assert len(records["start"]) == 12 and set(records["error"]) == {""}
    assert set(records["events"]) == {8}  # role, 5 tokens, finish, [DONE]
    assert all(t is not None for t in records["first_token"])
    rec = cancelled["targets"][0]["records"]
    assert all(at is not None for at in rec["cancel_at"]) and set(rec["events"]) == {3}
    assert cancelled["targets"][0]["errors"] == {}

"""``RelayEmitter``: relaying native Responses events, event for event, with one terminal event."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from streamgw.core.deltas import UpstreamFailure
from streamgw.core.relay import (
    RelayedEvent,
    RelayEmitter,
    RelayOutput,
    decode_event,
    error_event_failure,
    failed_event_failure,
    failure_code,
)
from streamgw.core.sse import encode_event
from streamgw.testing.invariants import check_events

MSG = "msg_1"


def ev(payload: dict[str, Any]) -> RelayedEvent:
    """An upstream event as the translator hands it over (compact JSON, parsed once)."""
    item = decode_event(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    assert isinstance(item, RelayedEvent)
    return item


def snapshot(kind: str, seq: int, **fields: Any) -> RelayedEvent:
    response = {"id": "resp_up", "object": "response", "status": "in_progress", "error": None,
                "model": "gpt-up", "output": [], "usage": None, **fields}
    return ev({"type": kind, "response": response, "sequence_number": seq})


def opening() -> list[RelayedEvent]:
    return [snapshot("response.created", 0), snapshot("response.in_progress", 1)]


def message_start(seq: int = 2) -> list[RelayedEvent]:
    item = {"id": MSG, "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    return [
        ev({"type": "response.output_item.added", "output_index": 0, "item": item, "sequence_number": seq}),
        ev({"type": "response.content_part.added", "item_id": MSG, "output_index": 0, "content_index": 0,
            "part": part, "sequence_number": seq + 1}),
    ]


def text_delta(text: str, seq: int) -> RelayedEvent:
    return ev({"type": "response.output_text.delta", "item_id": MSG, "output_index": 0, "content_index": 0,
               "delta": text, "logprobs": [], "obfuscation": "abc", "sequence_number": seq})


def emitter() -> RelayEmitter:
    return RelayEmitter(model="client/model", provider="oai", echo={"tools": [], "store": True},
                        new_id=lambda prefix: prefix + "ours", clock=lambda: 1000.0)


def as_dicts(events: list[RelayOutput]) -> list[dict[str, Any]]:
    """What a client parses: every event through the SSE encoder and back."""
    out = []
    for event in events:
        data = encode_event(event).decode().split("\ndata: ", 1)[1].removesuffix("\n\n")
        out.append(json.loads(data))
    return out


def test_start_is_empty_and_the_upstream_snapshots_come_first() -> None:
    em = emitter()
    assert em.start() == []
    first = message_start()
    out = em.feed([*opening(), first[0]])
    assert [e["type"] if isinstance(e, dict) else e.type for e in out] == [
        "response.created", "response.in_progress", "response.output_item.added"]
    assert em.output_started and out[2] is first[0] and not em.done


def test_non_snapshot_events_are_passed_through_as_the_same_objects() -> None:
    em = emitter()
    em.feed([*opening(), *message_start()])
    delta = text_delta("Hi", 4)
    out = em.feed([delta])
    assert out == [delta] and out[0] is delta
    assert encode_event(delta) == b"event: response.output_text.delta\ndata: " + delta.data.encode() + b"\n\n"
    assert em.sequence_number == 5


def test_snapshots_get_the_provider_and_keep_everything_else() -> None:
    em = emitter()
    created, in_progress = opening()
    out = as_dicts(em.feed([created, in_progress, *message_start()]))
    assert out[0] == {**json.loads(created.data), "response": {**json.loads(created.data)["response"],
                                                                "provider": "oai"}}
    assert out[1]["response"]["provider"] == "oai" and out[1]["sequence_number"] == 1
    assert em.response["id"] == "resp_up" and em.response["provider"] == "oai"


def test_in_progress_is_a_fresh_copy_of_the_latest_snapshot_without_output() -> None:
    em = emitter()
    em.feed([*opening(), *message_start()])
    snap = em.in_progress()
    assert snap == {**em.response, "status": "in_progress", "output": [], "usage": None}
    assert snap["id"] == "resp_up" and snap is not em.in_progress()
    snap["id"] = "changed"
    assert em.response["id"] == "resp_up"


def complete_stream(em: RelayEmitter) -> list[RelayOutput]:
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": "Hi there"}
    item = {"id": MSG, "type": "message", "status": "completed", "content": [part], "role": "assistant"}
    usage = {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5,
             "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    base = {"item_id": MSG, "output_index": 0, "content_index": 0}
    return em.feed([
        *opening(), *message_start(), text_delta("Hi", 4), text_delta(" there", 5),
        ev({"type": "response.output_text.done", **base, "text": "Hi there", "logprobs": [], "sequence_number": 6}),
        ev({"type": "response.content_part.done", **base, "part": part, "sequence_number": 7}),
        ev({"type": "response.output_item.done", "output_index": 0, "item": item, "sequence_number": 8}),
        snapshot("response.completed", 9, status="completed", output=[item], usage=usage),
    ])


def test_a_whole_stream_and_the_final_response() -> None:
    em = emitter()
    events = as_dicts(complete_stream(em))
    final = check_events(events)
    assert em.done and em.response == final
    assert final["provider"] == "oai" and final["status"] == "completed"
    assert em.feed([text_delta("late", 10)]) == [] and em.finish() == [] and em.fail("x", "y") == []


def test_upstream_failure_before_output_reads_like_the_emitter() -> None:
    em = emitter()
    error = {"code": "rate_limit_exceeded", "message": "slow down"}
    out = em.feed([*opening(), snapshot("response.failed", 2, status="failed", error=error)])
    assert [e["type"] for e in as_dicts(out)] == ["response.created", "response.in_progress", "response.failed"]
    assert em.done and not em.output_started
    assert em.response["status"] == "failed" and em.response["error"] == error


def test_terminal_without_status_or_error_gets_them() -> None:
    em = emitter()
    created = snapshot("response.created", 0)
    bare = ev({"type": "response.completed", "response": {"id": "resp_up", "output": []}, "sequence_number": 1})
    em.feed([created, bare])
    assert em.response["status"] == "completed" and em.response["error"] is None


def test_bare_error_event_becomes_failed_in_its_place() -> None:
    em = emitter()
    em.feed([*opening(), *message_start()])
    error = ev({"type": "error", "code": "rate_limit_exceeded", "message": "Too many tokens", "param": None,
                "sequence_number": 4})
    events = as_dicts(em.feed([text_delta("Hel", 4), error]))
    assert [e["sequence_number"] for e in events] == [4, 5, 6, 7, 8]
    assert [e["type"] for e in events[1:]] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.failed"]
    final = events[-1]["response"]
    assert final["error"] == {"code": "rate_limit_exceeded", "message": "Too many tokens"}
    assert final["output"] == [events[3]["item"]] and events[3]["item"]["status"] == "incomplete"
    assert events[3]["item"]["content"][0]["text"] == "Hel"


def test_websocket_style_nested_error_is_read() -> None:
    em = emitter()
    nested = ev({"type": "error", "status": 400, "error": {"type": "invalid_request_error",
                                                          "code": "context_length_exceeded", "message": "too long"}})
    out = as_dicts(em.feed([*opening(), nested]))
    assert out[-1]["response"]["error"] == {"code": "invalid_prompt", "message": "too long"}
    assert out[-1]["sequence_number"] == 2


def test_error_payloads_as_failures() -> None:
    secret = "not-key-shaped-secret"
    flat = error_event_failure({"type": "error", "code": "insufficient_quota", "message": f"no {secret}"}, [secret])
    assert flat == UpstreamFailure("rate_limit_exceeded", "no [redacted]")
    assert error_event_failure({"type": "error"}) == UpstreamFailure(
        "server_error", "upstream reported an error without a message")
    failed = {"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}}
    assert failed_event_failure(failed) == UpstreamFailure("server_error", "boom")
    assert failed_event_failure({"type": "response.failed", "response": None}).code == "server_error"


@pytest.mark.parametrize(
    ("code", "ours"),
    [
        (None, "server_error"), ("", "server_error"), (429, "server_error"),
        ("server_error", "server_error"), ("rate_limit_exceeded", "rate_limit_exceeded"),
        ("invalid_image_url", "invalid_image_url"), ("insufficient_quota", "rate_limit_exceeded"),
        ("tokens_rate_limit", "rate_limit_exceeded"), ("context_length_exceeded", "invalid_prompt"),
        ("invalid_value", "invalid_prompt"), ("overloaded", "server_error"),
    ],
)
def test_failure_codes(code: object, ours: str) -> None:
    assert failure_code(code) == ours


def test_cut_stream_and_gateway_failures() -> None:
    em = emitter()
    em.feed([*opening(), *message_start(), text_delta("a", 4)])
    out = as_dicts(em.feed([UpstreamFailure("server_error", "connection reset")]))
    assert out[-1]["type"] == "response.failed" and out[-1]["sequence_number"] == 8
    assert out[-1]["response"]["error"]["message"] == "connection reset"
    timed = emitter()
    timed.feed([*opening(), *message_start(), text_delta("a", 4)])
    assert timed.sequence_number == 5
    out = as_dicts(timed.fail("upstream_idle_timeout", "no data for 1 s"))
    assert out[-1]["response"]["error"]["code"] == "upstream_idle_timeout" and timed.done
    assert check_events(as_dicts([*opening()]) + as_dicts(message_start()) + [json.loads(text_delta("a", 4).data)]
                        + out)["status"] == "failed"


def test_finish_without_terminal_is_a_failure_and_before_any_snapshot_too() -> None:
    em = emitter()
    out = as_dicts(em.feed(opening()) + em.finish())
    assert [e["type"] for e in out] == ["response.created", "response.in_progress", "response.failed"]
    assert out[-1]["response"]["error"]["message"] == "upstream stream ended without a terminal event"
    empty = emitter()
    out = as_dicts(empty.finish())
    assert [e["sequence_number"] for e in out] == [0]
    final = out[0]["response"]
    expected = ("resp_ours", "client/model", "oai", True)
    assert (final["id"], final["model"], final["provider"], final["store"]) == expected


def test_a_cut_part_is_closed_with_all_the_text_it_streamed() -> None:
    pieces = ["plain ", "\u00e9", "\u6f22\u5b57", "\U0001f642 ", " end"]  # one to four UTF-8 bytes each
    em = emitter()
    em.feed([*opening(), *message_start(), *(text_delta(piece, 4 + i) for i, piece in enumerate(pieces))])
    out = as_dicts(em.feed([UpstreamFailure("server_error", "connection reset")]))
    done = next(e for e in out if e["type"] == "response.output_text.done")
    assert done["text"] == "".join(pieces)
    assert out[-1]["response"]["output"][0]["content"][0]["text"] == "".join(pieces)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"type":"response.output_text.delta",', "malformed upstream event: Expecting"),
        ("[1,2]", "not a Responses event object"),
        ('{"type":5}', "not a Responses event object"),
        ('{"type":"a\\nb"}', "not a Responses event object"),
        ("NaN", "NaN is not valid JSON"),
        ('{"type":"response.output_text.delta","delta":"x","logprobs":[Infinity]}', "Infinity is not valid JSON"),
    ],
)
def test_decode_event_rejects_what_is_not_an_event(data: str, message: str) -> None:
    failure = decode_event(data)
    assert isinstance(failure, UpstreamFailure) and failure.code == "server_error" and message in failure.message


def test_lone_surrogate_escapes_are_replaced_and_the_event_stays_utf8() -> None:
    # Found by tests/fuzz: "\ud800" decoded to a str with no UTF-8 form; encoding the event raised.
    item = decode_event('{"type":"response.created","response":{"id":"r\\ud800","output":[]},"sequence_number":0}')
    assert isinstance(item, RelayedEvent) and item.payload["response"]["id"] == "r\ufffd"
    assert json.loads(item.data)["response"]["id"] == "r\ufffd"
    em = emitter()
    wire = b"".join(encode_event(event) for event in em.feed([item]) + em.finish())
    assert "r\ufffd".encode() in wire
    pair = decode_event('{"type":"x.custom","text":"\\ud83d\\ude00"}')  # a valid escaped pair is kept
    assert isinstance(pair, RelayedEvent) and pair.payload["text"] == "\U0001f600"


def test_decode_event_keeps_the_text_or_compacts_multiline_json() -> None:
    text = '{"type":"response.output_text.delta",  "delta":"é"}'
    item = decode_event(text)
    assert item == RelayedEvent("response.output_text.delta", text, {}) and isinstance(item, RelayedEvent)
    assert item.payload == {"type": "response.output_text.delta", "delta": "é"}
    spread = decode_event('{"type": "x.y",\n "delta": "b"}')
    assert isinstance(spread, RelayedEvent) and spread.data == '{"type":"x.y","delta":"b"}'


def test_failures_and_snapshots_without_a_response_end_the_stream() -> None:
    em = emitter()
    out = as_dicts(em.feed([*opening(), UpstreamFailure("server_error", "malformed upstream event: x"),
                            text_delta("x", 9)]))
    assert out[-1]["type"] == "response.failed" and em.done
    assert out[-1]["response"]["error"] == {"code": "server_error", "message": "malformed upstream event: x"}
    broken = emitter()
    out = as_dicts(broken.feed([ev({"type": "response.created", "response": [], "sequence_number": 0})]))
    assert out[-1]["response"]["error"]["message"] == (
        "malformed upstream event: response.created without a response object")


def test_key_shaped_text_is_redacted_from_failure_messages() -> None:
    em = emitter()
    error = {"code": "server_error", "message": "auth with sk-live-abcdefghijkl failed"}
    out = as_dicts(em.feed([*opening(), snapshot("response.failed", 2, status="failed", error=error)]))
    assert "sk-live-abcdefghijkl" not in json.dumps(out) and "[redacted]" in out[-1]["response"]["error"]["message"]
    bare = emitter()
    out = as_dicts(bare.feed([ev({"type": "error", "message": "Bearer sk-abcdefghijklmnop rejected"})]))
    assert "sk-abcdefghijklmnop" not in json.dumps(out)


def test_unknown_events_are_relayed_untouched() -> None:
    em = emitter()
    custom = ev({"type": "response.web_search_call.in_progress", "item_id": "ws_1", "output_index": 0,
                 "sequence_number": 2})
    out = em.feed([*opening(), custom])
    assert out[-1] is custom and len(out) == 3
    assert not em.output_started


def test_sequence_numbers_follow_the_upstream_or_count() -> None:
    em = emitter()
    em.feed([snapshot("response.created", 7), *message_start(seq=8)])
    assert em.sequence_number == 10
    counted = emitter()
    counted.feed([ev({"type": "response.created", "response": {"id": "r"}}), ev({"type": "x.custom"})])
    assert counted.sequence_number == 2


def test_terminal_with_an_open_item_is_numbered_after_the_repair() -> None:
    em = emitter()
    em.feed([*opening(), *message_start(), text_delta("Hi", 4)])
    failed = snapshot("response.failed", 5, status="failed", error={"code": "server_error", "message": "boom"})
    events = as_dicts(em.feed([failed]))
    assert [e["sequence_number"] for e in events] == [5, 6, 7, 8]
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["output"] == [events[2]["item"]]


def test_an_item_added_while_another_is_open_fails_the_stream() -> None:
    # Found by tests/fuzz: the second ``added`` replaced the open item, whose ``done`` never came.
    em = emitter()
    em.feed([*opening(), *message_start(), text_delta("Hi", 4)])
    second = {"id": "msg_2", "type": "message", "status": "in_progress", "content": [], "role": "assistant"}
    events = as_dicts(em.feed([ev({"type": "response.output_item.added", "output_index": 1, "item": second,
                                   "sequence_number": 5})]))
    assert [e["type"] for e in events] == ["response.output_text.done", "response.content_part.done",
                                           "response.output_item.done", "response.failed"]
    assert events[2]["output_index"] == 0 and events[2]["item"]["status"] == "incomplete"
    error = events[-1]["response"]["error"]
    assert error["code"] == "server_error" and "still open" in error["message"]
    assert em.feed([text_delta("more", 6)]) == []


@pytest.mark.parametrize("index", ["0", None, 0.0, [0]])
def test_an_item_event_without_an_integer_output_index_fails_the_stream(index: Any) -> None:
    # Found by tests/fuzz: a done with output_index "\ufffd" closed item 0 in the relay's books,
    # but the client got no done it could match to item 0.
    em = emitter()
    em.feed([*opening(), *message_start()])
    item = {"id": MSG, "type": "message", "status": "completed", "content": [], "role": "assistant"}
    events = as_dicts(em.feed([ev({"type": "response.output_item.done", "output_index": index, "item": item,
                                   "sequence_number": 4})]))
    assert [e["type"] for e in events][-2:] == ["response.output_item.done", "response.failed"]
    assert events[-2]["output_index"] == 0 and events[-2]["item"]["status"] == "incomplete"
    assert "integer output_index" in events[-1]["response"]["error"]["message"]
    added = emitter()
    added.feed(opening())
    bad = ev({"type": "response.output_item.added", "output_index": index, "item": item, "sequence_number": 2})
    assert [e["type"] for e in as_dicts(added.feed([bad]))] == ["response.failed"]


def test_function_call_and_summary_parts_are_closed_on_failure() -> None:
    em = emitter()
    call = {"id": "fc_1", "type": "function_call", "status": "in_progress", "arguments": "", "call_id": "call_1",
            "name": "get_weather"}
    em.feed([*opening(), ev({"type": "response.output_item.added", "output_index": 0, "item": call,
                             "sequence_number": 2}),
             ev({"type": "response.function_call_arguments.delta", "item_id": "fc_1", "output_index": 0,
                 "delta": '{"ci', "sequence_number": 3})])
    events = as_dicts(em.fail("upstream_idle_timeout", "idle"))
    assert events[0] == {"type": "response.function_call_arguments.done", "item_id": "fc_1", "output_index": 0,
                         "name": "get_weather", "arguments": '{"ci', "sequence_number": 4}
    assert events[1]["item"] == {**call, "status": "incomplete", "arguments": '{"ci'}
    rs = emitter()
    summary_base = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
    rs.feed([*opening(),
             ev({"type": "response.output_item.added", "output_index": 0,
                 "item": {"id": "rs_1", "type": "reasoning", "summary": []}, "sequence_number": 2}),
             ev({"type": "response.reasoning_summary_part.added", **summary_base,
                 "part": {"type": "summary_text", "text": ""}, "sequence_number": 3}),
             ev({"type": "response.reasoning_summary_text.delta", **summary_base, "delta": "hmm",
                 "sequence_number": 4})])
    events = as_dicts(rs.finish())
    assert [e["type"] for e in events] == ["response.reasoning_summary_text.done",
                                           "response.reasoning_summary_part.done",
                                           "response.output_item.done", "response.failed"]
    assert events[2]["item"]["summary"] == [{"type": "summary_text", "text": "hmm"}]


def test_encode_event_keeps_the_dict_path() -> None:
    assert encode_event({"type": "response.created", "sequence_number": 0}) == (
        b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n')
    relayed = RelayedEvent("response.output_text.delta", '{"type":"response.output_text.delta", "delta":"é"}', {})
    assert encode_event(relayed) == relayed.sse == (
        'event: response.output_text.delta\ndata: {"type":"response.output_text.delta", "delta":"é"}\n\n').encode()


def test_relay_is_sans_io() -> None:
    code = (
        "import sys, streamgw.core.relay, streamgw.core.sse;"
        " print(sorted(m for m in ('trio', 'httpx', 'quart', 'hypercorn', 'h11') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("status", [0.0, "incomplete", "in_progress"])
def test_a_terminal_event_whose_status_disagrees_fails_the_stream(status: Any) -> None:
    # Found by tests/fuzz: response.completed carrying "status": 0.0 was relayed as a completion.
    em = emitter()
    em.feed(opening())
    events = as_dicts(em.feed([snapshot("response.completed", 2, status=status)]))
    assert [e["type"] for e in events] == ["response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert "does not match" in events[-1]["response"]["error"]["message"]

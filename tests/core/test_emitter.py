"""The emitter: deltas in, exact Responses event sequences out."""

from __future__ import annotations

import gc
import itertools
import json
from typing import Any

import pytest

from streamgw.core.deltas import (
    Delta,
    Finish,
    FinishReason,
    ReasoningDelta,
    ReasoningSignature,
    RefusalDelta,
    TextDelta,
    ToolCallArgs,
    ToolCallEnd,
    ToolCallStart,
    UpstreamFailure,
    Usage,
)
from streamgw.core.emitter import ResponseEmitter
from streamgw.testing.invariants import StreamInvariantError, check_events, output_text

ECHO = {"instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True}


def make_emitter() -> ResponseEmitter:
    counter = itertools.count()
    return ResponseEmitter(
        model="m",
        provider="demo",
        echo=dict(ECHO),
        new_id=lambda prefix: f"{prefix}{next(counter)}",
        clock=lambda: 1700000000.0,
    )


def run(deltas: list[Delta], *, batch: int = 1) -> list[dict[str, Any]]:
    em = make_emitter()
    events = em.start()
    for i in range(0, len(deltas), batch):
        events += em.feed(deltas[i : i + batch])
    events += em.finish()
    # Every event must survive JSON encoding unchanged (no shared mutable state leaking later).
    return [json.loads(json.dumps(e)) for e in events]


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"].removeprefix("response.") for e in events]


def test_plain_text_matches_the_reference_sequence() -> None:
    events = run([TextDelta("Hi"), TextDelta(" there"), TextDelta("!"), Finish(FinishReason.COMPLETED),
                  Usage(12, 4)])
    assert types(events) == [
        "created", "in_progress", "output_item.added", "content_part.added",
        "output_text.delta", "output_text.delta", "output_text.delta", "output_text.done",
        "content_part.done", "output_item.done", "completed",
    ]
    final = check_events(events)
    assert output_text(final) == "Hi there!"
    assert final["status"] == "completed" and final["completed_at"] == 1700000000
    assert final["usage"] == {"input_tokens": 12, "input_tokens_details": {"cache_write_tokens": 0,
                              "cached_tokens": 0}, "output_tokens": 4,
                              "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 16}
    assert final["provider"] == "demo" and final["id"].startswith("resp_")
    added = events[2]["item"]
    assert added == {"id": "msg_1", "type": "message", "status": "in_progress", "content": [],
                     "role": "assistant"}
    delta = events[4]
    assert delta == {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                     "content_index": 0, "delta": "Hi", "logprobs": [], "sequence_number": 4}


def test_batching_does_not_change_the_events() -> None:
    deltas: list[Delta] = [ReasoningDelta("think"), TextDelta("a"), TextDelta("b"),
                           ToolCallStart(0, "call_1", "f"), ToolCallArgs(0, '{"x":'), ToolCallArgs(0, "1}"),
                           Finish(FinishReason.COMPLETED)]
    one = run(deltas, batch=1)
    check_events(one)
    for batch in (2, 3, len(deltas)):
        assert run(deltas, batch=batch) == one


def test_snapshots_echo_request_fields_and_start_empty() -> None:
    events = run([TextDelta("x"), Finish(FinishReason.COMPLETED)])
    for ev in events[:2]:
        resp = ev["response"]
        assert resp["status"] == "in_progress" and resp["output"] == [] and resp["usage"] is None
        assert resp["tool_choice"] == "auto" and resp["parallel_tool_calls"] is True
        assert resp["provider"] == "demo" and resp["model"] == "m"


def test_an_echo_builder_gives_the_same_stream_and_no_response_object_is_kept_while_it_runs() -> None:
    """Given what builds the echo (as the engine gives it), a running emitter holds no response object: ``response``
    is built when read, with the output so far; a changed copy changes nothing; the events are byte for byte those
    of an emitter given the echo itself, and the final object is kept once terminal."""
    deltas: list[Delta] = [TextDelta("a"), TextDelta("b"), ToolCallStart(0, "call_1", "f"), ToolCallArgs(0, "{}"),
                           Finish(FinishReason.COMPLETED), Usage(3, 2)]
    expected = run(deltas)
    counter = itertools.count()
    built: list[int] = []

    def echo() -> dict[str, Any]:
        built.append(1)
        return dict(ECHO)

    em = ResponseEmitter(model="m", provider="demo", echo=echo, new_id=lambda prefix: f"{prefix}{next(counter)}",
                         clock=lambda: 1700000000.0)
    events = em.start() + em.feed(deltas[:2])
    assert em.in_progress() == expected[0]["response"] and em.in_progress() is not em.in_progress()
    held = [o for o in gc.get_referents(em) if type(o) is dict and o.get("object") == "response"]
    assert held == []
    now = em.response
    assert (now["status"], now["id"], [i["type"] for i in now["output"]]) == ("in_progress", "resp_0", ["message"])
    now["status"] = "changed"
    now["output"] = []
    assert em.response["status"] == "in_progress" and len(em.response["output"]) == 1
    events += em.feed(deltas[2:]) + em.finish()
    assert [json.dumps(e) for e in events] == [json.dumps(e) for e in expected]
    assert em.response is em.response and em.response == expected[-1]["response"]
    assert em.response["status"] == "completed" and em.response["usage"]["total_tokens"] == 5
    calls = len(built)
    em.response  # noqa: B018  (the final object is kept: no more building)
    assert len(built) == calls


def test_function_call_fragments_join_and_item_closes() -> None:
    events = run([ToolCallStart(0, "call_9", "get_weather"), ToolCallArgs(0, '{"city":'),
                  ToolCallArgs(0, '"Paris"}'), ToolCallEnd(0), Finish(FinishReason.COMPLETED)])
    assert types(events) == ["created", "in_progress", "output_item.added", "function_call_arguments.delta",
                             "function_call_arguments.delta", "function_call_arguments.done",
                             "output_item.done", "completed"]
    final = check_events(events)
    call = final["output"][0]
    assert call["call_id"] == "call_9" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"} and call["status"] == "completed"
    assert events[5]["name"] == "get_weather"


def test_interleaved_parallel_calls_are_serialised() -> None:
    events = run([ToolCallStart(0, "call_a", "f"), ToolCallStart(1, "call_b", "g"),
                  ToolCallArgs(0, '{"a":'), ToolCallArgs(1, '{"b":'), ToolCallArgs(0, "1}"),
                  ToolCallArgs(1, "2}"), Finish(FinishReason.COMPLETED), ToolCallEnd(0), ToolCallEnd(1)])
    final = check_events(events)
    assert [(o["call_id"], json.loads(o["arguments"])) for o in final["output"]] == [
        ("call_a", {"a": 1}), ("call_b", {"b": 2})]


def test_call_without_arguments_gets_an_empty_object() -> None:
    final = check_events(run([ToolCallStart(0, "c", "now"), ToolCallEnd(0), Finish(FinishReason.COMPLETED)]))
    assert final["output"][0]["arguments"] == "{}"


def test_reasoning_then_text() -> None:
    events = run([ReasoningDelta("Checking "), ReasoningDelta("units."), ReasoningSignature("gw1:abc"),
                  TextDelta("42"), Finish(FinishReason.COMPLETED), Usage(5, 10, reasoning_tokens=7)])
    assert types(events)[2:9] == ["output_item.added", "reasoning_summary_part.added",
                                  "reasoning_summary_text.delta", "reasoning_summary_text.delta",
                                  "reasoning_summary_text.done", "reasoning_summary_part.done",
                                  "output_item.done"]
    final = check_events(events)
    rs, msg = final["output"]
    assert rs["summary"] == [{"type": "summary_text", "text": "Checking units."}]
    assert rs["encrypted_content"] == "gw1:abc"
    assert msg["content"][0]["text"] == "42" and events[9]["output_index"] == 1
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 7


def test_refusal_part() -> None:
    events = run([RefusalDelta("I can't "), RefusalDelta("help."), Finish(FinishReason.COMPLETED)])
    final = check_events(events)
    assert final["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]
    assert "refusal.done" in types(events)


@pytest.mark.parametrize(("reason", "why"), [(FinishReason.MAX_OUTPUT_TOKENS, "max_output_tokens"),
                                             (FinishReason.CONTENT_FILTER, "content_filter")])
def test_incomplete(reason: FinishReason, why: str) -> None:
    events = run([TextDelta("partial"), Finish(reason)])
    final = check_events(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["incomplete_details"] == {"reason": why} and final["completed_at"] is None
    assert final["output"][0]["status"] == "incomplete"


def test_upstream_failure_mid_stream_is_honest() -> None:
    events = run([TextDelta("half"), UpstreamFailure("server_error", "boom"), TextDelta("ignored"),
                  Finish(FinishReason.COMPLETED)])
    final = check_events(events)
    assert events[-1]["type"] == "response.failed"
    assert final["error"] == {"code": "server_error", "message": "boom"} and final["usage"] is None
    assert output_text(final) == "half" and final["output"][0]["status"] == "incomplete"
    assert not any(e["type"] == "response.completed" for e in events)


def test_no_finish_reason_is_a_failure_not_a_completion() -> None:
    events = run([TextDelta("x")])
    assert events[-1]["type"] == "response.failed"
    check_events(events)


def test_fail_after_finish_is_a_no_op_and_feed_after_terminal_is_ignored() -> None:
    em = make_emitter()
    em.start()
    em.feed([Finish(FinishReason.COMPLETED)])
    assert em.finish()[-1]["type"] == "response.completed"
    assert em.fail("x", "y") == [] and em.feed([TextDelta("z")]) == [] and em.finish() == []


def test_sequence_numbers_and_ids() -> None:
    events = run([TextDelta("a"), ToolCallStart(0, "c1", "f"), ToolCallArgs(0, "{}"), TextDelta("b"),
                  Finish(FinishReason.COMPLETED)])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = check_events(events)
    assert [o["type"] for o in final["output"]] == ["message", "function_call", "message"]
    assert final["output"][1]["id"].startswith("fc_") and final["output"][0]["id"].startswith("msg_")


def test_checker_rejects_broken_streams() -> None:
    good = run([TextDelta("a"), Finish(FinishReason.COMPLETED)])
    gap = [dict(e) for e in good]
    gap[3]["sequence_number"] = 9
    with pytest.raises(StreamInvariantError):
        check_events(gap)
    no_done = [e for e in good if e["type"] != "response.output_item.done"]
    for i, e in enumerate(no_done):
        e["sequence_number"] = i
    with pytest.raises(StreamInvariantError):
        check_events(no_done)
    bad_text = json.loads(json.dumps(good))
    next(e for e in bad_text if e["type"] == "response.output_text.done")["text"] = "b"
    with pytest.raises(StreamInvariantError):
        check_events(bad_text)


def test_signature_seals_a_reasoning_block_and_redacted_gets_its_own_item() -> None:
    events = run([ReasoningDelta("one"), ReasoningSignature("sig-1"), ReasoningDelta("two"),
                  ReasoningSignature("sig-2"), ReasoningSignature("redacted"), TextDelta("answer"),
                  Finish(FinishReason.COMPLETED)])
    final = check_events(events)
    reasoning = [o for o in final["output"] if o["type"] == "reasoning"]
    assert [(r["summary"], r["encrypted_content"]) for r in reasoning] == [
        ([{"type": "summary_text", "text": "one"}], "sig-1"),
        ([{"type": "summary_text", "text": "two"}], "sig-2"),
        ([], "redacted"),
    ]
    assert final["output"][-1]["type"] == "message"


def test_signature_never_lands_on_an_item_already_done() -> None:
    events = run([ReasoningDelta("r"), TextDelta("t"), ReasoningSignature("late"), Finish(FinishReason.COMPLETED)])
    final = check_events(events)
    assert "encrypted_content" not in final["output"][0]
    assert final["output"][2] == {"id": final["output"][2]["id"], "type": "reasoning", "summary": [],
                                  "encrypted_content": "late"}


MIXED = ["plain ", "é", "漢字", "🙂 ", "\ud800", " end"]  # one, two, three and four UTF-8 bytes; a lone surrogate


def test_text_refusal_and_summary_come_back_exactly_as_they_streamed() -> None:
    events = run([ReasoningDelta(d) for d in MIXED] + [TextDelta(d) for d in MIXED] + [RefusalDelta(d) for d in MIXED]
                 + [Finish(FinishReason.COMPLETED)])
    whole = "".join(MIXED)
    done = {e["type"]: e for e in events if e["type"].endswith(".done") and "item" not in e and "part" not in e}
    assert done["response.reasoning_summary_text.done"]["text"] == whole
    assert done["response.output_text.done"]["text"] == whole
    assert done["response.refusal.done"]["refusal"] == whole
    final = events[-1]["response"]
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": whole}]
    assert [part.get("text", part.get("refusal")) for part in final["output"][1]["content"]] == [whole, whole]


def test_an_open_part_holds_its_text_not_a_string_object_per_delta() -> None:
    # A stream keeps its open part's text until the part closes; 2,000 deltas of 8 characters are 16 KB of text,
    # where 2,000 str objects and their list slots would hold ~130 KB.
    import tracemalloc

    em = make_emitter()
    em.start()
    em.feed([TextDelta("open ")])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            em.feed([TextDelta(f"tok{i % 1000:03d} ")])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 24_000, held
    final = em.finish()[-1]["response"]
    assert output_text(final) == "open " + "".join(f"tok{i % 1000:03d} " for i in range(2000))

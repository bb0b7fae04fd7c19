"""Fuzz every stream translator through the real pipeline (decoder → translator → emitter → SSE).

For each dialect (Chat Completions, Anthropic, Gemini, Ollama, and the native Responses relay)
the golden upstream bodies of ``tests/fixtures/streams`` are (a) split at random points,
(b) mutated (bit flips, truncation, duplicated/dropped/swapped lines and events, injected
random JSON events, random bytes), and (c) replaced by random bytes.  Properties:

* nothing raises: a broken upstream ends in the documented failure path (an HTTP error
  before any output, else one ``response.failed``);
* the client's event stream passes ``check_events`` (sequence numbers from 0, every added
  has its done, exactly one terminal event, last);
* a body without its dialect's end marker never ends ``response.completed``;
* the secret planted in upstream error messages never reaches the client;
* any split of a golden body gives the same bytes as the whole body.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from streamgw.testing.invariants import check_events

from .pipeline import CASES, SECRET, Case, Outcome, run_stream
from .strategies import budget, json_trees, mutated, split_points, to_json

DIALECTS = sorted(CASES)
_MINTED_CALL_ID = re.compile(rb"call_[A-Za-z0-9]{24}")
_BLOB = re.compile(rb"gw1:[A-Za-z0-9_-]+")


def _payloads(case: Case) -> list[Any]:
    """Every JSON payload of the golden bodies: the seeds of shaped injected events."""
    out = []
    for body in case.bodies().values():
        for line in body.split(b"\n"):
            text = line.removeprefix(b"data: ").strip()
            try:
                out.append(json.loads(text))
            except ValueError:
                continue
    return out


@st.composite
def _reshaped(draw: st.DrawFn, payloads: list[Any]) -> Any:
    """A real upstream payload with one subtree replaced by junk (or deleted): nearly valid events."""
    value = json.loads(json.dumps(draw(st.sampled_from(payloads))))
    node, steps = value, draw(st.integers(0, 4))
    for _ in range(steps):
        children = list(node.items()) if isinstance(node, dict) else list(enumerate(node)) \
            if isinstance(node, list) else []
        containers = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
        if not containers:
            break
        _, node = draw(st.sampled_from(containers))
    if isinstance(node, dict) and node:
        key = draw(st.sampled_from(sorted(node)))
        if draw(st.booleans()):
            node[key] = draw(json_trees())
        else:
            del node[key]
    elif isinstance(node, list) and node:
        node[draw(st.integers(0, len(node) - 1))] = draw(json_trees())
    return value


def injected_events(case: Case) -> st.SearchStrategy[bytes]:
    """A framed event to inject: a reshaped real payload, random JSON, or an error with the secret."""
    payloads = _payloads(case)
    return st.one_of(
        _reshaped(payloads).map(lambda v: case.frame(to_json(v))),
        json_trees().map(lambda v: case.frame(to_json(v))),
        st.just(case.error(f"upstream said: bad key {SECRET}")),
    )


def check_outcome(case: Case, body: bytes, outcome: Outcome) -> None:
    """The properties every outcome must have, whatever the body."""
    assert SECRET.encode() not in outcome.wire, "the planted secret reached the client"
    if outcome.http_error is not None:
        assert outcome.http_error.code and outcome.http_error.message
        return
    final = check_relayed(outcome.events) if case.ptype == "openai" else check_events(outcome.events)
    assert final["status"] in ("completed", "incomplete", "failed")
    if final["status"] == "failed":
        assert final["error"]["code"] and final["error"]["message"]
    if not case.end_marker.search(body):
        assert final["status"] != "completed", "a body that never ended properly came out completed"


TERMINALS = ("response.completed", "response.incomplete", "response.failed")


def check_relayed(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the native relay guarantees whatever the upstream sent (``streamgw.core.relay``).

    The relay passes upstream events through unchanged, ids, texts and ``sequence_number``
    included, so a corrupted upstream (a dropped delta, a flipped digit) is relayed as it
    came and ``check_events`` cannot hold.  The relay's own promises are checked instead:
    exactly one terminal event, last; every ``output_item.added`` closed by a ``done`` for
    its ``output_index``; our own events numbered after the upstream's; a ``response`` in
    the terminal event.
    """
    assert events, "a started stream sent no event"
    kinds = [event["type"] for event in events]
    assert sum(kind in TERMINALS for kind in kinds) == 1 and kinds[-1] in TERMINALS, kinds
    open_items: set[object] = set()
    for event in events[:-1]:
        if event["type"] == "response.output_item.added":
            open_items.add(event.get("output_index"))
        elif event["type"] == "response.output_item.done":
            open_items.discard(event.get("output_index"))
    assert not open_items, f"items added but never done: {open_items}"
    final: dict[str, Any] = events[-1]["response"]
    assert final.get("status", kinds[-1].removeprefix("response.")) == kinds[-1].removeprefix("response.")
    return final


def outcome_of(case: Case, chunks: list[bytes], *, fuzzed: bool = True) -> Outcome:
    body = b"".join(chunks)
    if fuzzed:
        note(f"upstream body: {body!r}")
    outcome = run_stream(case, chunks)
    check_outcome(case, body, outcome)
    return outcome


def _normalised(outcome: Outcome) -> bytes:
    """The wire with minted call ids (random by design) masked, also inside reasoning blobs."""

    def unblob(match: re.Match[bytes]) -> bytes:
        body = match.group()[4:]
        return b"gw1<" + base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4)) + b">"

    return _MINTED_CALL_ID.sub(b"call_X", _BLOB.sub(unblob, outcome.wire))


@st.composite
def _golden(draw: st.DrawFn, case: Case) -> bytes:
    bodies = case.bodies()
    return bodies[draw(st.sampled_from(sorted(bodies)))]


@pytest.mark.parametrize("dialect", DIALECTS)
@budget(40)
@given(data=st.data())
def test_golden_split_anywhere_is_the_same_stream(dialect: str, data: st.DataObject) -> None:
    case = CASES[dialect]
    body = data.draw(_golden(case))
    whole = outcome_of(case, [body])
    chunks = data.draw(split_points(body))
    assert _normalised(outcome_of(case, chunks)) == _normalised(whole)


@pytest.mark.parametrize("dialect", DIALECTS)
@budget(120)
@given(data=st.data())
def test_mutated_golden_streams(dialect: str, data: st.DataObject) -> None:
    case = CASES[dialect]
    body = data.draw(_golden(case).flatmap(lambda b: mutated(b, injected_events(case))))
    outcome = outcome_of(case, data.draw(split_points(body, max_cuts=4)))
    assert outcome.http_error is not None or outcome.terminal in TERMINALS, outcome.terminal


@pytest.mark.parametrize("dialect", DIALECTS)
@budget(40)
@given(data=st.data())
def test_truncated_golden_streams_never_complete(dialect: str, data: st.DataObject) -> None:
    """A golden body cut before its end marker (at any byte) is never ``completed``."""
    case = CASES[dialect]
    body = data.draw(_golden(case))
    cut = data.draw(st.integers(0, len(body)))
    outcome = outcome_of(case, [body[:cut]])  # the end-marker rule in ``check_outcome`` is the property
    assert outcome.terminal != "response.completed" or case.end_marker.search(body[:cut])


@pytest.mark.parametrize("dialect", DIALECTS)
@budget(40)
@given(data=st.data())
def test_planted_error_never_leaks_the_secret(dialect: str, data: st.DataObject) -> None:
    case = CASES[dialect]
    body = data.draw(_golden(case))
    lines = body.split(b"\n\n" if case.suffix == ".sse" else b"\n")
    at = data.draw(st.integers(0, len(lines)))
    error = case.error(f"invalid api key {SECRET} for org").rstrip(b"\n")
    planted = (b"\n\n" if case.suffix == ".sse" else b"\n").join([*lines[:at], error, *lines[at:]])
    outcome = outcome_of(case, data.draw(split_points(planted, max_cuts=3)))
    assert SECRET.encode() not in outcome.wire


@pytest.mark.parametrize("dialect", DIALECTS)
@budget(60)
@given(body=st.binary(max_size=300), data=st.data())
def test_random_bytes(dialect: str, body: bytes, data: st.DataObject) -> None:
    case = CASES[dialect]
    if data.draw(st.booleans()):  # random bytes after a valid-looking frame prefix reach the JSON parser
        body = case.frame(body)
    outcome = outcome_of(case, data.draw(split_points(body, max_cuts=3)))
    assert outcome.http_error is not None or outcome.terminal in TERMINALS, outcome.terminal


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_golden_body_passes(dialect: str) -> None:
    """The corpus itself: every fixture runs clean through the pipeline (else the fuzz starts broken)."""
    case = CASES[dialect]
    assert case.bodies()
    for body in case.bodies().values():
        outcome_of(case, [body], fuzzed=False)

"""Checks every Responses event stream must pass.

The rules follow the event order of https://platform.openai.com/docs/api-reference/responses-streaming.
``check_events`` raises ``StreamInvariantError`` naming the first rule broken and
returns the terminal event's ``response``.  Tests run it on every stream they see,
and the bench can run it on samples.
"""

from __future__ import annotations

from typing import Any

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class StreamInvariantError(AssertionError):
    """A Responses event stream broke an ordering or consistency rule."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise StreamInvariantError(message)


def _check_lifecycle(events: list[dict[str, Any]]) -> dict[str, Any]:
    _require(len(events) >= 3, f"stream too short: {[e.get('type') for e in events]}")
    for i, ev in enumerate(events):
        _require(ev.get("sequence_number") == i, f"event {i} has sequence_number {ev.get('sequence_number')}")
    _require(events[0]["type"] == "response.created", "first event is not response.created")
    second = 2 if events[1]["type"] == "response.queued" else 1  # background responses queue first
    _require(events[second]["type"] == "response.in_progress", "response.in_progress does not follow created")
    terminals = [e for e in events if e["type"] in TERMINAL]
    _require(len(terminals) == 1, f"expected exactly one terminal event, got {len(terminals)}")
    _require(events[-1]["type"] in TERMINAL, "the terminal event is not last")
    final: dict[str, Any] = events[-1]["response"]
    rid = events[0]["response"]["id"]
    for ev in (events[0], events[1], events[-1]):
        _require(ev["response"]["id"] == rid, "response id changed within the stream")
    _require(final["status"] == events[-1]["type"].removeprefix("response."), "terminal status mismatch")
    return final


class _ItemTracker:
    """Follows one item from ``output_item.added`` to ``output_item.done``."""

    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item
        self.open_parts: dict[tuple[str, int], list[str]] = {}
        self.texts: dict[tuple[str, int], str] = {}
        self.args: list[str] = []
        self.done = False


_PART_EVENTS = {
    "response.content_part.added": ("content", "content_index", "open"),
    "response.content_part.done": ("content", "content_index", "close"),
    "response.reasoning_summary_part.added": ("summary", "summary_index", "open"),
    "response.reasoning_summary_part.done": ("summary", "summary_index", "close"),
}
_DELTA_EVENTS = {
    "response.output_text.delta": ("content", "content_index"),
    "response.refusal.delta": ("content", "content_index"),
    "response.reasoning_summary_text.delta": ("summary", "summary_index"),
    "response.reasoning_text.delta": ("content", "content_index"),
}
_DONE_EVENTS = {
    "response.output_text.done": ("content", "content_index", "text"),
    "response.refusal.done": ("content", "content_index", "refusal"),
    "response.reasoning_summary_text.done": ("summary", "summary_index", "text"),
    "response.reasoning_text.done": ("content", "content_index", "text"),
}


def _on_item_event(ev: dict[str, Any], tr: _ItemTracker) -> None:
    kind = ev["type"]
    if kind in _PART_EVENTS:
        space, idx_name, action = _PART_EVENTS[kind]
        key = (space, ev[idx_name])
        if action == "open":
            _require(key not in tr.open_parts, f"{kind}: part {key} opened twice")
            tr.open_parts[key] = []
        else:
            _require(key in tr.open_parts, f"{kind}: part {key} was never added")
            text = "".join(tr.open_parts.pop(key))
            part = ev["part"]
            _require(part.get("text", part.get("refusal")) == text, f"{kind}: part text != joined deltas")
            tr.texts[key] = text
    elif kind in _DELTA_EVENTS:
        space, idx_name = _DELTA_EVENTS[kind]
        key = (space, ev[idx_name])
        _require(key in tr.open_parts, f"{kind} outside an open part {key}")
        tr.open_parts[key].append(ev["delta"])
    elif kind in _DONE_EVENTS:
        space, idx_name, field = _DONE_EVENTS[kind]
        key = (space, ev[idx_name])
        _require(key in tr.open_parts, f"{kind} outside an open part")
        _require(ev[field] == "".join(tr.open_parts[key]), f"{kind}: done text != joined deltas")
    elif kind == "response.function_call_arguments.delta":
        tr.args.append(ev["delta"])
    elif kind == "response.function_call_arguments.done":
        _require(ev["arguments"] == "".join(tr.args), "function_call_arguments.done != joined deltas")


def _check_items(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    trackers: list[_ItemTracker] = []
    current: _ItemTracker | None = None
    start = 3 if events[1]["type"] == "response.queued" else 2
    for ev in events[start:-1]:
        kind = ev["type"]
        if kind == "response.output_item.added":
            _require(current is None, "output_item.added while another item is open (items interleave)")
            _require(ev["output_index"] == len(trackers), "output_index is not contiguous")
            current = _ItemTracker(ev["item"])
            trackers.append(current)
        elif kind == "response.output_item.done":
            _require(current is not None and ev["output_index"] == len(trackers) - 1, "done for a closed item")
            assert current is not None
            _require(not current.open_parts, f"item closed with open parts {list(current.open_parts)}")
            _require(ev["item"]["id"] == current.item["id"], "item id changed between added and done")
            current.item = ev["item"]
            current.done = True
            current = None
        else:
            _require(current is not None, f"{kind} outside any item")
            assert current is not None
            _require(ev.get("output_index", len(trackers) - 1) == len(trackers) - 1, f"{kind}: wrong output_index")
            if "item_id" in ev:
                _require(ev["item_id"] == current.item["id"], f"{kind}: item_id does not match the open item")
            _on_item_event(ev, current)
    _require(current is None, "an output item was added but never done")
    return [t.item for t in trackers]


def check_events(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Check a whole Responses event stream; return the final ``response`` object."""
    final = _check_lifecycle(events)
    items = _check_items(events)
    if final["status"] != "failed" or final["output"]:
        _require(final["output"] == items, "final response output != the items from output_item.done")
    usage = final.get("usage")
    if usage is not None:
        _require(
            usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"],
            "usage.total_tokens != input + output",
        )
    return final


def output_text(response: dict[str, Any]) -> str:
    """All ``output_text`` of a response joined, like the SDK's ``output_text`` property."""
    return "".join(
        part["text"]
        for item in response.get("output", [])
        if item.get("type") == "message"
        for part in item.get("content", [])
        if part.get("type") == "output_text"
    )

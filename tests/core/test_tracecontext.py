"""W3C traceparent parsing: valid headers are kept, anything malformed is treated as absent."""

from __future__ import annotations

import pytest

from streamgw.core.tracecontext import TraceParent, new_span_id, new_trace_id, parse_traceparent

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_a_valid_header_is_read() -> None:
    parsed = parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    assert parsed == TraceParent(TRACE, SPAN, True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00") == TraceParent(TRACE, SPAN, False)
    assert parsed is not None and parsed.header("a" * 16) == f"00-{TRACE}-{'a' * 16}-01"


def test_a_later_version_may_carry_more_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-extra") == TraceParent(TRACE, SPAN, True)


@pytest.mark.parametrize("header", [
    None, "", "garbage", f"00-{TRACE}-{SPAN}", f"00-{TRACE.upper()}-{SPAN}-01", f"ff-{TRACE}-{SPAN}-01",
    f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00-{TRACE}-{SPAN}-01-extra",
    f"00-{TRACE[:-1]}-{SPAN}-01", f"00-{TRACE}-{SPAN}-1", "00-" + "a" * 600,
])
def test_a_malformed_header_is_absent(header: str | None) -> None:
    assert parse_traceparent(header) is None


def test_new_ids_are_random_hex_of_the_right_size() -> None:
    traces = {new_trace_id() for _ in range(100)}
    spans = {new_span_id() for _ in range(100)}
    assert len(traces) == 100 and len(spans) == 100
    assert all(len(t) == 32 and int(t, 16) for t in traces) and all(len(s) == 16 and int(s, 16) for s in spans)

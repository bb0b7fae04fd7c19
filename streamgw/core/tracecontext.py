"""W3C Trace Context (``traceparent``): read a client's, or start a trace of our own.

``traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>``, lower-case; an all-zero
trace id or parent id is invalid, and so is version ``ff``.  A later version may append fields
after the flags (``-...``), which a version-00 reader ignores.  Anything malformed is treated as
absent: the request starts a trace of its own (https://www.w3.org/TR/trace-context/).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamgw.core.ids import random_hex

__all__ = ["TraceParent", "new_span_id", "new_trace_id", "parse_traceparent"]

_HEADER = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceParent:
    """The trace a request belongs to: ``parent_id`` is the caller's span (``""``: we started the trace)."""

    trace_id: str
    parent_id: str = ""
    sampled: bool = True

    def header(self, span_id: str) -> str:
        """The ``traceparent`` value naming ``span_id`` (one of ours) as the parent of the next hop."""
        return f"00-{self.trace_id}-{span_id}-{'01' if self.sampled else '00'}"


def new_trace_id() -> str:
    """A random, non-zero 16-byte trace id in lower-case hex."""
    while True:
        value = random_hex(16)
        if value != _ZERO_TRACE:
            return value


def new_span_id() -> str:
    """A random, non-zero 8-byte span id in lower-case hex."""
    while True:
        value = random_hex(8)
        if value != _ZERO_SPAN:
            return value


def parse_traceparent(header: str | None) -> TraceParent | None:
    """The client's trace context, or ``None`` when the header is absent or malformed."""
    if header is None or len(header) > 512:
        return None
    match = _HEADER.fullmatch(header.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, bool(int(flags, 16) & 1))

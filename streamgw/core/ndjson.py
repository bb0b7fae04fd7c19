"""Sans-IO newline-delimited JSON framing (Ollama ``/api/chat`` streams).

The decoder only frames lines; parsing the JSON is the caller's job.  Standard
library only, no I/O.
"""

from __future__ import annotations

__all__ = ["NDJSONDecoder"]


def _clean(line: bytes) -> bytes | None:
    """Strip one trailing CR; return ``None`` for an empty or whitespace-only line."""
    if line[-1:] == b"\r":
        line = line[:-1]
    if not line or line.isspace():
        return None
    return line


class NDJSONDecoder:
    """Incremental splitter of an NDJSON byte stream into its non-blank lines."""

    __slots__ = ("_done", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # pieces of the current unterminated line
        self._done = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """Consume ``chunk``; return the complete non-blank lines it ends, without line ends."""
        if self._done:
            raise RuntimeError("NDJSONDecoder.feed() called after finish()")
        parts = self._parts
        if b"\n" not in chunk:
            if chunk:
                parts.append(chunk)
            return []
        if parts:
            parts.append(chunk)
            chunk = b"".join(parts)
            parts.clear()
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            parts.append(tail)
        out: list[bytes] = []
        for line in lines:
            cleaned = _clean(line)
            if cleaned is not None:
                out.append(cleaned)
        return out

    def finish(self) -> list[bytes]:
        """Signal end of stream; return the unterminated last line if it is non-blank."""
        if self._done:
            raise RuntimeError("NDJSONDecoder.finish() called twice")
        self._done = True
        rest = b"".join(self._parts)
        self._parts.clear()
        cleaned = _clean(rest)
        return [] if cleaned is None else [cleaned]

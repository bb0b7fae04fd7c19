"""A streamed text kept while it grows: the UTF-8 of its deltas in one ``bytearray``.

An answer streams as many small deltas, and the gateway keeps each open part's text until the part
closes (its ``done`` events and the final response object carry it whole).  Kept as a list of the
deltas, every delta is a ``str`` object of its own: on CPython 49 bytes of header and a list slot
for a token's 3 to 6 characters, about ten times the text (a 2,000-token answer: ~125 KB held by its
open stream for ~9 KB of text).  Here the text costs its UTF-8 bytes and the ``bytearray``'s room to
grow (an eighth).  ``surrogatepass``: a lone surrogate, which no decoder of ours lets through but a
``str`` can hold, comes back as it went in.

Pure: standard library only.
"""

from __future__ import annotations

__all__ = ["add", "text"]


def add(buffer: bytearray, delta: str) -> None:
    """Append ``delta`` to ``buffer`` (in place)."""
    buffer += delta.encode("utf-8", "surrogatepass")


def text(buffer: bytearray) -> str:
    """The text appended so far."""
    return buffer.decode("utf-8", "surrogatepass")

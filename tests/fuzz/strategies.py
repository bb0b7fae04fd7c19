"""Shared hypothesis strategies: raw JSON text with hostile literals, and byte-stream mutations.

JSON is generated as a small tree (``Obj`` keeps duplicate keys, ``Raw`` is a literal written
into the text as is) and serialised by ``to_json``, so a body can hold what ``json.dumps``
never writes: lone-surrogate escapes, ``NaN``/``Infinity``, numbers too large for a float or
an int, invalid UTF-8 inside a string, repeated keys and deep nesting.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

#: the planted secret: an upstream echoes it in error messages; it must never reach a client
SECRET = "sk-fuzz-planted-secret-7f3a9c"
#: ``dev`` runs this many times the ``ci`` example counts
_SCALE = 1 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else 30


def budget(ci_examples: int) -> settings:
    """Settings with ``ci_examples`` examples in CI (scaled up under the ``dev`` profile)."""
    return settings(max_examples=ci_examples * _SCALE)


@dataclass(frozen=True)
class Raw:
    """A literal written into the JSON text unchanged (may make the text invalid JSON)."""

    text: bytes


@dataclass(frozen=True)
class Obj:
    """A JSON object as a list of pairs, so a key may repeat."""

    pairs: tuple[tuple[str, Any], ...]


HOSTILE_LITERALS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" * 5000, b"-" + b"9" * 4301,
    b"1E400", b"0.0000000000000000000000001e-400", b"123456789012345678901234567890",
    b'"\\ud800"', b'"\\udfff"', b'"a\\ud83dz"', b'"\\ude00\\ud83d"', b'"\\ud83d\\ude00"',
    b'"\xff\xfe"', b'"\xc3"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"', b'"\\u0000"', b'"\x00"',
    b"true", b"null", b"[]", b"{}", b'"' + b"x" * 70 + b'"',
]  # fmt: skip

raw_literals = st.sampled_from(HOSTILE_LITERALS).map(Raw)
# Text in every plane, including the surrogate range Python strings can hold (json writes it as an escape).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | any_text
)


def nested(depth: int) -> Raw:
    """``depth`` nested arrays around a 1: deep enough and the decoder runs out of stack."""
    return Raw(b"[" * depth + b"1" + b"]" * depth)


deep = st.sampled_from([10, 100, 900, 1500, 5000, 100_000]).map(nested)


def json_trees(leaves: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
    """Random JSON values (objects may repeat keys), with hostile literals among the leaves."""
    base = json_scalars | raw_literals | deep if leaves is None else leaves
    return st.recursive(
        base,
        lambda inner: st.lists(inner, max_size=4)
        | st.lists(st.tuples(any_text | st.sampled_from(["type", "role", "content", "text"]), inner),
                   max_size=4).map(lambda pairs: Obj(tuple(pairs))),
        max_leaves=12,
    )


def to_json(value: Any, ascii_only: bool = False) -> bytes:
    """Serialise a tree from ``json_trees`` (plain dicts and lists too) to JSON text bytes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Obj | dict):
        pairs = value.pairs if isinstance(value, Obj) else tuple(value.items())
        inner = b",".join(_string(k, ascii_only) + b":" + to_json(v, ascii_only) for k, v in pairs)
        return b"{" + inner + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(to_json(v, ascii_only) for v in value) + b"]"
    if isinstance(value, str):
        return _string(value, ascii_only)
    return json.dumps(value).encode()


def _string(text: str, ascii_only: bool) -> bytes:
    # A lone surrogate has no UTF-8 form: ``ensure_ascii`` writes it as a ``\\udXXX`` escape instead.
    return json.dumps(text, ensure_ascii=ascii_only).encode("utf-8", "backslashreplace")


# --- byte-stream mutations -----------------------------------------------------------------------

Mutation = Callable[[bytes], bytes]


@st.composite
def split_points(draw: st.DrawFn, data: bytes, max_cuts: int = 12) -> list[bytes]:
    """``data`` cut into chunks at random offsets (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_cuts)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    if not data:
        return data
    pos %= len(data)
    return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


@st.composite
def mutation(draw: st.DrawFn, events: st.SearchStrategy[bytes]) -> Mutation:
    """One random edit of a byte stream; ``events`` makes a framed event to inject."""
    kind = draw(st.sampled_from(["flip", "truncate", "dup_line", "drop_line", "swap_lines", "inject_event",
                                 "inject_bytes", "delete_range", "dup_block", "drop_block", "hostile_value",
                                 "hostile_value"]))
    pos = draw(st.integers(0, 1 << 20))
    if kind == "flip":
        bit = draw(st.integers(0, 7))
        return lambda d: _flip(d, pos, bit)
    if kind == "truncate":
        return lambda d: d[: pos % (len(d) + 1)]
    if kind in ("dup_line", "drop_line", "swap_lines"):
        return lambda d: _edit_units(d, b"\n", kind.removesuffix("_line").removesuffix("_lines"), pos)
    if kind in ("dup_block", "drop_block"):
        return lambda d: _edit_units(d, b"\n\n", kind.removesuffix("_block"), pos)
    if kind == "inject_event":
        event = draw(events)
        return lambda d: _insert_at_line(d, pos, event)
    if kind == "hostile_value":
        literal = draw(st.sampled_from(HOSTILE_LITERALS))
        return lambda d: _replace_value(d, pos, literal)
    if kind == "inject_bytes":
        junk = draw(st.binary(min_size=1, max_size=40))
        return lambda d: d[: pos % (len(d) + 1)] + junk + d[pos % (len(d) + 1) :]
    length = draw(st.integers(1, 64))
    return lambda d: d[: pos % (len(d) + 1)] + d[pos % (len(d) + 1) + length :]


# A JSON string or number right after a key: the value a hostile literal replaces.
_VALUE = re.compile(rb'(?<=":)\s*(?:"(?:[^"\\\n]|\\.)*"|-?[0-9][0-9.eE+-]*)')


def _replace_value(data: bytes, pos: int, literal: bytes) -> bytes:
    """``data`` with one JSON value (a string or number after a key) replaced by ``literal``."""
    spans = [m.span() for m in _VALUE.finditer(data)]
    if not spans:
        return data
    start, end = spans[pos % len(spans)]
    return data[:start] + literal + data[end:]


def _edit_units(data: bytes, sep: bytes, action: str, pos: int) -> bytes:
    units = data.split(sep)
    if not units:
        return data
    i = pos % len(units)
    if action == "dup":
        units.insert(i, units[i])
    elif action == "drop":
        del units[i]
    elif len(units) > 1:  # swap with the next one
        j = (i + 1) % len(units)
        units[i], units[j] = units[j], units[i]
    return sep.join(units)


def _insert_at_line(data: bytes, pos: int, event: bytes) -> bytes:
    """Insert ``event`` at the start of a random line (or at the end)."""
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A]
    at = starts[pos % len(starts)]
    return data[:at] + event + data[at:]


def mutated(data: bytes, events: st.SearchStrategy[bytes], max_edits: int = 4) -> st.SearchStrategy[bytes]:
    """``data`` after 1..``max_edits`` random mutations."""

    def apply(edits: list[Mutation]) -> bytes:
        out = data
        for edit in edits:
            out = edit(out)
        return out

    return st.lists(mutation(events), min_size=1, max_size=max_edits).map(apply)

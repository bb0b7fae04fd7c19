"""JSON text from upstreams, parsed into values that only hold text UTF-8 can carry.

Python's ``json`` decodes a lone-surrogate escape such as ``"\\ud800"`` into a ``str`` that
has no UTF-8 form, so the first ``.encode()`` of an event carrying it would raise.  ``loads``
turns lone surrogates into U+FFFD, as a UTF-8 decoder does with bytes it cannot read; bytes
must be UTF-8 (``json.loads`` would let an encoded surrogate through with ``surrogatepass``).
``loads_strict`` also rejects ``NaN``/``Infinity``, which are not JSON, and numbers too large
for a double (``1e999`` would be written back as ``Infinity``): what the native relay passes on
must be JSON a strict client can parse.  Both raise ``ValueError`` (or
``RecursionError`` for absurd nesting) exactly where ``json.loads`` would on malformed text.

``dumps_compact`` is the other direction (events, upstream request bodies): compact JSON with
non-ASCII kept, from one encoder built once.

Pure: standard library only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

__all__ = ["Snapshot", "dumps_compact", "has_surrogate_escape", "loads", "loads_strict"]

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):  # 1e999: would be written back as Infinity
        raise ValueError(f"{text[:40]} is out of the range of a double")
    return value


_decoder = json.JSONDecoder()
_strict_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_decode = _decoder.decode
_decode_strict = _strict_decoder.decode
# ``decode`` matches whitespace before and after the value with a regex and wraps the scanner in
# ``raw_decode``; upstream JSON (an SSE data line, an NDJSON line) rarely has either, so the
# scanner runs alone first and ``decode`` only sees text it did not consume whole.
_scan: Callable[[str, int], tuple[Any, int]] = getattr(_decoder, "scan_once")  # noqa: B009 - not in typeshed
_scan_strict: Callable[[str, int], tuple[Any, int]] = getattr(_strict_decoder, "scan_once")  # noqa: B009


def has_surrogate_escape(text: str) -> bool:
    """True if ``text`` may hold a surrogate escape (cheap: two substring searches, no regex)."""
    return "\\ud" in text or "\\uD" in text


def _parse(data: str | bytes, scan: Callable[[str, int], tuple[Any, int]], decode: Callable[[str], Any]) -> Any:
    text = data if type(data) is str else data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    try:
        value, end = scan(text, 0)  # malformed inside: the same JSONDecodeError ``decode`` raises
    except StopIteration:  # no value at 0 (leading whitespace, empty text): ``decode`` decides and words it
        end = -1
    if end != len(text):
        value = decode(text)
    return _scrub(value) if "\\ud" in text or "\\uD" in text else value


def loads(data: str | bytes) -> Any:
    """``json.loads``, but lone surrogates become U+FFFD and bytes must be UTF-8."""
    if type(data) is not str:  # once per upstream event: ``_parse`` inlined for the usual str
        return _parse(data, _scan, _decode)
    try:
        value, end = _scan(data, 0)
    except StopIteration:
        end = -1
    if end != len(data):
        value = _decode(data)
    return _scrub(value) if "\\ud" in data or "\\uD" in data else value


def loads_strict(data: str | bytes) -> Any:
    """``loads`` that also rejects ``NaN``, ``Infinity``, ``-Infinity`` and overflowing numbers (``ValueError``)."""
    return _parse(data, _scan_strict, _decode_strict)


def _clean(text: str) -> str:
    return _LONE_SURROGATE.sub("\ufffd", text)


def _scrub(value: Any) -> Any:
    """``value`` with every lone surrogate replaced; iterative, so deep nesting costs no recursion."""
    if isinstance(value, str):
        return _clean(value)
    root = [value]
    stack: list[dict[str, Any] | list[Any]] = [root]
    while stack:
        node = stack.pop()
        pairs = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, child in pairs:
            if isinstance(child, str):
                child = _clean(child)
                node[key] = child  # type: ignore[index]
            elif isinstance(child, dict | list):
                stack.append(child)
            if isinstance(key, str) and _LONE_SURROGATE.search(key):
                assert isinstance(node, dict)
                node[_clean(key)] = node.pop(key)
    return root[0]


_compact_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# ``JSONEncoder.encode`` builds a C encoder object on every call (most of the cost of encoding a
# small event); this one is built once.  No circular-reference check: what we encode is built
# from parsed JSON, so it is a tree (an absurdly deep one still stops with ``RecursionError``).
_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # not in typeshed
_c_encoder = (
    None if _make_c_encoder is None
    else _make_c_encoder(None, _compact_encoder.default, json.encoder.encode_basestring,
                         None, ":", ",", False, False, True)
)


def dumps_compact(value: Any) -> str:
    """Compact JSON text of ``value``, non-ASCII kept: ``JSONEncoder(separators=(",", ":"), ensure_ascii=False)``."""
    if _c_encoder is None or type(value) is not dict:  # CPython always has the C encoder; a dict is the usual
        return _compact_encoder.encode(value)
    return "".join(_c_encoder(value, 0))


class Snapshot(dict[str, Any]):
    """A response object as it stood at one point, carried unchanged by several events.

    ``response.created`` and ``response.in_progress`` carry the same snapshot, the largest
    JSON of a stream's start: its ``dumps_compact`` text is made once (``json``, by the first
    event encoded or earlier) and kept in ``text`` for the next event.  Never mutate a snapshot
    once its text was made.
    """

    text: str | None = None

    def json(self) -> str:
        """The snapshot's compact JSON text, made on first use."""
        text = self.text
        if text is None:
            text = self.text = dumps_compact(self)
        return text

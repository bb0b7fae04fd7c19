"""``jsontext.loads``: strict JSON from upstreams, with only text that UTF-8 can carry."""

from __future__ import annotations

import json

import pytest

from streamgw.core.jsontext import dumps_compact, has_surrogate_escape, loads, loads_strict


def test_plain_json_is_parsed_as_json_would() -> None:
    assert loads('{"a":[1,2.5,"x",null,true]}') == {"a": [1, 2.5, "x", None, True]}
    assert loads(b'{"a":"\xc3\xa9"}') == {"a": "\u00e9"}


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a":-Infinity}'])
def test_strict_rejects_the_constants(text: str) -> None:
    with pytest.raises(ValueError, match="is not valid JSON"):
        loads_strict(text)
    loads(text)  # the lenient form takes them, as json.loads does


@pytest.mark.parametrize("text", ["1e999", '{"a":[-1E400]}'])
def test_strict_rejects_numbers_beyond_a_double(text: str) -> None:
    with pytest.raises(ValueError, match="out of the range of a double"):
        loads_strict(text)
    assert loads_strict("[1.5e300, 2]") == [1.5e300, 2]


@pytest.mark.parametrize("data", [b"\xff", b'"\xed\xa0\x80"', b'"\xc3"'])
def test_bytes_must_be_utf8(data: bytes) -> None:
    with pytest.raises(ValueError):  # json.loads(bytes) would let the encoded surrogate through
        loads(data)
    with pytest.raises(ValueError):
        loads_strict(data)


def test_lone_surrogates_become_replacement_characters_everywhere() -> None:
    value = loads('{"k\\ud800":["\\udc00", {"deep": "a\\uDBFFb"}], "pair": "\\ud83d\\ude00"}')
    assert value == {"k\ufffd": ["\ufffd", {"deep": "a\ufffdb"}], "pair": "\U0001f600"}
    assert loads('"\\ud800"') == "\ufffd" == loads_strict('"\\ud800"')


def test_deep_nesting_costs_no_recursion_in_the_scrub() -> None:
    value = loads("[" * 900 + '"\\ud800"' + "]" * 900)
    for _ in range(900):
        value = value[0]
    assert value == "\ufffd"


def test_the_escape_check_is_cheap_and_case_blind() -> None:
    assert has_surrogate_escape('"\\uD800"') and has_surrogate_escape('"\\ud800"')
    assert not has_surrogate_escape('"\\u00e9 plain"')


@pytest.mark.parametrize("text", [
    '{"a":1}', ' {"a":1}', '{"a":1} ', "\t[]\n", '"x"', "3", "3 ", "-0.5e3", "true", "null",
    "", " ", "[1,2", '{"a":1}x', '{"a":1}{"b":2}', '{"a":tru}', "[1,]", '{"a" 1}', '"unterminated',
    '{"a":"\\x"}', "01", "[" * 50 + "]" * 50,
])
def test_valid_and_malformed_text_as_json_loads_has_it(text: str) -> None:
    """The scanner runs first and ``decode`` only sees what it did not consume: same values, same errors."""
    for parse in (loads, loads_strict):
        try:
            expected: object = ("value", json.loads(text))
        except ValueError as exc:
            expected = ("error", type(exc), str(exc))
        try:
            got: object = ("value", parse(text))
        except ValueError as exc:
            got = ("error", type(exc), str(exc))
        assert got == expected


@pytest.mark.parametrize("value", [
    {"model": "m", "messages": [{"role": "user", "content": "héllo 😀\n\u2028"}], "stream": True, "t": 0.7},
    {"nested": {"a": [1, 2.5, None, False, {"b": []}]}, "big": 10**25, "nan": float("nan")},
    ["a list", 1], "a string", 3, None,
])
def test_dumps_compact_is_json_dumps_compact_with_non_ascii_kept(value: object) -> None:
    assert dumps_compact(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_dumps_compact_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        dumps_compact({"a": b"bytes"})

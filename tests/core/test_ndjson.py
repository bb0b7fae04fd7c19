"""Tests for the sans-IO NDJSON line splitter (``streamgw.core.ndjson``)."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pytest

from streamgw.core.ndjson import NDJSONDecoder

# An Ollama /api/chat stream, as in the streaming example of Ollama's API docs.
OLLAMA_LINES = [
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.18Z","message":{"role":"assistant","content":"The"},'
    b'"done":false}',
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.19Z","message":{"role":"assistant","content":"",'
    b'"tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Tokyo"}}}]},"done":false}',
    b'{"model":"llama3.2","created_at":"2025-07-07T20:22:19.20Z","message":{"role":"assistant","content":""},'
    b'"done":true,"done_reason":"stop","total_duration":182242375,"load_duration":41295167,'
    b'"prompt_eval_count":169,"prompt_eval_duration":24573166,"eval_count":15,"eval_duration":115959084}',
]
OLLAMA_STREAM = b"".join(line + b"\n" for line in OLLAMA_LINES)


def decode(chunks: Iterable[bytes]) -> list[bytes]:
    """Feed every chunk to a fresh decoder, finish it, and return all lines."""
    decoder = NDJSONDecoder()
    lines: list[bytes] = []
    for chunk in chunks:
        lines.extend(decoder.feed(chunk))
    lines.extend(decoder.finish())
    return lines


def test_ollama_stream_whole() -> None:
    lines = decode([OLLAMA_STREAM])
    assert lines == OLLAMA_LINES
    objs = [json.loads(line) for line in lines]
    assert [o["done"] for o in objs] == [False, False, True]
    assert objs[1]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Tokyo"}


def test_ollama_stream_byte_at_a_time() -> None:
    assert decode([OLLAMA_STREAM[i : i + 1] for i in range(len(OLLAMA_STREAM))]) == OLLAMA_LINES


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_ollama_stream_every_two_chunk_split(ending: bytes) -> None:
    stream = OLLAMA_STREAM.replace(b"\n", ending)
    for cut in range(len(stream) + 1):
        assert decode([stream[:cut], stream[cut:]]) == OLLAMA_LINES, cut


def test_ollama_stream_three_chunk_splits() -> None:
    size = len(OLLAMA_STREAM)
    for i in range(0, size + 1, 17):
        for j in range(i, size + 1, 19):
            chunks = [OLLAMA_STREAM[:i], OLLAMA_STREAM[i:j], OLLAMA_STREAM[j:]]
            assert decode(chunks) == OLLAMA_LINES, (i, j)


def test_lines_are_returned_by_the_feed_that_ends_them() -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":') == []
    assert decoder.feed(b"1}") == []
    assert decoder.feed(b'\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert decoder.feed(b":3}\n") == [b'{"c":3}']
    assert decoder.finish() == []


def test_crlf_is_stripped_even_when_split() -> None:
    assert decode([b'{"a":1}\r', b'\n{"b":2}\r\n']) == [b'{"a":1}', b'{"b":2}']


def test_blank_and_whitespace_only_lines_are_skipped() -> None:
    stream = b'\n\r\n \t\n{"a":1}\n   \r\n\n{"b":2}\n\x0b\x0c\n'
    assert decode([stream]) == [b'{"a":1}', b'{"b":2}']


def test_only_one_trailing_cr_is_stripped_and_other_whitespace_kept() -> None:
    assert decode([b' {"a":1} \r\n{"b":2}\r\r\n']) == [b' {"a":1} ', b'{"b":2}\r']


def test_lone_cr_is_not_a_line_end() -> None:
    assert decode([b'{"a":1}\r{"b":2}\n']) == [b'{"a":1}\r{"b":2}']


def test_multibyte_utf8_split_at_every_offset() -> None:
    line = '{"content":"héllo 👋 中文"}'.encode()
    stream = line + b"\n"
    for cut in range(len(stream) + 1):
        lines = decode([stream[:cut], stream[cut:]])
        assert lines == [line], cut
        assert json.loads(lines[0])["content"] == "héllo 👋 中文"


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b'{"done":true}', [b'{"done":true}']),
        (b'{"done":true}\r', [b'{"done":true}']),
        (b"   ", []),
        (b"\r", []),
        (b"", []),
    ],
)
def test_finish_returns_the_unterminated_last_line_if_non_blank(tail: bytes, expected: list[bytes]) -> None:
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n' + tail) == [b'{"a":1}']
    assert decoder.finish() == expected


def test_finish_returns_a_line_built_from_several_chunks() -> None:
    assert decode([b'{"a"', b":", b"1}"]) == [b'{"a":1}']


def test_empty_stream() -> None:
    assert decode([]) == []
    assert decode([b"", b""]) == []


def test_decoder_is_done_after_finish() -> None:
    decoder = NDJSONDecoder()
    decoder.feed(b'{"a":1}\n')
    assert decoder.finish() == []
    with pytest.raises(RuntimeError):
        decoder.feed(b'{"b":2}\n')
    with pytest.raises(RuntimeError):
        decoder.finish()

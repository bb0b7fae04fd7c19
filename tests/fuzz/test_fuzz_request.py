"""Fuzz the request parser: any body either parses or is a 400 ``invalid_request_error``.

Bodies are valid-shaped ``POST /v1/responses`` requests with junk in every field (random
types, nesting, Unicode incl. lone surrogates, huge numbers, ``NaN``, duplicate keys), or
plain random JSON and random bytes.  A body that parses must also survive what the gateway
does next with it: ``echo_fields``, UTF-8 JSON encoding of the echo, and every dialect's
request builder (which may refuse it only with a ``GatewayError``).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streamgw.config import ProviderConfig, Secret
from streamgw.core.request import ResponsesRequest, echo_fields, parse_request
from streamgw.errors import GatewayError, InvalidRequest
from streamgw.providers.registry import dialects

from .strategies import Obj, Raw, any_text, budget, json_trees, raw_literals, to_json

junk = json_trees()


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a well-formed value, sometimes random junk of any type."""
    return st.one_of(valid, valid, junk)


parts = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["input_text", "input_image", "input_file", "output_text", "refusal"]))},
    optional={"text": maybe(any_text), "image_url": maybe(st.sampled_from(["https://x.test/a.png",
                                                                           "data:image/png;base64,AAAA"])),
              "file_data": maybe(any_text), "refusal": maybe(any_text), "detail": maybe(st.just("low"))},
)
items = st.fixed_dictionaries(
    {},
    optional={
        "type": maybe(st.sampled_from(["message", "function_call", "function_call_output", "reasoning",
                                       "item_reference", "web_search_call"])),
        "role": maybe(st.sampled_from(["user", "assistant", "system", "developer"])),
        "content": maybe(any_text | st.lists(parts, max_size=3)),
        "call_id": maybe(any_text), "name": maybe(any_text), "arguments": maybe(any_text),
        "output": maybe(any_text | st.lists(parts, max_size=2)), "id": maybe(any_text),
        "summary": maybe(st.lists(st.fixed_dictionaries({"text": maybe(any_text)}), max_size=2)),
        "encrypted_content": maybe(any_text),
    },
)
tools = st.fixed_dictionaries(
    {"type": maybe(st.sampled_from(["function", "web_search", "custom"]))},
    optional={"name": maybe(st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)),
              "parameters": maybe(st.just({"type": "object", "properties": {}})),
              "strict": maybe(st.booleans()), "description": maybe(any_text)},
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "instructions": any_text,
    "tools": st.lists(tools, max_size=3),
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | st.fixed_dictionaries(
        {"type": st.sampled_from(["function", "allowed_tools"]), "name": any_text}),
    "parallel_tool_calls": st.booleans(),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "max_output_tokens": st.integers(0, 10**6),
    "max_tool_calls": st.integers(0, 100),
    "top_logprobs": st.integers(0, 20),
    "stop": any_text | st.lists(any_text, max_size=5),
    "text": st.fixed_dictionaries({}, optional={
        "format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"])},
                                        optional={"name": any_text, "schema": st.just({"type": "object"})}),
        "verbosity": st.sampled_from(["low", "medium", "high"])}),
    "reasoning": st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["low", "high", "max"]),
                                                     "summary": st.sampled_from(["auto", "detailed"])}),
    "stream": st.booleans(), "store": st.booleans(), "background": st.booleans(),
    "metadata": st.dictionaries(any_text, any_text, max_size=17),
    "provider": any_text, "previous_response_id": any_text, "user": any_text,
    "truncation": st.sampled_from(["auto", "disabled"]),
}


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """A valid-shaped request with junk anywhere, duplicate keys sometimes, serialised by hand."""
    pairs: list[tuple[str, Any]] = [
        ("model", draw(maybe(st.sampled_from(["demo/echo", "gpt-4o", " "])))),
        ("input", draw(maybe(any_text | st.lists(items, min_size=1, max_size=4)))),
    ]
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=6, unique=True)):
        pairs.append((name, draw(maybe(FIELDS[name]))))
    if draw(st.booleans()):  # a repeated key: Python's json keeps the last one
        name, _ = draw(st.sampled_from(pairs))
        pairs.insert(draw(st.integers(0, len(pairs))), (name, draw(junk)))
    pairs = draw(st.permutations(pairs))
    return to_json(Obj(tuple(pairs)), ascii_only=draw(st.booleans()))


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """A minimal valid request with one hostile literal planted in one field's place."""
    field = draw(st.sampled_from(["model", "input", "instructions", "temperature", "max_output_tokens",
                                  "metadata", "tools", "stop", "user"]))
    literal = draw(raw_literals)
    body = {"model": "demo/echo", "input": "hi", field: literal}
    return to_json(body)


random_bytes = st.binary(max_size=200)
random_json = junk.map(to_json)


def check_rejection(error: InvalidRequest) -> None:
    """A 400 in the OpenAI envelope, naming the param unless the body as a whole is unreadable."""
    assert error.status == 400
    envelope = error.envelope()["error"]
    assert isinstance(envelope, dict)
    assert envelope["type"] == "invalid_request_error"
    assert isinstance(envelope["message"], str) and envelope["message"]
    assert envelope["param"] is not None or envelope["code"] in ("invalid_json",), envelope
    json.dumps(error.envelope(), ensure_ascii=False).encode()  # the 400 itself must be sendable


PROVIDERS = {
    ptype: ProviderConfig(name=f"fuzz-{ptype}", type=ptype, base_url="http://127.0.0.1:9/v1",
                          api_key=Secret("sk-fuzz-upstream-key-0123456789"))
    for ptype in dialects()
}


def check_accepted(body: bytes, request: ResponsesRequest) -> None:
    """What the gateway does next with a parsed request must not crash either."""
    assert isinstance(request.model, str) and request.model.strip()
    assert request.input and all(isinstance(item, dict) for item in request.input)
    # an accepted request has valid Unicode only: it always has a UTF-8 form
    json.dumps(echo_fields(request), ensure_ascii=False).encode()
    for ptype, dialect in dialects().items():
        try:
            dialect.build_request(request, PROVIDERS[ptype], "m")
        except GatewayError as error:
            assert 400 <= error.status < 600


def check_body(body: bytes) -> None:
    """The property: a request, or ``InvalidRequest``; never any other exception."""
    try:
        request = parse_request(body)
    except InvalidRequest as error:
        check_rejection(error)
        return
    check_accepted(body, request)


@budget(300)
@given(request_bodies())
def test_valid_shaped_requests_with_junk(body: bytes) -> None:
    check_body(body)


@budget(120)
@given(hostile_bodies())
def test_hostile_literals_in_fields(body: bytes) -> None:
    check_body(body)


@budget(100)
@given(random_json)
def test_random_json(body: bytes) -> None:
    check_body(body)


@budget(100)
@given(random_bytes)
def test_random_bytes(body: bytes) -> None:
    check_body(body)


def test_raw_marker_is_written_verbatim() -> None:
    """The generator itself: a ``Raw`` literal lands in the text unchanged (else the fuzz is toothless)."""
    assert to_json({"a": Raw(b"NaN"), "b": Obj((("k", 1), ("k", 2)))}) == b'{"a":NaN,"b":{"k":1,"k":2}}'

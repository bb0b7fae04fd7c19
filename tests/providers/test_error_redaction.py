"""Every field an upstream error relays is made safe, in every dialect (before the stream and after it).

The upstream is hostile or leaky: its error body carries the gateway's own upstream key in
``message``, ``code``, ``param`` and ``type``, a lone surrogate, and a header that is no
``retry-after``.  Whatever the dialect, the ``GatewayError`` it becomes must hold none of it,
its ``code`` must be a short plain identifier and its JSON envelope must encode to UTF-8.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamgw.core.relay import RelayedEvent, RelayEmitter
from streamgw.errors import GatewayError, safe_code, sanitize_upstream
from streamgw.providers.openai_responses import ResponsesRelayTranslator
from streamgw.providers.registry import dialects

KEY = "upstream-secret-9f8e7d6c5b4a"  # a configured secret: lowercase, so it even looks like a plain code
KEYLIKE = "sk-proj-AbCdEf0123456789xyz"  # not configured, but shaped like an API key
SECRETS = (KEY,)
DIALECTS = sorted(set(dialects()) - {"demo"})


def leaky_bodies() -> list[bytes]:
    bodies = []
    for leak in (KEY, KEYLIKE, "Bad Code With Spaces", "x" * 65, "\u00fcnicode"):
        error = {"message": f"boom {leak} \ud800", "code": leak, "param": leak, "type": leak, "status": leak}
        bodies.append(json.dumps({"error": error, "type": "error"}).encode())  # the escape stays a lone surrogate
    return bodies


def assert_safe(error: GatewayError) -> None:
    text = json.dumps(error.envelope(), ensure_ascii=False)
    text.encode()  # no lone surrogate left
    assert KEY not in text and KEYLIKE not in text, text
    assert KEY not in str(error) and KEY not in json.dumps(error.headers)
    assert error.code is None or safe_code(error.code) == error.code, error.code
    assert error.param is None or len(error.param) <= 64
    assert set(error.headers) <= {"retry-after"}
    assert all("\r" not in v and "\n" not in v for v in error.headers.values())


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("status", [400, 404, 409, 422, 429, 500, 502, 503, 529])
def test_upstream_error_fields_are_safe_in_every_dialect(dialect: str, status: int) -> None:
    parse = dialects()[dialect].parse_error
    for body in leaky_bodies():
        headers = {"retry-after": "7\r\nset-cookie: a=b", "x-leak": KEY}
        assert_safe(parse(status, headers, body, SECRETS))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_plain_codes_and_params_are_still_relayed(dialect: str) -> None:
    body = json.dumps({"error": {"message": "no such model", "code": "model_not_found", "param": "model",
                                 "type": "invalid_request_error"}}).encode()
    error = dialects()[dialect].parse_error(404, {"retry-after": "7"}, body, SECRETS)
    assert error.code == "model_not_found"
    if dialect in ("chat", "openai"):
        assert error.param == "model"


def test_sanitize_upstream_replaces_what_is_not_plain() -> None:
    error = sanitize_upstream(GatewayError(f"m {KEY}", code=KEY, param="messages[0].content",
                                           headers={"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}), SECRETS)
    assert (error.code, error.param, error.message) == ("upstream_error", "messages[0].content", "m [redacted]")
    assert error.headers == {"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"}
    long = sanitize_upstream(GatewayError("x" * 10_000, code="Upper", param="a b"))
    assert (long.code, long.param, len(long.message) <= 2001) == ("upstream_error", None, True)


def relay(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Upstream SSE through the native translator and the relay emitter, as the client gets it."""
    translator = ResponsesRelayTranslator(secrets=SECRETS)
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    emitter = RelayEmitter(model="m", provider="oai", echo={})
    out = emitter.feed(translator.feed(body)) + emitter.finish()
    return [json.loads(e.data) if isinstance(e, RelayedEvent) else e for e in out]


def started() -> list[dict[str, Any]]:
    response = {"id": "resp_1", "object": "response", "status": "in_progress", "error": None, "output": []}
    item = {"id": "msg_1", "type": "message", "status": "in_progress", "role": "assistant", "content": []}
    return [{"type": "response.created", "response": response, "sequence_number": 0},
            {"type": "response.output_item.added", "output_index": 0, "item": item, "sequence_number": 1}]


@pytest.mark.parametrize("leak", [KEY, KEYLIKE, "Not A Code", "\u00e9"])
def test_a_relayed_response_failed_carries_only_a_plain_code_and_a_clean_message(leak: str) -> None:
    response = {"id": "resp_1", "object": "response", "status": "failed", "output": [],
                "error": {"code": leak, "message": f"failed: {leak} \ud800", "param": leak, "type": leak}}
    events = relay([*started(), {"type": "response.failed", "response": response, "sequence_number": 2}])
    failed = events[-1]
    assert failed["type"] == "response.failed"
    error = failed["response"]["error"]
    assert set(error) == {"code", "message"}
    assert safe_code(error["code"]) == error["code"] and KEY not in error["code"]
    text = json.dumps(events, ensure_ascii=False)
    text.encode()
    assert KEY not in text and KEYLIKE not in text


def test_a_relayed_error_event_mid_stream_is_safe_too() -> None:
    events = relay([*started(), {"type": "error", "code": KEY, "message": f"bad {KEY} \udc00", "param": KEY,
                                 "sequence_number": 2}])
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    text = json.dumps(events, ensure_ascii=False)
    text.encode()
    assert KEY not in text

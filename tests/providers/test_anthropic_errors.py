"""Anthropic error parser: upstream HTTP errors → ``GatewayError`` (README "Errors").

Anthropic's error types: https://docs.anthropic.com/en/api/errors.
"""

from __future__ import annotations

import json

import pytest

from streamgw.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge, RateLimited, UpstreamError
from streamgw.providers.anthropic import DIALECT, parse_error

LEAKED_KEY = "sk-ant-api03-abcdef1234567890"


def body(type_: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}).encode()


def public_text(err: GatewayError) -> str:
    """Everything of the error a client could see."""
    return json.dumps([err.envelope(), err.headers, str(err)])


@pytest.mark.parametrize(
    ("status", "etype", "cls", "http", "type_", "code"),
    [
        (400, "invalid_request_error", InvalidRequest, 400, "invalid_request_error", None),
        (409, "invalid_request_error", InvalidRequest, 400, "invalid_request_error", None),
        (422, "invalid_request_error", InvalidRequest, 400, "invalid_request_error", None),
        (404, "not_found_error", NotFound, 404, "not_found_error", None),
        (413, "request_too_large", PayloadTooLarge, 413, "invalid_request_error", "request_too_large"),
        (401, "authentication_error", UpstreamError, 502, "provider_error", "upstream_auth_failed"),
        (403, "permission_error", UpstreamError, 502, "provider_error", "upstream_auth_failed"),
        (402, "billing_error", RateLimited, 429, "rate_limit_error", "insufficient_quota"),
        (429, "rate_limit_error", RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", UpstreamError, 502, "provider_error", "upstream_5xx"),
        (504, "timeout_error", UpstreamError, 502, "provider_error", "upstream_timeout"),
        (529, "overloaded_error", UpstreamError, 502, "provider_error", "overloaded"),
        (418, "teapot", UpstreamError, 502, "provider_error", "upstream_unexpected_status"),
    ],
)
def test_status_mapping(
    status: int, etype: str, cls: type[GatewayError], http: int, type_: str, code: str | None
) -> None:
    err = parse_error(status, {}, body(etype, "upstream says no"))
    assert type(err) is cls
    assert (err.status, err.type, err.code) == (http, type_, code)
    assert "upstream says no" in err.message


def test_context_overflow_gets_its_code() -> None:
    err = parse_error(400, {}, body("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"))
    assert err.code == "context_length_exceeded" and err.message.startswith("prompt is too long")


def test_model_not_found_gets_its_code() -> None:
    err = parse_error(404, {}, body("not_found_error", "model: claude-nope"))
    assert err.code == "model_not_found" and err.message == "model: claude-nope"


@pytest.mark.parametrize("status", [429, 529, 500])
def test_retry_after_is_copied(status: int) -> None:
    err = parse_error(status, {"Retry-After": "7"}, body("rate_limit_error", "slow down"))
    assert err.headers == {"retry-after": "7"}


def test_no_retry_after_no_header() -> None:
    assert parse_error(429, {}, body("rate_limit_error", "slow down")).headers == {}


def test_auth_failure_names_the_gateway_credential() -> None:
    err = parse_error(401, {}, body("authentication_error", "invalid x-api-key"))
    assert "gateway's credentials" in err.message and "invalid x-api-key" in err.message


def test_keys_are_redacted_everywhere() -> None:
    err = parse_error(401, {}, body("authentication_error", f"invalid x-api-key {LEAKED_KEY} / s3cr3t-x"),
                      secrets=["s3cr3t-x"])
    text = public_text(err)
    assert LEAKED_KEY not in text and "s3cr3t-x" not in text and "[redacted]" in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
        (b"", "upstream answered HTTP 500 with an empty body"),
        (b'{"error": "plain string"}', "plain string"),
        (b'{"error": {"message": "openai-shaped", "type": "x"}}', "openai-shaped"),
        (b'{"type": "error", "error": {"type": "api_error"}}', '{"type": "error", "error": {"type": "api_error"}}'),
    ],
)
def test_bodies_that_are_not_the_envelope(raw: bytes, expected: str) -> None:
    assert expected in parse_error(500, {}, raw).message


def test_long_raw_bodies_are_truncated() -> None:
    err = parse_error(500, {}, b"x" * 5000)
    assert len(err.message) < 1100


def test_dialect_method_is_the_function() -> None:
    err = DIALECT.parse_error(529, {"retry-after": "3"}, body("overloaded_error", "Overloaded"), ())
    assert (err.status, err.code, err.headers) == (502, "overloaded", {"retry-after": "3"})


def test_deeply_nested_error_body_is_no_crash() -> None:
    # Found by tests/fuzz: json.loads raised RecursionError, which only ValueError was caught for.
    err = parse_error(500, {}, b"[" * 100_000)
    assert isinstance(err, GatewayError) and err.status >= 500


def test_lone_surrogate_in_an_error_message_is_replaced() -> None:
    err = parse_error(400, {}, body("invalid_request_error", "bad \udc00 input"))
    assert isinstance(err, InvalidRequest) and "bad \ufffd input" in err.message

"""Chat Completions error parser: upstream HTTP errors → ``GatewayError`` (README "Errors")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamgw.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)
from streamgw.providers.chat_completions import DIALECT, parse_error

LEAKED_KEY = "sk-live-abcdef1234567890"


def envelope(message: str, type_: str | None = None, param: str | None = None, code: Any = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


def public_text(err: GatewayError) -> str:
    """Everything of the error a client could see."""
    return json.dumps([err.envelope(), err.headers, str(err)])


@pytest.mark.parametrize(
    ("status", "cls", "http", "type_"),
    [
        (400, InvalidRequest, 400, "invalid_request_error"),
        (409, InvalidRequest, 400, "invalid_request_error"),
        (422, InvalidRequest, 400, "invalid_request_error"),
        (404, NotFound, 404, "not_found_error"),
        (413, PayloadTooLarge, 413, "invalid_request_error"),
        (429, RateLimited, 429, "rate_limit_error"),
        (402, RateLimited, 429, "rate_limit_error"),
        (401, UpstreamError, 502, "provider_error"),
        (403, UpstreamError, 502, "provider_error"),
        (408, UpstreamTimeout, 504, "provider_error"),
        (504, UpstreamTimeout, 504, "provider_error"),
        (500, UpstreamError, 502, "provider_error"),
        (502, UpstreamError, 502, "provider_error"),
        (503, UpstreamError, 502, "provider_error"),
        (529, UpstreamError, 502, "provider_error"),
        (418, UpstreamError, 502, "provider_error"),
    ],
)
def test_status_mapping(status: int, cls: type[GatewayError], http: int, type_: str) -> None:
    err = parse_error(status, {}, envelope("upstream says no", "some_type"))
    assert type(err) is cls
    assert (err.status, err.type) == (http, type_)
    assert "upstream says no" in err.message


def test_400_keeps_param_and_string_code() -> None:
    body = envelope("Invalid type for 'temperature'.", "invalid_request_error", "temperature", "invalid_type")
    err = parse_error(400, {}, body)
    assert isinstance(err, InvalidRequest)
    assert err.envelope() == {
        "error": {
            "message": "Invalid type for 'temperature'.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_type",
        }
    }


def test_numeric_code_is_dropped() -> None:
    err = parse_error(422, {}, envelope("bad", code=422))
    assert err.code is None and err.param is None


def test_404_model_not_found() -> None:
    body = envelope("The model `gpt-9` does not exist", "invalid_request_error", None, "model_not_found")
    err = parse_error(404, {}, body)
    assert isinstance(err, NotFound)
    assert (err.code, err.message) == ("model_not_found", "The model `gpt-9` does not exist")


def test_413_code() -> None:
    assert parse_error(413, {}, b"Request Entity Too Large").code == "request_too_large"


@pytest.mark.parametrize("name", ["retry-after", "Retry-After", "RETRY-AFTER"])
def test_429_copies_retry_after(name: str) -> None:
    body = envelope("Rate limit reached for requests", "requests", None, "rate_limit_exceeded")
    err = parse_error(429, {name: "20", "x-ratelimit-remaining-requests": "0"}, body)
    assert isinstance(err, RateLimited)
    assert err.headers == {"retry-after": "20"}
    assert err.code == "rate_limit_exceeded"
    assert err.message == "Rate limit reached for requests"


def test_429_without_retry_after_and_quota_code() -> None:
    body = envelope("You exceeded your current quota", "insufficient_quota", None, "insufficient_quota")
    err = parse_error(429, {}, body)
    assert err.headers == {} and err.code == "insufficient_quota"


def test_402_is_a_billing_limit() -> None:
    err = parse_error(
        402, {}, json.dumps({"error": {"message": "Insufficient credits", "code": 402}}).encode()
    )
    assert (err.status, err.code, err.message) == (429, "insufficient_quota", "Insufficient credits")


@pytest.mark.parametrize("status", [401, 403])
def test_credential_errors_name_the_gateway_and_hide_the_key(status: int) -> None:
    body = envelope(
        f"Incorrect API key provided: {LEAKED_KEY}.", "invalid_request_error", None, "invalid_api_key"
    )
    err = parse_error(status, {}, body, secrets=[LEAKED_KEY])
    assert err.status == 502 and err.code == "upstream_auth_failed"
    assert err.message.startswith("upstream rejected the gateway's credentials")
    assert "Incorrect API key provided" in err.message
    assert LEAKED_KEY not in public_text(err) and "abcdef1234567890" not in public_text(err)


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 504, 418])
def test_key_never_survives_any_status(status: int) -> None:
    body = envelope(f"Incorrect API key provided: {LEAKED_KEY}", param=f"Bearer {LEAKED_KEY}")
    err = parse_error(status, {"retry-after": "1"}, body)  # redacted even without `secrets`
    assert LEAKED_KEY not in public_text(err)
    assert "[redacted]" in err.message


def test_configured_secret_that_does_not_look_like_a_key_is_redacted() -> None:
    err = parse_error(401, {}, b"key hunter2-correct-horse is not valid", secrets=["hunter2-correct-horse"])
    assert "hunter2" not in public_text(err)


def test_key_in_non_json_body_is_redacted() -> None:
    err = parse_error(500, {}, f"<html>bad gateway for {LEAKED_KEY}</html>".encode())
    assert LEAKED_KEY not in public_text(err)


def test_non_json_body_is_kept_truncated() -> None:
    err = parse_error(502, {}, b"<html>" + b"x" * 5000 + b"</html>")
    assert isinstance(err, UpstreamError) and err.code == "upstream_5xx"
    assert "<html>xxx" in err.message
    assert len(err.message) < 1100


def test_empty_body() -> None:
    err = parse_error(503, {"retry-after": "5"}, b"")
    assert "503" in err.message and err.code == "upstream_5xx"
    assert err.headers == {"retry-after": "5"}


def test_5xx_keeps_the_upstream_string_code() -> None:
    err = parse_error(529, {}, envelope("Overloaded", "overloaded_error", None, "overloaded"))
    assert (err.status, err.code) == (502, "overloaded")
    assert "Overloaded" in err.message


def test_timeout_statuses() -> None:
    err = parse_error(504, {}, b"Gateway Timeout")
    assert isinstance(err, UpstreamTimeout) and err.code == "timeout" and "Gateway Timeout" in err.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "model is required"}', "model is required"),  # Ollama /v1
        (
            b'{"object":"error","message":"max_tokens too large","type":"BadRequestError","code":400}',
            "max_tokens too large",
        ),  # vLLM
        (b'{"detail": "Not authenticated"}', "Not authenticated"),  # FastAPI-style servers
        (b'[{"error": {"message": "x"}}]', '[{"error": {"message": "x"}}]'),  # Gemini compat list
        (b'{"error": {"type": "server_error"}}', '{"error": {"type": "server_error"}}'),
    ],
)
def test_envelope_variants(body: bytes, message: str) -> None:
    err = parse_error(400, {}, body)
    assert err.message == message


def test_invalid_utf8_body() -> None:
    err = parse_error(500, {}, b"\xff\xfe oops")
    assert "oops" in err.message


def test_dialect_delegates() -> None:
    err = DIALECT.parse_error(429, {"retry-after": "3"}, envelope("slow down", code="rate_limit_exceeded"))
    assert isinstance(err, RateLimited) and err.headers == {"retry-after": "3"}


def test_deeply_nested_error_body_is_no_crash() -> None:
    # Found by tests/fuzz: json.loads raised RecursionError, which only ValueError was caught for.
    err = parse_error(500, {}, b"[" * 100_000)
    assert isinstance(err, UpstreamError) and err.message.startswith("upstream error (HTTP 500): [[[")


def test_lone_surrogate_in_an_error_message_is_replaced() -> None:
    err = parse_error(400, {}, envelope("bad \ud800 input"))
    assert err.message == "bad \ufffd input"
    err.message.encode()  # the 400 the client gets must be UTF-8

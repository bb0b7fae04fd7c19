"""Ollama error parser: upstream HTTP errors → ``GatewayError`` (README "Errors")."""

from __future__ import annotations

import json

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
from streamgw.providers.ollama import DIALECT, parse_error

LEAKED_KEY = "sk-live-abcdef1234567890"


def ollama_error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


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
        (401, UpstreamError, 502, "provider_error"),
        (403, UpstreamError, 502, "provider_error"),
        (408, UpstreamTimeout, 504, "provider_error"),
        (504, UpstreamTimeout, 504, "provider_error"),
        (500, UpstreamError, 502, "provider_error"),
        (502, UpstreamError, 502, "provider_error"),
        (503, UpstreamError, 502, "provider_error"),
        (418, UpstreamError, 502, "provider_error"),
    ],
)
def test_status_mapping(status: int, cls: type[GatewayError], http: int, type_: str) -> None:
    err = parse_error(status, {}, ollama_error("upstream says no"))
    assert type(err) is cls
    assert (err.status, err.type) == (http, type_)
    assert "upstream says no" in err.message


def test_400_keeps_the_message_as_it_is() -> None:
    err = parse_error(400, {}, ollama_error("invalid options: num_ctx must be a positive integer"))
    assert err.envelope() == {"error": {"message": "invalid options: num_ctx must be a positive integer",
                                        "type": "invalid_request_error", "param": None, "code": None}}


def test_404_model_not_pulled() -> None:
    err = parse_error(404, {}, ollama_error('model "qwen9:1b" not found, try pulling it first'))
    assert isinstance(err, NotFound) and err.code == "model_not_found"
    assert err.message == 'model "qwen9:1b" not found, try pulling it first'


def test_plain_text_404_hints_at_the_base_url() -> None:
    err = parse_error(404, {"content-type": "text/plain"}, b"404 page not found")
    assert isinstance(err, NotFound) and err.code is None
    assert "404 page not found" in err.message and "base_url" in err.message


@pytest.mark.parametrize("headers", [{"retry-after": "7"}, {"Retry-After": "7"}])
def test_429_copies_retry_after(headers: dict[str, str]) -> None:
    err = parse_error(429, headers, ollama_error("too many requests"))
    assert isinstance(err, RateLimited) and err.headers == {"retry-after": "7"}
    assert err.code == "rate_limit_exceeded" and err.message == "too many requests"


def test_429_without_retry_after() -> None:
    assert parse_error(429, {}, ollama_error("slow down")).headers == {}


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_the_gateways_credential(status: int) -> None:
    err = parse_error(status, {}, ollama_error("unauthorized"))
    assert err.status == 502 and err.code == "upstream_auth_failed"
    assert f"HTTP {status}" in err.message and "unauthorized" in err.message


def test_5xx_code_and_message() -> None:
    err = parse_error(500, {}, ollama_error("llama runner process has terminated: exit status 2"))
    assert err.code == "upstream_5xx"
    assert err.message == "upstream error (HTTP 500): llama runner process has terminated: exit status 2"
    assert parse_error(418, {}, b"").code == "upstream_unexpected_status"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "upstream answered HTTP 502 with an empty body"),
        (b'{"detail": "x"}', '{"detail": "x"}'),
        (b'{"error": ""}', '{"error": ""}'),
        (b'{"error": {"message": "proxy says no", "type": "server_error"}}', "proxy says no"),
        (b"[" * 100_000, "[" * 1000),
    ],
)
def test_non_ollama_bodies(body: bytes, expected: str) -> None:
    err = parse_error(502, {}, body)
    assert err.message == f"upstream error (HTTP 502): {expected}"


def test_long_raw_bodies_are_truncated() -> None:
    err = parse_error(500, {}, b"x" * 5000)
    assert len(err.message) < 1100


def test_messages_are_redacted() -> None:
    body = ollama_error(f"bad key {LEAKED_KEY}; Bearer abcdefghijklmnop; hunter2-secret")
    for status in (400, 401, 404, 429, 500):
        err = parse_error(status, {}, body, secrets=["hunter2-secret"])
        text = public_text(err)
        assert LEAKED_KEY not in text and "abcdefghijklmnop" not in text and "hunter2" not in text


def test_dialect_delegates() -> None:
    err = DIALECT.parse_error(404, {}, ollama_error('model "x" not found, try pulling it first'))
    assert isinstance(err, NotFound) and err.code == "model_not_found"

"""Gemini error parser: upstream HTTP errors → ``GatewayError`` (README "Errors").

Gemini's error statuses: https://ai.google.dev/gemini-api/docs/troubleshooting.
"""

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
from streamgw.providers.gemini import DIALECT, parse_error

LEAKED_KEY = "AIzaSyLeaked0123456789abcdefghijklmn"
CONFIGURED = "my-configured-upstream-secret"


def google(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return json.dumps({"error": error}, indent=2).encode()


def error_info(reason: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def public_text(err: GatewayError) -> str:
    """Everything of the error a client could see."""
    return json.dumps([err.envelope(), err.headers, str(err)])


@pytest.mark.parametrize(
    ("status", "grpc", "cls", "http", "type_"),
    [
        (400, "INVALID_ARGUMENT", InvalidRequest, 400, "invalid_request_error"),
        (400, "FAILED_PRECONDITION", InvalidRequest, 400, "invalid_request_error"),
        (409, "ABORTED", InvalidRequest, 400, "invalid_request_error"),
        (404, "NOT_FOUND", NotFound, 404, "not_found_error"),
        (413, "INVALID_ARGUMENT", PayloadTooLarge, 413, "invalid_request_error"),
        (429, "RESOURCE_EXHAUSTED", RateLimited, 429, "rate_limit_error"),
        (401, "UNAUTHENTICATED", UpstreamError, 502, "provider_error"),
        (403, "PERMISSION_DENIED", UpstreamError, 502, "provider_error"),
        (500, "INTERNAL", UpstreamError, 502, "provider_error"),
        (503, "UNAVAILABLE", UpstreamError, 502, "provider_error"),
        (504, "DEADLINE_EXCEEDED", UpstreamTimeout, 504, "provider_error"),
        (418, "UNKNOWN", UpstreamError, 502, "provider_error"),
    ],
)
def test_status_mapping(status: int, grpc: str, cls: type[GatewayError], http: int, type_: str) -> None:
    err = parse_error(status, {}, google(status, grpc, "upstream says no"))
    assert type(err) is cls
    assert (err.status, err.type) == (http, type_)
    assert "upstream says no" in err.message


def test_invalid_argument_keeps_the_grpc_status_as_code() -> None:
    assert parse_error(400, {}, google(400, "INVALID_ARGUMENT", "bad")).code == "invalid_argument"
    assert parse_error(400, {}, google(400, "FAILED_PRECONDITION", "where")).code == "failed_precondition"


def test_token_limit_is_context_length_exceeded() -> None:
    message = "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
    err = parse_error(400, {}, google(400, "INVALID_ARGUMENT", message))
    assert err.code == "context_length_exceeded" and err.message == message


def test_api_key_invalid_is_the_gateways_credential_problem() -> None:
    body = google(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                  [error_info("API_KEY_INVALID")])
    err = parse_error(400, {}, body)
    assert type(err) is UpstreamError and err.status == 502
    assert err.code == "upstream_auth_failed" and "API key not valid" in err.message
    other = parse_error(400, {}, google(400, "INVALID_ARGUMENT", "x", [error_info("SOMETHING_ELSE")]))
    assert type(other) is InvalidRequest


def test_permission_denied_names_the_credential() -> None:
    err = parse_error(403, {}, google(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers"))
    assert err.code == "upstream_auth_failed" and "HTTP 403" in err.message


def test_not_found_is_model_not_found() -> None:
    err = parse_error(404, {}, google(404, "NOT_FOUND", "models/nope is not found for API version v1beta"))
    assert err.code == "model_not_found" and "models/nope" in err.message


@pytest.mark.parametrize(
    ("headers", "details", "expected"),
    [
        ({"Retry-After": "12"}, [retry_info("7s")], "12"),
        ({}, [retry_info("7s")], "7"),
        ({}, [retry_info("1.2s")], "2"),
        ({}, [retry_info("soon")], None),
        ({}, [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"}], None),
        ({}, None, None),
    ],
)
def test_rate_limit_retry_after(headers: dict[str, str], details: Any, expected: str | None) -> None:
    err = parse_error(429, headers, google(429, "RESOURCE_EXHAUSTED", "quota", details))
    assert err.code == "rate_limit_exceeded" and err.message == "quota"
    assert err.headers == ({"retry-after": expected} if expected else {})


def test_unavailable_copies_retry_after() -> None:
    err = parse_error(503, {"retry-after": "3"}, google(503, "UNAVAILABLE", "overloaded"))
    assert err.headers == {"retry-after": "3"} and err.code == "upstream_5xx"


def test_timeout_message() -> None:
    err = parse_error(504, {}, google(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete."))
    assert err.code == "timeout" and "Deadline expired" in err.message


def test_array_form_and_odd_bodies() -> None:
    array = b"[" + google(400, "INVALID_ARGUMENT", "in an array") + b"]"
    assert parse_error(400, {}, array).message == "in an array"
    assert parse_error(500, {}, b"<html>oops</html>").message.endswith("<html>oops</html>")
    assert "empty body" in parse_error(502, {}, b"").message
    assert parse_error(400, {}, json.dumps({"error": "plain string"}).encode()).message == "plain string"
    long = parse_error(500, {}, b"x" * 5000)
    assert len(long.message) < 1100
    assert parse_error(400, {}, b'{"error": {"details": "nope", "status": 7}}').code is None


@pytest.mark.parametrize("status", [400, 403, 404, 429, 500])
def test_keys_never_leak(status: int) -> None:
    message = f"Permission denied: Consumer 'api_key:{LEAKED_KEY}' has been suspended. ({CONFIGURED})"
    err = parse_error(status, {}, google(status, "X", message), secrets=[CONFIGURED])
    text = public_text(err)
    assert LEAKED_KEY not in text and CONFIGURED not in text
    assert "has been suspended" in text


def test_dialect_delegates() -> None:
    err = DIALECT.parse_error(429, {}, google(429, "RESOURCE_EXHAUSTED", "q", [retry_info("4s")]))
    assert isinstance(err, RateLimited) and err.headers == {"retry-after": "4"}

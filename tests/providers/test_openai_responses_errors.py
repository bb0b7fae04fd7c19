"""Native Responses error parser: OpenAI envelopes → our statuses and types (README "Errors")."""

from __future__ import annotations

import json

import pytest

from streamgw.errors import GatewayError, InvalidRequest, NotFound, RateLimited, UpstreamError, UpstreamTimeout
from streamgw.providers.openai_responses import DIALECT, parse_error

KEY = "sk-upstream-abcdef1234567890"


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "cls", "http", "type_", "code", "param"),
    [
        (400, envelope("Unknown parameter: 'x_future'.", "invalid_request_error", "x_future", "unknown_parameter"),
         InvalidRequest, 400, "invalid_request_error", "unknown_parameter", "x_future"),
        (400, envelope("Previous response with id 'resp_1' not found.", "invalid_request_error",
                       "previous_response_id", "previous_response_not_found"),
         InvalidRequest, 400, "invalid_request_error", "previous_response_not_found", "previous_response_id"),
        (404, envelope("The model `gpt-9` does not exist or you do not have access to it.", "invalid_request_error",
                       None, "model_not_found"),
         NotFound, 404, "not_found_error", "model_not_found", None),
        (429, envelope("Rate limit reached for requests", "requests", None, "rate_limit_exceeded"),
         RateLimited, 429, "rate_limit_error", "rate_limit_exceeded", None),
        (429, envelope("You exceeded your current quota", "insufficient_quota", None, "insufficient_quota"),
         RateLimited, 429, "rate_limit_error", "insufficient_quota", None),
        (401, envelope(f"Incorrect API key provided: {KEY}.", "invalid_request_error", None, "invalid_api_key"),
         UpstreamError, 502, "provider_error", "upstream_auth_failed", None),
        (500, envelope("The server had an error while processing your request.", "server_error"),
         UpstreamError, 502, "provider_error", "upstream_5xx", None),
        (503, envelope("The engine is currently overloaded.", "server_error"),
         UpstreamError, 502, "provider_error", "upstream_5xx", None),
        (504, b"gateway timeout", UpstreamTimeout, 504, "provider_error", None, None),
    ],
)
def test_openai_envelopes_map_to_our_errors(
    status: int, body: bytes, cls: type[GatewayError], http: int, type_: str, code: str | None, param: str | None
) -> None:
    err = parse_error(status, {"retry-after": "7"}, body, [KEY])
    assert type(err) is cls
    assert (err.status, err.type, err.param) == (http, type_, param)
    if code is not None:
        assert err.code == code
    assert KEY not in json.dumps([err.envelope(), err.headers, str(err)])
    message = json.loads(body)["error"]["message"] if body.startswith(b"{") else body.decode()
    assert message.split(":")[0] in err.message


def test_429_copies_retry_after_and_the_dialect_delegates() -> None:
    body = envelope("slow down", "requests", None, "rate_limit_exceeded")
    err = DIALECT.parse_error(429, {"Retry-After": "3"}, body, ())
    assert isinstance(err, RateLimited) and err.headers == {"retry-after": "3"}

"""The shared error table (``streamgw.providers.errors``): defaults, overrides, redaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from streamgw.errors import GatewayError, InvalidRequest, NotFound, PayloadTooLarge, RateLimited, UpstreamTimeout
from streamgw.providers.errors import ErrorBody, ErrorTable, error_text, message_or_text

SECRET = "sk-upstream-secret-value-1234567890"


def read(status: int, body: bytes, secrets: Sequence[str]) -> ErrorBody:
    text, parsed = error_text(body)
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return ErrorBody(message_or_text(message, status, text), code="c", retry_delay="9")


def teapot(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    return NotFound(f"teapot: {err.message}")


TABLE = ErrorTable(read, {418: teapot})


@pytest.mark.parametrize(("status", "kind", "http"), [
    (400, InvalidRequest, 400), (409, InvalidRequest, 400), (422, InvalidRequest, 400), (404, NotFound, 404),
    (413, PayloadTooLarge, 413), (429, RateLimited, 429), (401, GatewayError, 502), (403, GatewayError, 502),
    (408, UpstreamTimeout, 504), (504, UpstreamTimeout, 504), (500, GatewayError, 502), (599, GatewayError, 502),
])
def test_default_rows(status: int, kind: type[GatewayError], http: int) -> None:
    err = TABLE.parse(status, {}, b'{"message": "m"}')
    assert isinstance(err, kind) and err.status == http


def test_override_and_raw_text_fallback() -> None:
    assert TABLE.parse(418, {}, b"short and stout").message == "teapot: short and stout"
    assert TABLE.parse(418, {}, b"").message == "teapot: upstream answered HTTP 418 with an empty body"


def test_retry_after_header_wins_over_the_body_delay() -> None:
    assert TABLE.parse(429, {"Retry-After": "3"}, b"{}").headers == {"retry-after": "3"}
    assert TABLE.parse(503, {}, b"{}").headers == {"retry-after": "9"}
    assert TABLE.parse(503, {}, b"{}").code == "c"


def test_secrets_are_redacted() -> None:
    err = TABLE.parse(400, {}, f'{{"message": "bad key {SECRET}"}}'.encode(), (SECRET,))
    assert SECRET not in err.message

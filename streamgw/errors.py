"""The one exception tree, and the OpenAI-style error envelope it maps to.

Every failure the gateway reports is a ``GatewayError``.  Before the first byte
of a response it becomes an HTTP status with ``{"error": {...}}``; after a stream
started it becomes a ``response.failed`` event whose ``error.code`` is
``stream_code``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: int = 500
    type: str = "provider_error"
    default_code: str | None = None
    #: the ``response.error.code`` used when this error ends a started stream
    stream_code: str = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    def envelope(self) -> dict[str, object]:
        """The JSON body for an HTTP error response."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    """The client's request is wrong (our validation, or the upstream said so)."""

    status = 400
    type = "invalid_request_error"
    stream_code = "invalid_prompt"


class PayloadTooLarge(InvalidRequest):
    """The request body is over the configured limit."""

    status = 413
    default_code = "request_too_large"


class AuthenticationFailed(GatewayError):
    """Missing or wrong gateway key."""

    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(GatewayError):
    """Unknown provider, model, route or stored response."""

    status = 404
    type = "not_found_error"
    stream_code = "invalid_prompt"


class RateLimited(GatewayError):
    """The upstream throttled us (429, Anthropic 402 billing)."""

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    stream_code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """The upstream failed: 5xx, overloaded, connection refused/reset, bad credential, malformed body."""

    status = 502
    type = "provider_error"
    stream_code = "server_error"


class UpstreamTimeout(UpstreamError):
    """Connect, first-token, idle or total timeout."""

    status = 504
    default_code = "timeout"


_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_-]{6,}|AIza[0-9A-Za-z_-]{20,}|gsk_[A-Za-z0-9]{10,}|xai-[A-Za-z0-9]{10,})")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove every configured secret and anything shaped like an API key from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(r"\1[redacted]", text)
    return _KEYLIKE.sub("[redacted]", text)

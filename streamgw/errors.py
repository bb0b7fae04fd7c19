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


class LimitExceeded(GatewayError):
    """A key's (or its tenant's) own rate limit: the gateway refused before any upstream was asked.

    Not a ``RateLimited``: that one is the upstream's, and counts as an upstream failure.
    """

    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    stream_code = "rate_limit_exceeded"


class QuotaExceeded(LimitExceeded):
    """A daily or monthly budget (tokens or cost) is used up: OpenAI's ``insufficient_quota``."""

    default_code = "insufficient_quota"
    stream_code = "insufficient_quota"


class UpstreamError(GatewayError):
    """The upstream failed: 5xx, overloaded, connection refused/reset, bad credential, malformed body."""

    status = 502
    type = "provider_error"
    stream_code = "server_error"


class UpstreamTimeout(UpstreamError):
    """Connect, first-token, idle or total timeout."""

    status = 504
    default_code = "timeout"


def internal_error() -> GatewayError:
    """A bug of ours, as the client sees it: 500 ``internal_error``, no detail (the traceback is logged)."""
    error = GatewayError("internal gateway error", code="internal_error")
    error.status = 500
    return error


def upstream_failure(error: GatewayError | None) -> bool:
    """Whether ``error`` is the upstream's failure (the ``upstream_errors`` metric), not the client's."""
    return isinstance(error, UpstreamError | RateLimited)


def failure_error(code: str | None, message: str | None) -> GatewayError:
    """The one table from a stream failure's ``code`` (``response.error.code``) to the error a client gets.

    Used before the first delta (an attempt that failed at once) and for a non-streamed response
    that failed later, so both answer alike: ``invalid_prompt`` is the request's fault (400, no
    fallback), a rate limit is 429, a timeout 504, anything else an upstream failure (502).
    """
    code = code or "server_error"
    message = message or "upstream failed"
    if code == "rate_limit_exceeded":
        return RateLimited(message)
    if code == "invalid_prompt":
        return InvalidRequest(message, code=code)
    if "timeout" in code:
        return UpstreamTimeout(message, code=code)
    return UpstreamError(message, code=code)


_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_-]{6,}|AIza[0-9A-Za-z_-]{20,}|gsk_[A-Za-z0-9]{10,}|xai-[A-Za-z0-9]{10,})")


class RequestTimeout(InvalidRequest):
    """The client did not send the whole request body within ``[server] body_timeout``."""

    status = 408
    default_code = "request_timeout"


class ServerBusy(GatewayError):
    """This worker is already receiving as many request body bytes as ``[server] max_body_bytes_in_flight`` allows."""

    status = 503
    type = "server_error"
    default_code = "server_busy"


class ControlUnavailable(GatewayError):
    """The control backend (``[control]``: managed keys, limits, usage) did not answer in time: 503, retry shortly."""

    status = 503
    type = "server_error"
    default_code = "control_unavailable"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove every configured secret and anything shaped like an API key from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(r"\1[redacted]", text)
    return _KEYLIKE.sub("[redacted]", text)


# --- what an upstream may put into our answers --------------------------------------------------
#
# An upstream error body is untrusted text: its message, code and param reach the client (the
# JSON envelope, ``response.failed``, WebSocket error frames) and its code used to reach metric
# labels.  Codes and params are relayed only when they are short plain identifiers free of
# secrets; messages are redacted, made valid Unicode and bounded.

_UPSTREAM_CODE = re.compile(r"[a-z0-9_.\-]{1,64}")
_UPSTREAM_PARAM = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")
_RETRY_AFTER = re.compile(r"[0-9]{1,10}|[A-Za-z0-9 ,:]{1,64}")  # delta-seconds or an HTTP-date
#: longest upstream message relayed (characters)
MAX_UPSTREAM_MESSAGE = 2000
#: the ``code`` an upstream code that is not relayed becomes
UPSTREAM_CODE_REPLACED = "upstream_error"


def clean_message(text: str, secrets: Iterable[str] = ()) -> str:
    """An upstream message fit to relay: secrets and key-shaped text redacted, valid Unicode, bounded."""
    text = redact(text, secrets)
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode()  # a lone surrogate would break every encoder
    if len(text) > MAX_UPSTREAM_MESSAGE:
        text = text[:MAX_UPSTREAM_MESSAGE] + "…"
    return text


def _plain(value: object, pattern: re.Pattern[str], secrets: Iterable[str]) -> str | None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return None
    return value if redact(value, secrets) == value else None


def safe_code(value: object, secrets: Iterable[str] = ()) -> str | None:
    """``value`` when it is a short lowercase identifier free of secrets, else ``None``."""
    return _plain(value, _UPSTREAM_CODE, secrets)


def safe_param(value: object, secrets: Iterable[str] = ()) -> str | None:
    """``value`` when it is a short parameter path (``messages[0].content``) free of secrets, else ``None``."""
    return _plain(value, _UPSTREAM_PARAM, secrets)


def sanitize_upstream(error: GatewayError, secrets: Iterable[str] = ()) -> GatewayError:
    """Make every field of an error built from an upstream answer safe to relay (in place; returns it).

    The message is cleaned; a code or param that is not plain is replaced (the code by
    ``upstream_error``, the param by ``None``); only a well-formed ``retry-after`` header is kept.
    """
    secrets = tuple(secrets)
    error.message = clean_message(error.message, secrets)
    error.args = (error.message,)
    if error.code is not None and safe_code(error.code, secrets) is None:
        error.code = UPSTREAM_CODE_REPLACED
    if error.param is not None:
        error.param = safe_param(error.param, secrets)
    retry = error.headers.get("retry-after")
    error.headers = {"retry-after": retry} if retry and _RETRY_AFTER.fullmatch(retry) else {}
    return error


def sanitize_error_object(error: object, secrets: Iterable[str] = (), fallback: str = "server_error") -> dict[str, str]:
    """An upstream ``response.error`` object rebuilt from its two fields (``code``, ``message``), both made safe."""
    source = error if isinstance(error, dict) else {}
    message = source.get("message")
    code = safe_code(source.get("code"), secrets)
    return {
        "code": code or fallback,
        "message": clean_message(message if isinstance(message, str) and message else "upstream failed", secrets),
    }

"""The upstream side of the README "Errors" table, shared by every dialect's error parser.

Each dialect reads its own error body; what a status means for the gateway is the same
everywhere: 401/403 is the gateway's own upstream credential (502), anything unexpected
is an upstream failure (502), and ``retry-after`` travels with rate limits and failures.
A transport failure before the response head is mapped here as well (``transport_failure``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar

import httpx

from streamgw.core import jsontext
from streamgw.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    redact,
    sanitize_upstream,
)


def retry_after(headers: Mapping[str, str], fallback: str | None = None) -> dict[str, str]:
    """``{"retry-after": value}`` when the upstream sent one (header names in any case), else ``fallback``."""
    value = headers.get("retry-after")
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    value = value or fallback
    return {"retry-after": value} if value else {}


def credentials_rejected(status: int, message: str) -> UpstreamError:
    """401/403 (or Gemini's API_KEY_INVALID): the gateway's upstream key is at fault, not the client's."""
    return UpstreamError(f"upstream rejected the gateway's credentials (HTTP {status}): {message}",
                         code="upstream_auth_failed")


def failure_code(status: int) -> str:
    """The ``code`` of an upstream failure the upstream did not name itself."""
    return "upstream_5xx" if 500 <= status < 600 else "upstream_unexpected_status"


#: what a transport failure before the first response byte means for the client, first match wins:
#: (httpx exception class, gateway error class, code, message before the detail)
_TRANSPORT_FAILURES: tuple[tuple[type[httpx.TransportError], type[UpstreamError], str, str], ...] = (
    (httpx.TimeoutException, UpstreamTimeout, "upstream_timeout", "upstream {provider!r} timed out"),
    (httpx.ConnectError, UpstreamError, "upstream_unreachable", "could not connect to upstream {provider!r}"),
    (httpx.TransportError, UpstreamError, "upstream_connection_error", "upstream {provider!r} failed"),
)


def transport_failure(exc: httpx.TransportError, provider: str, secrets: Sequence[str] = ()) -> GatewayError:
    """A transport failure before the response head (connect, TLS, write, head read) as a gateway error:
    504 for a timeout, else 502; the message names the provider and the cause, ``secrets`` redacted."""
    detail = redact(f"{type(exc).__name__}: {str(exc) or type(exc).__name__}", secrets)
    for kind, error, code, message in _TRANSPORT_FAILURES:
        if isinstance(exc, kind):
            return error(f"{message.format(provider=provider)} ({detail})", code=code)
    raise AssertionError("unreachable: the table ends with httpx.TransportError")  # pragma: no cover

# --- one table-driven error parser -----------------------------------------------------------------
#
# Every dialect reads its own error body into an ``ErrorBody`` (or a subclass with the extra
# parts it needs); what each status becomes is one table, ``STATUS_ERRORS``, that a dialect
# may override per status where its upstream means something else.

_RAW_BODY_LIMIT = 1000  # the most of a non-JSON error body kept as the message


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The useful parts of an upstream error body, already redacted.

    ``retry_delay``: a ``retry-after`` value the body itself gave (used when the header is absent).
    """

    message: str
    param: str | None = None
    code: str | None = None
    retry_delay: str | None = None


def error_text(body: bytes) -> tuple[str, object]:
    """The body as text (stripped) and its parsed JSON (``None`` when it is not JSON)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        return text, jsontext.loads(text)
    except (ValueError, RecursionError):
        return text, None


def message_or_text(message: object, status: int, text: str) -> str:
    """``message`` when it is a non-empty string, else the raw body (truncated), else a placeholder."""
    if isinstance(message, str) and message:
        return message
    return text[:_RAW_BODY_LIMIT] or f"upstream answered HTTP {status} with an empty body"


def invalid_request(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    """400/409/422: the client's request was refused upstream (400, upstream's param and code)."""
    return InvalidRequest(err.message, param=err.param, code=err.code)


def not_found(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    """404: usually an unknown model."""
    return NotFound(err.message, param=err.param, code=err.code)


def too_large(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    """413: the upstream's own size limit."""
    return PayloadTooLarge(err.message, param=err.param)


def rate_limited(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    """429 (and billing 402 where a dialect says so): ``retry-after`` travels with it."""
    return RateLimited(err.message, code=err.code, headers=retry_after(headers, err.retry_delay))


def bad_credentials(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    """401/403: the gateway's own upstream key is at fault (502)."""
    return credentials_rejected(status, err.message)


def timed_out(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    """408/504: the upstream (or a proxy before it) timed out."""
    return UpstreamTimeout(f"upstream timed out (HTTP {status}): {err.message}", code=err.code)


def upstream_failed(status: int, err: ErrorBody, headers: Mapping[str, str]) -> GatewayError:
    """Any other status: an upstream failure (502), ``retry-after`` kept."""
    return UpstreamError(f"upstream error (HTTP {status}): {err.message}",
                         code=err.code or failure_code(status), headers=retry_after(headers, err.retry_delay))


B = TypeVar("B", bound=ErrorBody)
ErrorFactory = Callable[[int, B, Mapping[str, str]], GatewayError]

#: status -> error, shared by every dialect; any status not listed is ``upstream_failed``
STATUS_ERRORS: Mapping[int, ErrorFactory[ErrorBody]] = MappingProxyType({
    400: invalid_request,
    409: invalid_request,
    422: invalid_request,
    404: not_found,
    413: too_large,
    429: rate_limited,
    401: bad_credentials,
    403: bad_credentials,
    408: timed_out,
    504: timed_out,
})


class ErrorTable(Generic[B]):
    """One dialect's error parser: its body reader plus ``STATUS_ERRORS`` with its overrides."""

    __slots__ = ("_by_status", "_fallback", "_read")

    def __init__(
        self,
        read: Callable[[int, bytes, Sequence[str]], B],
        overrides: Mapping[int, ErrorFactory[B]] | None = None,
        fallback: ErrorFactory[B] = upstream_failed,
    ) -> None:
        """``read(status, body, secrets)`` parses and redacts; ``overrides`` replace table rows."""
        self._read = read
        self._by_status: dict[int, ErrorFactory[B]] = {**STATUS_ERRORS, **(overrides or {})}
        self._fallback = fallback

    def parse(self, status: int, headers: Mapping[str, str], body: bytes, secrets: Sequence[str] = ()) -> GatewayError:
        """The error for a non-2xx answer, upstream message kept with ``secrets`` redacted."""
        err = self._read(status, body, secrets)
        return sanitize_upstream(self._by_status.get(status, self._fallback)(status, err, headers), secrets)

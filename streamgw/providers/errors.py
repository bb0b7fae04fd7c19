"""The upstream side of the README "Errors" table, shared by every dialect's error parser.

Each dialect reads its own error body; what a status means for the gateway is the same
everywhere: 401/403 is the gateway's own upstream credential (502), anything unexpected
is an upstream failure (502), and ``retry-after`` travels with rate limits and failures.
A transport failure before the response head is mapped here as well (``transport_failure``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import httpx

from streamgw.errors import GatewayError, UpstreamError, UpstreamTimeout, redact


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

"""The upstream side of the README "Errors" table, shared by every dialect's error parser.

Each dialect reads its own error body; what a status means for the gateway is the same
everywhere: 401/403 is the gateway's own upstream credential (502), anything unexpected
is an upstream failure (502), and ``retry-after`` travels with rate limits and failures.
"""

from __future__ import annotations

from collections.abc import Mapping

from streamgw.errors import UpstreamError


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

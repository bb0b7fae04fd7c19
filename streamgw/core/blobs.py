"""Our encoding of provider-specific data carried in a reasoning item's ``encrypted_content``.

Anthropic thinking signatures, redacted thinking and Gemini thought signatures must travel back
to the same provider on the next turn.  We mint ``"gw1:" + base64url(JSON)`` with the provider's
name inside, so a blob is only ever decoded for (and sent to) the provider that produced it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

PREFIX = "gw1:"


def encode_blob(provider: str, data: dict[str, Any]) -> str:
    """Wrap ``data`` for ``provider``."""
    raw = json.dumps({"p": provider, **data}, separators=(",", ":"), ensure_ascii=False).encode()
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_blob(value: object, provider: str) -> dict[str, Any] | None:
    """The data of a blob minted for ``provider``; ``None`` for anything else (another provider's, foreign, bad)."""
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return None
    body = value[len(PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict) or data.get("p") != provider:
        return None
    data.pop("p")
    return data

"""``GET /v1/responses/{id}/input_items``: one page of a stored response's input items, OpenAI list shape.

Query: ``limit`` (1-100, default 20), ``order`` (``asc`` | ``desc``, default ``desc`` as on
OpenAI: newest first), ``after`` (an item id: the page starts after it, in that order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from streamgw.errors import InvalidRequest

__all__ = ["MAX_LIMIT", "page"]

MAX_LIMIT = 100
_DEFAULT_LIMIT = 20


def _limit(value: str | None) -> int:
    if value is None:
        return _DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"Invalid 'limit': {value!r}. Expected an integer between 1 and {MAX_LIMIT}.",
                             param="limit", code="invalid_value")
    return limit


def _order(value: str | None) -> str:
    order = value or "desc"
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid 'order': {value!r}. Supported values are: asc, desc.", param="order",
                             code="invalid_value")
    return order


def page(items: Sequence[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """The page ``query`` asks for: ``{"object": "list", "data", "first_id", "last_id", "has_more"}``."""
    limit, order = _limit(query.get("limit")), _order(query.get("order"))
    ordered = list(items) if order == "asc" else list(reversed(items))
    start = 0
    after = query.get("after")
    if after:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise InvalidRequest(f"Invalid 'after': no input item with id {after!r} in this response.",
                                 param="after", code="invalid_value")
        start = ids.index(after) + 1
    data = ordered[start : start + limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0].get("id") if data else None,
        "last_id": data[-1].get("id") if data else None,
        "has_more": start + limit < len(ordered),
    }

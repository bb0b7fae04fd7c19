"""``GET /v1/usage`` (the caller's own key) and ``GET /admin/usage`` (everyone's, with the admin key).

Query parameters (anything else is a 400 naming it):

* ``start``, ``end``: UTC days ``YYYY-MM-DD``, inclusive (default: the first of this month, today);
  at most 366 days;
* ``format``: ``json`` (default) or ``csv``;
* ``group_by``: comma-separated dimensions the rows are summed over (``day``, ``key``, ``tenant``,
  ``model``, ``provider``, ``upstream_model``; default all of them);
* ``/admin/usage`` only: ``key``, ``tenant``: one key's or one tenant's rows.

``/admin/usage`` takes ``Authorization: Bearer <[admin] key>``: without an admin key configured the
route does not exist (404), a wrong key is a 401.  Rows this worker has not written yet are written
first; other workers' are at most the usage writer's interval (0.25 s) behind.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from quart import Response, g, request
from quart_trio import QuartTrio

from streamgw.control.base import USAGE_COUNTERS, USAGE_DIMENSIONS, UsageCounts, UsageRow
from streamgw.errors import InvalidRequest

if TYPE_CHECKING:
    from streamgw.app.gateway import Gateway
    from streamgw.engine.lifecycle import Caller

#: the longest range one query may cover, in days
MAX_DAYS = 366
_FILTER_MAX = 128


def _day(args: Mapping[str, str], name: str, default: date) -> date:
    value = args.get(name)
    if value is None:
        return default
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be a day as YYYY-MM-DD.", param=name, code="invalid_value") from None


def _filter(args: Mapping[str, str], name: str) -> str | None:
    value = args.get(name)
    if value is not None and (len(value) > _FILTER_MAX or not value.isprintable()):
        raise InvalidRequest(f"'{name}' must be at most {_FILTER_MAX} printable characters.", param=name,
                             code="invalid_value")
    return value


def usage_query(args: Mapping[str, str], *, admin: bool) -> tuple[date, date, str, tuple[str, ...]]:
    """(start, end, format, group_by) of a usage request; ``InvalidRequest`` naming the wrong parameter."""
    allowed = {"start", "end", "format", "group_by", *(("key", "tenant") if admin else ())}
    for name in args:
        if name not in allowed:
            raise InvalidRequest(f"Unknown query parameter '{name[:64]}' (known: {', '.join(sorted(allowed))}).",
                                 param=name[:64], code="unknown_parameter")
    today = datetime.now(UTC).date()
    end = _day(args, "end", today)
    start = _day(args, "start", end.replace(day=1))
    if start > end:
        raise InvalidRequest("'start' must not be after 'end'.", param="start", code="invalid_value")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"The range covers more than {MAX_DAYS} days.", param="end", code="invalid_value")
    fmt = args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("'format' must be json or csv.", param="format", code="invalid_value")
    group_by = tuple(USAGE_DIMENSIONS)
    if "group_by" in args:
        names = [n.strip() for n in args["group_by"].split(",") if n.strip()]
        wrong = [n for n in names if n not in USAGE_DIMENSIONS]
        if wrong or not names:
            raise InvalidRequest(f"'group_by' takes a comma-separated list of {', '.join(USAGE_DIMENSIONS)}.",
                                 param="group_by", code="invalid_value")
        group_by = tuple(d for d in USAGE_DIMENSIONS if d in names)
    return start, end, fmt, group_by


def grouped(rows: Sequence[UsageRow], group_by: Sequence[str]) -> list[tuple[tuple[str, ...], UsageCounts]]:
    """The rows summed over the dimensions not in ``group_by``, sorted."""
    index = [USAGE_DIMENSIONS.index(d) for d in group_by]
    sums: dict[tuple[str, ...], UsageCounts] = {}
    for row in rows:
        dims = tuple(row.key[i] for i in index)
        sums.setdefault(dims, UsageCounts()).add(row.counts)
    return sorted(sums.items())


def _counters(counts: UsageCounts) -> dict[str, Any]:
    values = dict(zip(USAGE_COUNTERS, counts.values(), strict=True))
    values["cost_usd"] = round(values["cost_usd"], 9)
    return values


def _cell(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def render_usage(rows: Sequence[UsageRow], start: date, end: date, fmt: str, group_by: Sequence[str]) -> Response:
    """The usage answer: a JSON list with totals, or CSV with a header line."""
    groups = grouped(rows, group_by)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*group_by, *USAGE_COUNTERS])
        for dims, counts in groups:
            writer.writerow([_cell(v) for v in (*dims, *_counters(counts).values())])
        return Response(out.getvalue(), content_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="usage-{start}-{end}.csv"'})
    total = UsageCounts()
    for _, counts in groups:
        total.add(counts)
    data = [{**dict(zip(group_by, dims, strict=True)), **_counters(counts)} for dims, counts in groups]
    body = {"object": "usage", "start": start.isoformat(), "end": end.isoformat(), "group_by": list(group_by),
            "data": data, "totals": _counters(total)}
    return Response(json.dumps(body, separators=(",", ":"), ensure_ascii=False), content_type="application/json")


async def _rows(gw: Gateway, start: date, end: date, key: str | None, tenant: str | None) -> list[UsageRow]:
    await gw.usage.flush()  # this worker's pending rows first
    return await gw.control.usage(start.isoformat(), end.isoformat(), key=key, tenant=tenant)  # 503 when down


def install_usage_routes(app: QuartTrio, gw: Gateway) -> None:
    """``GET /v1/usage`` and ``GET /admin/usage``."""

    @app.get("/v1/usage")
    async def own_usage() -> Response:
        caller: Caller = g.caller
        start, end, fmt, group_by = usage_query(request.args, admin=False)
        key = caller.key.name if caller.key is not None else ""
        return render_usage(await _rows(gw, start, end, key, None), start, end, fmt, group_by)

    if gw.config.admin_key is None:
        return  # no admin API: /admin/usage is the 404 of any unknown URL

    @app.get("/admin/usage")
    async def all_usage() -> Response:
        gw.check_admin(request.headers.get("authorization"))
        start, end, fmt, group_by = usage_query(request.args, admin=True)
        rows = await _rows(gw, start, end, _filter(request.args, "key"), _filter(request.args, "tenant"))
        return render_usage(rows, start, end, fmt, group_by)


__all__ = ["MAX_DAYS", "grouped", "install_usage_routes", "render_usage", "usage_query"]

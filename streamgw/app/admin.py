"""The admin API: managed keys under ``/admin/keys`` (README, "Keys and the admin API").

Only the ``[admin] key`` opens it (``Authorization: Bearer``, compared in constant time); any other
key, a gateway key included, gets 401.  Without an admin key the routes are not installed, so
``/admin/...`` answers exactly the 404 of any unknown URL.  Request bodies are JSON objects of at most
``MAX_ADMIN_BODY`` bytes, every field checked (``streamgw.control.keys.key_fields``); a wrong one is a
400 ``invalid_request_error`` naming it.  No answer and no log line ever holds a key's secret or
digest: the secret appears once, in the answer to the request that made the key.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from streamgw.app.gateway import Gateway
from streamgw.app.streaming import json_body
from streamgw.config import StaticKey
from streamgw.control.keys import ManagedKeys, limits_json, valid_key_id
from streamgw.core.request import load_object
from streamgw.errors import InvalidRequest, NotFound, PayloadTooLarge

__all__ = ["MAX_ADMIN_BODY", "install_admin"]

log = logging.getLogger("streamgw")

#: the largest admin request body (bytes)
MAX_ADMIN_BODY = 64 * 1024
#: keys per page of ``GET /admin/keys``: by default, and at most
DEFAULT_PAGE = 20
MAX_PAGE = 100
_LIST_PARAMS = frozenset({"limit", "after", "source"})


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json_body(payload), status=status, content_type="application/json")


async def _body() -> dict[str, Any]:
    """The request's JSON object, refused unread beyond ``MAX_ADMIN_BODY`` bytes."""
    too_large = PayloadTooLarge(f"An admin request body is at most {MAX_ADMIN_BODY} bytes.")
    length = request.content_length
    if length is not None and length > MAX_ADMIN_BODY:
        raise too_large
    data = bytearray()
    async for chunk in request.body:
        data += chunk
        if len(data) > MAX_ADMIN_BODY:
            raise too_large
    return load_object(bytes(data))


def _static(static: StaticKey) -> dict[str, Any]:
    """A ``[keys.NAME]`` (or ``[auth] keys``) entry as the admin API lists it: read-only, no id."""
    policy = static.policy
    return {
        "object": "gateway.key", "id": None, "name": policy.name, "source": "config",
        "tenant": policy.tenant.removeprefix("t:") if policy.tenant.startswith("t:") else None,
        "models": list(policy.models) or None, **limits_json(policy.limits),
        "model_limits": {pattern: limits_json(limits) for pattern, limits in policy.model_limits},
        "expires": static.expires, "disabled": static.disabled, "created": None, "updated": None,
        "redacted": None,
    }


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"No managed key with id '{key_id[:64]}'.", code="key_not_found")


def _page_params() -> tuple[int, str | None, str]:
    """``limit``, ``after`` and ``source`` of ``GET /admin/keys``, checked."""
    for name in request.args:
        if name not in _LIST_PARAMS:
            raise InvalidRequest(f"Unknown query parameter: '{name[:64]}'.", param=name[:64],
                                 code="unknown_parameter")
    raw_limit = request.args.get("limit", str(DEFAULT_PAGE))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise InvalidRequest(f"Invalid 'limit': must be an integer from 1 to {MAX_PAGE}.", param="limit")
    after = request.args.get("after")
    if after is not None and not valid_key_id(after):
        raise InvalidRequest("Invalid 'after': must be the id of a key (key_...).", param="after")
    source = request.args.get("source", "managed")
    if source not in ("managed", "config"):
        raise InvalidRequest("Invalid 'source': must be 'managed' or 'config'.", param="source")
    return int(raw_limit), after, source


def install_admin(app: QuartTrio, gw: Gateway) -> None:
    """The ``/admin/keys`` routes, when the gateway has an admin key."""
    if gw.config.admin_key is None or gw.managed is None:
        return
    managed: ManagedKeys = gw.managed

    def admin() -> None:
        gw.check_admin(request.headers.get("authorization"))

    @app.post("/admin/keys")
    async def create_key() -> Response:
        admin()
        key, secret = await managed.create(await _body())
        log.info("admin: created key %r (%s)", key.name, key.id)
        return _json({**key.public(), "secret": secret}, 201)

    @app.get("/admin/keys")
    async def list_keys() -> Response:
        admin()
        limit, after, source = _page_params()
        if source == "config":
            data = [_static(k) for k in gw.static_keys.values()]
            return _json({"object": "list", "data": data, "first_id": None, "last_id": None, "has_more": False})
        keys, more = await managed.page(after, limit)
        return _json({"object": "list", "data": [k.public() for k in keys],
                      "first_id": keys[0].id if keys else None, "last_id": keys[-1].id if keys else None,
                      "has_more": more})

    @app.get("/admin/keys/<key_id>")
    async def get_key(key_id: str) -> Response:
        admin()
        key = await managed.get(key_id)
        if key is None:
            raise _not_found(key_id)
        return _json(key.public())

    @app.patch("/admin/keys/<key_id>")
    async def update_key(key_id: str) -> Response:
        admin()
        body = await _body()
        key = await managed.update(key_id, body) if valid_key_id(key_id) else None
        if key is None:
            raise _not_found(key_id)
        log.info("admin: updated key %r (%s): %s", key.name, key.id, ", ".join(sorted(body)) or "nothing")
        return _json(key.public())

    @app.delete("/admin/keys/<key_id>")
    async def delete_key(key_id: str) -> Response:
        admin()
        key = await managed.delete(key_id) if valid_key_id(key_id) else None
        if key is None:
            raise _not_found(key_id)
        log.info("admin: deleted key %r (%s)", key.name, key.id)
        return _json({"object": "gateway.key.deleted", "id": key.id, "name": key.name, "deleted": True})

"""The quart-trio application: routes, auth, error envelopes; the engine does the work."""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from streamgw.app.metrics import Metrics
from streamgw.app.streaming import ResponsesEndpoint
from streamgw.app.websocket import install_websocket
from streamgw.config import Config
from streamgw.engine.attempt import EngineContext
from streamgw.engine.health import Health
from streamgw.engine.routing import Router
from streamgw.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    UpstreamError,
)
from streamgw.providers.base import Dialect
from streamgw.providers.registry import dialects
from streamgw.store import pages
from streamgw.store.base import StoredResponse
from streamgw.store.service import StoreService
from streamgw.transport.upstream import UpstreamClients

log = logging.getLogger("streamgw")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: the tenant its stored responses belong to, and which key it used.

    ``key_index`` indexes ``Config.auth_keys`` (``None`` without auth).
    """

    tenant: str
    key_index: int | None = None


#: every caller of a gateway without keys: one tenant, as before tenants existed
ANONYMOUS = Caller("")


def tenant_ids(keys: Sequence[bytes], tenants: Sequence[str]) -> list[str]:
    """The tenant id of each key: ``t:<name>`` for an explicit tenant, else ``key:<hash>`` of its own.

    The ids are written into every stored record, so a key's own id is a hash of it, never the key.
    """
    ids: list[str] = []
    for index, key in enumerate(keys):
        name = tenants[index] if index < len(tenants) else ""
        ids.append(f"t:{name}" if name else "key:" + sha256(key).hexdigest()[:24])
    return ids


class Gateway:
    """Everything the routes share: config, router, upstream clients, dialects, metrics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.clients = UpstreamClients(config.fetch)
        self.dialects: dict[str, Dialect] = dialects()
        self.metrics = Metrics([*config.providers, *config.routes])  # the only provider labels
        self.secrets = config.secrets()
        self.engine = EngineContext(self.clients, self.dialects, self.secrets, Health(), config.timeouts)
        #: graceful shutdown: ``begin`` turns /readyz to 503 and gives every run its deadline
        self.drain = self.engine.drain
        self.keys = [k.get().encode() for k in config.auth_keys]
        self.tenants = tenant_ids(self.keys, config.auth_tenants)
        #: one tenant for every caller: without a store, a native upstream may then resolve ids itself
        self.sole_tenant = len(set(self.tenants)) <= 1
        self.store = StoreService(config.store, self.metrics)
        self.ready = False

    def caller(self, header: str | None) -> Caller | None:
        """Who ``Authorization: Bearer <key>`` is (``None``: nobody we know); ``ANONYMOUS`` without keys.

        Every key is compared, in constant time each, whichever matches: the time taken says
        nothing about which key (or how much of one) was right.
        """
        if not self.keys:
            return ANONYMOUS
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode()
        matched: int | None = None
        for index, key in enumerate(self.keys):
            if hmac.compare_digest(given, key) and matched is None:
                matched = index
        if matched is None or scheme.lower() != "bearer":
            return None
        return Caller(self.tenants[matched], matched)

    def authorised(self, header: str | None) -> bool:
        """Whether ``header`` carries a valid gateway key (see ``caller``)."""
        return self.caller(header) is not None


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact UTF-8 JSON response."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status=status, headers=headers, content_type="application/json")


class ResponsesFirst:
    """ASGI wrapper: ``POST /v1/responses`` goes straight to ``ResponsesEndpoint``, the rest to Quart.

    The hot path skips the framework (see ``streamgw.app.streaming``); every other route,
    and the WebSocket mode, keeps Quart's routing, hooks and error handlers.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], endpoint: ResponsesEndpoint) -> None:
        self._app = app
        self._endpoint = endpoint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/responses":
            await self._endpoint(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def create_app(config: Config) -> QuartTrio:
    """Build the application for ``config``."""
    app = QuartTrio(__name__)
    app.config["RESPONSE_TIMEOUT"] = None  # Quart's 60 s default would silently cut long streams
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    gw = Gateway(config)
    app.extensions["streamgw"] = gw
    app.asgi_app = ResponsesFirst(app.asgi_app, ResponsesEndpoint(gw))  # type: ignore[method-assign,assignment]
    _install_hooks(app, gw)
    _install_routes(app, gw)
    install_websocket(app, gw)
    return app


def _install_hooks(app: QuartTrio, gw: Gateway) -> None:
    @app.before_serving
    async def _startup() -> None:
        if not gw.keys:
            log.warning("no [auth] keys configured: the gateway accepts requests without authentication")
        await app.nursery.start(gw.store.run)  # the store's writer task lives as long as the app serves
        gw.ready = True

    @app.after_serving
    async def _shutdown() -> None:
        gw.ready = False
        await gw.clients.aclose()
        await gw.store.aclose()

    @app.before_request
    async def _before() -> None:
        g.request_id = "req_" + secrets.token_hex(16)
        g.provider = "none"
        if request.path.startswith("/v1/"):
            caller = gw.caller(request.headers.get("authorization"))
            if caller is None:
                raise AuthenticationFailed("Missing or invalid gateway API key (use Authorization: Bearer <key>).")
            g.caller = caller

    @app.after_request
    async def _after(response: Response) -> Response:
        response.headers["x-request-id"] = g.get("request_id", "")
        return response

    @app.errorhandler(GatewayError)
    async def _gateway_error(error: GatewayError) -> Response:
        if isinstance(error, UpstreamError | RateLimited):
            gw.metrics.upstream_errors.labels(g.get("provider", "none"), error.code or error.type).inc()
        return json_response(error.envelope(), error.status, error.headers)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        mapped: GatewayError
        if status == 413:
            mapped = PayloadTooLarge(f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes")
        elif status == 404:
            mapped = NotFound(f"no route for {request.method} {request.path}", code="unknown_url")
        else:
            mapped = InvalidRequest(error.description or error.name, code=error.name.lower().replace(" ", "_"))
            mapped.status = status
        return json_response(mapped.envelope(), mapped.status)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        mapped = UpstreamError("internal gateway error", code="internal_error")
        mapped.status = 500
        return json_response(mapped.envelope(), 500)


def _install_routes(app: QuartTrio, gw: Gateway) -> None:
    _install_store_routes(app, gw)

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [{"id": mid, "object": "model", "created": 0, "owned_by": owner}
                for mid, owner in gw.router.listed_models()]
        return json_response({"object": "list", "data": data})

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        # 503 while draining, so load balancers stop sending work; ``pid`` tells workers apart.
        # 503 too while the response store cannot write (the reason is logged, not shown here).
        draining = gw.drain.draining
        unwritable = gw.store.unwritable() is not None
        ready = gw.ready and not draining and not unwritable
        body: dict[str, Any] = {"ready": ready, "draining": draining, "pid": os.getpid()}
        if unwritable:
            body["store"] = "unwritable"
        return json_response(body, 200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        # ``[metrics] require_key``: a gateway key is needed (none configured: nobody gets in).
        if gw.config.metrics.require_key and not (gw.keys and gw.authorised(request.headers.get("authorization"))):
            raise AuthenticationFailed("GET /metrics needs a gateway API key (use Authorization: Bearer <key>).",
                                       headers={"www-authenticate": "Bearer"})
        return Response(gw.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


def _tenant() -> str:
    """The tenant of the request being served (set by the ``before_request`` hook for every ``/v1/`` path)."""
    caller: Caller = g.caller
    return caller.tenant


async def _stored(gw: Gateway, response_id: str) -> StoredResponse:
    """The caller's stored response ``response_id``, or the 404 that says why there is none.

    Another tenant's response is "not found" with the very same answer as an id that never existed.
    """
    record = await gw.store.get(response_id, _tenant()) if gw.store.enabled else None
    if record is None:
        raise NotFound(f"Response with id '{response_id}' not found.", code="response_not_found")
    if record.omitted is not None:
        raise NotFound(f"Response with id '{response_id}' is not available: {record.omitted}.",
                       code="response_not_stored")
    return record


def _install_store_routes(app: QuartTrio, gw: Gateway) -> None:
    """``GET``/``DELETE /v1/responses/{id}`` and ``GET /v1/responses/{id}/input_items``."""

    @app.get("/v1/responses/<response_id>")
    async def get_response(response_id: str) -> Response:
        return json_response((await _stored(gw, response_id)).response)

    @app.delete("/v1/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        if not (gw.store.enabled and await gw.store.delete(response_id, _tenant())):
            raise NotFound(f"Response with id '{response_id}' not found.", code="response_not_found")
        return json_response({"id": response_id, "object": "response", "deleted": True})

    @app.get("/v1/responses/<response_id>/input_items")
    async def list_input_items(response_id: str) -> Response:
        record = await _stored(gw, response_id)
        return json_response(pages.page(record.input_items, request.args))

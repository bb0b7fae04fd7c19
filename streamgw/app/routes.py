"""The quart-trio application: routes, auth, error envelopes; the engine does the work."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, g, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException
from werkzeug.routing import WebsocketMismatch

from streamgw.app.admin import install_admin
from streamgw.app.gateway import Gateway
from streamgw.app.streaming import ResponsesEndpoint, arrival
from streamgw.app.usage import install_usage_routes
from streamgw.app.websocket import install_websocket
from streamgw.config import Config
from streamgw.core.tracecontext import parse_traceparent
from streamgw.engine.lifecycle import Caller, request_id
from streamgw.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    internal_error,
)
from streamgw.store import pages
from streamgw.store.base import StoredResponse

log = logging.getLogger("streamgw")


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

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        # Not a coroutine function: the endpoint's coroutine is returned, so a stream's task does not hold one
        # more frame (this one) for as long as the stream lasts.
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/responses":
            return self._endpoint(scope, receive, send)
        return self._app(scope, receive, send)


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
    install_admin(app, gw)
    install_websocket(app, gw)
    return app


def _install_hooks(app: QuartTrio, gw: Gateway) -> None:
    @app.before_serving
    async def _startup() -> None:
        if gw.open_access:
            log.warning("no [auth] keys configured: the gateway accepts requests without authentication")
        await app.nursery.start(gw.store.run)  # the store's writer task lives as long as the app serves
        await app.nursery.start(gw.usage.run)  # usage rows, written off the request path
        await app.nursery.start(gw.limiter.run)  # refreshes the leases of streams in flight
        if gw.managed is not None:
            await app.nursery.start(gw.managed.run)  # keeps this worker's cached managed keys fresh
        gw.ready = True

    @app.after_serving
    async def _shutdown() -> None:
        gw.ready = False
        await gw.clients.aclose()
        await gw.store.aclose()
        with trio.move_on_after(gw.config.control.timeout * 2):
            await gw.usage.flush()
        await gw.control.aclose()
        gw.request_log.close()
        if gw.managed is not None:
            await gw.managed.aclose()
        if gw.tracing is not None:  # the spans still queued are exported before the process exits
            await trio.to_thread.run_sync(gw.tracing.shutdown, abandon_on_cancel=True)

    @app.before_request
    async def _before() -> None:
        g.started = arrival(request.scope, trio.current_time())
        g.request_id = request_id(request.headers.get("x-request-id"))
        if request.path.startswith("/v1/"):
            g.caller = await gw.authenticate(request.headers.get("authorization"))

    @app.before_websocket
    async def _before_websocket() -> None:
        g.started = arrival(websocket.scope, trio.current_time())
        g.request_id = request_id(websocket.headers.get("x-request-id"))

    @app.after_request
    async def _after(response: Response) -> Response:
        rid = response.headers["x-request-id"] = g.get("request_id") or request_id(None)
        started = g.get("started")
        now = trio.current_time()
        caller: Caller | None = g.get("caller")
        key = caller.key if caller is not None else None
        trace = parse_traceparent(request.headers.get("traceparent"))
        gw.request_log.route(
            request_id=rid, method=request.method, path=request.path, status=response.status_code,
            started=now if started is None else started, ended=now, http_version=request.http_version,
            key=key.name if key is not None else None,
            tenant=(key.tenant if key is not None else caller.tenant or None) if caller is not None else None,
            trace_id=trace.trace_id if trace is not None else None, bytes_out=response.content_length,
        )
        return response

    @app.errorhandler(GatewayError)
    async def _gateway_error(error: GatewayError) -> Response:
        return json_response(error.envelope(), error.status, error.headers)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        mapped: GatewayError
        if status == 413:
            mapped = PayloadTooLarge(f"request body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes")
        elif status == 404:
            mapped = NotFound(f"no route for {request.method} {request.path}", code="unknown_url")
        elif status == 405 or isinstance(error, WebsocketMismatch):
            return _method_not_allowed(error)  # a plain GET /v1/responses matches only the WebSocket rule
        else:
            mapped = InvalidRequest(error.description or error.name, code=error.name.lower().replace(" ", "_"))
            mapped.status = status
        return json_response(mapped.envelope(), mapped.status)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return json_response(internal_error().envelope(), 500)


def _method_not_allowed(error: HTTPException) -> Response:
    """405 in the error envelope, with the ``allow`` header naming the methods the path takes."""
    allowed = sorted(getattr(error, "valid_methods", None) or [])
    if request.path == "/v1/responses":
        allowed = ["POST"]  # served by the ASGI endpoint, not a Quart route (WebSocket mode is a GET upgrade)
    mapped = InvalidRequest(f"{request.method} is not allowed on {request.path}"
                            + (f": use {', '.join(allowed)}." if allowed else "."), code="method_not_allowed")
    mapped.status = 405
    headers = {"allow": ", ".join(allowed)} if allowed else None
    return json_response(mapped.envelope(), 405, headers)


def _install_routes(app: QuartTrio, gw: Gateway) -> None:
    _install_store_routes(app, gw)
    install_usage_routes(app, gw)

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [_model(mid, owner) for mid, owner in gw.router.listed_models(_allowed())]
        return json_response({"object": "list", "data": data})

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        for mid, owner in gw.router.listed_models(_allowed()):
            if mid == model_id:
                return json_response(_model(mid, owner))
        raise NotFound(f"The model '{model_id}' does not exist.", param="model", code="model_not_found")

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
        keyed = not gw.open_access and await gw.authorised(request.headers.get("authorization"))
        if gw.config.metrics.require_key and not keyed:
            raise AuthenticationFailed("GET /metrics needs a gateway API key (use Authorization: Bearer <key>).",
                                       headers={"www-authenticate": "Bearer"})
        return Response(gw.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


def _model(model_id: str, owner: str) -> dict[str, Any]:
    """One entry of ``/v1/models`` (the OpenAI model object)."""
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}


def _allowed() -> tuple[str, ...]:
    """The model patterns the request's key may use (``()``: every model)."""
    caller: Caller = g.caller
    return caller.key.models if caller.key is not None else ()


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

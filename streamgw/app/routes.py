"""The quart-trio application: routes, auth, error envelopes; the engine does the work."""

from __future__ import annotations

import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from streamgw.app.metrics import Metrics
from streamgw.app.streaming import SSE_HEADERS, SSEBody
from streamgw.config import Config
from streamgw.core.request import parse_request
from streamgw.engine.routing import Router
from streamgw.engine.run import ResponseRun
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
from streamgw.transport.upstream import UpstreamClients

log = logging.getLogger("streamgw")

Closer = Callable[[], Awaitable[None]]
_CLOSERS = "streamgw.closers"


class Gateway:
    """Everything the routes share: config, router, upstream clients, dialects, metrics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.clients = UpstreamClients()
        self.dialects: dict[str, Dialect] = dialects()
        self.metrics = Metrics()
        self.secrets = config.secrets()
        self.keys = [k.get().encode() for k in config.auth_keys]
        self.ready = False

    def authorised(self, header: str | None) -> bool:
        """Constant-time check of ``Authorization: Bearer <key>`` against every configured key."""
        if not self.keys:
            return True
        scheme, _, token = (header or "").partition(" ")
        given = token.strip().encode()
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(given, key)
        return ok and scheme.lower() == "bearer"


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A compact UTF-8 JSON response."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return Response(body, status=status, headers=headers, content_type="application/json")


class CloseGuard:
    """ASGI wrapper: whatever happens to a request, the upstreams it opened are closed.

    Quart sends the response after the handler returned; if the client leaves in
    between, nothing else would close the upstream a handler had opened.
    """

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        closers: list[Closer] = []
        scope[_CLOSERS] = closers
        try:
            await self._app(scope, receive, send)
        finally:
            if closers:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    for close in closers:
                        await close()


def create_app(config: Config) -> QuartTrio:
    """Build the application for ``config``."""
    app = QuartTrio(__name__)
    app.config["RESPONSE_TIMEOUT"] = None  # Quart's 60 s default would silently cut long streams
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    gw = Gateway(config)
    app.extensions["streamgw"] = gw
    app.asgi_app = CloseGuard(app.asgi_app)  # type: ignore[method-assign,assignment]
    _install_hooks(app, gw)
    _install_routes(app, gw)
    return app


def _install_hooks(app: QuartTrio, gw: Gateway) -> None:
    @app.before_serving
    async def _startup() -> None:
        if not gw.keys:
            log.warning("no [auth] keys configured: the gateway accepts requests without authentication")
        gw.ready = True

    @app.after_serving
    async def _shutdown() -> None:
        gw.ready = False
        await gw.clients.aclose()

    @app.before_request
    async def _before() -> None:
        g.request_id = "req_" + secrets.token_hex(16)
        g.provider = "none"
        if request.path.startswith("/v1/") and not gw.authorised(request.headers.get("authorization")):
            raise AuthenticationFailed("Missing or invalid gateway API key (use Authorization: Bearer <key>).")

    @app.after_request
    async def _after(response: Response) -> Response:
        response.headers["x-request-id"] = g.get("request_id", "")
        if request.path == "/v1/responses" and request.method == "POST":
            gw.metrics.requests.labels(g.get("provider", "none"), str(response.status_code)).inc()
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
    @app.post("/v1/responses")
    async def create_response() -> Response:
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        req = parse_request(body)
        target = gw.router.resolve(req.model, req.provider)
        g.provider = target.provider.name
        timeouts = gw.config.timeouts.merged(target.provider.timeouts)
        started = trio.current_time()
        run = await ResponseRun.open(
            req, target, clients=gw.clients, dialects=gw.dialects, timeouts=timeouts, secrets=gw.secrets
        )
        request.scope[_CLOSERS].append(run.aclose)  # type: ignore[literal-required]
        if run.first_delta_at is not None:
            gw.metrics.ttft.labels(target.provider.name).observe(run.first_delta_at - started)
        if not req.stream:
            final = await run.collect()
            gw.metrics.duration.labels(target.provider.name).observe(trio.current_time() - started)
            return json_response(final)
        gw.metrics.in_flight.inc()

        def finished(done_run: ResponseRun) -> None:
            gw.metrics.in_flight.dec()
            gw.metrics.duration.labels(target.provider.name).observe(trio.current_time() - started)
            if not done_run.done:
                gw.metrics.upstream_errors.labels(target.provider.name, "client_disconnected").inc()

        return Response(SSEBody(run, finished), status=200, headers=SSE_HEADERS)

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
        return json_response({"ready": gw.ready}, 200 if gw.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")

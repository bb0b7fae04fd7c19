"""The quart-trio application: routes, auth, error envelopes; the engine does the work."""

from __future__ import annotations

import hmac
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from streamgw.app.metrics import Metrics
from streamgw.app.recording import Recorder
from streamgw.app.streaming import SSE_HEADERS, SSEBody, StreamPump
from streamgw.config import Config
from streamgw.core.request import ResponsesRequest, parse_request
from streamgw.engine.attempt import EngineContext
from streamgw.engine.health import Health
from streamgw.engine.routing import Plan, Router
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
from streamgw.store import pages
from streamgw.store.base import StoredResponse
from streamgw.store.chain import expand
from streamgw.store.service import StoreService
from streamgw.transport.upstream import UpstreamClients

log = logging.getLogger("streamgw")

Closer = Callable[[], Awaitable[None]]
_CLOSERS = "streamgw.closers"
_NURSERY = "streamgw.nursery"


class Gateway:
    """Everything the routes share: config, router, upstream clients, dialects, metrics."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.router = Router(config)
        self.clients = UpstreamClients()
        self.dialects: dict[str, Dialect] = dialects()
        self.metrics = Metrics()
        self.secrets = config.secrets()
        self.engine = EngineContext(self.clients, self.dialects, self.secrets, Health(), config.timeouts)
        self.keys = [k.get().encode() for k in config.auth_keys]
        self.store = StoreService(config.store, self.metrics)
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


class RequestScope:
    """ASGI wrapper: every HTTP request gets a nursery of its own, and its upstreams are always closed.

    Work that must outlive the Quart handler (waiting for a first token while keepalives
    flow) runs in this nursery, so its lifetime is the request's: when the request ends —
    completed, or the client gone — the nursery is cancelled and every upstream it opened
    is closed.
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
            async with trio.open_nursery() as nursery:
                scope[_NURSERY] = nursery
                await self._app(scope, receive, send)
                nursery.cancel_scope.cancel()
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
    app.asgi_app = RequestScope(app.asgi_app)  # type: ignore[method-assign,assignment]
    _install_hooks(app, gw)
    _install_routes(app, gw)
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
        started = trio.current_time()
        body = await request.get_data(cache=False)
        assert isinstance(body, bytes)
        req = parse_request(body)
        plan = gw.router.plan(req.model, req.provider)
        g.provider = plan.targets[0].provider.name if plan.route is None else plan.route.name
        expansion = await expand(req, plan, gw.store)  # previous_response_id, item_reference: once, for all
        req = expansion.request
        recorder = Recorder(gw.store, expansion) if req.store and gw.store.enabled else None
        if not req.stream:
            run = await ResponseRun.open(req, plan, gw.engine, started_at=started)
            request.scope[_CLOSERS].append(run.aclose)  # type: ignore[literal-required]
            g.provider = run.provider
            gw.metrics.ttft.labels(run.provider).observe(run.first_delta_at - started)
            try:
                final = await run.collect()
            finally:
                if recorder is not None:
                    recorder.finished(run)  # whatever the outcome, once
            if recorder is not None:
                await recorder.finish(run)  # written before the answer leaves (confirm_writes)
            gw.metrics.duration.labels(run.provider).observe(trio.current_time() - started)
            return json_response(final)
        return await _stream(req, plan, started, recorder)

    async def _stream(req: ResponsesRequest, plan: Plan, started: float, recorder: Recorder | None) -> Response:
        pump = StreamPump(req, plan, gw.engine, started, recorder)
        request.scope[_NURSERY].start_soon(pump.pump)  # type: ignore[literal-required]
        keepalive = gw.config.timeouts.merged(plan.route.timeouts if plan.route else ()).keepalive
        first: ResponseRun | None = None
        with trio.move_on_after(keepalive if keepalive > 0 else math.inf):
            item = await pump.receive.receive()
            if isinstance(item, GatewayError):
                raise item  # nothing was sent yet: an ordinary HTTP error
            assert isinstance(item, ResponseRun)
            first = item
            g.provider = first.provider
        gw.metrics.in_flight.inc()

        def finished(run: ResponseRun | None) -> None:
            gw.metrics.in_flight.dec()
            if run is None:
                return
            gw.metrics.ttft.labels(run.provider).observe(run.first_delta_at - started)
            gw.metrics.duration.labels(run.provider).observe(trio.current_time() - started)
            if not run.done:
                gw.metrics.upstream_errors.labels(run.provider, "client_disconnected").inc()

        return Response(SSEBody(pump, first, keepalive, finished), status=200, headers=SSE_HEADERS)

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
        return json_response({"ready": gw.ready}, 200 if gw.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gw.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


async def _stored(gw: Gateway, response_id: str) -> StoredResponse:
    """The stored response ``response_id``, or the 404 that says why there is none."""
    record = await gw.store.get(response_id) if gw.store.enabled else None
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
        if not (gw.store.enabled and await gw.store.delete(response_id)):
            raise NotFound(f"Response with id '{response_id}' not found.", code="response_not_found")
        return json_response({"id": response_id, "object": "response", "deleted": True})

    @app.get("/v1/responses/<response_id>/input_items")
    async def list_input_items(response_id: str) -> Response:
        record = await _stored(gw, response_id)
        return json_response(pages.page(record.input_items, request.args))

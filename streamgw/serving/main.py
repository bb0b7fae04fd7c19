"""The composition root: a ``Config`` in, a serving gateway out.

``streamgw serve`` (``streamgw.cli``), each worker process of ``streamgw serve --workers N``
(``streamgw.supervisor``) and the in-process test harness (``streamgw.testing.harness``) build the
gateway here, so they run the same application under the same hypercorn settings and fixes.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from streamgw.app.routes import create_app
from streamgw.config import Config, ConfigError
from streamgw.serving.hypercorn_trio import GatewayHypercornConfig, install
from streamgw.serving.worker import Sockets, addresses, listen, serve

__all__ = ["HypercornConfig", "Sockets", "hypercorn_config", "serve_gateway", "serve_until"]

log = logging.getLogger("streamgw")


def hypercorn_config(config: Config) -> HypercornConfig:
    """The hypercorn settings for ``config``: trio worker, no access log on the hot path.

    Every way streamgw serves builds its hypercorn config here, so this is also where the fix for
    concurrent writes on one connection is installed (``streamgw.serving.hypercorn_trio``); the
    config it returns carries the fix into worker processes that hypercorn spawns.
    """
    server = config.server
    if bool(server.certfile) != bool(server.keyfile):
        raise ConfigError("server.certfile and server.keyfile (--certfile, --keyfile) go together")
    install()
    hc = GatewayHypercornConfig()
    hc.bind = [f"{config.server.host}:{config.server.port}"]
    hc.worker_class = "trio"
    hc.workers = config.server.workers
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75.0
    hc.backlog = config.server.backlog  # hypercorn's 100 drops connection bursts
    hc.graceful_timeout = config.server.graceful_timeout
    # hypercorn ends a connection after keep_alive_max_requests (1000) requests.  Over HTTP/2 it does so
    # with a GOAWAY that also stops every stream still in flight on it (h2 refuses to send after GOAWAY):
    # they hang until the connection is dropped.  No request limit per connection, then.
    hc.keep_alive_max_requests = sys.maxsize
    hc.http2 = server.http2  # cleartext: h2c accepted or refused
    hc.max_connections = server.max_connections
    hc.alpn_protocols = ["h2", "http/1.1"] if server.http2 else ["http/1.1"]  # TLS
    if server.certfile:  # then the bind is HTTPS only
        hc.certfile, hc.keyfile = server.certfile, server.keyfile
    return hc


async def serve_gateway(
    config: Config,
    sockets: Sockets | None = None,
    *,
    on_ready: Callable[[], None] | None = None,
    supervisor_sentinel: int | None = None,
) -> None:
    """Serve ``config`` in this process until SIGTERM/SIGINT, then drain and return (``streamgw.serving.worker``).

    ``sockets`` listen already (bound by ``streamgw.cli.main``, or inherited from the supervisor);
    without them they are bound here.  A supervised worker passes ``on_ready`` and the supervisor's
    sentinel.
    """
    app = create_app(config)
    hc = hypercorn_config(config)
    if sockets is None:
        sockets = listen(hc)
    # Everything loaded so far lives as long as the process: keep it out of the collector, whose
    # full passes over it otherwise pause the event loop for tens of milliseconds.
    gc.collect()
    gc.freeze()
    server = config.server
    names = ", ".join(f"{p.name} ({p.type})" for p in config.providers.values())
    log.info("streamgw listening on %s — providers: %s", ", ".join(addresses(sockets)), names)
    await serve(app, hc, sockets, app.extensions["streamgw"].drain, drain_timeout=server.drain_timeout,
                grace=server.graceful_timeout, on_ready=on_ready, supervisor_sentinel=supervisor_sentinel)


async def serve_until(app: Any, hc: HypercornConfig, shutdown_trigger: Callable[[], Awaitable[None]],
                      *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """hypercorn's own ``serve`` (no drain, no accept loop of ours) until ``shutdown_trigger`` returns.

    For the in-process test harness; ``task_status`` gets the bound addresses.
    """
    await hypercorn_serve(app, hc, shutdown_trigger=shutdown_trigger, task_status=task_status)

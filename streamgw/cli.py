"""``streamgw serve``: load the config and run hypercorn with the trio worker."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
import ssl
import sys
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import NoReturn

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from streamgw.config import Config, ConfigError, load_config

log = logging.getLogger("streamgw")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamgw", description="Streaming gateway for the Responses API.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="TOML config file (default: $STREAMGW_CONFIG, else environment only)")
    serve.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default from config: 8080)")
    serve.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
    serve.add_argument("--http2", action=argparse.BooleanOptionalAction, default=None,
                       help="accept HTTP/2: h2c (prior knowledge, Upgrade: h2c) on cleartext, ALPN h2 with TLS "
                            "(default from config: on); --no-http2 serves HTTP/1.1 only")
    serve.add_argument("--certfile", help="TLS certificate chain, PEM (with --keyfile: serve HTTPS)")
    serve.add_argument("--keyfile", help="TLS private key, PEM (with --certfile)")
    serve.add_argument("--drain-timeout", type=float, metavar="S", help="seconds in-flight work gets after SIGTERM")
    serve.add_argument("--log-level", default=os.environ.get("STREAMGW_LOG_LEVEL", "info"))
    return parser


def hypercorn_config(config: Config) -> HypercornConfig:
    """The hypercorn settings for ``config``: trio worker, no access log on the hot path.

    Every way streamgw serves builds its hypercorn config here, so this is also where the fix for
    concurrent writes on one connection is installed (``streamgw.serving.hypercorn_trio``); the
    config it returns carries the fix into worker processes that hypercorn spawns.
    """
    from streamgw.serving.hypercorn_trio import GatewayHypercornConfig, install

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


async def _serve(
    config: Config,
    sockets: Sockets | None = None,
    *,
    on_ready: Callable[[], None] | None = None,
    supervisor_sentinel: int | None = None,
) -> None:
    """Serve ``config`` in this process until SIGTERM/SIGINT, then drain and return (``streamgw.worker``).

    ``sockets`` listen already (bound by ``main``, or inherited from the supervisor); without them
    they are bound here.  A supervised worker passes ``on_ready`` and the supervisor's sentinel.
    """
    from streamgw.app.routes import create_app
    from streamgw.worker import addresses, listen, serve

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


def _serve_workers(config: Config, sockets: Sockets, log_level: str) -> None:
    """Several processes sharing the listening ``sockets``, each running ``_serve`` (``streamgw.supervisor``)."""
    from streamgw.supervisor import Supervisor

    sys.exit(trio.run(Supervisor(config, sockets, log_level).run))


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit (a proxied stream holds two); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return hard


def exit_on_config_error(error: ConfigError) -> NoReturn:
    """Print ``error`` (one ``streamgw:`` line per problem) to stderr and exit with status 2: no traceback."""
    for line in str(error).splitlines() or [""]:
        print(f"streamgw: {line}", file=sys.stderr)
    sys.exit(2)


_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _check_arguments(args: argparse.Namespace) -> None:
    """The command-line values the parser itself cannot check; ``ConfigError`` for the first wrong one."""
    if args.log_level.lower() not in _LOG_LEVELS:
        raise ConfigError(f"--log-level (or STREAMGW_LOG_LEVEL) must be one of {', '.join(_LOG_LEVELS)}, "
                          f"got {args.log_level[:40]!r}")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.drain_timeout is not None and not 0 <= args.drain_timeout < float("inf"):
        raise ConfigError("--drain-timeout must be a number >= 0")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``streamgw`` command."""
    args = _parser().parse_args(argv)
    try:
        _check_arguments(args)
    except ConfigError as exc:
        exit_on_config_error(exc)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit = raise_open_file_limit()  # inherited by worker processes
    if limit < 4096:
        log.warning("open-file limit is %d: at most ~%d concurrent streams (raise it: ulimit -n, LimitNOFILE)",
                    limit, limit // 2 - 50)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        exit_on_config_error(exc)
    server = config.server
    server = replace(
        server,
        host=args.host or server.host,
        port=server.port if args.port is None else args.port,
        workers=server.workers if args.workers is None else args.workers,
        http2=server.http2 if args.http2 is None else args.http2,
        certfile=args.certfile or server.certfile,
        keyfile=args.keyfile or server.keyfile,
        drain_timeout=server.drain_timeout if args.drain_timeout is None else args.drain_timeout,
    )
    config = replace(config, server=server)
    from streamgw.worker import listen, run_gateway

    try:
        hc = hypercorn_config(config)
        if hc.certfile:  # unreadable or mismatched files: said now, not by every worker's first accept
            hc.create_ssl_context()
    except ConfigError as exc:
        exit_on_config_error(exc)
    except (OSError, ssl.SSLError) as exc:
        exit_on_config_error(ConfigError(f"cannot load the TLS certificate {hc.certfile} and key {hc.keyfile}: "
                                         f"{getattr(exc, 'strerror', None) or exc}"))
    try:
        sockets = listen(hc)  # once, here: a port in use is a clear error before anything starts
    except OSError as exc:
        print(f"streamgw: cannot listen on {', '.join(hc.bind)}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    if server.workers > 1:
        _serve_workers(config, sockets, args.log_level)
        return
    sys.exit(run_gateway(partial(_serve, config, sockets)))

"""``streamgw serve``: load the config and run hypercorn with the trio worker."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from dataclasses import replace
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig

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
    serve.add_argument("--log-level", default=os.environ.get("STREAMGW_LOG_LEVEL", "info"))
    return parser


def hypercorn_config(config: Config) -> HypercornConfig:
    """The hypercorn settings for ``config``: trio worker, no access log on the hot path."""
    hc = HypercornConfig()
    hc.bind = [f"{config.server.host}:{config.server.port}"]
    hc.worker_class = "trio"
    hc.workers = config.server.workers
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75.0
    hc.backlog = config.server.backlog  # hypercorn's 100 drops connection bursts
    hc.graceful_timeout = config.server.graceful_timeout
    return hc


async def _serve(config: Config) -> None:
    from hypercorn.trio import serve

    from streamgw.app.routes import create_app

    app = create_app(config)
    hc = hypercorn_config(config)
    # Everything loaded so far lives as long as the process: keep it out of the collector, whose
    # full passes over it otherwise pause the event loop for tens of milliseconds.
    gc.collect()
    gc.freeze()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

        async def shutdown_trigger() -> None:
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                return

        names = ", ".join(f"{p.name} ({p.type})" for p in config.providers.values())
        log.info("streamgw listening on http://%s:%d — providers: %s", config.server.host, config.server.port, names)
        await serve(app, hc, shutdown_trigger=shutdown_trigger)


def _serve_workers(config: Config, config_path: str | None) -> None:
    """Several processes sharing the port: hypercorn's own supervisor imports ``streamgw.asgi:app``."""
    from hypercorn.run import run

    if config_path:
        os.environ["STREAMGW_CONFIG"] = os.path.abspath(config_path)
    hc = hypercorn_config(config)
    hc.application_path = "streamgw.asgi:app"
    sys.exit(run(hc))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``streamgw`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"streamgw: {exc}", file=sys.stderr)
        sys.exit(2)
    server = config.server
    server = replace(
        server,
        host=args.host or server.host,
        port=server.port if args.port is None else args.port,
        workers=args.workers or server.workers,
    )
    config = replace(config, server=server)
    if server.workers > 1:
        os.environ["STREAMGW_HOST"], os.environ["STREAMGW_PORT"] = server.host, str(server.port)
        _serve_workers(config, args.config)
        return
    trio.run(partial(_serve, config))

"""``streamgw serve``: load the config and run hypercorn with the trio worker."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import ssl
import sys
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, NoReturn

import trio

from streamgw.config import Config, ConfigError
from streamgw.config_loader import load_config
from streamgw.serving.versions import version_problems

if TYPE_CHECKING:
    from streamgw.serving.main import Sockets

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
    serve.add_argument("--log-format", choices=("text", "json"),
                       help="request log lines: text (key=value) or json, one object a line (default from config "
                            "or STREAMGW_LOG_FORMAT: text)")
    serve.add_argument("--log-file", metavar="PATH",
                       help="append the request log to PATH instead of stderr (every worker appends whole lines; "
                            "default from config or STREAMGW_LOG_FILE)")
    return parser


def _serve_workers(config: Config, sockets: Sockets, log_level: str) -> None:
    """Several processes sharing the listening ``sockets``, each running ``serve_gateway`` (``streamgw.supervisor``)."""
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


def require_versions() -> None:
    """Exit with status 2, naming each mismatch, unless the libraries ``streamgw.serving`` patches are the
    release lines it was written for (``streamgw.serving.versions``).

    Call it before anything imports hypercorn's internals: a release without the patched names would
    fail there with an ``ImportError`` that does not say why.
    """
    problems = version_problems()
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        sys.exit(2)


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
    require_versions()
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
    logging_config = config.logging
    logging_config = replace(logging_config, format=args.log_format or logging_config.format,
                             file=args.log_file or logging_config.file)
    config = replace(config, server=server, logging=logging_config)
    if logging_config.file and logging_config.requests:
        try:  # said now, in one line, rather than by every worker's traceback
            os.close(os.open(logging_config.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640))
        except OSError as exc:
            exit_on_config_error(ConfigError(f"cannot open the log file {logging_config.file}: "
                                             f"{exc.strerror or exc}"))
    from streamgw.serving.main import hypercorn_config, serve_gateway
    from streamgw.serving.worker import listen, run_gateway

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
    sys.exit(run_gateway(partial(serve_gateway, config, sockets)))

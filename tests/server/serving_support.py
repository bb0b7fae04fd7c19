"""Helpers and fixtures for the HTTP/2 and TLS tests: a self-signed certificate, the gateway in-process
(with or without the hypercorn fix) and as a ``streamgw serve`` process.  Test modules import the
fixtures they use by name."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from streamgw.app.routes import create_app
from streamgw.config import Config, ProviderConfig
from streamgw.engine.drain import Drain
from streamgw.serving import hypercorn_trio
from streamgw.serving.main import hypercorn_config
from streamgw.serving.worker import _Server, listen
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.process import free_port, start_gateway


@dataclass(frozen=True)
class TLSFiles:
    """A certificate for 127.0.0.1 signed by a throwaway CA."""

    certfile: Path
    keyfile: Path
    ca_pem: bytes

    def client_context(self, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        context.set_alpn_protocols(list(alpn))
        return context


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    certfile, keyfile = folder / "cert.pem", folder / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    return TLSFiles(certfile, keyfile, ca.cert_pem.bytes())


@pytest.fixture
async def mock_port(nursery: trio.Nursery) -> int:
    """A Chat Completions mock upstream in the test's own trio run."""
    port: int = await nursery.start(ChatCompletionsMock().serve)
    return port


def gateway_config(mock_port: int, tls: TLSFiles | None = None, *, http2: bool = True) -> Config:
    """The gateway with one provider ``mock`` on the mock upstream."""
    provider = ProviderConfig(name="mock", type="chat", base_url=f"http://127.0.0.1:{mock_port}/v1")
    config = Config(providers={"mock": provider})
    server = replace(config.server, http2=http2)
    if tls is not None:
        server = replace(server, certfile=str(tls.certfile), keyfile=str(tls.keyfile))
    return replace(config, server=server)


@asynccontextmanager
async def serving(config: Config, *, fixed: bool = True,
                  tweak: Callable[[HypercornConfig], None] | None = None) -> AsyncIterator[int]:
    """Serve the gateway in this trio run on a free port; ``fixed=False`` uses hypercorn's own classes.

    ``tweak`` may change the hypercorn config first.  A failure of the server (the worker dying)
    propagates out of the block as an exception group.
    """
    hc = hypercorn_config(config)  # installs the fix
    hc.bind = ["127.0.0.1:0"]
    hc.graceful_timeout = 0.5
    if tweak is not None:
        tweak(hc)
    if not fixed:
        hypercorn_trio.uninstall()
    stop = trio.Event()

    async def shutdown_trigger() -> None:
        await stop.wait()

    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(lambda task_status: serve(
                create_app(config), hc, shutdown_trigger=shutdown_trigger, task_status=task_status))
            try:
                yield int(binds[0].rsplit(":", 1)[1])
            finally:
                stop.set()
    finally:
        hypercorn_trio.install()


def find(group: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first ``kind`` inside a (nested) exception group, or None."""
    if isinstance(group, kind):
        return group
    if isinstance(group, BaseExceptionGroup):
        for inner in group.exceptions:
            found = find(inner, kind)
            if found is not None:
                return found
    return None


# ------------------------------------------------------------------------------- as a process


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_serve(config_text: str, folder: Path, args: list[str], verify: Any = False) -> GatewayProcess:
    """``python -m streamgw serve --config ... --port P *args``; wait for ``/healthz`` (https when TLS)."""
    config = folder / "gw.toml"
    config.write_text(config_text)
    log = folder / "gw.log"
    port = free_port()
    proc, _ = start_gateway(config, log, port=port, extra_args=["--log-level", "warning", *args], verify=verify)
    return GatewayProcess(proc, port, log)


@pytest.fixture(scope="module")
def mock_process() -> Iterator[int]:
    """The Chat Completions mock as its own process (it gets the other core under load)."""
    from streamgw.testing.process import running_mock

    with running_mock() as port:
        yield port


async def lifespan(receive: Any, send: Any) -> None:
    """An ASGI application's side of the lifespan protocol, for test applications that have nothing to start."""
    while (message := await receive())["type"] != "lifespan.shutdown":
        await send({"type": message["type"] + ".complete"})
    await send({"type": "lifespan.shutdown.complete"})


@asynccontextmanager
async def worker_serving(app: Any, tweak: Callable[[HypercornConfig], None] | None = None) -> AsyncIterator[int]:
    """The production worker (``streamgw.serving.worker``) serving the ASGI ``app`` in this trio run on a free
    port; ``tweak`` may change the hypercorn config first."""
    hc = hypercorn_config(Config())  # installs the fixes
    hc.bind = ["127.0.0.1:0"]
    if tweak is not None:
        tweak(hc)
    sockets = listen(hc)
    server = _Server(app, hc, Drain(), drain_timeout=1.0, grace=1.0)
    stop, ready = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run, sockets, stop, ready.set)
        await ready.wait()
        try:
            yield sockets.insecure_sockets[0].getsockname()[1]
        finally:
            stop.set()

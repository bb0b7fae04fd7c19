"""``--http2`` / ``--no-http2`` and ``--certfile/--keyfile``: what the CLI sets and what the wire shows."""

from __future__ import annotations

import pickle
import sys

import pytest
import trio

from streamgw.cli import _parser
from streamgw.config import Config, ConfigError, ServerConfig
from streamgw.serving import hypercorn_trio
from streamgw.serving.main import hypercorn_config

from .h2client import H2Client
from .serving_support import TLSFiles, gateway_config, mock_port, serving, tls_files

__all__ = ["mock_port", "tls_files"]  # fixtures, used by name

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS
_UPGRADE = (b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: Upgrade, HTTP2-Settings\r\n"
            b"upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n")


def test_cli_flags() -> None:
    parse = _parser().parse_args
    assert parse(["serve"]).http2 is None  # the config decides (on unless [server] http2 = false)
    assert parse(["serve", "--http2"]).http2 is True
    assert parse(["serve", "--no-http2"]).http2 is False
    args = parse(["serve", "--certfile", "c.pem", "--keyfile", "k.pem"])
    assert (args.certfile, args.keyfile) == ("c.pem", "k.pem")


def test_hypercorn_config_carries_http2_tls_and_the_fix() -> None:
    hypercorn_trio.uninstall()
    plain = hypercorn_config(Config())
    assert hypercorn_trio.installed()
    assert isinstance(plain, hypercorn_trio.GatewayHypercornConfig)
    assert plain.http2 and plain.alpn_protocols == ["h2", "http/1.1"] and not plain.ssl_enabled
    assert plain.keep_alive_max_requests == sys.maxsize  # hypercorn's limit cuts HTTP/2 streams in flight
    tls = hypercorn_config(Config(server=ServerConfig(http2=False, certfile="c.pem", keyfile="k.pem")))
    assert tls.ssl_enabled and (tls.certfile, tls.keyfile) == ("c.pem", "k.pem")
    assert not tls.http2 and tls.alpn_protocols == ["http/1.1"]
    with pytest.raises(ConfigError, match="go together"):
        hypercorn_config(Config(server=ServerConfig(certfile="c.pem")))


def test_a_pickled_config_installs_the_fix_where_it_is_loaded() -> None:
    """A worker process that receives the config pickled (hypercorn's own ``run``) gets the fix."""
    data = pickle.dumps(hypercorn_config(Config(server=ServerConfig(http2=False))))
    hypercorn_trio.uninstall()
    try:
        loaded = pickle.loads(data)
        assert hypercorn_trio.installed() and loaded.http2 is False
    finally:
        hypercorn_trio.install()


async def _head(port: int, request: bytes) -> bytes:
    """Send raw bytes; return the response head (up to the blank line), or all until the server closed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = b""
    try:
        await stream.send_all(request)
        with trio.fail_after(5):
            while b"\r\n\r\n" not in received:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                received += chunk
    finally:
        await stream.aclose()
    return received.partition(b"\r\n\r\n")[0]


async def test_h2c_is_on_by_default(mock_port: int) -> None:
    async with serving(gateway_config(mock_port)) as port:
        assert (await _head(port, _UPGRADE)).startswith(b"HTTP/1.1 101 ")
        async with trio.open_nursery() as nursery:
            client = await H2Client.open(nursery, port)  # prior knowledge
            try:
                reply = await client.post("/v1/responses", {"model": "mock/text:tokens=3", "input": "hi",
                                                            "stream": True})
                with trio.fail_after(10):
                    await reply.ended.wait()
                reply.check()
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()


async def test_no_http2_serves_http1_only(mock_port: int) -> None:
    async with serving(gateway_config(mock_port, http2=False)) as port:
        refused = await _head(port, _PREFACE)
        assert refused.startswith(b"HTTP/1.1 505 ") and b"connection: close" in refused
        assert (await _head(port, _UPGRADE)).startswith(b"HTTP/1.1 200 ")  # the upgrade is ignored


@pytest.mark.parametrize("http2", [True, False])
async def test_tls_alpn(mock_port: int, tls_files: TLSFiles, http2: bool) -> None:
    async with serving(gateway_config(mock_port, tls_files, http2=http2)) as port:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(tcp, tls_files.client_context(("h2", "http/1.1")), server_hostname="127.0.0.1")
        try:
            await tls.do_handshake()
            assert tls.selected_alpn_protocol() == ("h2" if http2 else "http/1.1")
        finally:
            await tls.aclose()

"""End-to-end fixtures: a mock Chat Completions upstream on loopback and the gateway as a real process.

The gateway is started the way users start it (``python -m streamgw serve --config ...``) and
runs under hypercorn with the trio worker.  The mock runs in a background thread so tests can
inspect exactly what the gateway sent upstream.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.process import free_port, start_gateway, stop_process
from streamgw.testing.server import serving_in_thread

UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"
WRONG_UPSTREAM_KEY = "sk-wrong-upstream-key-9876543210"
GATEWAY_KEY = "sk-gw-test-key-42"


@dataclass
class Gateway:
    """A running gateway process; the SDK clients it hands out are closed with it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    clients: list[openai.OpenAI] = field(default_factory=list)

    def client(self, key: str = GATEWAY_KEY) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=20)
        self.clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()


@pytest.fixture(scope="session")
def mock() -> Iterator[ChatCompletionsMock]:
    upstream = ChatCompletionsMock(api_key=UPSTREAM_KEY)
    with serving_in_thread(lambda: upstream.handle, stats=upstream.stats) as port:
        upstream.port = port  # type: ignore[attr-defined]
        yield upstream


def gateway_config(mock_port: int, closed_port: int) -> str:
    base = f"http://127.0.0.1:{mock_port}/v1"
    return f"""
[server]
max_body_bytes = 1048576

[auth]
keys = ["{GATEWAY_KEY}"]

[providers.mock]
type = "chat"
base_url = "{base}"
api_key = "{UPSTREAM_KEY}"
models = ["text-bare"]

[providers.badkey]
type = "chat"
base_url = "{base}"
api_key = "{WRONG_UPSTREAM_KEY}"

[providers.down]
type = "chat"
base_url = "http://127.0.0.1:{closed_port}/v1"
api_key = "{UPSTREAM_KEY}"

[providers.slow]
type = "chat"
base_url = "{base}"
api_key = "{UPSTREAM_KEY}"
[providers.slow.timeouts]
first_token = 0.5
idle = 0.5

[providers.demo]
type = "demo"
first_token_delay = 0.01
tokens_per_second = 2000
"""


@pytest.fixture(scope="session")
def gateway(mock: ChatCompletionsMock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    config = tmp / "streamgw.toml"
    config.write_text(gateway_config(mock.port, free_port()))  # type: ignore[attr-defined]
    proc, url = start_gateway(config, tmp / "gateway.log")
    gw = Gateway(url, proc, tmp / "gateway.log")
    try:
        yield gw
    finally:
        gw.close_clients()
        assert stop_process(proc) == 0, "the gateway must exit cleanly on SIGTERM"

"""End-to-end fixtures: a mock Chat Completions upstream on loopback and the gateway as a real process.

The gateway is started the way users start it (``python -m streamgw serve --config ...``) and
runs under hypercorn with the trio worker.  The mock runs in a background thread so tests can
inspect exactly what the gateway sent upstream.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.server import serving_in_thread

UPSTREAM_KEY = "sk-upstream-secret-0123456789abcdef"
WRONG_UPSTREAM_KEY = "sk-wrong-upstream-key-9876543210"
GATEWAY_KEY = "sk-gw-test-key-42"


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Gateway:
    """A running gateway process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, key: str = GATEWAY_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=20)


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not become healthy:\n{log.read_text()}")


def start_gateway(config_text: str, tmp: Path) -> Gateway:
    config = tmp / "streamgw.toml"
    config.write_text(config_text)
    port = free_port()
    log = tmp / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamgw", "serve", "--config", str(config), "--port", str(port)],
            stdout=sink, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process, log)
    return Gateway(url, process, log)


def stop_gateway(gw: Gateway) -> None:
    gw.process.terminate()
    try:
        gw.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        gw.process.kill()
        gw.process.wait()


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
    gw = start_gateway(gateway_config(mock.port, free_port()), tmp)  # type: ignore[attr-defined]
    try:
        yield gw
    finally:
        stop_gateway(gw)

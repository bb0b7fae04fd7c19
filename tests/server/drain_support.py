"""Helpers for the shutdown and worker tests: ``streamgw serve`` as a real process, raw HTTP/1.1 clients."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from streamgw.core.sse import SSEDecoder
from streamgw.testing.harness import RawClient
from streamgw.testing.process import free_port, running_mock, start_gateway


@pytest.fixture(scope="module")
def upstream_port() -> Iterator[int]:
    """The Chat Completions mock as a process; answers are paced by knobs in the model name."""
    with running_mock() as port:
        yield port


def config_text(upstream_port: int, *, drain_timeout: float, graceful_timeout: float = 1.0) -> str:
    return f"""
[server]
drain_timeout = {drain_timeout}
graceful_timeout = {graceful_timeout}

[store]
backend = "none"

[providers.mock]
type = "chat"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "sk-upstream-test"
"""


@dataclass
class Served:
    """A ``streamgw serve`` process."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> float:
        """Send SIGTERM; the trio clock reading when it was sent."""
        self.proc.send_signal(signal.SIGTERM)
        return trio.current_time()

    async def wait(self, patience: float) -> tuple[int, float]:
        """Wait for the exit; its status and the trio clock reading when it was seen."""
        status = await trio.to_thread.run_sync(lambda: self.proc.wait(patience))
        return status, trio.current_time()


def start_serve(folder: Path, text: str, *args: str) -> Served:
    """``python -m streamgw serve --config <text> --port P *args`` until ``/readyz`` answers 200."""
    config = folder / "gw.toml"
    config.write_text(text)
    log = folder / "gw.log"
    port = free_port()
    proc, _ = start_gateway(config, log, port=port, extra_args=["--log-level", "info", *args], probe="/readyz")
    return Served(proc, port, log)


@dataclass
class StreamResult:
    """What one streamed request saw."""

    status: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    ended_at: float = 0.0  # trio clock: when the terminal event arrived

    @property
    def final(self) -> dict[str, Any]:
        return self.events[-1]


async def stream(port: int, model: str, first_event: trio.Event | None = None,
                 client: RawClient | None = None) -> StreamResult:
    """POST a streamed request (on ``client``'s connection, else a new one) and read it to the end."""
    client = client or await RawClient.connect(port)
    result = StreamResult()
    try:
        await client.send_json("/v1/responses", {"model": model, "input": "hello", "stream": True})
        result.status = (await client.response_head()).status_code
        decoder = SSEDecoder()
        while True:
            event = await client.next_event()
            if isinstance(event, h11.Data):
                result.events += [json.loads(sse.data) for sse in decoder.feed(bytes(event.data))]
                if result.events and first_event is not None:
                    first_event.set()
            elif isinstance(event, h11.EndOfMessage):
                result.ended_at = trio.current_time()
                return result
    finally:
        await client.aclose()


async def get(client: RawClient, path: str) -> tuple[int, dict[str, Any]]:
    """GET ``path`` on an open keep-alive connection; the status and the JSON body."""
    request = h11.Request(method="GET", target=path, headers=[("host", "gateway")])
    await client.stream.send_all(client.conn.send(request) + client.conn.send(h11.EndOfMessage()))
    head = await client.response_head()
    body = b""
    while not isinstance(event := await client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    client.conn.start_next_cycle()
    return head.status_code, json.loads(body)


async def closed_by_server(client: RawClient) -> bool:
    """True if the server closed this idle connection (end of file), False if it sent anything."""
    return await client.stream.receive_some(1024) == b""


async def refuses_connections(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:``port`` any more (a connection is refused)."""
    try:
        connection = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await connection.aclose()
    return False

"""Start the mock upstreams and the gateway as real processes (for e2e tests and bench/)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_mock(args: list[str], module: str = "streamgw.testing.chat_mock") -> tuple[subprocess.Popen[str], int]:
    """Run ``python -m module --port 0 *args``; return the process and the port it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "LISTENING":
        proc.kill()
        raise RuntimeError(f"mock {module} did not start: {line}")
    return proc, int(line[1])


@contextmanager
def running_mock(args: list[str] | None = None, module: str = "streamgw.testing.chat_mock") -> Iterator[int]:
    """``start_mock`` for the length of a block: yields the port, then stops the process."""
    proc, port = start_mock(args or [], module)
    try:
        yield port
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def wait_until_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20, *,
                       probe: str = "/healthz", verify: Any = True) -> None:
    """Poll ``probe`` until it answers 200; raise with the log if the process dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(url + probe, timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not become healthy:\n{log.read_text(errors='replace')}")


def start_gateway(
    config: Path, log: Path, *, port: int | None = None, extra_args: list[str] | None = None,
    prefix: list[str] | None = None, probe: str = "/healthz", verify: Any = True,
) -> tuple[subprocess.Popen[bytes], str]:
    """Run ``streamgw serve --config config`` (optionally under ``prefix``, e.g. taskset); return it and its URL.

    It is up once ``probe`` answers 200 (over https when ``extra_args`` has ``--certfile``; ``verify`` as httpx's).
    """
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    cmd = [*(prefix or []), sys.executable, "-m", "streamgw", "serve", "--config", str(config), "--port", str(port),
           *(extra_args or [])]
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    scheme = "https" if "--certfile" in (extra_args or []) else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, log, probe=probe, verify=verify)
    except BaseException:
        stop_process(proc, timeout=2)  # never leave an orphan gateway behind
        raise
    return proc, url


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10) -> int:
    """SIGTERM, wait, SIGKILL if needed; return the exit code."""
    proc.terminate()
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()

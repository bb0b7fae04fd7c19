"""A throwaway ``redis-server`` on loopback for tests and bench/: no persistence, stopped on exit.

``.ci/run`` installs Debian's ``redis-server``; on a machine without it, tests that need it
skip (and fail under ``CI``, where a skip would hide a missing install step).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from streamgw.testing.process import free_port, stop_process

__all__ = ["redis_available", "redis_process", "require_redis", "running_redis"]


def redis_available() -> bool:
    """True when ``redis-server`` is on ``PATH``."""
    return shutil.which("redis-server") is not None


def require_redis() -> None:
    """Skip the calling test without ``redis-server`` (fail instead when ``CI`` is set)."""
    if redis_available():
        return
    import pytest

    message = "redis-server is not installed (apt-get install redis-server; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def running_redis(port: int | None = None, timeout: float = 10.0) -> Iterator[str]:
    """Run ``redis-server --port <free> --save '' --appendonly no``; yield its ``redis://`` URL."""
    with redis_process(port, timeout) as (url, _):
        yield url


@contextmanager
def redis_process(port: int | None = None, timeout: float = 10.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like ``running_redis``, with the process too (tests stop and continue it to make the store hang)."""
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="streamgw-redis-") as workdir:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout
            while not _ping(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0", proc
        finally:
            stop_process(proc)

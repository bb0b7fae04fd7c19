"""``streamgw serve --workers N``: the supervisor, its workers, their drain, restarts and startup errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from streamgw import supervisor
from streamgw.config import Config, ServerConfig
from streamgw.serving.main import hypercorn_config
from streamgw.serving.worker import listen
from streamgw.supervisor import Supervisor
from streamgw.testing.harness import RawClient
from streamgw.testing.invariants import check_events
from streamgw.testing.process import free_port

from .drain_support import Served, StreamResult, config_text, get, start_serve, stream, upstream_port

__all__ = ["upstream_port"]  # the fixture, used by name


def parent_of(pid: int) -> int:
    """The parent process id of ``pid`` (Linux ``/proc``)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def worker_pids(gw: Served, want: int, exclude: frozenset[int] = frozenset()) -> set[int]:
    """Ask ``/readyz`` on fresh connections until ``want`` distinct worker pids (not in ``exclude``) answered."""
    seen: set[int] = set()
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        with trio.fail_after(15):
            while len(seen - exclude) < want:
                try:
                    response = await client.get(gw.url + "/readyz")
                except httpx.TransportError:
                    continue  # a worker died with this connection queued for it
                if response.status_code == 200:
                    seen.add(response.json()["pid"])
                else:
                    await trio.sleep(0.05)
    return seen - exclude


async def connection_per_worker(gw: Served) -> dict[int, RawClient]:
    """One open keep-alive connection to each of the two workers, by pid."""
    found: dict[int, RawClient] = {}
    with trio.fail_after(15):
        while len(found) < 2:
            client = await RawClient.connect(gw.port)
            pid = (await get(client, "/readyz"))[1]["pid"]
            if pid in found:
                await client.aclose()
            else:
                found[pid] = client
    return found


async def test_two_workers_serve_and_a_sigterm_drains_both(tmp_path: Path, upstream_port: int) -> None:
    text = config_text(upstream_port, drain_timeout=10)
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, text, "--workers", "2")
    pids = await worker_pids(gw, 2)
    assert gw.proc.pid not in pids
    assert all(parent_of(pid) == gw.proc.pid for pid in pids)
    pinned = await connection_per_worker(gw)  # so that each worker surely has a stream in flight
    results: list[StreamResult] = []

    async def one(started: trio.Event, client: RawClient | None) -> None:
        results.append(await stream(gw.port, "mock/text:tokens=10,token_delay=0.1", started, client))

    async with trio.open_nursery() as nursery:
        for client in [*pinned.values(), None, None, None, None]:
            started = trio.Event()
            nursery.start_soon(one, started, client)
            with trio.fail_after(10):
                await started.wait()
        signalled = gw.terminate()
    status, exited = await gw.wait(15)
    assert status == 0
    assert [check_events(r.events)["status"] for r in results] == ["completed"] * 6
    assert exited - signalled < 3.0
    log = gw.log_text()
    in_flight = {int(pid): int(n) for pid, n in re.findall(r"pid (\d+)\]: draining: (\d+) request", log)}
    assert set(in_flight) == pids and sum(in_flight.values()) == 6  # each worker drained its own
    assert min(in_flight.values()) >= 1
    assert "all workers stopped" in log
    assert not any(map(alive, pids))


async def test_a_killed_worker_is_restarted(tmp_path: Path, upstream_port: int) -> None:
    text = config_text(upstream_port, drain_timeout=5)
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, text, "--workers", "2")
    first = await worker_pids(gw, 2)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    replacement = await worker_pids(gw, 1, exclude=frozenset(first))
    assert parent_of(replacement.pop()) == gw.proc.pid
    survivor = (first - {victim}).pop()
    assert alive(survivor)  # the other worker was left alone
    log = gw.log_text()
    assert f"(pid {victim}) exited unexpectedly (signal SIGKILL); restarting it in 0.5 s" in log
    gw.terminate()
    status, _ = await gw.wait(15)
    assert status == 0


def running(pid: int) -> bool:
    """``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def gone_within(pids: set[int], seconds: float) -> bool:
    """Wait up to ``seconds`` for every process in ``pids`` to end; whether they did."""
    deadline = time.monotonic() + seconds
    while any(map(running, pids)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(tmp_path: Path, upstream_port: int) -> None:
    text = config_text(upstream_port, drain_timeout=5)
    gw = await trio.to_thread.run_sync(start_serve, tmp_path, text, "--workers", "2")
    pids = await worker_pids(gw, 2)
    gw.proc.kill()  # SIGKILL: the supervisor cannot pass anything on
    await gw.wait(5)
    assert await trio.to_thread.run_sync(gone_within, pids, 5.0)
    log = gw.log_text()
    assert all(f"pid {pid}]: the supervisor exited: shutting down" in log for pid in pids)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_a_clear_error(tmp_path: Path, upstream_port: int, workers: str) -> None:
    config = tmp_path / "gw.toml"
    config.write_text(config_text(upstream_port, drain_timeout=1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "streamgw", "serve", "--config", str(config), "--port", str(port),
             "--workers", workers], capture_output=True, text=True, timeout=30,
        )
    assert done.returncode == 1
    assert f"streamgw: cannot listen on 127.0.0.1:{port}: Address already in use" in done.stderr


def test_a_bad_drain_timeout_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "gw.toml"
    config.write_text("[server]\ndrain_timeout = -1\n")
    done = subprocess.run([sys.executable, "-m", "streamgw", "serve", "--config", str(config), "--workers", "2",
                           "--port", str(free_port())], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == f"streamgw: {config}: [server] drain_timeout: must be a number >= 0"


# -- the supervisor in this process, with stand-in workers -------------------------------------------


def _supervisor(tmp_path: Path, program: str, workers: int = 2) -> tuple[Supervisor, Path]:
    """A supervisor whose workers run ``program`` (Python; ``STARTS`` is a file each start appends to)."""
    starts = tmp_path / "starts"
    config = Config(server=ServerConfig(workers=workers, drain_timeout=1, graceful_timeout=0.5))
    hc = hypercorn_config(config)
    hc.bind = ["127.0.0.1:0"]
    code = f"STARTS = {str(starts)!r}\nopen(STARTS, 'a').write('x')\n" + program
    return Supervisor(config, listen(hc), command=[sys.executable, "-c", code]), starts


async def test_a_worker_that_cannot_start_stops_everything_without_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup, starts = _supervisor(tmp_path, "raise SystemExit(3)")
    with trio.fail_after(10):
        assert await sup.run() == 1
    # At most one start per worker (the second may be stopped before it even ran): no restart loop.
    assert starts.read_text() in ("x", "xx")
    assert any(re.fullmatch(r"worker \d \(pid \d+\) failed to start \(exit code 3\); see its error above",
                            record.getMessage()) for record in caplog.records)


async def test_a_replacement_that_keeps_failing_to_start_ends_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "BACKOFF_FIRST", 0.01)
    # The first start reports ready and exits at once (a crash); every later start fails before ready.
    program = (
        "import os\n"
        "from streamgw.supervisor import _read_assignment\n"
        "assignment = _read_assignment(0)\n"
        "if open(STARTS).read() == 'x':\n"
        "    os.write(assignment.ready_fd, b'R')\n"
        "raise SystemExit(1)\n"
    )
    sup, starts = _supervisor(tmp_path, program, workers=1)
    with trio.fail_after(20):
        assert await sup.run() == 1
    assert starts.read_text() == "x" * (1 + supervisor.MAX_FAILED_STARTS)

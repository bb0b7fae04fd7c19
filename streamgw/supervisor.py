"""``streamgw serve --workers N``: N worker processes on one listening socket, kept running.

The parent process binds and listens once (``streamgw.serving.worker.listen``) and passes the socket
to every worker as an inherited file descriptor.  One shared socket rather than ``SO_REUSEPORT``
per worker:

* a port that is already in use is an error at once, in the parent, before any worker starts —
  with ``SO_REUSEPORT`` a second gateway on the same port would silently share it instead;
* there is one accept queue: a worker that dies takes no queued connections with it (each
  ``SO_REUSEPORT`` socket has its own queue, reset when it closes), and its replacement accepts
  from the same queue;
* the price, workers racing for each ``accept``, is small next to a streamed response.

Each worker is a fresh interpreter (``python -c ...``, in its own process group so a terminal's
Ctrl-C reaches only the supervisor) that runs ``streamgw.serving.main.serve_gateway``, the same code as a single
process: its own signal handling, drain and exit.  It reads its assignment (config, socket
descriptors) from stdin, and reports readiness by writing one byte to a pipe.  The supervisor
keeps the worker's stdin open: when the supervisor dies, the worker sees end-of-file and drains.

Metrics: the supervisor creates one directory per run (removed when it exits) and starts every
worker with ``PROMETHEUS_MULTIPROC_DIR`` pointing there: prometheus_client's multiprocess mode,
in which each worker's values live in memory-mapped files that ``/metrics`` sums, whichever
worker answers.  Counters of a worker that died stay in the sum (they never go backwards); its
gauges are dropped when the supervisor sees it exit.

SIGTERM/SIGINT: the supervisor closes its own copy of the socket (so the port closes once the
workers have closed theirs), forwards the signal to every worker, waits for them — SIGKILL after
``drain_timeout + graceful_timeout + 5`` seconds — and exits 0 if every worker exited 0.

A worker that exits while the gateway runs is restarted after a backoff (0.5 s, doubling up to
10 s; back to 0.5 s once a worker has run for a minute).  A worker that exits before it was ready
the first time is a startup error: every worker is stopped and the supervisor exits 1 — never a
restart loop.  A replacement that fails to start 5 times in a row ends the gateway the same way.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio

from streamgw.config import Config
from streamgw.serving.worker import Sockets, addresses, close_sockets, run_gateway

__all__ = ["Supervisor", "worker_main"]

log = logging.getLogger("streamgw")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
#: a worker that ran this long before it died restarts after ``BACKOFF_FIRST`` again
STABLE_AFTER = 60.0
MAX_FAILED_STARTS = 5
#: what the supervisor waits, beyond a worker's own hard deadline, before it sends SIGKILL
KILL_MARGIN = 5.0
#: prometheus_client's multiprocess mode: where every worker keeps its metric values
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_READY = b"R"
_LENGTH = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a worker process needs: sent to it, pickled, on its stdin."""

    index: int
    config: Config
    secure_fds: tuple[int, ...]
    insecure_fds: tuple[int, ...]
    ready_fd: int
    log_level: str


@dataclass(slots=True)
class _Slot:
    """One of the N worker positions, and the process currently filling it."""

    index: int
    process: trio.Process | None = None
    ever_ready: bool = False
    failed_starts: int = 0  # replacements in a row that exited before they were ready
    crashes: int = 0  # unexpected exits since the last stable run (sets the backoff)
    clean: bool = True  # the last exit during shutdown was a clean one


def _describe(returncode: int) -> str:
    if returncode < 0:
        return f"signal {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


class Supervisor:
    """Starts ``config.server.workers`` workers on ``sockets``, restarts them, and stops them on a signal."""

    def __init__(self, config: Config, sockets: Sockets, log_level: str = "info",
                 command: list[str] | None = None) -> None:
        self._config = config
        self._command = command or _worker_command()  # tests may start something else
        self._sockets = sockets
        self._log_level = log_level
        self._slots = [_Slot(i + 1) for i in range(max(1, config.server.workers))]
        self._stopping = trio.Event()
        self._signal = signal.SIGTERM
        self._fatal: str | None = None
        self._sockets_open = True
        #: the per-run directory of the workers' metric files (created by ``run``)
        self.metrics_dir = ""

    async def run(self) -> int:
        """Supervise until stopped; the exit status (0: every worker drained and exited cleanly)."""
        self.metrics_dir = tempfile.mkdtemp(prefix="streamgw-metrics-")
        try:
            return await self._run()
        finally:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def _run(self) -> int:
        server = self._config.server
        log.info("streamgw listening on %s with %d workers (supervisor pid %d)",
                 ", ".join(addresses(self._sockets)), len(self._slots), os.getpid())
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._wait_for_signals, signals)
                nursery.start_soon(self._kill_stragglers, server.drain_timeout + server.graceful_timeout + KILL_MARGIN)
                async with trio.open_nursery() as workers:
                    for slot in self._slots:
                        workers.start_soon(self._keep, slot)
                nursery.cancel_scope.cancel()
        self._close_sockets()
        if self._fatal is not None:
            log.error("%s", self._fatal)
            return 1
        unclean = [slot.index for slot in self._slots if not slot.clean]
        if unclean:
            log.error("worker(s) %s did not shut down cleanly", ", ".join(map(str, unclean)))
            return 1
        log.info("all workers stopped")
        return 0

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Begin the shutdown: close the port, pass ``signum`` on to every worker, restart none (idempotent)."""
        if self._stopping.is_set():
            return
        self._signal = signal.Signals(signum)
        self._stopping.set()
        self._close_sockets()
        for slot in self._slots:
            if slot.process is not None:
                self._send(slot.process, signum)

    async def _wait_for_signals(self, signals: Any) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if self._stopping.is_set():
                log.info("received %s again: already stopping the workers", name)
                continue
            log.info("received %s: stopping %d workers", name, len(self._slots))
            self.stop(signum)

    async def _kill_stragglers(self, patience: float) -> None:
        await self._stopping.wait()
        await trio.sleep(patience)
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                log.error("worker %d (pid %d) is still running %g s after the signal: killing it",
                          slot.index, slot.process.pid, patience)
                self._send(slot.process, signal.SIGKILL)

    @staticmethod
    def _send(process: trio.Process, signum: int) -> None:
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass  # it exited already

    def _close_sockets(self) -> None:
        if self._sockets_open:
            self._sockets_open = False
            close_sockets(self._sockets)

    def _fail(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = message
        self.stop(signal.SIGTERM)

    async def _keep(self, slot: _Slot) -> None:
        """Keep ``slot`` filled with a running worker until the shutdown."""
        while not self._stopping.is_set():
            process, ready_fd = await self._start(slot)
            ready = await _wait_ready(ready_fd)
            started = trio.current_time()
            if ready:
                slot.ever_ready, slot.failed_starts = True, 0
                log.info("worker %d (pid %d) is serving", slot.index, process.pid)
            returncode = await process.wait()
            self._forget_metrics(process.pid)
            with trio.CancelScope(shield=True):
                assert process.stdin is not None
                await process.stdin.aclose()
            if self._stopping.is_set():
                # A worker stopped by the signal before its own handler was installed never served.
                slot.clean = returncode == 0 or (not ready and returncode == -self._signal)
                if not slot.clean:
                    log.error("worker %d (pid %d) stopped with %s", slot.index, process.pid, _describe(returncode))
                return
            delay = self._restart_delay(slot, process.pid, ready, returncode, trio.current_time() - started)
            if delay is None:
                return
            with trio.move_on_after(delay):
                await self._stopping.wait()

    def _forget_metrics(self, pid: int) -> None:
        """A worker exited: its live gauges (streams in flight, ...) leave the sum, its counters stay."""
        if self.metrics_dir:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def _restart_delay(self, slot: _Slot, pid: int, ready: bool, returncode: int, ran: float) -> float | None:
        """How long to wait before restarting a worker that exited unexpectedly; None: give up."""
        how = _describe(returncode)
        if not ready:
            if not slot.ever_ready:
                self._fail(f"worker {slot.index} (pid {pid}) failed to start ({how}); see its error above")
                return None
            slot.failed_starts += 1
            if slot.failed_starts >= MAX_FAILED_STARTS:
                self._fail(f"worker {slot.index} failed to start {slot.failed_starts} times in a row ({how}); "
                           "giving up")
                return None
        elif ran >= STABLE_AFTER:
            slot.crashes = 0
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0**slot.crashes)
        slot.crashes += 1
        log.error("worker %d (pid %d) exited unexpectedly (%s); restarting it in %.1f s", slot.index, pid, how, delay)
        return delay

    async def _start(self, slot: _Slot) -> tuple[trio.Process, int]:
        """Start a worker for ``slot``; its process and the read end of its readiness pipe."""
        ready_r, ready_w = os.pipe()
        secure = tuple(s.fileno() for s in self._sockets.secure_sockets)
        insecure = tuple(s.fileno() for s in self._sockets.insecure_sockets)
        assignment = Assignment(slot.index, self._config, secure, insecure, ready_w, self._log_level)
        payload = pickle.dumps(assignment)
        try:
            env = {**os.environ, MULTIPROC_ENV: self.metrics_dir} if self.metrics_dir else None
            process = await trio.lowlevel.open_process(
                self._command, stdin=subprocess.PIPE, pass_fds=(ready_w, *secure, *insecure), process_group=0,
                env=env,
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        slot.process = process
        if self._stopping.is_set():  # the signal came while the process was being created
            self._send(process, self._signal)
        assert process.stdin is not None
        try:
            await process.stdin.send_all(_LENGTH.pack(len(payload)) + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it died already: the readiness pipe says so
        return process, ready_r


async def _wait_ready(ready_fd: int) -> bool:
    """True once the worker reported ready; False if it exited first (end of file)."""
    async with trio.lowlevel.FdStream(ready_fd) as stream:
        return await stream.receive_some(1) == _READY


def _worker_command() -> list[str]:
    root = str(Path(__file__).resolve().parent.parent)  # where ``streamgw`` is importable from
    code = f"import sys; sys.path.insert(0, {root!r}); from streamgw.supervisor import worker_main; worker_main()"
    return [sys.executable, "-c", code]


def _read_assignment(fd: int) -> Assignment:
    def read_exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(fd, size - len(data))
            if not chunk:
                raise EOFError("the supervisor closed the pipe before sending the assignment")
            data += chunk
        return data

    (size,) = _LENGTH.unpack(read_exactly(_LENGTH.size))
    assignment = pickle.loads(read_exactly(size))
    assert isinstance(assignment, Assignment)
    return assignment


def worker_main() -> None:
    """Entry point of a worker process started by ``Supervisor``: read the assignment, serve, exit."""
    assignment = _read_assignment(0)
    logging.basicConfig(
        level=assignment.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s [worker {assignment.index} pid %(process)d]: %(message)s",
    )
    sockets = Sockets([socket.socket(fileno=fd) for fd in assignment.secure_fds],
                      [socket.socket(fileno=fd) for fd in assignment.insecure_fds], [])

    def ready() -> None:
        os.write(assignment.ready_fd, _READY)
        os.close(assignment.ready_fd)

    # Imported here: the supervisor process itself never builds the application.
    from streamgw.serving.main import serve_gateway

    # stdin stays open as long as the supervisor lives: its end of file means the supervisor is gone.
    serve = partial(serve_gateway, assignment.config, sockets, on_ready=ready, supervisor_sentinel=0)
    sys.exit(run_gateway(serve))

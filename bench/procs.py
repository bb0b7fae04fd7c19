"""The bench's processes: the mock upstream, the gateway, the load generators, and what we read from /proc.

Everything runs as a real process on 127.0.0.1.  Where the machine has at least two usable cores and
``taskset``, the gateway is pinned to one core and the mock, the load generators and this orchestrator to
another (``Pinning``), so the gateway's CPU figures are its own.  A gateway with N workers
(``streamgw serve --workers N``: a supervisor and N worker processes) gets N cores when the machine has N
plus one for the client side, else it shares the one gateway core; its CPU and RSS are those of the whole
process tree (``tree_cpu_seconds``, ``Sampler.watch(pid, tree=True)``).

The mock is ``streamgw.testing.chat_mock`` run by ``python -m bench.procs mock`` (the same knobs), plus two
bench-only paths: ``GET /bench/disconnects`` answers the ``time.monotonic()`` of every client disconnect the
mock saw (the cancellation scenario lines them up with the load generator's cancel times; ``monotonic`` is
one clock for every process on the machine), and ``POST /bench/reset`` clears that list.  It also drops the
mock's per-request log as it goes, so its memory stays flat over a long run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import httpx

from bench.loadgen import PhaseSpec, raise_fd_limit
from streamgw.testing.process import free_port, start_gateway, stop_process

Json = dict[str, Any]

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
REPO_ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ environment


@dataclass(frozen=True)
class Pinning:
    """Which cores the gateway, the mock and the load generators run on (``applied`` False: not pinned, and why).

    With two cores the mock shares the load generators' core; with three or more it gets its own.
    """

    applied: bool
    gateway_cpus: tuple[int, ...] = ()
    load_cpus: tuple[int, ...] = ()
    reason: str = ""
    usable_cpus: tuple[int, ...] = ()
    mock_cpus: tuple[int, ...] = ()
    #: why the gateway has fewer cores than were asked for (empty when it has them all)
    note: str = ""

    def gateway_cores(self, workers: int = 1) -> tuple[int, ...]:
        """The cores a gateway with ``workers`` workers is pinned to: one per worker from the gateway's cores,
        as many as there are (empty when not pinned)."""
        return self.gateway_cpus[:max(1, workers)] if self.applied else ()

    def gateway_prefix(self, workers: int = 1) -> list[str]:
        """Command prefix that pins a gateway with ``workers`` workers (empty when not pinned)."""
        return _taskset(self.gateway_cores(workers)) if self.applied else []

    def load_prefix(self) -> list[str]:
        """Command prefix that pins the load generators."""
        return _taskset(self.load_cpus) if self.applied else []

    def mock_prefix(self) -> list[str]:
        """Command prefix that pins the mock upstream."""
        return _taskset(self.mock_cpus or self.load_cpus) if self.applied else []

    @property
    def client_cpus(self) -> tuple[int, ...]:
        """Every core of the client side (mock and load generators), each once."""
        return tuple(sorted({*self.mock_cpus, *self.load_cpus}))

    def describe(self) -> str:
        """One line for the report."""
        if not self.applied:
            return f"not pinned ({self.reason})"
        gateway, load = _cpus(self.gateway_cpus), _cpus(self.load_cpus)
        if len(self.gateway_cpus) > 1:
            gateway += " (one per worker, from the first)"
        if not self.mock_cpus or self.mock_cpus == self.load_cpus:
            text = f"gateway on CPU {gateway}; mock, load generator and bench on CPU {load}"
        else:
            text = (f"gateway on CPU {gateway}; mock on CPU {_cpus(self.mock_cpus)}; load generator and bench on "
                    f"CPU {load}")
        return f"{text} ({self.note})" if self.note else text

    def to_json(self) -> Json:
        """The JSON form recorded in the results."""
        return {"applied": self.applied, "gateway_cpus": list(self.gateway_cpus), "mock_cpus": list(self.mock_cpus),
                "load_cpus": list(self.load_cpus), "usable_cpus": list(self.usable_cpus), "reason": self.reason,
                "note": self.note, "description": self.describe()}


def _taskset(cpus: tuple[int, ...]) -> list[str]:
    return ["taskset", "-c", _cpus(cpus)]


def _cpus(cpus: tuple[int, ...]) -> str:
    return ",".join(str(c) for c in cpus)


def plan_pinning(wanted: bool, usable: Sequence[int] | None = None, has_taskset: bool | None = None,
                 gateway_cores: int = 1) -> Pinning:
    """Pin when asked, ``taskset`` exists and at least two cores are usable (defaults: this process's).

    The gateway gets ``gateway_cores`` cores (its largest worker count) when that leaves at least one for the
    client side, else one.  The next core is the mock's; the load generators get the rest, or share the
    mock's core when there is no rest.
    """
    cpus = tuple(sorted(os.sched_getaffinity(0) if usable is None else usable))
    if not wanted:
        return Pinning(False, reason="disabled with --no-pin", usable_cpus=cpus)
    if len(cpus) < 2:
        return Pinning(False, reason=f"only {len(cpus)} usable core", usable_cpus=cpus)
    if not (shutil.which("taskset") is not None if has_taskset is None else has_taskset):
        return Pinning(False, reason="taskset not found", usable_cpus=cpus)
    wanted_cores = max(1, gateway_cores)
    count = wanted_cores if len(cpus) >= wanted_cores + 1 else 1
    note = "" if count == wanted_cores else (
        f"{wanted_cores} gateway cores wanted but only {len(cpus)} usable and the client side needs one: "
        f"every gateway shares CPU {cpus[0]}")
    gateway, rest = cpus[:count], cpus[count:]
    mock = rest[:1]
    load = rest[1:] if len(rest) >= 2 else mock
    return Pinning(True, gateway, load, usable_cpus=cpus, mock_cpus=mock, note=note)


def pin_self(pinning: Pinning) -> None:
    """Move this process (the bench's orchestrator) to the load generators' cores, off the gateway's."""
    if pinning.applied:
        os.sched_setaffinity(0, set(pinning.load_cpus))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit(root: Path = REPO_ROOT) -> str | None:
    """The checked-out commit, read from ``.git`` files (no git command); None outside a checkout."""
    git = root / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <path>"
            git = Path(git.read_text().split(":", 1)[1].strip())
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head
        ref = head.split(":", 1)[1].strip()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        pass
    return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in ("streamgw", "trio", "hypercorn", "quart-trio", "httpx", "h11", "h2"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def environment(pinning: Pinning) -> Json:
    """What the numbers were measured on."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu_model": _cpu_model(), "cores": os.cpu_count(), "usable_cores": len(pinning.usable_cpus),
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "git_commit": git_commit(), "packages": _versions(),
        "pinning": pinning.to_json(), "open_files_limit": [soft, hard], "loadavg": list(os.getloadavg()),
        "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }


# ---------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    with open(f"/proc/{pid}/statm", "rb") as fh:
        return int(fh.read().split()[1]) * _PAGE


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (``/proc/PID/task/*/children`` where the kernel has it, else a scan
    of every ``/proc/*/stat`` for the parent id)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    try:
        for task in tasks:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as fh:
                found.update(int(x) for x in fh.read().split())
        return sorted(found)
    except FileNotFoundError:
        pass  # a kernel without CONFIG_PROC_CHILDREN
    except OSError:
        return []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[1]) == pid:
            found.add(int(entry))
    return sorted(found)


def tree_cpu_seconds(pid: int, children: Sequence[int]) -> float:
    """CPU seconds of ``pid`` and its ``children``: its own user + system time, its reaped children's (the
    kernel adds a child's time to its parent's ``cutime``/``cstime`` when the parent waits for it, so a worker
    that exited and was replaced still counts), and each live child's.  A child gone since ``children`` was
    read is skipped (its time shows up in the parent's once reaped)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / _CLK_TCK
    for child in children:
        try:
            total += cpu_seconds(child)
        except (OSError, IndexError, ValueError):
            pass
    return total


def tree_rss_bytes(pid: int, children: Sequence[int] | None = None) -> int:
    """RSS of ``pid`` plus its children's (default: its children now).  Pages the processes share (libraries)
    count once per process, so for N workers this overstates the memory a little."""
    total = rss_bytes(pid)
    for child in children_of(pid) if children is None else children:
        try:
            total += rss_bytes(child)
        except OSError:
            pass
    return total


def core_busy_seconds(cores: Sequence[int]) -> dict[int, float]:
    """Busy (non-idle, non-iowait) seconds of each core since boot, from /proc/stat."""
    wanted = {f"cpu{c}".encode(): c for c in cores}
    found: dict[int, float] = {}
    with open("/proc/stat", "rb") as fh:
        for line in fh:
            name, _, rest = line.partition(b" ")
            if name in wanted:
                ticks = [int(x) for x in rest.split()]
                found[wanted[name]] = (sum(ticks[:8]) - ticks[3] - ticks[4]) / _CLK_TCK
            elif not name.startswith(b"cpu"):
                break
    return found


def open_fds(pid: int) -> int:
    """Number of open file descriptors of ``pid`` (-1 when not readable)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def tree_open_fds(pid: int) -> int:
    """Open file descriptors of ``pid`` and its children (-1 when ``pid``'s are not readable)."""
    own = open_fds(pid)
    if own < 0:
        return own
    return own + sum(max(0, open_fds(child)) for child in children_of(pid))


@dataclass
class _Series:
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)


class Sampler:
    """Samples CPU time and RSS of some processes, and busy time of some cores, in a daemon thread.

    A process watched with ``tree=True`` is sampled with its children (a supervisor and its workers): CPU by
    ``tree_cpu_seconds``, RSS summed.  The children are looked up again every ``tree_refresh`` seconds and
    whenever one of them is gone, so a restarted worker is picked up.
    """

    def __init__(self, interval: float = 0.05, tree_refresh: float = 1.0) -> None:
        self.interval = interval
        self.tree_refresh = tree_refresh
        self._series: dict[int, _Series] = {}
        self._trees: dict[int, tuple[float, list[int]]] = {}  # root -> (when its children were read, children)
        self._cores: dict[int, _Series] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def watch(self, pid: int, *, tree: bool = False) -> None:
        """Start sampling ``pid`` (``tree``: with its child processes, summed)."""
        with self._lock:
            self._series.setdefault(pid, _Series())
            if tree:
                self._trees[pid] = (-math.inf, [])
        self._sample(pid)

    def watch_cores(self, cores: Sequence[int]) -> None:
        """Start sampling the busy time of ``cores``."""
        with self._lock:
            for core in cores:
                self._cores.setdefault(core, _Series())
        self._sample_cores()

    def forget(self, pid: int) -> None:
        """Stop sampling ``pid`` (it is gone)."""
        with self._lock:
            self._series.pop(pid, None)
            self._trees.pop(pid, None)

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                pids = list(self._series)
            for pid in pids:
                self._sample(pid)
            self._sample_cores()

    def _sample_cores(self) -> None:
        with self._lock:
            cores = list(self._cores)
        if not cores:
            return
        now, busy = time.monotonic(), core_busy_seconds(cores)
        with self._lock:
            for core, seconds in busy.items():
                self._cores[core].times.append(now)
                self._cores[core].cpu.append(seconds)

    def _children(self, root: int) -> list[int] | None:
        """The children of a tree-watched ``root`` (refreshed when due or one is gone); None: not a tree."""
        with self._lock:
            entry = self._trees.get(root)
        if entry is None:
            return None
        read_at, children = entry
        now = time.monotonic()
        if now - read_at >= self.tree_refresh or not all(os.path.exists(f"/proc/{c}") for c in children):
            children = children_of(root)
            with self._lock:
                if root in self._trees:
                    self._trees[root] = (now, children)
        return children

    def _sample(self, pid: int) -> None:
        children = self._children(pid)
        try:
            if children is None:
                now, cpu, rss = time.monotonic(), cpu_seconds(pid), rss_bytes(pid)
            else:
                now, cpu, rss = time.monotonic(), tree_cpu_seconds(pid, children), tree_rss_bytes(pid, children)
        except (OSError, IndexError, ValueError):
            return
        with self._lock:
            series = self._series.get(pid)
            if series is not None:
                series.times.append(now)
                series.cpu.append(cpu)
                series.rss.append(rss)

    def cpu_between(self, pid: int, t0: float, t1: float) -> float | None:
        """CPU seconds ``pid`` used between monotonic times ``t0`` and ``t1`` (interpolated samples)."""
        with self._lock:
            series = self._series.get(pid)
            if series is None or len(series.times) < 2:
                return None
            return _interpolate(series.times, series.cpu, t1) - _interpolate(series.times, series.cpu, t0)

    def core_busy_between(self, core: int, t0: float, t1: float) -> float | None:
        """Busy seconds of ``core`` between ``t0`` and ``t1`` (every process on it, ours and others')."""
        with self._lock:
            series = self._cores.get(core)
            if series is None or len(series.times) < 2:
                return None
            return _interpolate(series.times, series.cpu, t1) - _interpolate(series.times, series.cpu, t0)

    def rss_at(self, pid: int, t: float) -> int | None:
        """The RSS sample of ``pid`` closest to ``t``."""
        with self._lock:
            series = self._series.get(pid)
            if series is None or not series.times:
                return None
            best = min(range(len(series.times)), key=lambda i: abs(series.times[i] - t))
            return series.rss[best]


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    lo, hi = 0, len(xs) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if xs[mid] <= x:
            lo = mid
        else:
            hi = mid
    span = xs[hi] - xs[lo]
    return ys[lo] + (ys[hi] - ys[lo]) * ((x - xs[lo]) / span if span else 0.0)


# ------------------------------------------------------------------------------------ processes


@dataclass
class MockProcess:
    """The bench mock (a Chat Completions upstream) running as a process."""

    proc: subprocess.Popen[str]
    port: int

    @property
    def base_url(self) -> str:
        """The ``base_url`` a ``chat`` provider uses."""
        return f"http://127.0.0.1:{self.port}/v1"

    def disconnects(self) -> list[float]:
        """Monotonic times of every client disconnect the mock saw since the last reset."""
        answer = httpx.get(f"http://127.0.0.1:{self.port}/bench/disconnects", timeout=10)
        answer.raise_for_status()
        times: list[float] = answer.json()
        return times

    def reset(self) -> None:
        """Clear the disconnect log."""
        httpx.post(f"http://127.0.0.1:{self.port}/bench/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        """SIGTERM and wait."""
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_bench_mock(knobs: Sequence[str], prefix: Sequence[str]) -> MockProcess:
    """Run ``python -m bench.procs mock --port 0 *knobs`` under ``prefix``; wait for ``LISTENING``."""
    proc, port = start_listening([*prefix, sys.executable, "-m", "bench.procs", "mock", "--port", "0", *knobs],
                                 "bench mock")
    return MockProcess(proc, port)


def start_listening(cmd: Sequence[str], what: str) -> tuple[subprocess.Popen[str], int]:
    """Run ``cmd`` from the repository root and wait for the ``LISTENING <port>`` line it prints first."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO_ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "LISTENING":
        proc.kill()
        raise RuntimeError(f"{what} did not start: {line}")
    return proc, int(line[1])


@dataclass(frozen=True)
class TLSFiles:
    """``--tls``: a certificate for 127.0.0.1 from a throwaway CA; the gateway serves it, the clients trust the CA."""

    certfile: Path
    keyfile: Path
    ca_file: Path


def make_tls(folder: Path) -> TLSFiles:
    """Write a fresh CA and a server certificate for 127.0.0.1/localhost under ``folder``."""
    try:
        import trustme
    except ImportError:
        raise RuntimeError("--tls needs the trustme package (pip install trustme, or the test extra)") from None
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(folder / "tls-cert.pem", folder / "tls-key.pem", folder / "tls-ca.pem")
    files.certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(files.keyfile))
    ca.cert_pem.write_to_path(str(files.ca_file))
    return files


@dataclass
class GatewayProcess:
    """The gateway under hypercorn, started from a generated config."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    #: the CA to trust when ``url`` is https (the bench's own certificate)
    ca_file: str | None = None
    #: ``streamgw serve --workers``: 1 is one process; more are a supervisor (``pid``) and its workers
    workers: int = 1
    #: the cores it is pinned to (empty: not pinned)
    cpus: tuple[int, ...] = ()

    @property
    def pid(self) -> int:
        """The gateway's process id (``taskset`` execs, so it is the Python process); with workers, the
        supervisor's."""
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """The processes that serve: the workers (the supervisor's children), or the gateway itself."""
        return children_of(self.pid) if self.workers > 1 else [self.pid]

    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client needs to trust this gateway."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL if needed."""
        stop_process(self.proc, timeout=15)


@dataclass
class BareProcess:
    """The bare trio + h11 pass-through proxy (``bench.bareproxy``) in front of the mock: the reference target
    every run measures beside the gateway, pinned to the gateway's core."""

    proc: subprocess.Popen[str]
    port: int
    #: the cores it is pinned to (empty: not pinned)
    cpus: tuple[int, ...] = ()
    workers: int = 1

    @property
    def pid(self) -> int:
        """The proxy's process id (``taskset`` execs, so it is the Python process)."""
        return self.proc.pid

    @property
    def url(self) -> str:
        """Where a Chat Completions client sends its requests."""
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def worker_pids(self) -> list[int]:
        """One process serves."""
        return [self.pid]

    def stop(self) -> None:
        """SIGTERM and wait."""
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_bare_proxy(mock_port: int, prefix: Sequence[str], cpus: Sequence[int] = ()) -> BareProcess:
    """Run ``python -m bench.bareproxy --upstream http://127.0.0.1:<mock_port>`` under ``prefix``."""
    proc, port = start_listening(
        [*prefix, sys.executable, "-m", "bench.bareproxy", "--upstream", f"http://127.0.0.1:{mock_port}"], "bare proxy")
    return BareProcess(proc, port, tuple(cpus))


def gateway_config(mock_url: str, hedge_model: str, hedge_delay: float, store: str = "memory",
                   store_path: Path | None = None) -> str:
    """The gateway config the bench uses: two providers on the mock (for hedging) and one hedge route.

    ``store`` is the ``[store]`` backend; a SQLite file goes to ``store_path`` (never the working directory).
    """
    provider = f'type = "chat"\nbase_url = "{mock_url}"\nmax_connections = 20000\n'
    path = f'path = "{store_path}"\n' if store == "sqlite" and store_path is not None else ""
    return (
        "[server]\ndrain_timeout = 1\ngraceful_timeout = 1\n\n"
        f'[store]\nbackend = "{store}"\n{path}\n'
        f"[providers.mock]\n{provider}\n[providers.mock_b]\n{provider}\n"
        "[timeouts]\nconnect = 5\nfirst_token = 120\nidle = 60\nkeepalive = 15\n\n"
        f'[routes.hedged]\ntargets = ["mock/{hedge_model}", "mock_b/{hedge_model}"]\n'
        f'strategy = "hedge"\nhedge_delay = {hedge_delay}\n'
    )


def launch_gateway(config_text: str, workdir: Path, prefix: Sequence[str], name: str = "gateway", *,
                   tls: TLSFiles | None = None, workers: int = 1, cpus: Sequence[int] = ()) -> GatewayProcess:
    """Write the config and start ``streamgw serve --http2 --workers N`` under ``prefix`` (HTTPS with ``tls``);
    wait until healthy and, with several workers, until every worker has answered ``/readyz``.

    ``--http2`` is explicit: the same port then serves HTTP/1.1 and h2 (h2c prior knowledge, or ALPN over TLS).
    ``cpus`` is only recorded (``prefix`` does the pinning).
    """
    config = workdir / f"{name}.toml"
    config.write_text(config_text)
    log = workdir / f"{name}.log"
    args = ["--log-level", "warning", "--http2", "--workers", str(max(1, workers))]
    if tls is None:
        proc, url = start_gateway(config, log, prefix=list(prefix), extra_args=args)
        gateway = GatewayProcess(proc, url, log, workers=max(1, workers), cpus=tuple(cpus))
    else:
        args += ["--certfile", str(tls.certfile), "--keyfile", str(tls.keyfile)]
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        cmd = [*prefix, sys.executable, "-m", "streamgw", "serve", "--config", str(config), "--port", str(port),
               *args]
        with log.open("wb") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
        gateway = GatewayProcess(proc, f"https://127.0.0.1:{port}", log, str(tls.ca_file), max(1, workers),
                                 tuple(cpus))
    try:
        if tls is not None:
            _wait_healthy(gateway)
        if gateway.workers > 1:
            wait_workers_ready(gateway)
    except BaseException:
        stop_process(proc, timeout=5)
        raise
    return gateway


def wait_workers_ready(gateway: GatewayProcess, timeout: float = 20) -> list[int]:
    """Wait until the supervisor has ``gateway.workers`` children and each has answered ``/readyz`` (each
    request on a new connection, so the workers' race for ``accept`` spreads them); return the workers' pids.

    ``/healthz`` answering only says that one worker serves; a run started then would load the others'
    share onto it while they start.
    """
    verify = gateway.verify()
    seen: set[int] = set()
    workers: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {gateway.proc.returncode}:\n{gateway.log.read_text()}")
        workers = children_of(gateway.pid)
        if len(workers) >= gateway.workers:
            try:
                answer = httpx.get(gateway.url + "/readyz", timeout=1, verify=verify)
                if answer.status_code == 200:
                    seen.add(int(answer.json()["pid"]))
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if set(workers) <= seen:
                return workers
        time.sleep(0.02)
    raise RuntimeError(f"{gateway.workers} workers not ready within {timeout:g} s (children {workers}, answered "
                       f"/readyz: {sorted(seen)}):\n{gateway.log.read_text()}")


def _wait_healthy(gateway: GatewayProcess, timeout: float = 20) -> None:
    verify = gateway.verify()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gateway.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {gateway.proc.returncode}:\n{gateway.log.read_text()}")
        try:
            if httpx.get(gateway.url + "/healthz", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not become healthy:\n{gateway.log.read_text()}")


# ------------------------------------------------------------------------------- load generators


class LoadRun:
    """One or more load generator processes running their phases; progress lines arrive on a callback."""

    def __init__(self, plans: Sequence[Sequence[PhaseSpec]], workdir: Path, prefix: Sequence[str],
                 on_progress: Callable[[int, Json], None] | None = None) -> None:
        self.workdir = workdir
        self.latest: list[Json] = [{} for _ in plans]
        self._on_progress = on_progress
        self._procs: list[subprocess.Popen[str]] = []
        self._outs: list[Path] = []
        self._threads: list[threading.Thread] = []
        stamp = f"{os.getpid()}-{time.monotonic_ns()}"
        for i, phases in enumerate(plans):
            spec = workdir / f"loadgen-{stamp}-{i}.spec.json"
            out = workdir / f"loadgen-{stamp}-{i}.out.json"
            spec.write_text(json.dumps({"phases": [p.to_json() for p in phases]}))
            cmd = [*prefix, sys.executable, "-m", "bench.loadgen", "--spec", str(spec), "--out", str(out)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
            self._procs.append(proc)
            self._outs.append(out)
            thread = threading.Thread(target=self._read, args=(i, proc.stdout), daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def pids(self) -> list[int]:
        """The load generators' process ids."""
        return [p.pid for p in self._procs]

    def _read(self, index: int, stdout: IO[str] | None) -> None:
        assert stdout is not None
        for line in stdout:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            self.latest[index] = data
            if self._on_progress is not None:
                self._on_progress(index, data)

    def terminate(self) -> None:
        """Ask every load generator to end its current phase (streams still open count as held)."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> list[Json]:
        """Wait for every process; return their results (``{"phases": [...]}`` each)."""
        results: list[Json] = []
        for proc, out, thread in zip(self._procs, self._outs, self._threads, strict=True):
            try:
                _, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, stderr = proc.communicate()
            thread.join(timeout=5)
            if proc.returncode != 0 or not out.exists():
                raise RuntimeError(f"load generator failed ({proc.returncode}):\n{stderr[-4000:]}")
            results.append(json.loads(out.read_text()))
        return results

    def cleanup(self, keep: bool) -> None:
        """Remove the spec and output files unless ``keep``."""
        if keep:
            return
        for out in self._outs:
            out.unlink(missing_ok=True)
            out.with_name(out.name.replace(".out.", ".spec.")).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ bench mock


def _mock_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.procs mock",
                                     description="The chat_mock upstream with the bench's disconnect log.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-text", default="tok{i} ")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--heavy-tail", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


async def _serve_mock(args: argparse.Namespace) -> None:
    import trio

    from streamgw.testing.chat_mock import ChatCompletionsMock
    from streamgw.testing.server import MockRequest, Pacer, Responder, serve_http

    # One task writes every stream's timed chunks: thousands of slow streams would otherwise cost the
    # mock a task wake-up per chunk, on the core it shares with the load generators.
    mock = ChatCompletionsMock(ttft=args.ttft, token_delay=args.token_delay, tokens=args.tokens,
                               token_text=args.token_text, fault_rate=args.fault_rate,
                               heavy_tail=args.heavy_tail, seed=args.seed, pacer=Pacer())
    offset = trio.current_time() - time.monotonic()  # trio's clock is monotonic plus an offset

    async def handle(req: MockRequest, send: Responder) -> None:
        if req.path == "/bench/disconnects":
            times = [t - offset for _, t in mock.stats.disconnects]
            await send.full(200, [("content-type", "application/json")], json.dumps(times).encode())
            return
        if req.path == "/bench/reset":
            mock.stats.disconnects.clear()
            await send.full(204)
            return
        mock.requests.clear()  # the mock logs every request; the bench never reads that log
        await mock.handle(req, send)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            serve = partial(serve_http, handle, host=args.host, port=args.port, stats=mock.stats)
            bound = await nursery.start(serve)
            print(f"LISTENING {bound}", flush=True)
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.procs mock [knobs]``: run the bench mock until SIGTERM."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "mock":
        print("usage: python -m bench.procs mock [--port P] [--ttft S] [--token-delay S] [--tokens N] ...",
              file=sys.stderr)
        return 2
    raise_fd_limit()
    import trio

    trio.run(_serve_mock, _mock_args(args[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

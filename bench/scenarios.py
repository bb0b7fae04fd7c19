"""The bench's scenarios (six by default, four more on request) and the statistics they report.

Each scenario is a function ``(Bench) -> Json`` registered in ``SCENARIOS`` under its number; ``run_suite``
runs the selected ones and returns the whole results document (schema in ``bench/__init__.py``).  Every
measured figure is the median over ``repeats`` runs (the runs of different configurations are interleaved,
so slow drift of a shared machine hits all of them alike); the per-run figures are kept next to it.

1. ``throughput``: translated 20-chunk streams (``mock/text:tokens=20``) at concurrency 1, 16, 64, 256,
   through the gateway and directly to the mock; streams/s, events/s, time to first event, the gateway's CPU
   µs per relayed event, and the load generator's own CPU (the direct runs show its ceiling).
2. ``ttfe``: added time to first event: gateway, bare proxy and direct requests interleaved in the same
   workers at concurrency 1 and 16, each proxied request right after a direct one (direct, gateway, direct,
   bare, ...).  Gateway: time to the first SSE event; direct: time to the mock's first content chunk (the
   earliest moment the gateway could have had anything to relay); bare: the first content chunk it relayed.
3. ``open_streams``: N long streams at one event per second each (``token_delay=1``), opened with at most
   64 requests waiting for headers, held for a steady window on a freshly started gateway; gateway CPU,
   RSS per stream over the idle baseline, open files, delivered events/s, errors.  The window is split in
   three and the median of the thirds is reported.
4. ``non_streamed``: ``stream: false`` requests, gateway and direct; requests/s, latency, CPU per request.
5. ``hedging``: a heavy-tailed upstream first token (Pareto, scaled by ``ttft``): the same model straight
   (``mock/...``) and through a ``hedge`` route over two providers on the mock, interleaved; p50/p99 TTFT.
6. ``cancellation``: long paced streams that the client closes after a few events; the latency from the
   client's close to the mock seeing its upstream connection close (gateway) or its client close (direct).
7. ``http_versions`` (not in the default set: ``--compare-http2`` or ``--scenarios 7``): scenario 1's streams
   at concurrency 64 over HTTP/1.1 (64 connections) and over HTTP/2 (``h2_streams_per_connection`` streams
   per connection), against the same gateway, interleaved; streams/s, TTFE and gateway CPU of both.
8. ``workers`` (not in the default set: ``--compare-workers`` or ``--scenarios 8``): scenario 1's streams at
   concurrency 64 against a gateway with 1 worker and one with 2 workers (``streamgw serve --workers 2``: a
   supervisor and two worker processes on one socket), both running, runs interleaved; streams/s, TTFE, and
   the gateway's CPU summed over its whole process tree, with each worker's share.  The 1-worker gateway is
   pinned to the gateway core; the 2-worker one to two gateway cores when the machine has three or more,
   else to the same single core (then it cannot show a scaling gain; the report says so).
9. ``request_log`` (``--compare-logs`` or ``--scenarios 9``): a gateway without a request log and one writing
   JSON lines to a file, interleaved.
10. ``otel`` (``--compare-otel`` or ``--scenarios 10``): what OpenTelemetry tracing costs.  Two gateways,
   tracing off and ``[tracing] enabled`` exporting OTLP/HTTP to a receiver in the bench process
   (``streamgw.testing.otlp_receiver``, counting only): scenario 1's streams at concurrency 64 (streams/s,
   TTFE, gateway CPU per request and per event), then time to first event at concurrency 1 with both targets
   alternating in the same workers; runs interleaved, medians; the throughput loss and the added TTFE.
11. ``limits`` (not in the default set: ``--compare-limits`` or ``--scenarios 11``): scenario 1's streams at
   concurrency 64 with a key whose rate limits, stream limit and budget are on (far above the load, so every
   request is admitted and settled) against the SQLite and the Redis control backend, and the same key with no
   limits, interleaved; streams/s ratio and added p50 time per request.

``--workers N`` starts every other gateway of the run with N workers (CPU and RSS over the process tree).

The gateway is always started with ``--http2`` (it then serves HTTP/1.1 and h2 on one port); ``--http2``
makes scenarios 1-6 talk h2 to it, ``--tls`` makes it serve HTTPS with a throwaway certificate (HTTP/2
then by ALPN).

With ``--target`` only 1-4 and 7 run, against that endpoint, and report client-side figures (and the CPU/RSS of
``--target-pid`` when given); 5, 6, 8, 9 and 10 need the bench's own mock and gateways.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import ssl
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench.loadgen import PhaseSpec, TargetSpec
from bench.procs import (
    BareProcess,
    GatewayProcess,
    LoadRun,
    MockProcess,
    Pinning,
    Sampler,
    TLSFiles,
    environment,
    gateway_config,
    launch_gateway,
    make_tls,
    open_fds,
    pin_self,
    plan_pinning,
    start_bare_proxy,
    start_bench_mock,
    tree_open_fds,
    tree_rss_bytes,
)
from bench.report import Progress

Json = dict[str, Any]
SCHEMA = "streamgw-bench/1"
_PROMPT = "hi"
_HEDGE_ALPHA = 1.2
_HEDGE_TTFT = 0.02
_HEDGE_DELAY = 0.1
_OPEN_PENDING = 64
_LOADGEN_STREAMS_PER_PROC = 5000
_COMPARE_CONCURRENCY = 64


# ---------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class MockKnobs:
    """Defaults of the mock upstream (scenarios override what they define through the model name)."""

    ttft: float = 0.0
    token_delay: float = 0.0
    tokens: int = 20
    token_bytes: int = 0  # 0: the mock's "tok{i} "
    fault_rate: float = 0.0
    heavy_tail: float | None = None
    seed: int = 0

    def args(self) -> list[str]:
        """The mock's command-line flags."""
        args = ["--ttft", str(self.ttft), "--token-delay", str(self.token_delay), "--tokens", str(self.tokens),
                "--fault-rate", str(self.fault_rate), "--seed", str(self.seed)]
        if self.token_bytes:
            args += ["--token-text", "{i}" + "x" * max(0, self.token_bytes - 3) + " "]
        if self.heavy_tail is not None:
            args += ["--heavy-tail", str(self.heavy_tail)]
        return args


@dataclass(frozen=True)
class RemoteTarget:
    """``--target``: an OpenAI-compatible endpoint somebody else runs."""

    base_url: str
    path: str = "/v1/responses"
    api_key: str | None = None
    model: str = "demo/demo"
    pid: int | None = None

    @property
    def dialect(self) -> str:
        """``chat`` for a Chat Completions path, else ``responses``."""
        return "chat" if "chat/completions" in self.path else "responses"

    def to_json(self) -> Json:
        """Recorded in the results (the key is never written)."""
        return {"base_url": self.base_url, "path": self.path, "model": self.model, "pid": self.pid,
                "api_key": "set" if self.api_key else None}


@dataclass(frozen=True)
class Settings:
    """What the command line asked for."""

    quick: bool = False
    repeats: int = 3
    out_dir: Path = Path("bench/results")
    http2: bool = False
    pin: bool = True
    knobs: MockKnobs = field(default_factory=MockKnobs)
    target: RemoteTarget | None = None
    open_levels: tuple[int, ...] = (1000, 3000, 5000, 9000)
    concurrencies: tuple[int, ...] = (1, 16, 64, 256)
    keep_raw: bool = False
    store: str = "sqlite"  # the gateway's [store] backend (sqlite is what a default deployment runs)
    tls: bool = False  # the gateway serves HTTPS (a throwaway certificate); the load generators trust it
    h2_streams_per_connection: int = 100  # HTTP/2 load: concurrent streams a connection carries
    workers: int = 1  # ``streamgw serve --workers`` of every gateway the run starts (scenario 8: 1 and 2)
    paced_streams: tuple[int, ...] = (200, 400)  # scenario 12's stream counts
    paced_rate: float = 50.0  # scenario 12: events per second of each stream

    @property
    def duration(self) -> float:
        """Measured seconds of one closed-loop run."""
        return 1.5 if self.quick else 5.0

    @property
    def warmup(self) -> float:
        """Unrecorded seconds before each closed-loop run."""
        return 0.3 if self.quick else 1.0

    def to_json(self) -> Json:
        """Recorded in the results."""
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["target"] = self.target.to_json() if self.target else None
        return data


# -------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution_ms(values: Sequence[float | None]) -> Json:
    """n, mean, p50, p90, p99 and max of seconds, in milliseconds."""
    present = [v * 1e3 for v in values if v is not None]
    if not present:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    return {"n": len(present), "mean": _r(statistics.fmean(present)), "p50": _r(percentile(present, 0.5)),
            "p90": _r(percentile(present, 0.9)), "p99": _r(percentile(present, 0.99)), "max": _r(max(present))}


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def window_count(hist: dict[str, int], t0: float, t1: float) -> int:
    """Sum of a decisecond histogram (keys ``int(monotonic*10)``) over ``[t0, t1)``."""
    lo, hi = math.ceil(t0 * 10), math.ceil(t1 * 10)
    return sum(n for k, n in hist.items() if lo <= int(k) < hi)


def window_gap_hist(tallies: Sequence[Json], t0: float, t1: float) -> Counter[int]:
    """The gaps (0.1 ms units -> count) of every tally's ``gap_hist`` that ended in ``[t0, t1)``."""
    lo, hi = math.ceil(t0 * 10), math.ceil(t1 * 10)
    merged: Counter[int] = Counter()
    for tally in tallies:
        for second, hist in (tally.get("gap_hist") or {}).items():
            if lo <= int(second) < hi:
                for gap, count in hist.items():
                    merged[int(gap)] += count
    return merged


def hist_distribution_ms(hist: Counter[int]) -> Json:
    """``distribution_ms`` of a gap histogram in 0.1 ms units (quantiles interpolated like ``percentile``)."""
    n = sum(hist.values())
    if not n:
        return distribution_ms([])
    ordered = sorted(hist.items())

    def nth(i: int) -> float:  # the i-th smallest gap, ms
        seen = 0
        for gap, count in ordered:
            seen += count
            if i < seen:
                return gap / 10
        return ordered[-1][0] / 10

    def quantile(q: float) -> float:
        pos = q * (n - 1)
        lo = math.floor(pos)
        low, high = nth(lo), nth(min(lo + 1, n - 1))
        return low + (high - low) * (pos - lo)

    mean = sum(gap * count for gap, count in ordered) / n / 10
    return {"n": n, "mean": _r(mean), "p50": _r(quantile(0.5)), "p90": _r(quantile(0.9)), "p99": _r(quantile(0.99)),
            "max": _r(ordered[-1][0] / 10)}


def median_of(runs: Sequence[Json], key: str) -> float | None:
    """Median of ``run[key]`` over the runs that have it."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return _r(statistics.median(values)) if values else None


def _window(phase: Json) -> tuple[float, float]:
    """The measured window of a phase, aligned to the decisecond histogram buckets."""
    t0 = math.ceil(phase["t_measure"] * 10) / 10
    t1 = math.ceil(phase["t_stop"] * 10) / 10
    return t0, max(t1, t0 + 0.1)


def summarize_target(phase: Json, index: int, window: tuple[float, float] | None = None) -> Json:
    """One target of one phase: rates over the window, latency distributions over its records."""
    tally = phase["targets"][index]
    rec = tally["records"]
    t0, t1 = window or _window(phase)
    span = t1 - t0
    ok = [i for i, err in enumerate(rec["error"]) if not err]
    done, events = window_count(tally["done_hist"], t0, t1), window_count(tally["event_hist"], t0, t1)
    return {
        "target": tally["name"], "window_s": _r(span), "requests": len(rec["start"]), "completed_in_window": done,
        "streams_per_s": _r(done / span, 1), "events_per_s": _r(events / span, 1), "events_in_window": events,
        "errors": sum(tally["errors"].values()), "error_kinds": tally["errors"], "held": tally["held"],
        "headers_ms": distribution_ms([rec["head"][i] for i in ok]),
        "first_event_ms": distribution_ms([rec["first_event"][i] for i in ok]),
        "first_token_ms": distribution_ms([rec["first_token"][i] for i in ok]),
        "total_ms": distribution_ms([rec["total"][i] for i in ok]),
        "gaps_ms": distribution_ms(tally["gaps"]),
        "events_per_request": _r(statistics.median([rec["events"][i] for i in ok]), 1) if ok else None,
        "bytes_per_request": _r(statistics.median([rec["bytes"][i] for i in ok]), 1) if ok else None,
        "invariants": tally["invariants"],
    }


# ------------------------------------------------------------------------------------------ runtime


class Server(Protocol):
    """A process whose CPU and memory a scenario measures: a gateway, or the bare proxy."""

    @property
    def pid(self) -> int: ...

    @property
    def cpus(self) -> tuple[int, ...]: ...

    def worker_pids(self) -> list[int]: ...


class Bench:
    """The processes and helpers scenarios share: mock, gateway, sampler, load runs, progress."""

    def __init__(self, settings: Settings, progress: Progress, gateway_cores: int | None = None) -> None:
        """``gateway_cores``: the most workers any gateway of the run has (default ``settings.workers``)."""
        self.settings = settings
        self.progress = progress
        local = settings.target is None
        cores = max(settings.workers, gateway_cores or 1)
        self.pinning = plan_pinning(settings.pin, gateway_cores=cores) if local else Pinning(
            False, reason="--target: nothing to pin")
        pin_self(self.pinning)
        self.sampler = Sampler()
        self.sampler.watch_cores([*self.pinning.gateway_cpus, *self.pinning.client_cpus])
        self.environment = environment(self.pinning)
        self.raw_dir = settings.out_dir / "raw"
        self.raw_dir.mkdir(parents=True, exist_ok=True)
        self._mock: MockProcess | None = None
        self._gateway: GatewayProcess | None = None
        self._bare: BareProcess | None = None
        self.tls: TLSFiles | None = make_tls(settings.out_dir) if settings.tls and local else None
        if settings.target and settings.target.pid:
            self.sampler.watch(settings.target.pid)

    # processes -----------------------------------------------------------------------------------

    @property
    def mock(self) -> MockProcess:
        """The mock upstream, started on first use."""
        if self._mock is None:
            self._mock = start_bench_mock(self.settings.knobs.args(), self.pinning.mock_prefix())
            self.sampler.watch(self._mock.proc.pid)
        return self._mock

    @property
    def gateway(self) -> GatewayProcess:
        """The shared gateway, started on first use."""
        if self._gateway is None:
            self._gateway = self.new_gateway("gateway")
        return self._gateway

    def new_gateway(self, name: str, workers: int | None = None, extra_config: str = "") -> GatewayProcess:
        """A fresh gateway (pinned) with ``workers`` workers (default ``--workers``), watched by the sampler:
        its whole process tree, and each worker on its own.  ``extra_config``: TOML tables appended."""
        workers = max(1, workers or self.settings.workers)
        knobs = self.settings.knobs
        ttft = knobs.ttft or _HEDGE_TTFT
        alpha = knobs.heavy_tail or _HEDGE_ALPHA
        hedge_model = f"text:tokens=20,ttft={ttft},heavy_tail={alpha}"
        db = self.settings.out_dir / f"{name}.db"
        config = gateway_config(self.mock.base_url, hedge_model, _HEDGE_DELAY, self.settings.store, db) + extra_config
        if "[control]" not in extra_config:  # limits and usage next to the results, never in the working directory
            config += f'\n[control]\npath = "{self.settings.out_dir / f"{name}-control.db"}"\n'
        gateway = launch_gateway(config, self.settings.out_dir, self.pinning.gateway_prefix(workers), name,
                                 tls=self.tls, workers=workers, cpus=self.pinning.gateway_cores(workers))
        self.sampler.watch(gateway.pid, tree=True)
        if workers > 1:
            for pid in gateway.worker_pids():
                self.sampler.watch(pid)
        return gateway

    @property
    def bare(self) -> BareProcess:
        """The shared bare proxy, started on first use."""
        if self._bare is None:
            self._bare = self.new_bare()
        return self._bare

    def new_bare(self) -> BareProcess:
        """A fresh bare proxy in front of the mock, pinned where the gateway is, watched by the sampler."""
        bare = start_bare_proxy(self.mock.port, self.pinning.gateway_prefix(1), self.pinning.gateway_cores(1))
        self.sampler.watch(bare.pid)
        return bare

    def stop_bare(self, bare: BareProcess) -> None:
        """Stop a bare proxy started with ``new_bare``."""
        self.sampler.forget(bare.pid)
        bare.stop()

    def stop_gateway(self, gateway: GatewayProcess) -> None:
        """Stop a gateway started with ``new_gateway``."""
        for pid in {gateway.pid, *gateway.worker_pids()}:
            self.sampler.forget(pid)
        gateway.stop()

    def close(self) -> None:
        """Stop everything this bench started."""
        if self._gateway is not None:
            self.stop_gateway(self._gateway)
        if self._bare is not None:
            self.stop_bare(self._bare)
        if self._mock is not None:
            self._mock.stop()
        self.sampler.close()

    # targets -------------------------------------------------------------------------------------

    def gateway_target(self, model: str, *, stream: bool = True, name: str = "gateway",
                       gateway: GatewayProcess | None = None, http2: bool | None = None,
                       headers: tuple[tuple[str, str], ...] = ()) -> TargetSpec:
        """A Responses request for ``mock/<model>`` (or a route name) to ``gateway`` (default: the shared one).

        ``http2`` overrides ``--http2`` for this target.
        """
        body = {"model": model, "input": _PROMPT, **({"stream": True} if stream else {})}
        gateway = gateway or self.gateway
        h2 = self.settings.http2 if http2 is None else http2
        return TargetSpec(name, gateway.url + "/v1/responses", json.dumps(body), "responses", stream,
                          headers=headers, http2=h2, ca_file=gateway.ca_file)

    def direct_target(self, model: str, *, stream: bool = True, name: str = "direct") -> TargetSpec:
        """The same answer asked of the mock directly (Chat Completions, usage included like the gateway)."""
        body: Json = {"model": model, "messages": [{"role": "user", "content": _PROMPT}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return TargetSpec(name, self.mock.base_url + "/chat/completions", json.dumps(body), "chat", stream)

    def bare_target(self, model: str, *, name: str = "bare", bare: BareProcess | None = None) -> TargetSpec:
        """The direct request (Chat Completions, chat chunks relayed as they are) through the bare proxy
        (default: the shared one); always HTTP/1.1 without TLS, whatever ``--http2``/``--tls`` say."""
        body: Json = {"model": model, "messages": [{"role": "user", "content": _PROMPT}], "stream": True,
                      "stream_options": {"include_usage": True}}
        return TargetSpec(name, (bare or self.bare).url, json.dumps(body), "chat", True)

    def remote_target(self, *, stream: bool = True, http2: bool | None = None, name: str = "target") -> TargetSpec:
        """The ``--target`` endpoint with ``--model`` and ``--api-key`` (``http2`` overrides ``--http2``)."""
        remote = self.settings.target
        assert remote is not None
        body: Json = {"model": remote.model}
        body |= {"messages": [{"role": "user", "content": _PROMPT}]} if remote.dialect == "chat" else {
            "input": _PROMPT}
        if stream:
            body["stream"] = True
        headers = (("authorization", f"Bearer {remote.api_key}"),) if remote.api_key else ()
        url = remote.base_url.rstrip("/") + remote.path
        h2 = self.settings.http2 if http2 is None else http2
        return TargetSpec(name, url, json.dumps(body), remote.dialect, stream, headers, h2)

    def server_pid(self) -> int | None:
        """The process whose CPU is 'the gateway's' (ours, or ``--target-pid``)."""
        if self.settings.target is not None:
            return self.settings.target.pid
        return self.gateway.pid

    # load ----------------------------------------------------------------------------------------

    def run(self, phases: Sequence[PhaseSpec], labels: Sequence[str]) -> list[Json]:
        """Run phases in one load generator process, one progress step per phase."""
        self.progress.step(labels[0])

        def on_progress(_: int, line: Json) -> None:
            if line.get("finished"):
                index = int(line["phase"]) + 1
                if index < len(labels):
                    self.progress.step(labels[index])
            else:
                self.progress.update(_counters(line))

        load = LoadRun([phases], self.raw_dir, self.pinning.load_prefix(), on_progress)
        try:
            results = load.wait()
        finally:
            load.cleanup(self.settings.keep_raw)
        phases_out: list[Json] = results[0]["phases"]
        return phases_out

    def usage(self, t0: float, t1: float, events: int, requests: int, pid: int | None = None,
              gateway_cpus: Sequence[int] | None = None) -> Json:
        """Server (``pid``, default the shared gateway; a gateway's whole process tree) and mock CPU over a window:
        % of a core, µs per unit.  ``gateway_cpus``: the cores that server is pinned to (default: the cores of a
        ``--workers`` gateway)."""
        span = max(t1 - t0, 1e-9)
        pid = pid or self.server_pid()
        cpu = self.sampler.cpu_between(pid, t0, t1) if pid else None
        mock_cpu = self.sampler.cpu_between(self._mock.proc.pid, t0, t1) if self._mock else None
        return {
            "gw_cpu_pct": _r(100 * cpu / span, 1) if cpu is not None else None,
            "gw_cpu_us_per_event": _r(1e6 * cpu / events, 1) if cpu is not None and events else None,
            "gw_cpu_us_per_request": _r(1e6 * cpu / requests, 1) if cpu is not None and requests else None,
            "mock_cpu_pct": _r(100 * mock_cpu / span, 1) if mock_cpu is not None else None,
            "mock_cpu_us_per_request": _r(1e6 * mock_cpu / requests, 1) if mock_cpu is not None and requests
            else None,
            **self._cores_usage(t0, t1, cpu, gateway_cpus),
        }

    def worker_cpu_pct(self, gateway: Server, t0: float, t1: float) -> list[float | None]:
        """Each worker's CPU over a window, % of a core (the gateway itself when it has one worker)."""
        span = max(t1 - t0, 1e-9)
        shares = [self.sampler.cpu_between(pid, t0, t1) for pid in gateway.worker_pids()]
        return [_r(100 * cpu / span, 1) if cpu is not None else None for cpu in shares]

    def _cores_usage(self, t0: float, t1: float, gateway_cpu: float | None,
                     gateway_cpus: Sequence[int] | None = None) -> Json:
        """How busy the pinned cores were: the busiest client-side core, the gateway's cores without the gateway
        (% of one core, summed over its cores)."""
        if not self.pinning.applied:
            return {"load_core_busy_pct": None, "gw_core_others_pct": None}
        span = max(t1 - t0, 1e-9)
        busy = [self.sampler.core_busy_between(c, t0, t1) for c in self.pinning.client_cpus]
        load = max((b for b in busy if b is not None), default=None)
        cores = gateway_cpus or self.pinning.gateway_cores(self.settings.workers)
        per_core = [self.sampler.core_busy_between(c, t0, t1) for c in cores]
        gw_core = sum(b for b in per_core if b is not None) if all(b is not None for b in per_core) else None
        others = gw_core - gateway_cpu if gw_core is not None and gateway_cpu is not None else None
        return {"load_core_busy_pct": _r(100 * load / span, 1) if load is not None else None,
                "gw_core_others_pct": _r(max(0.0, 100 * others / span), 1) if others is not None else None}


def _counters(line: Json) -> str:
    return f"{line.get('done', 0)} done, {line.get('open', 0)} open, {line.get('events', 0)} events, " \
           f"{line.get('errors', 0)} errors"


def _loadgen_usage(phase: Json) -> Json:
    """The load generator's own cost over the whole phase, and the request rate one core of it could drive."""
    span = max(phase["t_end"] - phase["t_start"], 1e-9)
    events = sum(sum(t["event_hist"].values()) for t in phase["targets"])
    requests = sum(sum(t["done_hist"].values()) + sum(t["errors"].values()) for t in phase["targets"])
    cpu = phase["loadgen_cpu_seconds"]
    return {"loadgen_cpu_pct": _r(100 * cpu / span, 1),
            "loadgen_cpu_us_per_event": _r(1e6 * cpu / events, 1) if events else None,
            "loadgen_capacity_per_s": _r(requests / cpu, 0) if cpu > 0 else None}


def _scenario(bench: Bench, key: str, title: str) -> Json:
    return {"key": key, "title": title, "skipped": None, "started_at": _now(),
            "environment": {**bench.environment, "loadavg": list(os.getloadavg())}}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _finish(result: Json) -> Json:
    result["finished_at"] = _now()
    result["environment"]["loadavg_end"] = list(os.getloadavg())
    return result


# --------------------------------------------------------------------------- 1: throughput & 4: JSON


def _closed_loop(bench: Bench, key: str, title: str, concurrencies: Sequence[int], stream: bool,
                 kinds: Sequence[tuple[str, TargetSpec]] = (),
                 servers: Mapping[str, Server] | None = None) -> Json:
    """Closed-loop load at each concurrency over ``kinds`` (default: gateway and direct, or the remote target),
    repeated; the runs of all kinds and concurrencies are interleaved.  ``servers``: the gateway each kind
    loads, where it is not the shared one (its CPU is the one measured, with each worker's share)."""
    s = bench.settings
    result = _scenario(bench, key, title)
    if not kinds and s.target is not None:
        kinds = [("target", bench.remote_target(stream=stream))]
    elif not kinds:
        kinds = [("gateway", bench.gateway_target("mock/text:tokens=20", stream=stream)),
                 ("direct", bench.direct_target("text:tokens=20", stream=stream))]
    plan = [(r, c, name, t) for r in range(s.repeats) for c in concurrencies for name, t in kinds]
    phases = [PhaseSpec(f"{name} c={c}", (t,), c, duration=s.duration, warmup=s.warmup, sample_streams=3,
                        h2_streams_per_connection=s.h2_streams_per_connection) for _, c, name, t in plan]
    labels = [f"{key}: {name} c={c} run {r + 1}/{s.repeats}" for r, c, name, _ in plan]
    outs = bench.run(phases, labels)
    rows: dict[tuple[str, int], list[Json]] = {}
    for (_, c, name, _), phase in zip(plan, outs, strict=True):
        rows.setdefault((name, c), []).append(_closed_loop_run(bench, phase, name, (servers or {}).get(name)))
    result["rows"] = [_closed_loop_row(name, c, runs) for (name, c), runs in sorted(rows.items(),
                                                                                    key=lambda kv: kv[0][::-1])]
    return _finish(result)


def _closed_loop_run(bench: Bench, phase: Json, name: str, server: Server | None = None) -> Json:
    summary = summarize_target(phase, 0)
    t0, t1 = _window(phase)
    if server is None:
        usage = bench.usage(t0, t1, summary["events_in_window"], summary["completed_in_window"])
    else:
        usage = bench.usage(t0, t1, summary["events_in_window"], summary["completed_in_window"], server.pid,
                            server.cpus)
        usage["worker_cpu_pct"] = bench.worker_cpu_pct(server, t0, t1)
    if name == "direct":
        for key in ("gw_cpu_pct", "gw_cpu_us_per_event", "gw_cpu_us_per_request", "gw_core_others_pct"):
            usage[key] = None  # the gateway sits idle during direct runs
    return {**summary, **usage, **_loadgen_usage(phase),
            "first_event_p50_ms": summary["first_event_ms"]["p50"],
            "first_event_p99_ms": summary["first_event_ms"]["p99"],
            "total_p50_ms": summary["total_ms"]["p50"], "total_p99_ms": summary["total_ms"]["p99"]}


_ROW_KEYS = ("streams_per_s", "events_per_s", "gw_cpu_pct", "gw_cpu_us_per_event", "gw_cpu_us_per_request",
             "mock_cpu_pct", "mock_cpu_us_per_request", "loadgen_cpu_pct", "loadgen_cpu_us_per_event",
             "loadgen_capacity_per_s", "load_core_busy_pct", "gw_core_others_pct", "first_event_p50_ms",
             "first_event_p99_ms", "total_p50_ms", "total_p99_ms", "errors")


def _closed_loop_row(name: str, concurrency: int, runs: list[Json]) -> Json:
    median = {k: median_of(runs, k) for k in _ROW_KEYS}
    median["errors"] = sum(r["errors"] for r in runs)
    failures = [f for r in runs for f in r["invariants"]["failures"]]
    return {"target": name, "concurrency": concurrency, "median": median, "runs": runs,
            "invariant_failures": failures[:5], "invariants_checked": sum(r["invariants"]["checked"] for r in runs)}


def throughput(bench: Bench) -> Json:
    """Scenario 1: translated 20-chunk streams at concurrency 1, 16, 64, 256: the gateway, the bare proxy
    (the same answer as chat chunks, relayed untouched) and the mock directly, interleaved; the gateway/bare
    ratios of each round (``vs_bare``)."""
    title = "Throughput: translated 20-chunk streams"
    if bench.settings.target is not None:
        return _closed_loop(bench, "throughput", title, bench.settings.concurrencies, True)
    kinds = [("gateway", bench.gateway_target("mock/text:tokens=20")), ("bare", bench.bare_target("text:tokens=20")),
             ("direct", bench.direct_target("text:tokens=20"))]
    result = _closed_loop(bench, "throughput", title, bench.settings.concurrencies, True, kinds,
                          {"bare": bench.bare})
    result["vs_bare"] = vs_bare_rows(result["rows"])
    return result


#: the closed-loop figures compared with the bare proxy: gateway / bare (streams/s: higher is better for the
#: gateway; CPU: lower is)
_VS_BARE = ("streams_per_s", "gw_cpu_us_per_event", "gw_cpu_us_per_request", "first_event_p50_ms")


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    """``a / b``; None when either is unknown or ``b`` is not positive."""
    return _r(a / b, digits) if a is not None and b is not None and b > 0 else None


def vs_bare_rows(rows: Sequence[Json]) -> list[Json]:
    """Per concurrency: each figure of ``_VS_BARE`` as gateway / bare proxy in the same round (the i-th runs of
    both), the median over rounds, and the per-round ratios; also written into the gateway row's median as
    ``vs_bare_<figure>``."""
    by = {(row["target"], row["concurrency"]): row for row in rows}
    found = []
    for (name, c), gateway in sorted(by.items(), key=lambda kv: kv[0][1]):
        bare = by.get(("bare", c))
        if name != "gateway" or bare is None:
            continue
        entry: Json = {"concurrency": c}
        for key in _VS_BARE:
            rounds = [ratio(g.get(key), b.get(key)) for g, b in zip(gateway["runs"], bare["runs"], strict=False)]
            entry[key] = median_of([{"v": v} for v in rounds], "v")
            entry[f"{key}_rounds"] = rounds
            gateway["median"][f"vs_bare_{key}"] = entry[key]
        found.append(entry)
    return found


def non_streamed(bench: Bench) -> Json:
    """Scenario 4: non-streamed requests."""
    levels = (16,) if bench.settings.quick else (1, 16, 64)
    return _closed_loop(bench, "non_streamed", "Non-streamed requests (stream: false)", levels, False)


def http_versions(bench: Bench) -> Json:
    """Scenario 7: scenario 1's streams at c=64 over HTTP/1.1 and over HTTP/2, same gateway, interleaved."""
    s = bench.settings
    if s.target is not None:
        kinds = [(name, bench.remote_target(http2=h2, name=name)) for name, h2 in (("http/1.1", False), ("h2", True))]
    else:
        kinds = [(name, bench.gateway_target("mock/text:tokens=20", http2=h2, name=name))
                 for name, h2 in (("http/1.1", False), ("h2", True))]
    result = _closed_loop(bench, "http_versions", "HTTP/1.1 vs HTTP/2 (translated 20-chunk streams, c=64)",
                          (_COMPARE_CONCURRENCY,), True, kinds)
    medians = {row["target"]: row["median"] for row in result["rows"]}
    h1, h2 = (medians.get(name, {}).get("streams_per_s") for name in ("http/1.1", "h2"))
    connections = math.ceil(_COMPARE_CONCURRENCY / max(1, s.h2_streams_per_connection))
    result["config"] = {"concurrency": _COMPARE_CONCURRENCY, "model": "mock/text:tokens=20", "tls": s.tls,
                        "http1_connections": _COMPARE_CONCURRENCY, "h2_connections": connections,
                        "h2_streams_per_connection": min(_COMPARE_CONCURRENCY, s.h2_streams_per_connection)}
    result["comparison"] = {"http1_streams_per_s": h1, "h2_streams_per_s": h2,
                            "h2_over_http1": _r(h2 / h1, 3) if h1 and h2 is not None else None,
                            "errors": sum(m.get("errors") or 0 for m in medians.values())}
    return result


def worker_scaling(bench: Bench) -> Json:
    """Scenario 8: scenario 1's streams at c=64 against a 1-worker and a 2-worker gateway, interleaved."""
    s = bench.settings
    title = "1 vs 2 gateway workers (translated 20-chunk streams, c=64)"
    if s.target is not None:
        result = _scenario(bench, "workers", title)
        result["skipped"] = "starts its own gateways (not available with --target)"
        return _finish(result)
    gateways: dict[int, GatewayProcess] = {}
    try:
        for workers in (1, 2):
            gateways[workers] = bench.new_gateway(f"gateway-{workers}w", workers=workers)
        names = {1: "1 worker", 2: "2 workers"}
        kinds = [(names[w], bench.gateway_target("mock/text:tokens=20", name=names[w], gateway=g))
                 for w, g in gateways.items()]
        result = _closed_loop(bench, "workers", title, (_COMPARE_CONCURRENCY,), True, kinds,
                              {names[w]: g for w, g in gateways.items()})
    finally:
        for gateway in gateways.values():
            bench.stop_gateway(gateway)
    configurations = [{"name": names[w], "workers": w, "pinned": bench.pinning.applied, "cpus": list(g.cpus),
                       "pinning": _cores_text(g.cpus, bench.pinning)} for w, g in gateways.items()]
    for row in result["rows"]:
        shares = [r.get("worker_cpu_pct") or [] for r in row["runs"]]
        width = max((len(x) for x in shares), default=0)
        row["median"]["worker_cpu_pct"] = [median_of([{"v": x[i]} for x in shares if len(x) > i], "v")
                                           for i in range(width)]
    medians = {row["target"]: row["median"] for row in result["rows"]}
    one, two = (medians.get(names[w], {}).get("streams_per_s") for w in (1, 2))
    result["config"] = {"concurrency": _COMPARE_CONCURRENCY, "model": "mock/text:tokens=20", "http2": s.http2,
                        "tls": s.tls, "configurations": configurations}
    result["comparison"] = {"workers_1_streams_per_s": one, "workers_2_streams_per_s": two,
                            "ratio_2_over_1": _r(two / one, 3) if one and two is not None else None,
                            "errors": sum(m.get("errors") or 0 for m in medians.values())}
    result["note"] = _workers_note(bench.pinning, gateways[1].cpus, gateways[2].cpus)
    return result


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in ``os.environ`` for the block (a gateway started in it inherits them)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def otel_cost(bench: Bench) -> Json:
    """Scenario 9: tracing off vs on (exporting to a local receiver): streams/s at c=64 and TTFE at c=1."""
    from streamgw.testing.otlp_receiver import OtlpReceiver  # the otel extra's proto package: only here

    s = bench.settings
    title = "OpenTelemetry tracing off vs on (translated 20-chunk streams)"
    if s.target is not None:
        result = _scenario(bench, "otel", title)
        result["skipped"] = "starts its own gateways (not available with --target)"
        return _finish(result)
    model = "mock/text:tokens=20"
    names = {False: "tracing off", True: "tracing on"}
    gateways: dict[bool, GatewayProcess] = {}
    with OtlpReceiver(decode=False) as receiver:
        try:
            gateways[False] = bench.new_gateway("gateway-otel-off")
            with _environment({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint}):
                gateways[True] = bench.new_gateway("gateway-otel-on", extra_config="\n[tracing]\nenabled = true\n")
            kinds = [(names[on], bench.gateway_target(model, name=names[on], gateway=g)) for on, g in gateways.items()]
            result = _closed_loop(bench, "otel", title, (_COMPARE_CONCURRENCY,), True, kinds,
                                  {names[on]: g for on, g in gateways.items()})
            per_worker = 300 if s.quick else 2000
            phases = [PhaseSpec("otel ttfe c=1", tuple(t for _, t in kinds), 1, requests=per_worker, warmup=0.2,
                                sample_streams=3) for _ in range(s.repeats)]
            outs = bench.run(phases, [f"otel: ttfe c=1 run {r + 1}/{s.repeats}" for r in range(s.repeats)])
        finally:
            for gateway in gateways.values():
                bench.stop_gateway(gateway)  # the tracing one flushes what it still holds
        time.sleep(0.2)
        exported = {"export_requests": receiver.requests, "export_bytes": receiver.bytes,
                    "receiver_errors": receiver.errors}
    ttfe_runs = [{names[on]: summarize_target(phase, i, (phase["t_measure"], phase["t_end"]))["first_event_ms"]
                  for i, on in enumerate(gateways)} for phase in outs]
    result["ttfe_c1"] = {name: {q: median_of([r[name] for r in ttfe_runs], q) for q in ("p50", "p90", "p99")}
                         for name in names.values()}
    result["ttfe_c1"]["runs"] = ttfe_runs
    medians = {row["target"]: row["median"] for row in result["rows"]}
    off, on = (medians.get(names[x], {}) for x in (False, True))

    def added(a: float | None, b: float | None) -> float | None:
        return _r(b - a) if a is not None and b is not None else None

    c1_off, c1_on = result["ttfe_c1"][names[False]], result["ttfe_c1"][names[True]]
    result["config"] = {"concurrency": _COMPARE_CONCURRENCY, "model": model, "ttfe_requests_per_run": per_worker,
                        "exporter": "a receiver on 127.0.0.1 in the bench process (counting only)"}
    result["comparison"] = {
        "off_streams_per_s": off.get("streams_per_s"), "on_streams_per_s": on.get("streams_per_s"),
        "throughput_loss_pct": _r(100 * (1 - on["streams_per_s"] / off["streams_per_s"]), 1)
        if off.get("streams_per_s") and on.get("streams_per_s") is not None else None,
        "cpu_us_per_event_off": off.get("gw_cpu_us_per_event"), "cpu_us_per_event_on": on.get("gw_cpu_us_per_event"),
        "cpu_us_per_request_off": off.get("gw_cpu_us_per_request"),
        "cpu_us_per_request_on": on.get("gw_cpu_us_per_request"),
        # CPU per request is the steadier figure where other processes share the gateway's core
        "cpu_per_request_added_pct": _r(100 * (on["gw_cpu_us_per_request"] / off["gw_cpu_us_per_request"] - 1), 1)
        if off.get("gw_cpu_us_per_request") and on.get("gw_cpu_us_per_request") is not None else None,
        "others_on_gateway_core_pct": [off.get("gw_core_others_pct"), on.get("gw_core_others_pct")],
        "added_ttfe_c64_p50_ms": added(off.get("first_event_p50_ms"), on.get("first_event_p50_ms")),
        "added_ttfe_c64_p99_ms": added(off.get("first_event_p99_ms"), on.get("first_event_p99_ms")),
        "added_ttfe_c1_p50_ms": added(c1_off["p50"], c1_on["p50"]),
        "added_ttfe_c1_p99_ms": added(c1_off["p99"], c1_on["p99"]),
        "errors": sum(m.get("errors") or 0 for m in medians.values()), **exported,
    }
    return result


def _cores_text(cpus: Sequence[int], pinning: Pinning) -> str:
    if not cpus:
        return f"not pinned ({pinning.reason}): any of CPU {','.join(map(str, pinning.usable_cpus))}"
    return f"CPU {','.join(map(str, cpus))}"


def _workers_note(pinning: Pinning, one: Sequence[int], two: Sequence[int]) -> str:
    """What the pinning lets the comparison show."""
    usable = len(pinning.usable_cpus)
    if not pinning.applied:
        return (f"Not pinned ({pinning.reason}): the gateways, the mock and the load generator share all {usable} "
                "usable cores, so the 2-worker figures mix the gateway's scaling with the client side's need for CPU.")
    if len(two) <= len(one):
        return (f"Both gateways were pinned to the same single core (CPU {','.join(map(str, one))}). With "
                f"{usable} usable cores the mock and the load generator need the other core, so there is no free "
                "core for a second worker and 2 workers cannot show a scaling gain here: this measures what a "
                "second process costs on one core (two event loops, the race for accept), not scaling.")
    return (f"The 2-worker gateway had {len(two)} cores, the 1-worker gateway {len(one)}; the mock and the load "
            f"generator ran on CPU {','.join(map(str, pinning.client_cpus))}, which can cap both.")


def request_log(bench: Bench) -> Json:
    """Scenario 9: scenario 1's streams at c=64 against a gateway without a request log and one writing JSON
    lines to a file, interleaved: throughput and the client's time to first event, on vs off."""
    s = bench.settings
    title = "Request log off vs JSON lines to a file (translated 20-chunk streams, c=64)"
    if s.target is not None:
        result = _scenario(bench, "request_log", title)
        result["skipped"] = "starts its own gateways (not available with --target)"
        return _finish(result)
    log_file = s.out_dir / "request-log.jsonl"
    configs = {"log off": "\n[logging]\nrequests = false\n",
               "json log": f'\n[logging]\nformat = "json"\nfile = "{log_file}"\n'}
    gateways: dict[str, GatewayProcess] = {}
    try:
        for name, extra in configs.items():
            gateways[name] = bench.new_gateway("gateway-" + name.replace(" ", "-"), extra_config=extra)
        kinds = [(name, bench.gateway_target("mock/text:tokens=20", name=name, gateway=g))
                 for name, g in gateways.items()]
        result = _closed_loop(bench, "request_log", title, (_COMPARE_CONCURRENCY,), True, kinds, gateways)
    finally:
        for gateway in gateways.values():
            bench.stop_gateway(gateway)
    medians = {row["target"]: row["median"] for row in result["rows"]}
    off, on = (medians.get(name, {}) for name in configs)
    off_rate, on_rate = off.get("streams_per_s"), on.get("streams_per_s")
    result["config"] = {"concurrency": _COMPARE_CONCURRENCY, "model": "mock/text:tokens=20", "log_file": str(log_file)}
    result["comparison"] = {
        "off_streams_per_s": off_rate, "json_streams_per_s": on_rate,
        "throughput_loss_pct": _r(100.0 * (1 - on_rate / off_rate), 2) if off_rate and on_rate is not None else None,
        "off_ttfe_p50_ms": off.get("first_event_p50_ms"), "json_ttfe_p50_ms": on.get("first_event_p50_ms"),
        "off_ttfe_p99_ms": off.get("first_event_p99_ms"), "json_ttfe_p99_ms": on.get("first_event_p99_ms"),
        "off_gw_cpu_us_per_request": off.get("gw_cpu_us_per_request"),
        "json_gw_cpu_us_per_request": on.get("gw_cpu_us_per_request"),
        "lines_written": _count_lines(log_file),
        "errors": sum(m.get("errors") or 0 for m in medians.values()),
    }
    return result


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------- 2: TTFE


def ttfe(bench: Bench) -> Json:
    """Scenario 2: added time to first event, gateway, direct and the bare proxy interleaved, at concurrency 1
    and 16: each worker goes round direct, gateway, direct, bare.

    Each proxied request follows a direct one so that the gateway and the bare proxy meet the client in the
    same state.  With the load generator sharing a core with the mock, the position alone moves a time to
    first event by ~0.15 ms on a 2-core machine: a client whose previous request was proxied is woken late
    by the first event's write (while the mock still writes the rest of its answer), one whose previous
    request went to the mock directly is woken at once.  The order gateway, direct, bare (before 2026-12-07)
    gave the bare proxy the good position and the gateway the bad one in every round."""
    s = bench.settings
    result = _scenario(bench, "ttfe", "Added time to first event (gateway vs bare proxy vs direct, interleaved)")
    if s.target is not None:
        pairs = [bench.remote_target()]
    else:
        pairs = [bench.direct_target("text:tokens=20"), bench.gateway_target("mock/text:tokens=20"),
                 bench.direct_target("text:tokens=20", name="direct (before bare)"),
                 bench.bare_target("text:tokens=20")]
    per_worker = {1: 300 if s.quick else 2000, 16: 40 if s.quick else 150}
    plan = [(r, c) for r in range(s.repeats) for c in (1, 16)]
    phases = [PhaseSpec(f"ttfe c={c}", tuple(pairs), c, requests=per_worker[c], warmup=0.2, sample_streams=3)
              for _, c in plan]
    outs = bench.run(phases, [f"ttfe: c={c} run {r + 1}/{s.repeats}" for r, c in plan])
    by_c: dict[int, list[Json]] = {}
    for (_, c), phase in zip(plan, outs, strict=True):
        by_c.setdefault(c, []).append(_ttfe_run(bench, phase, c))
    result["levels"] = {str(c): _ttfe_level(runs) for c, runs in by_c.items()}
    return _finish(result)


def _ttfe_run(bench: Bench, phase: Json, concurrency: int) -> Json:
    t0, t1 = phase["t_measure"], phase["t_end"]
    summaries = [summarize_target(phase, i, (t0, t1)) for i in range(len(phase["targets"]))]
    # the targets' places in a round: direct, gateway, direct (before bare), bare; with --target that one alone
    d1, gi, d2, bi = (0, 1, 2, 3) if len(summaries) > 1 else (0, 0, 0, 0)
    gw = summaries[gi]
    run: Json = {"targets": summaries, **bench.usage(t0, t1, gw["events_in_window"], gw["completed_in_window"]),
                 "gateway_first_event_ms": gw["first_event_ms"], "samples_ms": {}}
    gw_rec = phase["targets"][gi]["records"]
    run["samples_ms"]["gateway"] = _sample_ms(gw_rec["first_event"], gw_rec["error"])
    if len(summaries) > 1:
        # direct: the requests before the gateway's and those before the bare proxy's, together
        d_rec, d2_rec = phase["targets"][d1]["records"], phase["targets"][d2]["records"]
        direct_ms = distribution_ms([v for rec in (d_rec, d2_rec)
                                     for v, e in zip(rec["first_token"], rec["error"], strict=True) if not e])
        run["direct_first_token_ms"] = direct_ms
        run["samples_ms"]["direct"] = _sample_ms(d_rec["first_token"] + d2_rec["first_token"],
                                                 d_rec["error"] + d2_rec["error"])
        g50, d50 = gw["first_event_ms"]["p50"], direct_ms["p50"]
        run["added_p50_ms"] = _r(g50 - d50) if g50 is not None and d50 is not None else None
        g99, d99 = gw["first_event_ms"]["p99"], direct_ms["p99"]
        run["added_p99_ms"] = _r(g99 - d99) if g99 is not None and d99 is not None else None
        if concurrency == 1:
            run["paired_added_ms"] = distribution_ms(_paired(gw_rec["first_event"], d_rec["first_token"]))
    if len(summaries) > 2:  # the bare proxy: time to the first content chunk it relayed, like direct's
        bare, b_rec = summaries[bi], phase["targets"][bi]["records"]
        run["bare_first_token_ms"] = bare["first_token_ms"]
        run["samples_ms"]["bare"] = _sample_ms(b_rec["first_token"], b_rec["error"])
        b50, b99 = bare["first_token_ms"]["p50"], bare["first_token_ms"]["p99"]
        run["bare_added_p50_ms"] = _r(b50 - d50) if b50 is not None and d50 is not None else None
        run["bare_added_p99_ms"] = _r(b99 - d99) if b99 is not None and d99 is not None else None
        bare_cpu = bench.usage(t0, t1, bare["events_in_window"], bare["completed_in_window"], bench.bare.pid,
                               bench.bare.cpus)
        run["bare_cpu_us_per_event"] = bare_cpu["gw_cpu_us_per_event"]
        run["bare_cpu_us_per_request"] = bare_cpu["gw_cpu_us_per_request"]
        if concurrency == 1:
            run["paired_bare_added_ms"] = distribution_ms(_paired(b_rec["first_token"], d2_rec["first_token"]))
        # gateway / bare in this round: the time to first event, and the time added over direct
        run["ttfe_ratio_vs_bare"] = ratio(g50, b50)
        run["added_ratio_vs_bare"] = ratio(run.get("added_p50_ms"), run["bare_added_p50_ms"])
    return run


def _sample_ms(values: Sequence[float | None], errors: Sequence[str], cap: int = 3000) -> list[float]:
    kept = [round(v * 1e3, 4) for v, e in zip(values, errors, strict=True) if v is not None and not e]
    return kept[:cap]


def _paired(gateway: Sequence[float | None], direct: Sequence[float | None]) -> list[float | None]:
    """At concurrency 1 the worker goes round its targets, so the i-th records of a proxy and of the direct
    target just before it in the round are neighbours."""
    return [g - d if g is not None and d is not None else None for g, d in zip(gateway, direct, strict=False)]


def _ttfe_level(runs: list[Json]) -> Json:
    keys = ("added_p50_ms", "added_p99_ms", "gw_cpu_us_per_event", "gw_cpu_pct", "bare_added_p50_ms",
            "bare_added_p99_ms", "bare_cpu_us_per_event", "ttfe_ratio_vs_bare", "added_ratio_vs_bare")
    median: Json = {k: median_of(runs, k) for k in keys}
    for name, field_name in (("gateway", "gateway_first_event_ms"), ("direct", "direct_first_token_ms"),
                             ("bare", "bare_first_token_ms")):
        for q in ("p50", "p90", "p99"):
            median[f"{name}_{q}_ms"] = median_of([r[field_name] for r in runs if field_name in r], q)
    for key in ("paired_added", "paired_bare_added"):
        median[f"{key}_p50_ms"] = median_of([r[f"{key}_ms"] for r in runs if f"{key}_ms" in r], "p50")
    samples = {k: [v for r in runs for v in r["samples_ms"].get(k, [])][:5000] for k in ("gateway", "direct", "bare")}
    median["errors"] = sum(t["errors"] for r in runs for t in r["targets"])
    for r in runs:
        r.pop("samples_ms")
    return {"median": median, "runs": runs, "samples_ms": samples}


# -------------------------------------------------------------------------------- 3: open streams


def open_streams(bench: Bench) -> Json:
    """Scenario 3: N long streams at one event per second each, for each N in ``open_levels``."""
    s = bench.settings
    result = _scenario(bench, "open_streams", "Open streams at 1 event/s each")
    if s.target is not None:
        result["note"] = "against --target, N workers keep N streams in flight at the target's own pacing"
    result["levels"] = []
    for n in s.open_levels:
        bench.progress.step(f"open_streams: {n} streams" + ("" if s.target else " (gateway)"))
        if s.target is not None:
            result["levels"].append(_open_level_remote(bench, n))
            continue
        plan = _OpenPlan.make(n, s.quick)
        level = _open_level(bench, plan, "gateway")
        bench.progress.step(f"open_streams: {n} streams (bare proxy)")
        level["bare"] = _open_level(bench, plan, "bare")
        level["vs_bare"] = server_vs_bare(level, level["bare"])
        result["levels"].append(level)
    return _finish(result)


@dataclass
class _OpenPlan:
    n: int
    window: float
    ramp_limit: float
    tokens: int
    procs: int
    #: events per second of each stream (the mock's pacing)
    rate: float = 1.0
    #: the load generators histogram every gap by time (the paced scenario's window gaps)
    timed_gaps: bool = False

    @property
    def offered(self) -> float:
        """Events per second the mock sends over all streams."""
        return self.n * self.rate

    @property
    def model(self) -> str:
        """The mock model of each stream: ``tokens`` tokens, one every ``1 / rate`` seconds."""
        return f"text:tokens={self.tokens},token_delay={1 / self.rate:g}"

    @staticmethod
    def make(n: int, quick: bool) -> _OpenPlan:
        window = 3.0 if quick else 9.0
        ramp_limit = max(10.0, n / 150)
        return _OpenPlan(n, window, ramp_limit, int(ramp_limit + window + 8),
                         max(1, math.ceil(n / _LOADGEN_STREAMS_PER_PROC)))

    @staticmethod
    def paced(n: int, rate: float, quick: bool) -> _OpenPlan:
        """Scenario 12: enough tokens for the ramp, the window and a margin (streams still open are held)."""
        window = 3.0 if quick else 6.0  # thirds of whole seconds: the decisecond histograms divide them evenly
        ramp_limit = max(5.0, n / 150)
        return _OpenPlan(n, window, ramp_limit, math.ceil(rate * (ramp_limit + window + 3)),
                         max(1, math.ceil(n / _LOADGEN_STREAMS_PER_PROC)), rate, timed_gaps=True)


def _open_phases(target: TargetSpec, plan: _OpenPlan, requests: int) -> list[list[PhaseSpec]]:
    shares = [plan.n // plan.procs + (1 if i < plan.n % plan.procs else 0) for i in range(plan.procs)]
    pending = max(1, _OPEN_PENDING // plan.procs)
    gaps = 1000 if plan.timed_gaps else 200_000  # with the histogram the list is only a sample
    return [[PhaseSpec(f"open {plan.n}", (target,), share, requests=requests, max_pending=pending, timeout=0,
                       sample_streams=2, gap_samples=gaps, progress_interval=0.2, timed_gaps=plan.timed_gaps)]
            for share in shares]


def _open_level(bench: Bench, plan: _OpenPlan, kind: str) -> Json:
    """``plan``'s streams through a fresh gateway (``kind`` "gateway") or a fresh bare proxy ("bare"), held for
    the window; its CPU, and its RSS per stream over its idle RSS after a warm-up."""
    server: GatewayProcess | BareProcess
    if kind == "gateway":
        server = gateway = bench.new_gateway(f"gateway-open-{plan.n}")
        target = bench.gateway_target(f"mock/{plan.model}", gateway=gateway)
    else:
        server = bare = bench.new_bare()
        target = bench.bare_target(plan.model, bare=bare)
    try:
        _warm(server)
        time.sleep(0.5)
        idle_rss = _rss_now(server.pid)  # the whole process tree
        level = _hold(bench, plan, target, server.pid)
        level["idle_rss_bytes"] = idle_rss
        rss = level.get("rss_bytes")
        opened = min(plan.n, level["opened"])
        level["rss_per_stream_kb"] = _r((rss - idle_rss) / opened / 1024, 2) if rss and idle_rss and opened else None
        return level
    finally:
        if isinstance(server, GatewayProcess):
            bench.stop_gateway(server)
        else:
            bench.stop_bare(server)


#: the held-streams figures compared with the bare proxy (gateway / bare)
_HELD_VS_BARE = ("gw_cpu_us_per_event", "gw_cpu_pct", "rss_per_stream_kb", "delivered_ratio")


def server_vs_bare(gateway: Json, bare: Json) -> Json:
    """Each figure of ``_HELD_VS_BARE`` as gateway / bare proxy (``gw_*``: each server's own CPU)."""
    return {key: ratio(gateway.get(key), bare.get(key)) for key in _HELD_VS_BARE}


def _open_level_remote(bench: Bench, n: int) -> Json:
    """Against ``--target`` the answers' pacing is the target's: N workers keep N streams in flight."""
    plan = _OpenPlan.make(n, bench.settings.quick)
    return _hold(bench, plan, bench.remote_target(), bench.server_pid(), remote=True)


def _warm(server: GatewayProcess | BareProcess, headers: Sequence[tuple[str, str]] = ()) -> None:
    """Twenty short streams through ``server`` (with ``headers``), so that no measured window holds its cold start:
    the first connections, a control backend's first round trips, the first run of each code path."""
    verify: ssl.SSLContext | bool = True
    if isinstance(server, BareProcess):
        url = server.url
        body: Json = {"model": "text:tokens=5", "messages": [{"role": "user", "content": _PROMPT}], "stream": True}
    else:
        url, verify = server.url + "/v1/responses", server.verify()
        body = {"model": "mock/text:tokens=5", "input": _PROMPT, "stream": True}
    with httpx.Client(timeout=30, verify=verify, headers=list(headers)) as client:
        for _ in range(20):
            client.post(url, json=body).raise_for_status()


def _rss_now(pid: int) -> int | None:
    try:
        return tree_rss_bytes(pid)
    except OSError:
        return None


def _hold(bench: Bench, plan: _OpenPlan, target: TargetSpec, pid: int | None, remote: bool = False) -> Json:
    """Open the streams, measure a steady window, then end the load generators."""
    seen: dict[int, Json] = {}

    def on_progress(index: int, line: Json) -> None:
        if "done" in line:
            seen[index] = line
            keys = ("done", "open", "events", "errors")
            bench.progress.update(_counters({k: sum(int(v.get(k, 0)) for v in seen.values()) for k in keys}))

    load = LoadRun(_open_phases(target, plan, 0 if remote else 1), bench.raw_dir, bench.pinning.load_prefix(),
                   on_progress)
    try:
        ramp_start = time.monotonic()
        opened = _wait_open(load, plan, remote)
        ramp_s = time.monotonic() - ramp_start
        t0 = math.ceil(time.monotonic() * 10) / 10 + 0.1
        thirds = [t0 + plan.window * i / 3 for i in range(4)]
        time.sleep(max(0.0, thirds[-1] - time.monotonic()) + 0.15)
        fds = (open_fds(pid) if remote else tree_open_fds(pid)) if pid else None  # ours: the whole process tree
        rss = bench.sampler.rss_at(pid, thirds[-1]) if pid else None
        load.terminate()
        results = load.wait(timeout=120)
    finally:
        load.cleanup(bench.settings.keep_raw)
    level = _hold_summary(bench, plan, results, thirds, pid)
    level.update({"opened": opened, "ramp_s": _r(ramp_s, 2), "open_files": fds, "rss_bytes": rss})
    level["ok"] = opened >= plan.n and level["errors"] == 0
    return level


def _wait_open(load: LoadRun, plan: _OpenPlan, in_flight: bool) -> int:
    """Wait until every stream has its headers, or (``in_flight``) every worker has started, or the ramp limit
    passed; return how many streams are open (in flight)."""
    deadline = time.monotonic() + plan.ramp_limit
    opened = 0
    while time.monotonic() < deadline:
        if in_flight:
            opened = sum(int(line.get("started", 0)) - int(line.get("done", 0)) for line in load.latest)
        else:
            opened = sum(int(line.get("open", 0)) for line in load.latest)
        if opened >= plan.n:
            break
        time.sleep(0.05)
    return opened


def _hold_summary(bench: Bench, plan: _OpenPlan, results: list[Json], cuts: list[float], pid: int | None) -> Json:
    phases = [r["phases"][0] for r in results if r["phases"]]
    tallies = [p["targets"][0] for p in phases]
    thirds = []
    for a, b in itertools.pairwise(cuts):
        events = sum(window_count(t["event_hist"], a, b) for t in tallies)
        usage = bench.usage(a, b, events, 0, pid) if pid else {}
        thirds.append({"events_per_s": events / (b - a), **usage})
    errors: dict[str, int] = {}
    for t in tallies:
        for kind, count in t["errors"].items():
            errors[kind] = errors.get(kind, 0) + count
    gaps = [g for t in tallies for g in t["gaps"]]
    timed = {"window_gaps_ms": hist_distribution_ms(window_gap_hist(tallies, cuts[0], cuts[-1]))} if any(
        "gap_hist" in t for t in tallies) else {}
    return {**timed,
        "streams": plan.n, "window_s": plan.window, "loadgen_processes": len(phases),
        "events_per_s": median_of(thirds, "events_per_s"), "gw_cpu_pct": median_of(thirds, "gw_cpu_pct"),
        "gw_cpu_us_per_event": median_of(thirds, "gw_cpu_us_per_event"), "thirds": thirds,
        "gw_core_others_pct": median_of(thirds, "gw_core_others_pct"),
        "load_core_busy_pct": median_of(thirds, "load_core_busy_pct"),
        "delivered_ratio": _r((median_of(thirds, "events_per_s") or 0) / plan.offered, 3),
        "errors": sum(errors.values()), "error_kinds": errors, "held": sum(t["held"] for t in tallies),
        "gaps_ms": distribution_ms(gaps),
        "invariant_failures": [f for t in tallies for f in t["invariants"]["failures"]][:5],
    }


# ------------------------------------------------------------------------------------- 5: hedging


def hedging(bench: Bench) -> Json:
    """Scenario 5: heavy-tailed first token, straight vs a hedge route; p50/p99 TTFT."""
    s = bench.settings
    result = _scenario(bench, "hedging", "Hedging under a heavy-tailed upstream")
    if s.target is not None:
        result["skipped"] = "needs the bench's own mock upstream (not available with --target)"
        return _finish(result)
    ttft, alpha = s.knobs.ttft or _HEDGE_TTFT, s.knobs.heavy_tail or _HEDGE_ALPHA
    model = f"text:tokens=20,ttft={ttft},heavy_tail={alpha}"
    targets = (bench.gateway_target(f"mock/{model}", name="single"), bench.gateway_target("hedged", name="hedged"))
    per_worker = 40 if s.quick else 150
    phases = [PhaseSpec("hedging", targets, 8, requests=per_worker, sample_streams=3) for _ in range(s.repeats)]
    outs = bench.run(phases, [f"hedging: run {r + 1}/{s.repeats}" for r in range(s.repeats)])
    runs = []
    for phase in outs:
        t0, t1 = phase["t_start"], phase["t_end"]
        runs.append({name: summarize_target(phase, i, (t0, t1)) for i, name in enumerate(("single", "hedged"))})
    result["config"] = {"model": model, "hedge_delay_s": _HEDGE_DELAY, "concurrency": 8, "pareto_alpha": alpha,
                        "ttft_scale_s": ttft}
    result["median"] = {f"{name}_{q}_ms": median_of([r[name]["first_token_ms"] for r in runs], q)
                        for name in ("single", "hedged") for q in ("p50", "p90", "p99", "max")}
    result["median"]["errors"] = sum(r[n]["errors"] for r in runs for n in ("single", "hedged"))
    result["samples_ms"] = {n: _sample_ms(outs[-1]["targets"][i]["records"]["first_token"],
                                          outs[-1]["targets"][i]["records"]["error"])
                            for i, n in enumerate(("single", "hedged"))}
    result["runs"] = runs
    return _finish(result)


# -------------------------------------------------------------------------------- 6: cancellation


def cancellation(bench: Bench) -> Json:
    """Scenario 6: client closes mid-stream; latency until the mock sees its connection close."""
    s = bench.settings
    result = _scenario(bench, "cancellation", "Cancellation latency (client close → upstream close)")
    if s.target is not None:
        result["skipped"] = "needs the bench's own mock upstream (not available with --target)"
        return _finish(result)
    model = "text:tokens=500,token_delay=0.01"
    targets = (bench.gateway_target(f"mock/{model}"), bench.direct_target(model))
    per_worker = 40 if s.quick else 120
    phases = [PhaseSpec("cancel", targets, 1, requests=per_worker, cancel_after_events=6, pause=0.1,
                        sample_streams=0) for _ in range(s.repeats)]
    bench.mock.reset()
    outs = bench.run(phases, [f"cancellation: run {r + 1}/{s.repeats}" for r in range(s.repeats)])
    time.sleep(0.3)
    disconnects = sorted(bench.mock.disconnects())
    latencies = _match_cancels(outs, disconnects)
    result["config"] = {"model": model, "cancel_after_events": 6, "pause_s": 0.1}
    result["targets"] = {name: {"latency_ms": distribution_ms(values), "cancels": len(values),
                                "not_observed": sum(v is None for v in values),
                                "samples_ms": [round(v * 1e3, 4) for v in values if v is not None]}
                         for name, values in latencies.items()}
    return _finish(result)


def _match_cancels(outs: list[Json], disconnects: list[float]) -> dict[str, list[float | None]]:
    """Each cancel's latency: the first mock disconnect after it and before the next cancel."""
    cancels: list[tuple[float, str]] = []
    for phase in outs:
        for tally in phase["targets"]:
            cancels += [(t, tally["name"]) for t in tally["records"]["cancel_at"] if t is not None]
    cancels.sort()
    found: dict[str, list[float | None]] = {}
    for i, (at, name) in enumerate(cancels):
        until = cancels[i + 1][0] if i + 1 < len(cancels) else math.inf
        seen = next((d for d in disconnects if at <= d < until), None)
        found.setdefault(name, []).append(seen - at if seen is not None else None)
    return found


# ------------------------------------------------------------------------------------------ suite


# ------------------------------------------------------------------------------------------ 12: paced


def paced(bench: Bench) -> Json:
    """Scenario 12: N streams x R events/s each (the mock paces tokens ``1 / R`` apart), through a fresh gateway
    and a fresh bare proxy in turn, for each N: delivered events/s against offered, the added inter-delta gap
    (the client's gaps in the window minus the pacing), each server's CPU (% of its core, µs per event) and RSS
    per stream; the gateway/bare ratios (the issue's target: CPU per event within 1.15x)."""
    s = bench.settings
    rate = s.paced_rate
    result = _scenario(bench, "paced", f"Paced streams: N streams x {rate:g} events/s (gateway vs bare proxy)")
    if s.target is not None:
        result["skipped"] = "needs the bench's own mock upstream and bare proxy (not available with --target)"
        return _finish(result)
    plans = [_OpenPlan.paced(n, rate, s.quick) for n in s.paced_streams]
    result["config"] = {"rate": rate, "token_delay_s": _r(1 / rate, 6), "streams": list(s.paced_streams),
                        "window_s": plans[0].window if plans else None, "models": [p.model for p in plans]}
    result["levels"] = []
    for plan in plans:
        level: Json = {"streams": plan.n, "rate": rate, "offered_events_per_s": plan.offered}
        for kind, label in (("gateway", "gateway"), ("bare", "bare proxy")):
            bench.progress.step(f"paced: {plan.n} streams x {rate:g}/s ({label})")
            level[kind] = paced_figures(_open_level(bench, plan, kind), plan.n, rate)
        level["vs_bare"] = paced_vs_bare(level["gateway"], level["bare"])
        result["levels"].append(level)
    ratios = [lv["vs_bare"]["gw_cpu_us_per_event"] for lv in result["levels"]]
    result["cpu_per_event_ratio_max"] = max((r for r in ratios if r is not None), default=None)
    return _finish(result)


def paced_figures(level: Json, streams: int, rate: float) -> Json:
    """A held paced level plus: offered events/s, delivered/offered, and the added inter-delta gap (the window's
    client-observed gaps minus the pacing ``1 / rate``; p50, p99, max)."""
    offered = streams * rate
    delivered = level.get("events_per_s")
    pacing_ms = 1000.0 / rate
    gaps = level.get("window_gaps_ms") or {}
    out = {**level, "offered_events_per_s": offered, "pacing_ms": _r(pacing_ms),
           "delivered_ratio": _r(delivered / offered, 3) if delivered is not None and offered else None}
    for q in ("p50", "p99", "max"):
        value = gaps.get(q)
        out[f"added_gap_{q}_ms"] = _r(value - pacing_ms) if value is not None else None
    return out


def paced_vs_bare(gateway: Json, bare: Json) -> Json:
    """``server_vs_bare`` plus the added gap p99 the gateway has over the bare proxy (ms)."""
    found = server_vs_bare(gateway, bare)
    g, b = gateway.get("added_gap_p99_ms"), bare.get("added_gap_p99_ms")
    found["added_gap_p99_ms_over_bare"] = _r(g - b) if g is not None and b is not None else None
    return found


# ----------------------------------------------------------------------------------------- 11: limits

_LIMITS_KEY = "sk-bench-limits-0123456789"
#: limits the load never reaches: every request pays for the checks, none is refused
_LIMITS_OFF = f'[keys.bench]\nkey = "{_LIMITS_KEY}"\n'
_LIMITS_ON = (_LIMITS_OFF + "requests_per_minute = 100000000\ntokens_per_minute = 1000000000\n"
              "concurrent_streams = 100000\ntokens_per_day = 1000000000000\n")


def limits(bench: Bench) -> Json:
    """Scenario 11: scenario 1's streams at c=64 with a key whose limits are on (SQLite, Redis) and off, interleaved.

    The key has a requests-per-minute, a tokens-per-minute, a concurrent-stream limit and a daily token budget
    (so every request costs one admission and one settlement), all far above what the load reaches; "off" is the
    same key without limits (the same auth, usage accounting still on).
    """
    s = bench.settings
    title = "Limits on (SQLite, Redis) vs off (translated 20-chunk streams, c=64)"
    if s.target is not None:
        result = _scenario(bench, "limits", title)
        result["skipped"] = "starts its own gateways (not available with --target)"
        return _finish(result)
    from streamgw.testing.redis_server import redis_available, running_redis

    gateways: dict[str, GatewayProcess] = {}
    with contextlib.ExitStack() as stack:
        configs = {"off": _LIMITS_OFF,
                   "sqlite": _LIMITS_ON + f'\n[control]\nbackend = "sqlite"\npath = "{s.out_dir / "limits.db"}"\n'}
        if redis_available():
            url = stack.enter_context(running_redis())
            configs["redis"] = _LIMITS_ON + f'\n[control]\nbackend = "redis"\nurl = "{url}"\n'
        try:
            for name, extra in configs.items():
                gateways[name] = bench.new_gateway(f"gateway-limits-{name}", extra_config=extra)
            auth = (("authorization", f"Bearer {_LIMITS_KEY}"),)
            for gateway in gateways.values():  # a Redis connection, a SQLite thread: not in the first window
                _warm(gateway, auth)
            kinds = [(name, bench.gateway_target("mock/text:tokens=20", name=name, gateway=g, headers=auth))
                     for name, g in gateways.items()]
            result = _closed_loop(bench, "limits", title, (_COMPARE_CONCURRENCY,), True, kinds, gateways)
        finally:
            for gateway in gateways.values():
                bench.stop_gateway(gateway)
    medians = {row["target"]: row["median"] for row in result["rows"]}
    off = medians.get("off", {})
    comparison: Json = {"errors": sum(m.get("errors") or 0 for m in medians.values())}
    for name in ("sqlite", "redis"):
        on = medians.get(name)
        if not on or not off.get("streams_per_s"):
            continue
        comparison[name] = {
            "throughput_ratio": _r(on["streams_per_s"] / off["streams_per_s"], 3),
            "added_p50_ms": _r(on["total_p50_ms"] - off["total_p50_ms"], 3)
            if on.get("total_p50_ms") is not None and off.get("total_p50_ms") is not None else None,
            "added_first_event_p50_ms": _r(on["first_event_p50_ms"] - off["first_event_p50_ms"], 3)
            if on.get("first_event_p50_ms") is not None and off.get("first_event_p50_ms") is not None else None,
        }
    result["config"] = {"concurrency": _COMPARE_CONCURRENCY, "model": "mock/text:tokens=20",
                        "limits": "requests_per_minute, tokens_per_minute, concurrent_streams, tokens_per_day",
                        "redis": "redis" in gateways}
    result["comparison"] = comparison
    return result


Scenario = Callable[[Bench], Json]

SCENARIOS: dict[int, tuple[str, Scenario]] = {
    1: ("throughput", throughput),
    2: ("ttfe", ttfe),
    3: ("open_streams", open_streams),
    4: ("non_streamed", non_streamed),
    5: ("hedging", hedging),
    6: ("cancellation", cancellation),
    7: ("http_versions", http_versions),
    8: ("workers", worker_scaling),
    9: ("request_log", request_log),
    10: ("otel", otel_cost),
    11: ("limits", limits),
    12: ("paced", paced),
}
#: what runs when ``--scenarios`` is not given (7 is added by ``--compare-http2``, 8 by ``--compare-workers``,
#: 9 by ``--compare-logs``, 10 by ``--compare-otel``, 11 by ``--compare-limits``)
DEFAULT_SCENARIOS = (1, 2, 3, 4, 5, 6, 12)


def planned_steps(settings: Settings, selected: Sequence[int]) -> int:
    """How many progress steps the selected scenarios take (for the progress bar)."""
    local = settings.target is None
    steps = {
        1: len(settings.concurrencies) * (3 if local else 1) * settings.repeats,
        2: 2 * settings.repeats,
        3: len(settings.open_levels) * (2 if local else 1),
        4: (1 if settings.quick else 3) * (2 if local else 1) * settings.repeats,
        5: settings.repeats if local else 0,
        6: settings.repeats if local else 0,
        7: 2 * settings.repeats,
        8: 2 * settings.repeats if local else 0,
        9: 2 * settings.repeats if local else 0,
        10: 3 * settings.repeats if local else 0,
        11: 3 * settings.repeats if local else 0,
        12: 2 * len(settings.paced_streams) if local else 0,
    }
    return sum(steps[i] for i in selected)


def run_suite(settings: Settings, selected: Sequence[int], progress: Progress) -> Json:
    """Run the selected scenarios; return the results document (without targets and report paths)."""
    started = time.time()
    bench = Bench(settings, progress, gateway_cores=2 if 8 in selected else 1)
    results: Json = {"schema": SCHEMA, "started_at": _now(), "mode": "quick" if settings.quick else "full",
                     "settings": settings.to_json(), "environment": bench.environment, "scenarios": {}}
    try:
        for number in selected:
            name, scenario = SCENARIOS[number]
            try:
                results["scenarios"][name] = scenario(bench)
            except Exception as exc:  # one broken scenario must not lose the others' results
                progress.note(f"scenario {number} ({name}) failed: {type(exc).__name__}: {exc}")
                results["scenarios"][name] = {"key": name, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        bench.close()
    results["finished_at"] = _now()
    results["duration_s"] = round(time.time() - started, 1)
    return results

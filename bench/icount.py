"""Instructions per request, counted by valgrind: an A/B measure that a noisy machine does not move.

    python -m bench.icount                                   # the built-in variants (see VARIANTS)
    python -m bench.icount --variants plain,json-log,limits-sqlite --requests 100 --repeats 3
    python -m bench.icount --bare                            # also the bare trio + h11 proxy

Throughput and CPU-seconds on a shared 2-core machine drift by tens of percent from one minute to
the next; the number of instructions a process executes for the same work does not (about ±1 % here).
Each variant's gateway runs under ``valgrind --tool=callgrind --instr-atstart=no``; after a warm-up
the counting is switched on (``callgrind_control -i on``) for ``--requests`` sequential streamed
requests (c=1, 20 chunks each, from a mock upstream outside valgrind), then off, and the totals are
dumped.  The report is the median per request of ``--repeats`` such windows, and each variant's
ratio to the first.  Background tasks (key-cache polls, control maintenance, the store's purge) run
on their timers while a window is open, and under valgrind a window lasts ~15 s: each window is
followed by an idle one as long, whose count is subtracted (``--no-idle`` keeps it), so a slow
minute on the machine does not charge more timer work to the requests.

A count is not a time (a cache miss or a system call costs more than its instructions), but for
the Python code on the request path it tracks CPU time closely, and it settles "did this change
cost 3 %?" where a timing cannot.  Needs ``valgrind`` (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from streamgw.testing.process import free_port, start_mock, stop_process

_KEY = "sk-icount-0123456789"
_LIMITS = ("requests_per_minute = 100000000\ntokens_per_minute = 1000000000\n"
           "concurrent_streams = 100000\ntokens_per_day = 1000000000000\n")


@dataclass(frozen=True)
class Variant:
    """A gateway configuration to count: TOML appended to the base config, and whether requests carry a key."""

    name: str
    toml: str = ""
    keyed: bool = False
    env: tuple[tuple[str, str], ...] = ()
    #: the ``[store]`` table's lines ("": SQLite in the window's folder, as deployed)
    store: str = ""


#: what ``--variants`` may name; the default list is the first five
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("plain", '[logging]\nrequests = false\n'),
    Variant("text-log", '[logging]\nformat = "text"\nfile = "{dir}/requests.log"\n'),
    Variant("json-log", '[logging]\nformat = "json"\nfile = "{dir}/requests.log"\n'),
    Variant("key", f'[logging]\nrequests = false\n[keys.bench]\nkey = "{_KEY}"\n', keyed=True),
    Variant("limits-sqlite", f'[logging]\nrequests = false\n[keys.bench]\nkey = "{_KEY}"\n{_LIMITS}', keyed=True),
    Variant("limits-redis", f'[logging]\nrequests = false\n[keys.bench]\nkey = "{_KEY}"\n{_LIMITS}'
            '[control]\nbackend = "redis"\nurl = "{redis}"\n', keyed=True),
    Variant("otel", '[logging]\nrequests = false\n[tracing]\nenabled = true\n',
            env=(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "{otlp}"),)),
    # As at production rates: the batch processor exports full batches of 512 spans (3 a request here), not
    # whatever 5 s of a valgrind-slowed gateway produced (~20 requests a post).  Count whole batches:
    # --requests 512 is exactly three.
    Variant("otel-batched", '[logging]\nrequests = false\n[tracing]\nenabled = true\n',
            env=(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "{otlp}"), ("OTEL_BSP_SCHEDULE_DELAY", "600000"))),
    Variant("no-store", '[logging]\nrequests = false\n', store='backend = "none"'),
    # where the default store's cost goes: the backend's write, or the wait for it
    Variant("memory-store", '[logging]\nrequests = false\n', store='backend = "memory"'),
    Variant("no-confirm", '[logging]\nrequests = false\n',
            store='backend = "sqlite"\npath = "{dir}/store.db"\nconfirm_writes = false'),
)}
DEFAULT = ("plain", "text-log", "json-log", "key", "limits-sqlite")


def _base(mock_port: int, folder: Path, variant: Variant) -> str:
    store = variant.store.replace("{dir}", str(folder)) or f'backend = "sqlite"\npath = "{folder}/store.db"'
    control = "" if "[control]" in variant.toml else f'[control]\npath = "{folder}/control.db"\n'
    return (f'[store]\n{store}\n{control}'
            f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n')


#: tokens (chunks) per streamed answer; ``--tokens`` changes it (the per-event cost is the slope between two counts)
TOKENS = 20
#: more mock knobs for each answer (``--token-delay``: ",token_delay=S", so that each event is its own write)
KNOBS = ""


def _stream(client: httpx.Client, url: str, key: str | None) -> None:
    body = {"model": f"mock/text:tokens={TOKENS}{KNOBS}", "input": "hi", "stream": True}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:300]!r}")
        for _ in response.iter_raw():
            pass


def _chat(client: httpx.Client, url: str, key: str | None) -> None:
    body = {"model": f"text:tokens={TOKENS}{KNOBS}", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with client.stream("POST", url, json=body) as response:
        for _ in response.iter_raw():
            pass


class Counted:
    """A process under callgrind with counting off until ``window`` switches it on."""

    def __init__(self, argv: list[str], folder: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.out = folder / f"{name}.callgrind"
        self.log = (folder / f"{name}.log").open("wb")
        self.proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                      f"--callgrind-out-file={self.out}", *argv],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    def window(self, work: Callable[[], object], idle: bool = False) -> int:
        """Instructions the process executed while ``work()`` ran.

        With ``idle``, less what the process executes on its own (timers: key-cache polls, control
        maintenance, the store's purge) in as long a time again with no requests: under valgrind a
        request takes ~50 times longer than natively, so that background would otherwise be charged to
        the requests, more of it the slower the machine is that minute.
        """
        started = time.monotonic()
        total = self._count(work)
        if not idle:
            return total
        took = time.monotonic() - started
        return total - self._count(partial(time.sleep, took))

    def _count(self, work: Callable[[], object]) -> int:
        for old in self.out.parent.glob(self.out.name + ".*"):
            old.unlink()
        self._control("-z")
        self._control("-i", "on")
        try:
            work()
        finally:
            self._control("-i", "off")
        self._control("-d")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for dump in self.out.parent.glob(self.out.name + ".*"):
                for line in dump.read_text(errors="replace").splitlines():
                    if line.startswith("totals:"):
                        return int(line.split()[1])
            time.sleep(0.2)
        raise RuntimeError("callgrind wrote no totals")

    def stop(self) -> None:
        stop_process(self.proc, timeout=60)
        self.log.close()


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready within {timeout:g} s")


def count_variant(variant: Variant, mock_port: int, args: argparse.Namespace, redis_url: str,
                  otlp: str = "") -> list[float]:
    """Instructions per request of ``variant``, one figure per repeat."""
    with tempfile.TemporaryDirectory(prefix="icount-") as tmp:
        folder = Path(tmp)
        config = folder / "gateway.toml"
        config.write_text(_base(mock_port, folder, variant)
                          + variant.toml.replace("{dir}", tmp).replace("{redis}", redis_url))
        port = free_port()
        env = {**os.environ, **{k: v.replace("{otlp}", otlp) for k, v in variant.env}}
        gateway = Counted([sys.executable, "-m", "streamgw", "serve", "--config", str(config), "--port", str(port)],
                          folder, variant.name, env)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait(base + "/healthz", gateway.proc)
            key = _KEY if variant.keyed else None
            per_request: list[float] = []
            with httpx.Client(timeout=120) as client:
                for _ in range(args.warmup):
                    _stream(client, base + "/v1/responses", key)
                def work() -> None:
                    for _ in range(args.requests):
                        _stream(client, base + "/v1/responses", key)

                for _ in range(args.repeats):
                    per_request.append(gateway.window(work, args.idle) / args.requests)
            return per_request
        finally:
            gateway.stop()


def count_bare(mock_port: int, args: argparse.Namespace) -> list[float]:
    """Instructions per request of the bare trio + h11 proxy (``bench.bareproxy``)."""
    with tempfile.TemporaryDirectory(prefix="icount-") as tmp:
        port = free_port()
        proxy = Counted([sys.executable, "-m", "bench.bareproxy", "--upstream", f"http://127.0.0.1:{mock_port}",
                         "--port", str(port)], Path(tmp), "bare")
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            deadline = time.monotonic() + 120
            with httpx.Client(timeout=120) as client:
                while True:
                    try:
                        _chat(client, url, None)
                        break
                    except httpx.HTTPError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)
                for _ in range(args.warmup):
                    _chat(client, url, None)
                def work() -> None:
                    for _ in range(args.requests):
                        _chat(client, url, None)

                return [proxy.window(work, args.idle) / args.requests for _ in range(args.repeats)]
        finally:
            proxy.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Count every variant asked for and print a table (and ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.icount", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(DEFAULT),
                        help=f"comma-separated, from: {', '.join(VARIANTS)} (the first is the baseline)")
    parser.add_argument("--requests", type=int, default=100, help="requests per counted window")
    parser.add_argument("--repeats", type=int, default=3, help="counted windows per variant")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--bare", action="store_true", help="also count the bare trio + h11 proxy")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--tokens", type=int, default=20,
                        help="chunks per answer (count 20 and 220: the slope is the cost per event)")
    parser.add_argument("--token-delay", type=float, default=0.0,
                        help="seconds between the mock's chunks (0.02: paced, each event written on its own)")
    parser.add_argument("--no-idle", dest="idle", action="store_false",
                        help="keep the process's own background work (timers) in the count")
    args = parser.parse_args(argv)
    global TOKENS, KNOBS
    TOKENS = args.tokens
    KNOBS = f",token_delay={args.token_delay:g}" if args.token_delay else ""
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.icount: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    results: dict[str, list[float]] = {}
    mock, mock_port = start_mock([])
    redis_ctx = None
    try:
        redis_url = ""
        if any("redis" in n for n in names):
            from streamgw.testing.redis_server import running_redis
            redis_ctx = running_redis()
            redis_url = redis_ctx.__enter__()
        from streamgw.testing.otlp_receiver import OtlpReceiver

        for name in names:
            with OtlpReceiver(decode=False) as receiver:  # where the otel variant exports to (counting only)
                results[name] = count_variant(VARIANTS[name], mock_port, args, redis_url, receiver.endpoint)
            print(f"{name}: {[round(x) for x in results[name]]}", file=sys.stderr, flush=True)
        if args.bare:
            results["bare proxy"] = count_bare(mock_port, args)
    finally:
        if redis_ctx is not None:
            redis_ctx.__exit__(None, None, None)
        stop_process(mock)
        if mock.stdout is not None:
            mock.stdout.close()
    baseline = statistics.median(results[names[0]])
    print(f"instructions per streamed request (c=1, {TOKENS} chunks; median of {args.repeats} windows of "
          f"{args.requests}{', idle background subtracted' if args.idle else ''}), ratio to {names[0]}:")
    for name, values in results.items():
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median * 100 if median else 0.0
        print(f"  {name:15s} {median / 1e6:8.3f} M   x{median / baseline:.3f}   (spread {spread:.1f} %)")
    if args.json:
        args.json.write_text(json.dumps({"requests": args.requests, "repeats": args.repeats, "per_request": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

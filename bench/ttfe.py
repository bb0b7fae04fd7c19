"""Added time to first event: gateway vs. the bare proxy vs. the mock upstream directly, interleaved, c=1.

    python bench/ttfe.py [--requests 300] [--tokens 20] [--token-delay S] [--store sqlite|memory|none] [--phases]
                         [--baseline SRC] [--pin] [--seed N]

Starts the Chat Completions mock, the gateway (hypercorn, trio worker) and the bare trio + h11
pass-through proxy (``bench.bareproxy``, the floor for this stack) as real processes on 127.0.0.1,
then goes round the proxies (the bare proxy and the gateway, in an order shuffled every round), each
request on its own keep-alive connection and after two direct requests to the mock. Direct and bare: time to
the mock's first content chunk. Gateway: time to the first SSE event (the gateway sends ``response.created``
together with the first translated delta). Reports medians and p99 of each, and of the paired differences
against the direct request just before (``added``).

Why two directs and a shuffle: with this client on the mock's core, a request's time depends on the request
before it.  A client whose previous request was proxied is woken late by the next one's first event (while
the mock still writes the rest of its answer), one whose previous request was direct at once (up to ~0.15 ms);
and a direct request itself took 0.79 ms after a gateway's, 1.01 after a direct one, 1.07 after the bare
proxy's (medians, 1,500 rounds).  With one direct request before each proxy, the bare proxy's direct
followed the gateway (fast: its ``added`` came out high) and the gateway's followed the bare proxy (slow: low),
and of two identical gateways (``--baseline``) the one listed first measured ~55 µs faster in every run.  Now
the first direct takes whatever the previous request left behind, the second (the pair) always follows a
direct one, and no proxy holds a fixed place in the round: the same two gateways differ by 1 µs.

``--phases`` turns on the gateway's ``[logging] phases`` (JSON request log to a file in the temporary
directory) and adds ``phases_ms``: the median over the measured requests of each step of the gateway's
time to first event (``streamgw.app.requestlog.PHASES``: intake, parse, route, store, admission, attempt, upstream,
first_read, translate, emit, write), their sum and the median ``ttfe_ms`` the gateway logged itself.

``--baseline SRC`` (an A/B on a noisy machine): a second gateway runs the streamgw source tree at SRC
(``PYTHONPATH``, e.g. a checkout of main), with the same configuration, and takes its turn beside the
gateway's, after direct requests of its own: ``baseline_ms``, ``baseline_added_ms`` and
``gateway_minus_baseline_ms`` (paired).
Run it from a directory that holds no ``streamgw`` package (``python -m`` puts the current one first).

``--token-delay S``: the mock sends the answer's tokens ``S`` seconds apart (default 0: all at once, as
scenario 2 of ``python -m bench``).  A 20-token answer sent at once keeps the mock busy writing the rest of it
on its core, the client's too, for a few hundred microseconds after the first token: a client woken by the
first event may have to wait for that core (how long depends on the client's previous request: the order
above), and part of what the server does after the upstream's first byte hides behind the wait (the time it
adds before the upstream request goes out does not).  Tokens a millisecond apart
leave the client's core idle when the first event comes: every step of the server counts, on cores that were
idle in between (slower for the servers and the direct requests alike).

``--pin`` (two CPUs or more): the servers (gateways and bare proxy) run on the first CPU, the mock and the
client on the second, as the main bench pins them.  Unpinned on a 2-core machine, whatever a server does just
after its first write (the rest of the stream) competes with the client waking up for the same two cores, and
the client's time includes that wait; pinned, the client sees the first write, as a client on another machine
would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.procs import start_listening
from streamgw.app.requestlog import PHASES
from streamgw.testing.process import start_gateway, start_mock, stop_process

#: the ``x-request-id`` of the measured gateway requests (warm-up ones have another)
MEASURED = "ttfe-"



def phase_medians(lines: Iterable[str], prefix: str = MEASURED) -> dict[str, float | None]:
    """Median of each ``phases_ms`` step over the request-log JSON lines whose request id starts with
    ``prefix``, plus ``sum`` (of the medians) and ``ttfe_ms`` (the median the gateway logged)."""
    values: dict[str, list[float]] = {name: [] for name in (*PHASES, "ttfe_ms")}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not str(record.get("request_id", "")).startswith(prefix):
            continue
        for name, value in (record.get("phases_ms") or {}).items():
            if name in values and isinstance(value, int | float):
                values[name].append(float(value))
        if isinstance(record.get("ttfe_ms"), int | float):
            values["ttfe_ms"].append(float(record["ttfe_ms"]))
    found: dict[str, float | None] = {k: round(statistics.median(v), 3) if v else None for k, v in values.items()}
    found["sum"] = round(sum(found[name] or 0.0 for name in PHASES), 3)
    return found


def mock_model(tokens: int, token_delay: float = 0.0) -> str:
    """The chat mock's model name for an answer of ``tokens`` tokens, ``token_delay`` seconds apart."""
    return f"text:tokens={tokens}" + (f",token_delay={token_delay:g}" if token_delay > 0 else "")


def first_event_time(client: httpx.Client, url: str, body: dict[str, object], marker: bytes,
                     request_id: str | None = None) -> float:
    """Seconds from sending ``body`` to the first received chunk containing ``marker``; drains the rest."""
    headers = {"x-request-id": request_id} if request_id else None
    start = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            if first is None and marker in chunk:
                first = time.perf_counter() - start
    assert first is not None, "no event seen"
    return first


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-delay", type=float, default=0.0, metavar="S",
                        help="seconds between the mock's tokens (0: all at once)")
    parser.add_argument("--store", choices=("sqlite", "memory", "none"), default="sqlite",
                        help="the gateway's response store (sqlite, as deployed, in a temporary file)")
    parser.add_argument("--phases", action="store_true",
                        help="also the median of each step of the gateway's time to first event ([logging] phases)")
    parser.add_argument("--baseline", metavar="SRC", default="",
                        help="also a gateway from the streamgw source tree SRC, interleaved (an A/B)")
    parser.add_argument("--seed", type=int, default=1, help="of the proxies' order in each round")
    parser.add_argument("--pin", action="store_true",
                        help="servers on the first CPU, the mock and the client on the second")
    args = parser.parse_args()
    server_prefix: list[str] = []
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs two CPUs")
        server_prefix = ["taskset", "-c", str(cpus[0])]
        os.sched_setaffinity(0, {cpus[1]})  # this client, and the mock it starts
    with tempfile.TemporaryDirectory() as tmp:
        mock_proc, mock_port = start_mock([])
        procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]] = [mock_proc]
        urls: dict[str, str] = {}
        pids: dict[str, int] = {}
        try:
            for name, src in (("gateway", ""), ("baseline", args.baseline)):
                if name == "baseline" and not src:
                    continue
                folder = Path(tmp) / name
                folder.mkdir()
                config = folder / "gw.toml"
                log_file = folder / "requests.jsonl"
                logging = (f'[logging]\nformat = "json"\nfile = "{log_file}"\nphases = true\n\n'
                           if args.phases else "")
                config.write_text(f'{logging}[store]\nbackend = "{args.store}"\npath = "{folder / "gw.db"}"\n\n'
                                  f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n')
                prefix = [*server_prefix, *(["env", f"PYTHONPATH={Path(src).resolve()}"] if src else [])]
                gw_proc, urls[name] = start_gateway(config, folder / "gw.log", prefix=prefix)
                procs.append(gw_proc)
                pids[name] = gw_proc.pid
            bare_proc, bare_port = start_listening(
                [*server_prefix, sys.executable, "-m", "bench.bareproxy", "--upstream", f"http://127.0.0.1:{mock_port}"],
                "bare proxy")
            procs.append(bare_proc)
            report = run(args, mock_port, urls, bare_port)
            # where each process was allowed to run (``--pin``)
            running = {"client": 0, "mock": mock_proc.pid, **pids, "bare": bare_proc.pid}
            report["cpus"] = {name: sorted(os.sched_getaffinity(pid)) for name, pid in running.items()}
        finally:
            for proc in reversed(procs):
                stop_process(proc)
        if args.phases:
            for name in urls:
                key = "phases_ms" if name == "gateway" else f"{name}_phases_ms"
                report[key] = phase_medians((Path(tmp) / name / "requests.jsonl").read_text().splitlines())
    print(json.dumps(report, indent=2))


def run(args: argparse.Namespace, mock_port: int, urls: dict[str, str], bare_port: int) -> dict[str, object]:
    model = mock_model(args.tokens, args.token_delay)
    direct_body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    gw_body = {"model": f"mock/{model}", "input": "hi", "stream": True}
    direct_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    bare_url = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
    chunk = b'"content":"tok'
    clients = {name: httpx.Client(timeout=30) for name in ("direct", "bare", *urls)}
    times: dict[str, list[float]] = {name: [] for name in clients}
    before: dict[str, list[float]] = {name: [] for name in clients}  # the direct request just before each

    def one(name: str, request_id: str | None = None) -> float:
        if name == "direct":
            return first_event_time(clients[name], direct_url, direct_body, chunk)
        if name == "bare":
            return first_event_time(clients[name], bare_url, direct_body, chunk)
        return first_event_time(clients[name], urls[name] + "/v1/responses", gw_body, b"event: ", request_id)

    try:
        for _ in range(20):  # warm up every path and its connection pools
            for name in clients:
                one(name)
        proxies = [name for name in clients if name != "direct"]
        shuffle = random.Random(args.seed).shuffle
        for i in range(args.requests):
            # two direct requests before each proxied one, the proxies in a new order every round (see above)
            shuffle(proxies)
            for name in proxies:
                one("direct")
                before[name].append(one("direct"))
                times[name].append(one(name, f"{MEASURED}{i}"))
        times["direct"] = [t for name in proxies for t in before[name]]
    finally:
        for client in clients.values():
            client.close()

    def ms(values: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(values) * 1e3, 3), "p99": round(percentile(values, 0.99) * 1e3, 3)}

    def added(name: str) -> dict[str, float]:
        return ms([t - d for t, d in zip(times[name], before[name], strict=True)])

    report: dict[str, object] = {
        "requests": args.requests,
        "model": model,
        "pinned": bool(getattr(args, "pin", False)),
        "direct_ms": ms(times["direct"]),
        "bare_ms": ms(times["bare"]),
        "gateway_ms": ms(times["gateway"]),
        "added_ms": added("gateway"),
        "bare_added_ms": added("bare"),
    }
    if "baseline" in times:
        report["baseline_ms"] = ms(times["baseline"])
        report["baseline_added_ms"] = added("baseline")
        report["gateway_minus_baseline_ms"] = ms(
            [g - b for g, b in zip(times["gateway"], times["baseline"], strict=True)])
    return report


if __name__ == "__main__":
    main()

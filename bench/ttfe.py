"""Added time to first event: gateway vs. the bare proxy vs. the mock upstream directly, interleaved, c=1.

    python bench/ttfe.py [--requests 300] [--tokens 20] [--store sqlite|memory|none] [--phases]

Starts the Chat Completions mock, the gateway (hypercorn, trio worker) and the bare trio + h11
pass-through proxy (``bench.bareproxy``, the floor for this stack) as real processes on 127.0.0.1,
then alternates one direct, one bare-proxy and one gateway request, each on its own keep-alive
connection. Direct and bare: time to the mock's first content chunk. Gateway: time to the first SSE
event (the gateway sends ``response.created`` together with the first translated delta). Reports
medians and p99 of each, and of the paired differences against the direct request (``added``).

``--phases`` turns on the gateway's ``[logging] phases`` (JSON request log to a file in the temporary
directory) and adds ``phases_ms``: the median over the measured requests of each step of the gateway's
time to first event (``streamgw.app.requestlog.PHASES``: parse, route, store, admission, attempt, upstream,
first_read, translate, emit, write), their sum and the median ``ttfe_ms`` the gateway logged itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    parser.add_argument("--store", choices=("sqlite", "memory", "none"), default="sqlite",
                        help="the gateway's response store (sqlite, as deployed, in a temporary file)")
    parser.add_argument("--phases", action="store_true",
                        help="also the median of each step of the gateway's time to first event ([logging] phases)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mock_proc, mock_port = start_mock([])
        config = Path(tmp) / "gw.toml"
        log_file = Path(tmp) / "requests.jsonl"
        logging = f'[logging]\nformat = "json"\nfile = "{log_file}"\nphases = true\n\n' if args.phases else ""
        config.write_text(f'{logging}[store]\nbackend = "{args.store}"\npath = "{Path(tmp) / "gw.db"}"\n\n'
                          f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n')
        gw_proc, gw_url = start_gateway(config, Path(tmp) / "gw.log")
        bare_proc, bare_port = start_listening(
            [sys.executable, "-m", "bench.bareproxy", "--upstream", f"http://127.0.0.1:{mock_port}"], "bare proxy")
        try:
            report = run(args, mock_port, gw_url, bare_port)
        finally:
            stop_process(bare_proc)
            stop_process(gw_proc)
            stop_process(mock_proc)
        if args.phases:
            report["phases_ms"] = phase_medians(log_file.read_text().splitlines())
    print(json.dumps(report, indent=2))


def run(args: argparse.Namespace, mock_port: int, gw_url: str, bare_port: int) -> dict[str, object]:
    model = f"text:tokens={args.tokens}"
    direct_body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    gw_body = {"model": f"mock/{model}", "input": "hi", "stream": True}
    direct_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    bare_url = f"http://127.0.0.1:{bare_port}/v1/chat/completions"
    chunk = b'"content":"tok'
    with httpx.Client(timeout=30) as direct_client, httpx.Client(timeout=30) as gw_client, \
            httpx.Client(timeout=30) as bare_client:
        for _ in range(20):  # warm up every path and its connection pools
            first_event_time(direct_client, direct_url, direct_body, chunk)
            first_event_time(bare_client, bare_url, direct_body, chunk)
            first_event_time(gw_client, gw_url + "/v1/responses", gw_body, b"event: ")
        direct: list[float] = []
        bare: list[float] = []
        gateway: list[float] = []
        for _ in range(args.requests):
            direct.append(first_event_time(direct_client, direct_url, direct_body, chunk))
            bare.append(first_event_time(bare_client, bare_url, direct_body, chunk))
            gateway.append(first_event_time(gw_client, gw_url + "/v1/responses", gw_body, b"event: ",
                                            f"{MEASURED}{len(gateway)}"))

    def ms(values: list[float]) -> dict[str, float]:
        return {"p50": round(statistics.median(values) * 1e3, 3), "p99": round(percentile(values, 0.99) * 1e3, 3)}

    return {
        "requests": args.requests,
        "direct_ms": ms(direct),
        "bare_ms": ms(bare),
        "gateway_ms": ms(gateway),
        "added_ms": ms([g - d for g, d in zip(gateway, direct, strict=True)]),
        "bare_added_ms": ms([b - d for b, d in zip(bare, direct, strict=True)]),
    }


if __name__ == "__main__":
    main()

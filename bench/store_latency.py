"""Added time per request of storing responses: store off vs SQLite vs Redis, interleaved, concurrency 1.

    python bench/store_latency.py [--requests 300] [--tokens 20] [--backends none,sqlite,redis] [--no-confirm]

Starts the Chat Completions mock, a throwaway ``redis-server`` and three gateways as real
processes on 127.0.0.1 (``[store] backend = "none"``, ``"sqlite"`` in a temp dir, ``"redis"``),
then sends the same requests to each in turn, each gateway on its own keep-alive connection:

* ``json``: a non-streamed request, time to the whole JSON body;
* ``stream``: a streamed request, time to the first event and to the end of the stream
  (the terminal event waits until the record is written: ``confirm_writes``);
* ``chain``: a non-streamed request continuing the previous ``json`` one with
  ``previous_response_id`` (one store read on the request path; not possible without a store).

Reports p50 and p99 per backend and the paired difference against the store-off gateway
(``chain`` is compared with the ``json`` request of the same backend: the added read).
``--backends`` may add ``memory`` (the store's own overhead, no I/O); ``--no-confirm`` sets
``confirm_writes = false`` (the terminal event does not wait for the write).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgw.testing.process import start_gateway, start_mock, stop_process
from streamgw.testing.redis_server import running_redis

BACKENDS = "none,sqlite,redis"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values) * 1e3, 3), "p99": round(percentile(values, 0.99) * 1e3, 3)}


def timed_json(client: httpx.Client, body: dict[str, Any]) -> tuple[float, str]:
    start = time.perf_counter()
    response = client.post("/v1/responses", json=body)
    response.raise_for_status()
    return time.perf_counter() - start, str(response.json()["id"])


def timed_stream(client: httpx.Client, body: dict[str, Any]) -> tuple[float, float]:
    """Seconds to the first event and to the end of the stream."""
    start = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        response.raise_for_status()
        for _ in response.iter_raw():
            if first is None:
                first = time.perf_counter() - start
    assert first is not None
    return first, time.perf_counter() - start


def one_round(client: httpx.Client, backend: str, model: str, samples: dict[str, list[float]]) -> None:
    """One json, one stream and (with a store) one chained request; their times go into ``samples``."""
    body = {"model": model, "input": "store latency bench"}
    took, response_id = timed_json(client, body)
    samples["json"].append(took)
    first, total = timed_stream(client, body)
    samples["stream_first_event"].append(first)
    samples["stream_total"].append(total)
    if backend != "none":
        took, _ = timed_json(client, {**body, "previous_response_id": response_id})
        samples["chain"].append(took)


def measure(urls: dict[str, str], model: str, requests: int) -> dict[str, dict[str, list[float]]]:
    kinds = ("json", "stream_first_event", "stream_total", "chain")
    samples: dict[str, dict[str, list[float]]] = {b: {k: [] for k in kinds} for b in urls}
    clients = {b: httpx.Client(base_url=url, timeout=30) for b, url in urls.items()}
    try:
        for backend, client in clients.items():  # warm up connections and each store's file or pool
            for _ in range(20):
                one_round(client, backend, model, {k: [] for k in kinds})
        for _ in range(requests):
            for backend, client in clients.items():
                one_round(client, backend, model, samples[backend])
    finally:
        for client in clients.values():
            client.close()
    return samples


def paired(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def report(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    baseline = next(iter(samples))
    base = samples[baseline]
    out: dict[str, Any] = {}
    for backend, kinds in samples.items():
        entry: dict[str, Any] = {kind: summary(values) for kind, values in kinds.items() if values}
        if backend != baseline:
            entry[f"added_vs_{baseline}"] = {kind: summary(paired(kinds[kind], base[kind]))
                                      for kind in ("json", "stream_first_event", "stream_total")}
            if kinds["chain"]:
                entry["added_by_chain_read"] = summary(paired(kinds["chain"], kinds["json"]))
        out[backend] = entry
    return out


def config(mock_port: int, backend: str, tmp: Path, redis_url: str, confirm: bool) -> Path:
    path = tmp / f"{backend}.toml"
    path.write_text(
        f'[store]\nbackend = "{backend}"\npath = "{tmp / "bench.db"}"\nurl = "{redis_url}"\n'
        f'confirm_writes = {str(confirm).lower()}\n\n'
        f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--backends", default=BACKENDS, help="comma-separated; the first is the baseline")
    parser.add_argument("--no-confirm", action="store_true", help="confirm_writes = false")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, running_redis() as redis_url:
        tmp = Path(workdir)
        mock_proc, mock_port = start_mock([])
        gateways = {}
        try:
            for backend in args.backends.split(","):
                path = config(mock_port, backend, tmp, redis_url, not args.no_confirm)
                gateways[backend] = start_gateway(path, tmp / f"{backend}.log", extra_args=["--log-level", "warning"])
            samples = measure({b: url for b, (_, url) in gateways.items()}, f"mock/text:tokens={args.tokens}",
                              args.requests)
        finally:
            for proc, _ in gateways.values():
                stop_process(proc)
            stop_process(mock_proc)
    settings = {"requests": args.requests, "tokens": args.tokens, "confirm_writes": not args.no_confirm}
    print(json.dumps({**settings, "ms": report(samples)}, indent=2))


if __name__ == "__main__":
    main()

"""Client CPU per streamed chunk: TrioH11Transport vs httpx's default transport.

    python bench/transport_micro.py [--chunks 200000] [--concurrency 64] [--requests 6400]

The parent process runs a local trio + h11 server that streams SSE-like chunks
(~150 bytes, chunked encoding, one ``send_all`` per chunk).  Each measurement runs
in a fresh client subprocess that reports its own ``time.process_time()`` for the
measured part only, so server work never counts.  Scenarios:

* ``single``:     one request streaming ``--chunks`` chunks;
* ``concurrent``: ``--concurrency`` workers issuing ``--requests`` requests in
  total, each streaming ``--stream-chunks`` chunks, over kept-alive connections.

Clients: ``h11pool`` (httpx.AsyncClient + TrioH11Transport), ``httpcore``
(httpx.AsyncClient's default transport, same pool limits) and ``h11pool-raw``
(TrioH11Transport.handle_async_request without httpx.AsyncClient on top, to
show how much of the per-chunk cost is httpx's own response layers).
Best (lowest CPU) of ``--repeat`` runs is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import httpx
import trio

CLIENTS = ("h11pool", "httpcore", "h11pool-raw")


def sse_chunk(i: int, size: int) -> bytes:
    head = f'data: {{"type":"response.output_text.delta","sequence_number":{i},"delta":"'
    tail = '"}\n\n'
    return (head + "x" * max(1, size - len(head) - len(tail)) + tail).encode()


# -- server (parent process) ------------------------------------------------------


async def serve_connection(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        try:
            while True:
                target = await read_request(stream, conn)
                if target is None:
                    return
                query = parse_qs(urlsplit(target).query)
                chunks = int(query.get("chunks", ["20"])[0])
                size = int(query.get("size", ["150"])[0])
                payload = sse_chunk(0, size)
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=[
                    (b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked")])))
                for _ in range(chunks):
                    await stream.send_all(conn.send(h11.Data(data=payload)))  # one chunk per send
                await stream.send_all(conn.send(h11.EndOfMessage()))
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            return


async def read_request(stream: trio.SocketStream, conn: h11.Connection) -> str | None:
    target = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            target = event.target.decode()
        elif isinstance(event, h11.EndOfMessage):
            return target
        elif isinstance(event, h11.ConnectionClosed):
            return None


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve_connection, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        for scenario in ("single", "concurrent"):
            for client in CLIENTS:
                runs = []
                for _ in range(args.repeat):
                    cmd = [sys.executable, str(Path(__file__).resolve()), "--client", client,
                           "--scenario", scenario, "--port", str(port), *forwarded(args)]
                    proc = await trio.run_process(cmd, capture_stdout=True)
                    runs.append(json.loads(proc.stdout))
                best = min(runs, key=lambda r: r["cpu_s"])
                best["cpu_s_median"] = statistics.median(r["cpu_s"] for r in runs)
                results.append(best)
                print_row(best)
        nursery.cancel_scope.cancel()
    return results


def forwarded(args: argparse.Namespace) -> list[str]:
    return ["--chunks", str(args.chunks), "--concurrency", str(args.concurrency),
            "--requests", str(args.requests), "--stream-chunks", str(args.stream_chunks),
            "--size", str(args.size)]


def print_row(r: dict[str, Any]) -> None:
    print(f"{r['scenario']:<10} {r['client']:<12} requests={r['requests']:<6} chunks={r['chunks']:<7} "
          f"cpu={r['cpu_s']:.3f}s (median {r['cpu_s_median']:.3f}s) wall={r['wall_s']:.3f}s  "
          f"{r['us_per_chunk']:.2f} us/chunk  {r['us_per_request']:.1f} us/request  "
          f"reads={r['reads']}", flush=True)


# -- client (subprocess) ---------------------------------------------------------------


def make_transport(kind: str) -> httpx.AsyncBaseTransport:
    if kind == "httpcore":
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=256)
        return httpx.AsyncHTTPTransport(limits=limits)
    from streamgw.transport.h11pool import TrioH11Transport

    return TrioH11Transport()


async def stream_once(client: httpx.AsyncClient | None, transport: httpx.AsyncBaseTransport,
                      url: str) -> tuple[int, int]:
    """Stream one response to its end; return (bytes, reads)."""
    nbytes = reads = 0
    if client is None:  # raw: the transport alone
        request = httpx.Request("GET", url, extensions={"timeout": httpx.Timeout(30).as_dict()})
        response = await transport.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        async for data in response.stream:
            nbytes += len(data)
            reads += 1
        await response.stream.aclose()
        return nbytes, reads
    async with client.stream("GET", url) as response:
        async for data in response.aiter_raw():
            nbytes += len(data)
            reads += 1
    return nbytes, reads


async def client_main(args: argparse.Namespace) -> dict[str, Any]:
    transport = make_transport(args.client)
    raw = args.client == "h11pool-raw"
    base = f"http://127.0.0.1:{args.port}"
    async with httpx.AsyncClient(transport=transport, timeout=30) as client:
        use = None if raw else client
        if args.scenario == "single":
            await stream_once(use, transport, f"{base}/?chunks=100&size={args.size}")  # warm-up
            n_requests, per_request = 1, args.chunks
        else:
            n_requests, per_request = args.requests, args.stream_chunks
        url = f"{base}/?chunks={per_request}&size={args.size}"
        totals = [0, 0]

        async def worker(count: int) -> None:
            for _ in range(count):
                nbytes, reads = await stream_once(use, transport, url)
                totals[0] += nbytes
                totals[1] += reads

        workers = 1 if args.scenario == "single" else args.concurrency
        if workers > 1:  # warm-up: open the connections
            async with trio.open_nursery() as nursery:
                for _ in range(workers):
                    nursery.start_soon(partial(stream_once, use, transport, url))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(workers):
                nursery.start_soon(worker, n_requests // workers + (i < n_requests % workers))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    expected = n_requests * per_request * len(sse_chunk(0, args.size))
    assert totals[0] == expected, (totals[0], expected)
    chunks = n_requests * per_request
    return {"client": args.client, "scenario": args.scenario, "requests": n_requests, "chunks": chunks,
            "cpu_s": cpu, "wall_s": wall, "us_per_chunk": cpu / chunks * 1e6,
            "us_per_request": cpu / n_requests * 1e6, "reads": totals[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=200_000, help="chunks in the single-stream scenario")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=6400, help="requests in the concurrent scenario")
    parser.add_argument("--stream-chunks", type=int, default=20, help="chunks per concurrent request")
    parser.add_argument("--size", type=int, default=150, help="bytes per chunk")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--client", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--scenario", choices=("single", "concurrent"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        print(json.dumps(trio.run(client_main, args)))
        return
    print(f"python {sys.version.split()[0]}, trio {trio.__version__}, httpx {httpx.__version__}, "
          f"h11 {h11.__version__}; best of {args.repeat}; client CPU only")
    results = trio.run(run_all, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

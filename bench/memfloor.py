"""Where an open stream's memory goes: RSS per open stream of a do-nothing relay and of the gateway.

    python bench/memfloor.py [--streams 2000] [--store sqlite|memory|none]

Each layer runs in a fresh process that serves on 127.0.0.1 while a client process opens ``--streams``
connections, each with one streamed request for a slow answer of the chat mock (one event a second),
and holds them open; the layer's figure is its RSS growth over its idle RSS (garbage collected before both
readings), divided by the streams:

- ``hypercorn``: stock hypercorn's trio server with a minimal ASGI relay (per request, one raw TCP
  connection to the mock, its bytes relayed as body chunks: no parsing, no translation);
- ``worker``: the same relay under streamgw's worker (``streamgw.serving.worker``, the production server);
- ``gateway``: streamgw's application under the same worker, against the same mock (``--store``).

``worker`` is what serving an open stream costs before the application does anything; ``gateway`` minus
``worker`` is the application's share (the parsed request, the response being built, the upstream HTTP/1.1
connection and its parser, the request's lifecycle and the tasks' waits).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = ("hypercorn", "worker", "gateway")
#: the mock's slow answer: one event a second, for longer than any measurement
SLOW_MODEL = "text:tokens=2000,token_delay=1"
#: how long the streams stay open before the reading (two events each)
SETTLE_S = 2.5

_CLIENT = r'''
import json, socket, sys
port, n, model = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
body = json.dumps({"model": "mock/" + model, "input": "hi", "stream": True}).encode()
request = (b"POST /v1/responses HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n" % len(body)) + body
socks = []
for _ in range(n):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(request)
    socks.append(sock)
opened = sum(1 for sock in socks if sock.recv(65536).startswith(b"HTTP/1.1 200"))
print(opened, flush=True)
sys.stdin.read()
'''


async def _rss() -> int:
    """This process's resident set size, in bytes (read through trio: the serving loop is running)."""
    import trio

    statm = await trio.Path("/proc/self/statm").read_text()
    return int(statm.split()[1]) * os.sysconf("SC_PAGE_SIZE")


def relay_app(mock_port: int) -> Any:
    """A minimal ASGI app: each request relays a slow chat stream of the mock, bytes as they come."""
    import trio

    body = json.dumps({"model": SLOW_MODEL, "messages": [{"role": "user", "content": "hi"}],
                       "stream": True}).encode()
    upstream_request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n\r\n" % len(body)) + body

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        while (await receive()).get("more_body"):
            pass
        async with await trio.open_tcp_stream("127.0.0.1", mock_port) as upstream:
            await upstream.send_all(upstream_request)
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            while data := await upstream.receive_some(65536):
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def serve_layer(layer: str, mock_port: int, streams: int, store: str, folder: str) -> dict[str, Any]:
    """Serve ``layer`` in this process, hold ``streams`` open from a client process, return the reading."""
    import trio

    async def run() -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            if layer == "hypercorn":
                from hypercorn.config import Config as HypercornConfig
                from hypercorn.trio import serve

                hc = HypercornConfig()
                hc.bind = ["127.0.0.1:0"]
                hc.keep_alive_timeout = 300
                hc.accesslog = hc.errorlog = None
                binds = await nursery.start(serve, relay_app(mock_port), hc)
                port = int(binds[0].rsplit(":", 1)[1])
            else:
                from streamgw.app.routes import create_app
                from streamgw.config import Config, ProviderConfig, StoreConfig
                from streamgw.engine.drain import Drain
                from streamgw.serving.main import hypercorn_config
                from streamgw.serving.worker import _Server, listen

                config = Config(store=StoreConfig(backend=store, path=str(Path(folder) / "gw.db")),
                                providers={"mock": ProviderConfig(name="mock", type="chat",
                                                                  base_url=f"http://127.0.0.1:{mock_port}/v1")})
                hc = hypercorn_config(config)
                hc.bind = ["127.0.0.1:0"]
                sockets = listen(hc)
                port = sockets.insecure_sockets[0].getsockname()[1]
                app = relay_app(mock_port) if layer == "worker" else create_app(config)
                server = _Server(app, hc, Drain(), drain_timeout=1.0, grace=1.0)
                ready = trio.Event()
                nursery.start_soon(server.run, sockets, stop, ready.set)
                await ready.wait()

            async def hold(n: int) -> tuple[trio.Process, int]:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-c", _CLIENT, str(port), str(n), SLOW_MODEL],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                assert proc.stdout is not None
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(64)
                    if not chunk:
                        raise RuntimeError(f"{layer}: the client ended before its streams opened")
                    line += chunk
                return proc, int(line)

            warm, _ = await hold(5)  # every code path once, before the idle reading
            await trio.sleep(0.5)
            gc.collect()
            idle = await _rss()
            clients, opened = await hold(streams)
            await trio.sleep(SETTLE_S)
            gc.collect()
            held = await _rss()
            for proc in (warm, clients):
                proc.kill()
                await proc.wait()
            stop.set()
            nursery.cancel_scope.cancel()
        return {"layer": layer, "streams": streams, "opened": opened,
                "kb_per_stream": round((held - idle) / max(opened, 1) / 1024, 2)}

    return trio.run(run)


def measure(streams: int, store: str) -> dict[str, Any]:
    """Each layer in its own fresh process, against one mock; the report."""
    from streamgw.testing.process import start_mock, stop_process

    mock, mock_port = start_mock([])
    readings: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            for layer in LAYERS:
                done = subprocess.run(
                    [sys.executable, __file__, "--layer", layer, "--mock-port", str(mock_port),
                     "--streams", str(streams), "--store", store, "--folder", folder],
                    capture_output=True, text=True, timeout=300, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"layer {layer} failed: {done.stderr[-2000:]}")
                readings[layer] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        stop_process(mock)
        if mock.stdout is not None:
            mock.stdout.close()
    kb = {layer: readings[layer]["kb_per_stream"] for layer in LAYERS}
    return {
        "streams": streams,
        "store": store,
        "opened": {layer: readings[layer]["opened"] for layer in LAYERS},
        "kb_per_stream": kb,
        "application_kb": round(kb["gateway"] - kb["worker"], 2),
        "worker_vs_hypercorn_kb": round(kb["worker"] - kb["hypercorn"], 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--store", choices=("sqlite", "memory", "none"), default="sqlite")
    parser.add_argument("--layer", choices=LAYERS, help=argparse.SUPPRESS)  # one layer, in this process
    parser.add_argument("--mock-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.layer:
        print(json.dumps(serve_layer(args.layer, args.mock_port, args.streams, args.store, args.folder)))
        return
    print(json.dumps(measure(args.streams, args.store), indent=2))


if __name__ == "__main__":
    main()

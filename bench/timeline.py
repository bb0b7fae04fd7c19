"""Where one request's time to first event goes, task step by task step (c=1, against the mock).

    python bench/timeline.py [--requests 200] [--store sqlite|memory|none] [--where] [--json]

Serves the gateway with the production worker (``streamgw.serving.worker``: hypercorn's connection handling
under streamgw's accept loop) inside this process, with a trio ``Instrument`` that notes every task step and
every wait for I/O, and the first write of each response to its client.  The mock upstream and a raw-socket
client run as their own processes; the client sends one streamed request at a time on a kept connection and
pauses 50 ms between them, so each request's steps stand apart (a request is what follows a quiet 30 ms).

The report takes the requests whose sequence of steps has the most common shape and gives, for each position
of it, the median time since the previous mark: which task ran (its name; with ``--where``, the frames it
stopped at), for how long, and how long the process then waited for I/O, up to the first write.  ``steps_us``
sums the task steps (the gateway's CPU on the way, with the instrument's own small share) and ``waits_us`` the
waits (the upstream's answer among them).  ``bench/ttfe.py --phases`` says what each step of the application
is for; this says how the time falls into scheduler turns and which of them is hypercorn's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgw.app.routes import create_app
from streamgw.config import Config
from streamgw.config_loader import load_config
from streamgw.engine.drain import Drain
from streamgw.serving import hypercorn_trio
from streamgw.serving.main import hypercorn_config
from streamgw.serving.worker import _Server, listen
from streamgw.testing.process import start_mock, stop_process

#: a mark: (perf_counter seconds, kind, what) — kind "step" (what: task name), "wait" (I/O), "write" (bytes)
Mark = tuple[float, str, str]

_CLIENT = r'''
import json, socket, sys, time
port, n, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"model": "mock/text:tokens=20", "input": "hi", "stream": True}).encode()
request = (b"POST /v1/responses HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n" % len(body)) + body
sock = socket.create_connection(("127.0.0.1", port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
firsts = []
for _ in range(n):
    start = time.perf_counter()
    sock.sendall(request)
    received, first = b"", None
    while not received.endswith(b"0\r\n\r\n"):
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the gateway closed the connection")
        if first is None:
            first = time.perf_counter() - start
        received += data
    firsts.append(first)
    time.sleep(pause)
print(json.dumps(firsts))
'''

#: the client's pause between requests; marks further apart than ``_GAP`` start a new request
_PAUSE = 0.05
_GAP = 0.03


class StepLog(trio.abc.Instrument):
    """Notes each task step (start and end), each wait for I/O (start and end)."""

    def __init__(self, where: bool = False) -> None:
        self.marks: list[tuple[float, str, str]] = []
        self.where = where

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.marks.append((time.perf_counter(), "run", task.name))

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        name = task.name
        if self.where:
            name += " @ " + ">".join(f"{frame.f_code.co_name}:{line}" for frame, line in task.iter_await_frames())
        self.marks.append((time.perf_counter(), "step", name))

    def before_io_wait(self, timeout: float) -> None:
        self.marks.append((time.perf_counter(), "idle", ""))

    def after_io_wait(self, timeout: float) -> None:
        self.marks.append((time.perf_counter(), "wait", ""))


def requests_of(marks: Sequence[Mark]) -> list[list[Mark]]:
    """The marks split where nothing happened for ``_GAP`` (between two requests), each cut after its first
    write; runs without a write (the warm-up's tail, the shutdown) are left out."""
    found: list[list[Mark]] = []
    current: list[Mark] = []
    last = None
    for mark in marks:
        if last is not None and mark[0] - last > _GAP and current:
            found.append(current)
            current = []
        current.append(mark)
        last = mark[0]
    found.append(current)
    cut = []
    for run in found:
        writes = [i for i, mark in enumerate(run) if mark[1] == "write"]
        if writes:
            cut.append(run[:writes[0] + 1])
    return cut


def shape(run: Sequence[Mark]) -> tuple[tuple[str, str], ...]:
    """What happened, in order, without the times (task names without ``--where`` frames)."""
    return tuple((kind, what.split(" @ ")[0] if kind == "step" else "") for _, kind, what in run)


def summarize(runs: Sequence[Sequence[Mark]]) -> dict[str, Any]:
    """The most common shape's positions with their median durations; task steps and waits summed."""
    if not runs:
        return {"requests": 0, "shape_share": 0.0, "rows": [], "steps_us": None, "waits_us": None, "total_us": None}
    shapes = Counter(shape(run) for run in runs)
    common, count = shapes.most_common(1)[0]
    chosen = [run for run in runs if shape(run) == common]
    rows: list[dict[str, Any]] = []
    for i, (kind, _) in enumerate(common):
        if i == 0 or kind == "run":
            continue  # a request's first mark is the end of the pause; "run" marks only start a step
        took = statistics.median((run[i][0] - run[i - 1][0]) * 1e6 for run in chosen)
        what = chosen[0][i][2]
        rows.append({"kind": kind, "what": what, "us": round(took, 1)})
    steps = sum(row["us"] for row in rows if row["kind"] == "step")
    waits = sum(row["us"] for row in rows if row["kind"] == "wait")
    total = statistics.median((run[-1][0] - run[0][0]) * 1e6 for run in chosen)
    return {"requests": len(runs), "shape_share": round(count / len(runs), 3), "rows": rows,
            "steps_us": round(steps, 1), "waits_us": round(waits, 1), "total_us": round(total, 1)}


def record(requests: int, store: str, where: bool = False) -> tuple[list[Mark], list[float]]:
    """Start the mock, serve ``requests`` (after 20 warm-up ones) in a trio run; the marks and the client's times
    to first byte.  (The mock process and the configuration file are handled outside the trio run: both block.)"""
    mock, mock_port = start_mock([])
    try:
        with tempfile.TemporaryDirectory() as tmp:  # the configuration is read here, not in the trio run
            path = Path(tmp) / "gateway.toml"
            path.write_text(f'[store]\nbackend = "{store}"\npath = "{tmp}/store.db"\n\n[logging]\nrequests = false\n\n'
                            f'[providers.mock]\ntype = "chat"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n')
            return trio.run(_serve, requests, load_config(path), where)
    finally:
        stop_process(mock)
        if mock.stdout is not None:
            mock.stdout.close()


async def _serve(requests: int, config: Config, where: bool) -> tuple[list[Mark], list[float]]:
    log = StepLog(where)
    server_class = hypercorn_trio.SerialisedTCPServer
    plain_send = server_class.send_raw

    async def noted_send(self: hypercorn_trio.SerialisedTCPServer, data: bytes) -> None:
        log.marks.append((time.perf_counter(), "write", str(len(data))))
        await plain_send(self, data)

    app = create_app(config)
    hc = hypercorn_config(config)
    hc.bind = ["127.0.0.1:0"]
    sockets = listen(hc)
    port = sockets.insecure_sockets[0].getsockname()[1]
    server = _Server(app, hc, Drain(), drain_timeout=1.0, grace=1.0)
    stop, ready = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run, sockets, stop, ready.set)
        await ready.wait()
        warm = await trio.run_process([sys.executable, "-c", _CLIENT, str(port), "20", "0"],
                                      capture_stdout=True)
        assert warm.returncode == 0
        server_class.send_raw = noted_send  # type: ignore[method-assign]
        trio.lowlevel.add_instrument(log)
        try:
            done = await trio.run_process([sys.executable, "-c", _CLIENT, str(port), str(requests),
                                           str(_PAUSE)], capture_stdout=True)
        finally:
            trio.lowlevel.remove_instrument(log)
            server_class.send_raw = plain_send  # type: ignore[method-assign]
        stop.set()
    return log.marks, [float(t) for t in json.loads(done.stdout)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--store", choices=("sqlite", "memory", "none"), default="sqlite")
    parser.add_argument("--where", action="store_true", help="name the frames each task step stopped at")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    marks, firsts = record(args.requests, args.store, args.where)
    report = summarize(requests_of(marks))
    report["client_first_byte_ms"] = round(statistics.median(firsts) * 1000, 3) if firsts else None
    if args.json:
        print(json.dumps(report, indent=1))
        return report
    print(f"{report['requests']} requests, {report['shape_share']:.0%} of them in this shape; medians in µs")
    for row in report["rows"]:
        label = {"step": "task step", "idle": "(scheduler)", "wait": "I/O wait", "write": "first write"}[row["kind"]]
        print(f"{row['us']:9.1f}  {label:12s} {row['what'] if row['kind'] == 'step' else ''}")
    print(f"task steps {report['steps_us']} µs, I/O waits {report['waits_us']} µs, to the first write "
          f"{report['total_us']} µs; the client's first byte after {report['client_first_byte_ms']} ms")
    return report


if __name__ == "__main__":
    main()

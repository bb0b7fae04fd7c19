"""Cancellation latency against a real gateway process: client close -> upstream connection closed.

    python bench/cancellation.py [--trials 1000] [--concurrency 8] [--seed 1] [--json FILE]

The gateway runs as its own process (``streamgw serve``, hypercorn, trio worker); the Chat
Completions mock and the clients run in this script's trio run, so the moment a client
closes its socket and the moment the mock sees the gateway's upstream connection close
are read from one clock.  Each trial sends one request with a unique marker in its input,
leaves at a random point of one of five phases, and is matched to its upstream request by
that marker:

* ``first_token``: streamed, upstream silent (``text:ttft=5``), no byte sent to the client yet;
* ``first_token_committed``: the same after the 200 and 1-3 keepalive comments (a route
  with ``keepalive = 0.05``);
* ``mid_stream``: after 1-40 events of a slow stream (200 tokens, 10 ms apart);
* ``non_streamed``: a non-streamed request, upstream silent;
* ``non_streamed_mid``: a non-streamed request while the gateway collects the slow stream.

Prints the latency distribution per phase (milliseconds) as JSON; the issue's target is
every trial under 50 ms.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import re
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h11
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from streamgw.core.sse import SSEDecoder
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import RawClient
from streamgw.testing.process import start_gateway, stop_process
from streamgw.testing.server import MockRequest, Responder

TARGET_MS = 50.0
SLOW_STREAM = "up/text:tokens=200,token_delay=0.01"
SILENT = "up/text:ttft=5"
_MARKER = re.compile(rb"cancel-trial-\d+")


class MarkedMock(ChatCompletionsMock):
    """The Chat Completions mock, indexing requests by marker and waking whoever waits for a disconnect."""

    def __init__(self) -> None:
        super().__init__()
        self.by_marker: dict[str, MockRequest] = {}
        self._arrived: dict[str, trio.Event] = {}
        self._closed: dict[int, trio.Event] = {}
        self.closed_at: dict[int, float] = {}
        mock = self

        class Disconnects(list[tuple[int, float]]):
            def append(self, record: tuple[int, float]) -> None:
                super().append(record)
                mock.closed_at.setdefault(record[0], record[1])
                mock._closed.setdefault(record[0], trio.Event()).set()

        self.stats.disconnects = Disconnects()

    async def handle(self, req: MockRequest, send: Responder) -> None:
        found = _MARKER.search(req.body)
        if found is not None:
            marker = found.group().decode()
            self.by_marker[marker] = req
            self._arrived.setdefault(marker, trio.Event()).set()
        await super().handle(req, send)

    async def request_for(self, marker: str) -> MockRequest:
        await self._arrived.setdefault(marker, trio.Event()).wait()
        return self.by_marker[marker]

    async def closed(self, request_id: int) -> float:
        await self._closed.setdefault(request_id, trio.Event()).wait()
        return self.closed_at[request_id]


@dataclass(frozen=True)
class Trial:
    index: int
    phase: str
    draw: float  # uniform in [0, 1): where in its phase the client leaves


async def _read_until(client: RawClient, enough: Callable[[int, int], bool]) -> None:
    head = await client.response_head()
    if head.status_code != 200:
        raise RuntimeError(f"expected a 200, got {head.status_code}")
    decoder = SSEDecoder()
    keepalives = events = 0
    while not enough(keepalives, events):
        event = await client.next_event()
        if not isinstance(event, h11.Data):
            raise RuntimeError(f"the stream ended before the client left: {event!r}")
        keepalives += event.data.count(b": keepalive\n\n")
        events += len(decoder.feed(bytes(event.data)))


async def _before_first_token(client: RawClient, trial: Trial) -> None:
    await trio.sleep(0.15 * trial.draw)


async def _after_keepalives(client: RawClient, trial: Trial) -> None:
    wanted = 1 + int(3 * trial.draw)
    await _read_until(client, lambda keepalives, _: keepalives >= wanted)


async def _mid_stream(client: RawClient, trial: Trial) -> None:
    wanted = 1 + int(40 * trial.draw)
    await _read_until(client, lambda _, events: events >= wanted)


async def _while_collecting(client: RawClient, trial: Trial) -> None:
    await trio.sleep(0.02 + 0.3 * trial.draw)


Leave = Callable[[RawClient, Trial], Awaitable[None]]
PHASES: dict[str, tuple[str, bool, Leave]] = {
    "first_token": (SILENT, True, _before_first_token),
    "first_token_committed": ("ka", True, _after_keepalives),
    "mid_stream": (SLOW_STREAM, True, _mid_stream),
    "non_streamed": (SILENT, False, _before_first_token),
    "non_streamed_mid": (SLOW_STREAM, False, _while_collecting),
}


async def run_trial(port: int, mock: MarkedMock, trial: Trial) -> float:
    """Seconds from the client's close to the mock seeing the upstream connection close (inf: never)."""
    model, stream, leave = PHASES[trial.phase]
    marker = f"cancel-trial-{trial.index}"
    client = await RawClient.connect(port)
    try:
        await client.send_json("/v1/responses", {"model": model, "input": f"{marker}: count slowly", "stream": stream})
        with trio.fail_after(10):
            upstream = await mock.request_for(marker)
        await leave(client, trial)
    finally:
        closed_at = trio.current_time()
        await client.aclose()
    with trio.move_on_after(5):
        return await mock.closed(upstream.request_id) - closed_at
    return math.inf


def distribution(latencies: list[float]) -> dict[str, float]:
    """n, min, p50, p90, p99, max (milliseconds) and how many reached the target."""
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    late = sum(1 for v in ordered if v * 1e3 >= TARGET_MS)
    return {"n": len(ordered), "min": at(0), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0),
            f"over_{TARGET_MS:g}ms": late}


def runqueue_delay(pid: int | str = "self") -> float:
    """Seconds process ``pid``'s main thread spent runnable but waiting for a CPU (Linux; 0.0 if unknown)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def cpu_pressure() -> str:
    """The machine's CPU pressure (PSI ``some`` line), to tell a busy machine from a slow gateway."""
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def config_toml(mock_port: int) -> str:
    return (
        f'[providers.up]\ntype = "chat"\nbase_url = "http://127.0.0.1:{mock_port}/v1"\n'
        'api_key = "sk-bench-upstream"\n\n'
        '[store]\nbackend = "memory"\n\n'
        f'[routes.ka]\ntargets = ["{SILENT}"]\n\n[routes.ka.timeouts]\nkeepalive = 0.05\n'
    )


async def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    mock = MarkedMock()
    rng = random.Random(args.seed)
    names = [list(PHASES)[i % len(PHASES)] for i in range(args.trials)]
    rng.shuffle(names)
    trials = [Trial(i, name, rng.random()) for i, name in enumerate(names)]
    results: dict[str, list[float]] = {name: [] for name in PHASES}
    async with trio.open_nursery() as nursery:
        mock_port = await nursery.start(mock.serve)
        config = workdir / "gateway.toml"
        config.write_text(config_toml(mock_port))
        proc, url = await trio.to_thread.run_sync(partial(start_gateway, config, workdir / "gateway.log"))
        try:
            port = int(url.rsplit(":", 1)[1])
            send, receive = trio.open_memory_channel[Trial](math.inf)
            for trial in trials:
                send.send_nowait(trial)
            send.close()

            async def worker() -> None:
                async for trial in receive:
                    results[trial.phase].append(await run_trial(port, mock, trial))

            # This process only measures: keep its start-up heap out of its own collector's way.
            gc.collect()
            gc.freeze()
            start = trio.current_time()
            queued = runqueue_delay(proc.pid), runqueue_delay()
            async with trio.open_nursery() as workers:
                for _ in range(args.concurrency):
                    workers.start_soon(worker)
            elapsed = trio.current_time() - start
            queued = runqueue_delay(proc.pid) - queued[0], runqueue_delay() - queued[1]
        finally:
            await trio.to_thread.run_sync(stop_process, proc)
        nursery.cancel_scope.cancel()
    everything = [v for values in results.values() for v in values]
    return {
        "what": "client close -> upstream connection closed, gateway as a separate process (ms)",
        "trials": args.trials, "concurrency": args.concurrency, "seed": args.seed, "seconds": round(elapsed, 1),
        # time each process was runnable but had no CPU: high values mean a busy machine, not a slow gateway
        "runqueue_delay_s": {"gateway": round(queued[0], 3), "clients_and_mock": round(queued[1], 3)},
        "cpu_pressure": cpu_pressure(),
        "phases": {name: distribution(values) for name, values in results.items()},
        "all": distribution(everything),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the report to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = trio.run(bench, args, Path(tmp))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

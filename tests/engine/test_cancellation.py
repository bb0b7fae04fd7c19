"""A client that leaves cancels its request and closes the upstream at once: 1000 trials, each under 50 ms.

Gateway, mock upstream and clients share the test's trio run, hence one clock: a trial
notes ``trio.current_time()`` right before its client closes the socket, and the mock
records when it saw the gateway's upstream connection close.  Trials leave at random
points of five phases:

* ``first_token``: a streamed request whose upstream has not produced a token yet, the
  200 not committed (no keepalive is due);
* ``first_token_committed``: the same after the 200 and one or more keepalive comments
  went out (a route with a short keepalive);
* ``mid_stream``: after a random number of events of a slow stream;
* ``non_streamed``: a non-streamed request while the upstream is silent;
* ``non_streamed_mid``: a non-streamed request while the gateway collects a slow stream.

The machine is shared (2 cores, other test runs): time the kernel kept this thread
runnable but off the CPU (Linux ``schedstat`` run-queue delay) is nobody's code, and
neither is time the thread slept in the kernel while a timer of the loop was overdue (a
write to pytest's capture file held up by the disk, a page fault served from it: the
``Heartbeat`` task sees those as gaps that are neither CPU time nor run-queue delay).  So
each latency is also reported net of both inside its own window, and the 50 ms bound
applies to that.  Everything the process itself does on the CPU -- the gateway, garbage
collection, the mock and the other trials sharing the loop -- still counts.  Run with
``pytest -s`` to see both distributions per phase.
"""

from __future__ import annotations

import gc
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import h11
import pytest
import trio

from streamgw.config import Config, ProviderConfig, RouteConfig, Secret
from streamgw.core.sse import SSEDecoder
from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import RawClient, post_sse, running_gateway
from streamgw.testing.invariants import TERMINAL, check_events, output_text
from streamgw.testing.server import MockRequest, Responder

from .conftest import make_config

TRIALS = 1000
CONCURRENCY = 8
HEDGE_CONCURRENCY = 4  # hedged trials open 2-3 upstreams each
LIMIT = 0.050  # seconds from the client's close to the upstream connection's close
SEED = 20250611
SLOW_STREAM = "up/text:tokens=200,token_delay=0.01"  # 2 s: every trial leaves long before the end
SILENT = "up/text:ttft=5"
_MARKER = re.compile(rb"cancel-trial-\d+")


def runqueue_delay() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (0.0 where Linux does not say)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass(frozen=True)
class Clock:
    """A moment on the trio clock, and the run-queue delay accumulated by then."""

    at: float
    queued: float

    @classmethod
    def start(cls) -> Clock:
        at = trio.current_time()  # the clock first: being preempted between the two reads counts as late
        return cls(at, runqueue_delay())

    @classmethod
    def end(cls) -> Clock:
        queued = runqueue_delay()  # the run queue first, for the same reason
        return cls(trio.current_time(), queued)

    def since(self, start: Clock) -> float:
        """Seconds from ``start`` to here during which this thread was not waiting for a CPU."""
        return (self.at - start.at) - (self.queued - start.queued)


class Heartbeat:
    """Wakes every ``PERIOD`` and notes the trio clock, this thread's CPU time and its run-queue delay.

    Between two ticks the thread either ran (CPU time), waited for a CPU (run-queue delay), waited in the
    loop's own I/O wait for at most ``PERIOD`` (the tick was due then), or slept somewhere else: in a system
    call or a page fault that blocked the whole loop.  ``asleep`` sums that last kind over a window.
    """

    PERIOD = 0.002
    #: a gap's unexplained sleep below this is timer slack and scheduling grain, not a stall
    GRAIN = 0.001

    def __init__(self) -> None:
        self.ticks: list[tuple[float, float, float]] = []  # (trio clock, thread CPU time, run-queue delay)

    async def run(self) -> None:
        while True:
            self.ticks.append((trio.current_time(), time.thread_time(), runqueue_delay()))
            await trio.sleep(self.PERIOD)

    def stalls(self) -> list[tuple[float, float, float]]:
        """(start, end, seconds asleep) of every gap between ticks with more than ``GRAIN`` of unexplained sleep."""
        found = []
        for (t0, cpu0, queued0), (t1, cpu1, queued1) in zip(self.ticks, self.ticks[1:], strict=False):
            asleep = (t1 - t0) - (cpu1 - cpu0) - (queued1 - queued0) - self.PERIOD
            if asleep > self.GRAIN:
                found.append((t0, t1, asleep))
        return found


def asleep_within(stalls: list[tuple[float, float, float]], start: float, end: float) -> float:
    """The stalls' sleep inside ``[start, end]`` (a stall that straddles an edge counts by its overlap)."""
    total = 0.0
    for t0, t1, asleep in stalls:
        overlap = min(t1, end) - max(t0, start)
        if overlap > 0:
            total += asleep * overlap / (t1 - t0)
    return total


class _Disconnects(list[tuple[int, float]]):
    """``MockServerStats.disconnects`` that also wakes whoever waits for a request's record."""

    def __init__(self) -> None:
        super().__init__()
        self.by_request: dict[int, tuple[float, Clock]] = {}
        self._waiters: dict[int, trio.Event] = {}

    def append(self, record: tuple[int, float]) -> None:
        super().append(record)
        request_id, at = record
        self.by_request.setdefault(request_id, (at, Clock.end()))
        self._waiters.setdefault(request_id, trio.Event()).set()

    async def wait_for(self, request_id: int) -> tuple[float, Clock]:
        """When the mock saw request ``request_id``'s client (the gateway) go away, and a clock read right after."""
        await self._waiters.setdefault(request_id, trio.Event()).wait()
        return self.by_request[request_id]


class MarkedMock(ChatCompletionsMock):
    """The Chat Completions mock, indexing requests by a ``cancel-trial-N`` marker in their input."""

    def __init__(self) -> None:
        super().__init__()
        self.disconnects = _Disconnects()
        self.stats.disconnects = self.disconnects
        self.marked: dict[str, list[MockRequest]] = {}
        self._arrivals: dict[str, trio.Event] = {}

    async def handle(self, req: MockRequest, send: Responder) -> None:
        found = _MARKER.search(req.body)
        if found is not None:
            marker = found.group().decode()
            self.marked.setdefault(marker, []).append(req)
            self._arrivals.setdefault(marker, trio.Event()).set()
            self._arrivals[marker] = trio.Event()  # the next request with this marker (a hedge) sets it
        await super().handle(req, send)

    async def requests_for(self, marker: str, count: int = 1) -> list[MockRequest]:
        """Wait until ``count`` upstream requests carrying ``marker`` arrived; return them."""
        while len(self.marked.get(marker, ())) < count:
            await self._arrivals.setdefault(marker, trio.Event()).wait()
        return self.marked[marker][:count]


@dataclass
class Marked:
    mock: MarkedMock
    port: int

    def provider(self, name: str) -> ProviderConfig:
        return ProviderConfig(name=name, type="chat", base_url=f"http://127.0.0.1:{self.port}/v1",
                              api_key=Secret("sk-upstream-test-key"))


@pytest.fixture
async def marked(nursery: trio.Nursery) -> AsyncIterator[Marked]:
    mock = MarkedMock()
    port = await nursery.start(mock.serve)
    yield Marked(mock, port)


# -- the phases: what a trial does between sending its request and closing its connection ------------------


@dataclass(frozen=True)
class Trial:
    index: int
    phase: str
    draw: float  # uniform in [0, 1): where in the phase this trial leaves

    @property
    def marker(self) -> str:
        return f"cancel-trial-{self.index}"


async def _read_until(client: RawClient, enough: Callable[[int, list[dict[str, Any]]], bool]
                      ) -> tuple[int, list[dict[str, Any]]]:
    """Read the head (must be 200), then body data until ``enough(keepalives, events)``."""
    head = await client.response_head()
    assert head.status_code == 200, head
    decoder = SSEDecoder()
    keepalives, events = 0, list[dict[str, Any]]()
    while not enough(keepalives, events):
        event = await client.next_event()
        assert isinstance(event, h11.Data), f"the stream ended before the client left: {event!r}"
        keepalives += event.data.count(b": keepalive\n\n")
        events += [json.loads(sse.data) for sse in decoder.feed(bytes(event.data))]
    return keepalives, events


async def _leave_before_first_token(client: RawClient, trial: Trial) -> None:
    await trio.sleep(0.15 * trial.draw)


async def _leave_after_keepalives(client: RawClient, trial: Trial) -> None:
    wanted = 1 + int(3 * trial.draw)
    _, events = await _read_until(client, lambda k, _: k >= wanted)
    assert events == [], "only keepalive comments can come before the first token"


async def _leave_mid_stream(client: RawClient, trial: Trial) -> None:
    wanted = 1 + int(40 * trial.draw)
    _, events = await _read_until(client, lambda _, e: len(e) >= wanted)
    assert not any(e["type"] in TERMINAL for e in events), "the slow stream ended before the client left"


async def _leave_while_collecting(client: RawClient, trial: Trial) -> None:
    await trio.sleep(0.02 + 0.3 * trial.draw)


@dataclass(frozen=True)
class Phase:
    model: str
    stream: bool
    leave: Callable[[RawClient, Trial], Awaitable[None]]


PHASES = {
    "first_token": Phase(SILENT, True, _leave_before_first_token),
    "first_token_committed": Phase("ka", True, _leave_after_keepalives),
    "mid_stream": Phase(SLOW_STREAM, True, _leave_mid_stream),
    "non_streamed": Phase(SILENT, False, _leave_before_first_token),
    "non_streamed_mid": Phase(SLOW_STREAM, False, _leave_while_collecting),
}


def trials(count: int, seed: int) -> list[Trial]:
    """``count`` trials, the phases equally often, in a seeded random order."""
    rng = random.Random(seed)
    names = [list(PHASES)[i % len(PHASES)] for i in range(count)]
    rng.shuffle(names)
    return [Trial(i, name, rng.random()) for i, name in enumerate(names)]


@dataclass(frozen=True)
class TrialResult:
    elapsed: float  # seconds from the client's close to the upstream's
    runnable: float  # the same, net of run-queue delay (``Clock.since``)
    closed_at: float  # the window, on the trio clock
    seen_at: float


async def run_trial(port: int, mock: MarkedMock, trial: Trial) -> TrialResult:
    """One request that its client abandons, and how long its upstream connection outlived the client's."""
    phase = PHASES[trial.phase]
    client = await RawClient.connect(port)
    try:
        await client.send_json("/v1/responses", {"model": phase.model, "input": f"{trial.marker}: count slowly",
                                                 "stream": phase.stream})
        with trio.fail_after(5):
            [upstream] = await mock.requests_for(trial.marker)
        await phase.leave(client, trial)
    finally:
        closed = Clock.start()
        await client.aclose()
    with trio.move_on_after(2):
        seen_at, seen = await mock.disconnects.wait_for(upstream.request_id)
        return TrialResult(seen_at - closed.at, seen.since(closed), closed.at, seen.at)
    return TrialResult(math.inf, math.inf, closed.at, closed.at)  # the upstream connection stayed open


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep what pytest, the imports and the fixtures allocated out of the collector's way.

    The test process holds far more than a gateway (pytest, every imported module, the mock
    and the clients); a full collection walks all of it and, on a busy 2-core machine, takes
    tens of milliseconds, during which no task runs.  Frozen objects are skipped; everything
    the gateway allocates from here on is collected as usual.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def distribution(latencies: list[float]) -> dict[str, float]:
    """min / p50 / p90 / p99 / max in milliseconds."""
    ordered = sorted(latencies)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    return {"n": len(ordered), "min": at(0), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)}


async def test_client_disconnect_closes_the_upstream_within_50ms(marked: Marked) -> None:
    keepalive_route = RouteConfig("ka", (SILENT,), timeouts=(("keepalive", 0.05),))
    config = make_config([marked.provider("up")], [keepalive_route])
    results: dict[str, list[TrialResult]] = {name: [] for name in PHASES}
    heartbeat = Heartbeat()
    send, receive = trio.open_memory_channel[Trial](math.inf)
    for trial in trials(TRIALS, SEED):
        send.send_nowait(trial)
    send.close()

    async def worker(port: int) -> None:
        async for trial in receive:
            results[trial.phase].append(await run_trial(port, marked.mock, trial))

    start = trio.current_time()
    with frozen_heap():
        async with running_gateway(config) as port, trio.open_nursery() as beating:
            beating.start_soon(heartbeat.run)
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENCY):
                    nursery.start_soon(worker, port)
            beating.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    stalls = heartbeat.stalls()
    net = {name: [r.runnable - asleep_within(stalls, r.closed_at, r.seen_at) for r in rs]
           for name, rs in results.items()}
    raw = {name: [r.elapsed for r in rs] for name, rs in results.items()}

    print(f"\ncancellation latency, client close -> upstream close (ms), {TRIALS} trials in {elapsed:.1f} s; "
          "all / net of run-queue delay and loop stalls:")
    for name in [*PHASES, "all"]:
        row_raw, row_net = (distribution([v for phase, vs in d.items() if name in (phase, "all") for v in vs])
                            for d in (raw, net))
        print(f"  {name:<22} {json.dumps(row_raw)}\n  {'':<22} {json.dumps(row_net)}")
    print(f"  loop stalls over {Heartbeat.GRAIN * 1e3:g} ms asleep: {len(stalls)}, longest "
          f"{max((s[2] for s in stalls), default=0) * 1e3:.1f} ms")
    latencies = [v for values in net.values() for v in values]
    assert len(latencies) == TRIALS and all(len(v) == TRIALS // len(PHASES) for v in net.values())
    late = sorted((round(v * 1e3, 2), name) for name, values in net.items() for v in values if v >= LIMIT)
    assert late == [], f"{len(late)} of {TRIALS} upstreams closed late (ms, phase): {late[-10:]}"
    assert all(v >= 0 for values in raw.values() for v in values), "an upstream closed before its client left"
    assert len(marked.mock.stats.disconnects) == TRIALS, "one upstream request per trial, each closed once"


# -- hedging: losers and abandoned attempts are closed promptly -----------------------------------------------


async def run_bounded(config: Config, trial: Callable[[int, int], Awaitable[None]], count: int) -> None:
    """``trial(port, index)`` for ``count`` indices against one gateway, ``HEDGE_CONCURRENCY`` at a time."""
    limiter = trio.CapacityLimiter(HEDGE_CONCURRENCY)

    async def bounded(port: int, index: int) -> None:
        async with limiter:
            await trial(port, index)

    with frozen_heap():
        async with running_gateway(config) as port, trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(bounded, port, index)


async def test_hedge_closes_the_loser_as_soon_as_the_winner_answers(marked: Marked) -> None:
    winner_ttft = 0.2
    route = RouteConfig("h", ("slow/text:ttft=5", f"fast/text:ttft={winner_ttft},tokens=3"),
                        strategy="hedge", hedge_delay=0.05)
    config = make_config([marked.provider("slow"), marked.provider("fast")], [route])
    delays: list[float] = []

    async def one(port: int, index: int) -> None:
        marker = f"cancel-trial-{index}"
        result = await post_sse(port, {"model": "h", "input": marker, "stream": True})
        final = check_events(result.events)
        assert final["provider"] == "fast" and output_text(final) == "tok0 tok1 tok2 "
        loser, winner = await marked.mock.requests_for(marker, 2)
        assert [loser.json()["model"], winner.json()["model"]] == ["text:ttft=5", f"text:ttft={winner_ttft},tokens=3"]
        with trio.fail_after(1):
            closed_at, _ = await marked.mock.disconnects.wait_for(loser.request_id)
        # The winner's first chunk left the mock no earlier than this (its clock starts after the headers).
        delays.append(closed_at - (winner.received_at + winner_ttft))

    await run_bounded(config, one, 20)
    print(f"\nhedge loser closed after the winner's first chunk (ms): {json.dumps(distribution(delays))}")
    assert len(delays) == 20 and max(delays) < LIMIT, sorted(delays)
    assert min(delays) >= 0, "the loser was closed before the winner answered"


async def test_client_disconnect_during_a_hedge_closes_every_attempt(marked: Marked) -> None:
    route = RouteConfig("h", ("a/text:ttft=5", "b/text:ttft=5", "c/text:ttft=5"), strategy="hedge",
                        hedge_delay=0.05)
    config = make_config([marked.provider(name) for name in "abc"], [route])
    latencies: list[float] = []

    async def one(port: int, index: int) -> None:
        marker = f"cancel-trial-{index}"
        client = await RawClient.connect(port)
        try:
            await client.send_json("/v1/responses", {"model": "h", "input": marker, "stream": True})
            with trio.fail_after(5):
                attempts = await marked.mock.requests_for(marker, 3)
        finally:
            closed_at = trio.current_time()
            await client.aclose()
        for attempt in attempts:
            with trio.fail_after(1):
                seen_at, _ = await marked.mock.disconnects.wait_for(attempt.request_id)
            latencies.append(seen_at - closed_at)

    await run_bounded(config, one, 20)
    print(f"\nhedged attempts closed after the client left (ms): {json.dumps(distribution(latencies))}")
    assert len(latencies) == 60 and 0 <= min(latencies) and max(latencies) < LIMIT, sorted(latencies)

"""Soak: 500 concurrent streams with random upstream faults; every one ends honestly, nothing leaks.

The gateway, a mock upstream and 500 clients share the test's trio run.  The mock holds
every request until all 500 have arrived, so all 500 streams are in flight at once; then
each plays its scenario.  Every stream must end, within a deadline, with exactly one
terminal event (or, for a failure before the first byte, an HTTP error): the one its
fault calls for.  Afterwards the number of trio tasks and of open file descriptors must
be back where they were before the gateway started.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trio

from streamgw.testing.chat_mock import ChatCompletionsMock
from streamgw.testing.harness import SSEResult, post_sse, running_gateway
from streamgw.testing.invariants import TERMINAL, check_events, output_text
from streamgw.testing.server import MockRequest, Responder

from .conftest import Upstream, make_config

STREAMS = 500
WAVE = 50  # clients that connect at once (see test_a_burst_of_connections_waits_in_the_listen_queue)
SEED = 7
DEADLINE = 30.0  # seconds any single stream may take: "never a hang"
SETTLE = 5.0  # seconds tasks and descriptors get to wind down after the gateway stopped
TOKENS = 20


@dataclass(frozen=True)
class Scenario:
    """A mock model and the end it must produce."""

    model: str
    weight: int
    status: str  # "completed", "failed", or "502" for an error before the first byte
    code: str | None = None  # response.error.code of a failed stream


PACE = "ttft=0.05,token_delay=0.05"
SCENARIOS = (
    Scenario(f"text:{PACE},tokens={TOKENS}", 6, "completed"),
    Scenario(f"error-mid:{PACE}", 1, "failed", "server_error"),  # an upstream error event mid-stream
    Scenario(f"cut:{PACE}", 1, "failed", "server_error"),  # the connection drops mid-body
    Scenario(f"eof:{PACE}", 1, "failed", "server_error"),  # a clean end without finish or [DONE]
    # a chunk that is not JSON, then many more: the upstream is still sending when the gateway gives up
    Scenario(f"malformed:{PACE},tokens={TOKENS}", 1, "failed", "server_error"),
    Scenario(f"stall:{PACE}", 1, "failed", "upstream_idle_timeout"),  # silence after one chunk
    Scenario("status-500", 1, "502"),  # before the first byte: an HTTP error
)


class GatedMock(ChatCompletionsMock):
    """The Chat Completions mock, answering nothing until ``expected`` requests are waiting."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.arrived = 0
        self.everyone_here = trio.Event()
        self._arrival = trio.Event()

    async def handle(self, req: MockRequest, send: Responder) -> None:
        self.arrived += 1
        self._arrival.set()
        if self.arrived >= self.expected:
            self.everyone_here.set()
        await self.everyone_here.wait()
        await super().handle(req, send)

    async def wait_for_arrivals(self, count: int) -> None:
        """Until ``count`` requests in all have arrived."""
        while self.arrived < count:
            self._arrival = trio.Event()
            await self._arrival.wait()


@pytest.fixture
async def gated(nursery: trio.Nursery) -> AsyncIterator[Upstream]:
    mock = GatedMock(STREAMS)
    port = await nursery.start(mock.serve)
    yield Upstream(mock, port)


def count_tasks() -> int:
    """Every task in this trio run, walked down from the root task."""
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(baseline: tuple[int, int]) -> tuple[int, int]:
    """Tasks and descriptors, once they are back at ``baseline`` or ``SETTLE`` seconds passed."""
    with trio.move_on_after(SETTLE):
        while (count_tasks(), count_fds()) != baseline:  # noqa: ASYNC110 -- nothing signals "settled": poll
            await trio.sleep(0.05)
    return count_tasks(), count_fds()


def check_end(scenario: Scenario, result: SSEResult) -> None:
    """The stream ended the way its fault calls for, and honestly."""
    if scenario.status == "502":
        assert result.status == 502, (scenario.model, result.status, result.body[:300])
        error = json.loads(result.body)["error"]
        assert error["type"] == "provider_error" and error["code"] == "upstream_5xx", error
        return
    assert result.status == 200, (scenario.model, result.status, result.body[:300])
    final = check_events(result.events)
    terminals = [e["type"] for e in result.events if e["type"] in TERMINAL]
    assert terminals == [f"response.{scenario.status}"], (scenario.model, terminals)
    if scenario.status == "completed":
        assert output_text(final) == "".join(f"tok{i} " for i in range(TOKENS))
    else:
        assert final["error"]["code"] == scenario.code, (scenario.model, final["error"])


async def test_500_concurrent_streams_with_faults_end_honestly_and_leak_nothing(gated: Upstream) -> None:
    mock = gated.mock
    assert isinstance(mock, GatedMock)
    plan = random.Random(SEED).choices(SCENARIOS, weights=[s.weight for s in SCENARIOS], k=STREAMS)
    # keepalive off: a status-500 held at the gate must still be an error before the first byte
    # idle 1.5 s: the stalled scenario stalls for good, while 500 streams, their mock and their clients share
    # this one process: a healthy stream may wait most of a second for its turn when all of them are busy.
    config = make_config([gated.provider("up")], idle=1.5, keepalive=0)
    results: list[tuple[Scenario, SSEResult]] = []

    async def one(scenario: Scenario) -> None:
        with trio.fail_after(DEADLINE):
            result = await post_sse(port, {"model": f"up/{scenario.model}", "input": "soak", "stream": True})
        results.append((scenario, result))

    baseline = (count_tasks(), count_fds())
    start = trio.current_time()
    async with running_gateway(config) as port:
        async with trio.open_nursery() as nursery:
            for first in range(0, STREAMS, WAVE):
                for scenario in plan[first : first + WAVE]:
                    nursery.start_soon(one, scenario)
                with trio.fail_after(DEADLINE):
                    await mock.wait_for_arrivals(min(first + WAVE, STREAMS))
            all_in_flight = trio.current_time() - start
    elapsed = trio.current_time() - start
    after = await settled(baseline)

    ends = Counter(scenario.model.partition(":")[0] for scenario, _ in results)
    print(f"\nsoak: {STREAMS} streams all in flight after {all_in_flight:.1f} s, done after {elapsed:.1f} s; "
          f"{dict(ends)}; (tasks, fds) {baseline} -> {after}")
    assert len(results) == STREAMS
    for scenario, result in results:
        check_end(scenario, result)
    assert after == baseline, f"(tasks, fds) before the gateway {baseline}, after it stopped {after}"
    assert mock.stats.connections_open == 0, "every upstream connection was closed"
    # The gateway hangs up on an upstream only when it gave up on it: stalled, or still sending after bad data.
    models = {req.request_id: req.json()["model"].partition(":")[0] for req in mock.requests}
    hung_up = Counter(models[request_id] for request_id, _ in mock.stats.disconnects)
    assert hung_up == {name: ends[name] for name in ("stall", "malformed")}, hung_up


# -- the listen queue ------------------------------------------------------------------------------------------


def connect_burst(port: int, count: int, wait: float) -> int:
    """Start ``count`` connects at once without letting the event loop run; return how many completed.

    The kernel completes a handshake only while the listener's accept queue has room (its
    ``backlog``); a connect it has no room for is dropped and retried by the client a second
    later.  Blocking here stands for an event loop too busy to accept for ``wait`` seconds.
    """
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        poller = select.poll()
        for sock in socks:
            poller.register(sock, select.POLLOUT)
        done: set[int] = set()
        deadline = time.monotonic() + wait
        while len(done) < count and (left := deadline - time.monotonic()) > 0:
            done |= {fd for fd, _ in poller.poll(left * 1000)}
        return sum(1 for sock in socks if sock.fileno() in done and not sock.getsockopt(socket.SOL_SOCKET,
                                                                                        socket.SO_ERROR))
    finally:
        for sock in socks:
            sock.close()


async def test_a_burst_of_connections_waits_in_the_listen_queue() -> None:
    """500 clients connecting while the gateway is busy are queued, not dropped.

    hypercorn's default ``backlog`` is 100: a burst beyond it loses SYNs, and those clients
    wait 1, 3, 7 s for their retransmissions -- time-to-first-token spikes for everyone
    arriving together (the soak above had streams reach the upstream up to 14 s late).
    """
    async with running_gateway(make_config([])) as port:
        completed = connect_burst(port, STREAMS, wait=0.2)
    assert completed == STREAMS, f"only {completed} of {STREAMS} connections got through the listen queue"

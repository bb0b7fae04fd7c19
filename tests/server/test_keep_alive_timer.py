"""The worker's keep-alive timer: idle connections close on time, busy ones never, and no task per request.

The worker (``streamgw.serving.worker``) serves in this test's trio run, with a keep-alive timeout of
0.3 s and a small ASGI app; the client is a raw socket.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from streamgw.config import Config
from streamgw.engine.drain import Drain
from streamgw.serving.hypercorn_trio import SerialisedTCPServer
from streamgw.serving.main import hypercorn_config
from streamgw.serving.worker import _Server, listen

TIMEOUT = 0.3
REQUEST = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":  # an answer that takes longer than the keep-alive timeout
        await trio.sleep(TIMEOUT * 3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class _Worker:
    def __init__(self, port: int, stop: trio.Event, server: _Server) -> None:
        self.port = port
        self.stop = stop
        self.server = server
        self.finished = trio.Event()


@asynccontextmanager
async def _worker(nursery: trio.Nursery, keep_alive_timeout: float = TIMEOUT,
                  read_timeout: float | None = None) -> AsyncIterator[_Worker]:
    hc = hypercorn_config(Config())
    hc.bind = ["127.0.0.1:0"]
    hc.keep_alive_timeout = keep_alive_timeout
    hc.read_timeout = read_timeout
    sockets = listen(hc)
    port = sockets.insecure_sockets[0].getsockname()[1]
    server = _Server(_app, hc, Drain(), drain_timeout=1.0, grace=1.0)
    stop = trio.Event()
    worker = _Worker(port, stop, server)
    ready = trio.Event()

    async def run() -> None:
        try:
            await server.run(sockets, stop, ready.set)
        finally:
            worker.finished.set()

    nursery.start_soon(run)
    await ready.wait()
    try:
        yield worker
    finally:
        stop.set()
        with trio.fail_after(10):
            await worker.finished.wait()


async def _ask(stream: trio.SocketStream, request: bytes = REQUEST) -> bytes:
    """One request on ``stream``, its whole response read (and returned)."""
    await stream.send_all(request)
    data = b""
    while not data.endswith(b"ok"):
        chunk = await stream.receive_some(4096)
        assert chunk, f"closed by the server after {data!r}"
        data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    return data


async def _closed_within(stream: trio.SocketStream, seconds: float) -> float:
    """How long until the server closes ``stream`` (fails past ``seconds``)."""
    start = trio.current_time()
    with trio.fail_after(seconds):
        assert await stream.receive_some(4096) == b""
    return trio.current_time() - start


async def test_an_idle_connection_closes_after_the_keep_alive_timeout(nursery: trio.Nursery) -> None:
    async with _worker(nursery) as worker:
        async with await trio.open_tcp_stream("127.0.0.1", worker.port) as stream:
            await _ask(stream)
            held = worker.server.slots.open  # this connection's slot, and the one the accept loop waits with
            took = await _closed_within(stream, 5.0)
        assert TIMEOUT * 0.8 <= took < TIMEOUT + 1.0
        with trio.fail_after(2):  # and the worker let go of it: its slot is free
            while worker.server.slots.open != held - 1:  # noqa: ASYNC110 -- nothing signals a released slot
                await trio.sleep(0.01)


async def test_a_connection_in_use_stays_open_and_times_out_from_its_last_request(nursery: trio.Nursery) -> None:
    async with _worker(nursery) as worker:
        async with await trio.open_tcp_stream("127.0.0.1", worker.port) as stream:
            start = trio.current_time()
            while trio.current_time() - start < TIMEOUT * 4:  # requests for 4 timeouts, never idle a whole one
                await _ask(stream)
                await trio.sleep(TIMEOUT / 3)
            await _ask(stream)
            took = await _closed_within(stream, 5.0)
        assert TIMEOUT * 0.8 <= took < TIMEOUT + 1.0


async def test_a_request_served_longer_than_the_timeout_is_not_cut_by_it(nursery: trio.Nursery) -> None:
    async with _worker(nursery) as worker:
        async with await trio.open_tcp_stream("127.0.0.1", worker.port) as stream:
            await _ask(stream)  # the connection was idle once: its timer is filed
            start = trio.current_time()
            with trio.fail_after(5):
                slow = await _ask(stream, REQUEST.replace(b"GET / ", b"GET /slow "))
            took = trio.current_time() - start
            after = await _ask(stream)  # and the connection is still there for the next request
        assert took >= TIMEOUT * 3 and slow.startswith(b"HTTP/1.1 200") and slow.endswith(b"\r\n\r\nok")
        assert after.startswith(b"HTTP/1.1 200")


async def test_with_a_read_timeout_a_silent_client_is_closed_by_it(nursery: trio.Nursery) -> None:
    """hypercorn's ``read_timeout`` (not set by streamgw's configuration, but an operator's hypercorn setting):
    its timed read loop serves requests, and a client silent past it is closed as its read ends."""
    async with _worker(nursery, keep_alive_timeout=30.0, read_timeout=TIMEOUT) as worker:
        async with await trio.open_tcp_stream("127.0.0.1", worker.port) as stream:
            await _ask(stream)
            took = await _closed_within(stream, 5.0)
        assert TIMEOUT * 0.8 <= took < TIMEOUT + 1.0  # the read timeout, not the 30 s keep-alive


class _Spawns(trio.abc.Instrument):
    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_requests_on_a_kept_connection_start_no_timer_tasks(nursery: trio.Nursery) -> None:
    """hypercorn's keep-alive timer was a task per idle period: a spawn and a cancellation per request."""
    async with _worker(nursery) as worker:
        async with await trio.open_tcp_stream("127.0.0.1", worker.port) as stream:
            await _ask(stream)
            spawns = _Spawns()
            trio.lowlevel.add_instrument(spawns)
            try:
                for _ in range(20):
                    await _ask(stream)
            finally:
                trio.lowlevel.remove_instrument(spawns)
    # no task at all: each request is served in the connection's task, and the timer's one task lives across
    # requests
    assert spawns.names == []


async def test_shutdown_closes_an_idle_connection_at_once(nursery: trio.Nursery) -> None:
    async with _worker(nursery) as worker:
        async with await trio.open_tcp_stream("127.0.0.1", worker.port) as stream:
            await _ask(stream)
            worker.stop.set()
            took = await _closed_within(stream, TIMEOUT * 0.8)
        assert took < TIMEOUT * 0.8  # before the keep-alive timeout could have ended it


def _servers() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, SerialisedTCPServer))


async def test_a_connection_that_ended_is_not_kept_by_its_timer(nursery: trio.Nursery) -> None:
    """Connections that make a request and close (a flood of short clients) must not stay in memory until
    their keep-alive timeout would have come (30 s here)."""
    async with _worker(nursery, keep_alive_timeout=30.0) as worker:
        before = _servers()
        for _ in range(10):
            async with await trio.open_tcp_stream("127.0.0.1", worker.port) as stream:
                await _ask(stream)
                held = worker.server.slots.open
            with trio.fail_after(5):  # the worker saw it go
                while worker.server.slots.open != held - 1:  # noqa: ASYNC110 -- nothing signals a released slot
                    await trio.sleep(0.01)
        assert _servers() == before

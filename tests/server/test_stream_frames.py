"""What an open stream's tasks wait under, served by the production worker.

Every coroutine between trio and the wait holds its frame for as long as the stream lasts; the worker calls a
Quart application through its ``asgi_app`` (all that ``Quart.__call__`` does) and counts it in flight without a
wrapper's frame, a connection's reader is awaited without the ``_read_data`` layer that only chooses it, and the
worker's connection handler has returned once the connection's first bytes came, so none of those frames is among
them.
"""

from __future__ import annotations

import gc
import json
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from streamgw.app.routes import create_app
from streamgw.app.streaming import _CONSTANTS
from streamgw.config import Config, DemoSettings, ProviderConfig
from streamgw.engine.drain import Drain
from streamgw.serving.connections import _CONNECTION_TASK
from streamgw.serving.h1request import RequestHead
from streamgw.serving.hypercorn_trio import DirectBodyHTTPStream, LeanExchange
from streamgw.serving.main import hypercorn_config
from streamgw.serving.worker import _Server, listen


def _walk(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    return [task, *(t for nursery in task.child_nurseries for child in nursery.child_tasks for t in _walk(child))]


@asynccontextmanager
async def _slow_stream(headers: bytes = b"", chunked: bool = False) -> AsyncIterator[bytes]:
    """The production worker serving one slow demo stream, sent with ``headers``; yields its first read.

    ``chunked``: the body is sent chunked, which hypercorn's own HTTP/1.1 protocol (h11) serves."""
    slow = DemoSettings(first_token_delay=0.0, tokens_per_second=1.0)
    config = Config(providers={"demo": ProviderConfig(name="demo", type="demo", demo=slow)})
    hc = hypercorn_config(config)
    hc.bind = ["127.0.0.1:0"]
    sockets = listen(hc)
    port = sockets.insecure_sockets[0].getsockname()[1]
    server = _Server(create_app(config), hc, Drain(), drain_timeout=1.0, grace=1.0)
    stop, ready = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run, sockets, stop, ready.set)
        await ready.wait()
        body = json.dumps({"model": "demo/echo", "input": "one two three four", "stream": True}).encode()
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            framing = (b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked
                       else b"content-length: %d\r\n\r\n" % len(body) + body)
            await client.send_all(b"POST /v1/responses HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                                  + headers + framing)
            first = await client.receive_some(65536)
            assert first.startswith(b"HTTP/1.1 200")
            await trio.sleep(0.1)
            yield first
        stop.set()


def _handlers() -> list[types.CoroutineType[object, object, object]]:
    """The coroutines that run the application for a request (``_serve_asgi``), in whichever task."""
    return [c for t in _walk(trio.lowlevel.current_root_task()) for c in _coroutines(t)
            if c.cr_code.co_name == "_serve_asgi"]


def _coroutines(task: trio.lowlevel.Task) -> list[types.CoroutineType[object, object, object]]:
    """The coroutines ``task`` waits under, outermost first (found without ``cr_frame``, which makes a frame object)."""
    chain = []
    coroutine: object = task.coro
    while type(coroutine) is types.CoroutineType:
        chain.append(coroutine)
        coroutine = coroutine.cr_await
    return chain


async def test_an_open_streams_tasks_hold_no_frame_object() -> None:
    """CPython gives a coroutine a frame object when an exception passes through it (an empty socket's
    ``BlockingIOError``, hypercorn's test for TLS) and keeps it as long as the coroutine lives: ~0.2-0.3 KB each
    that an open stream would hold for as long as it lasts (checked first, before anything looks at a frame).
    trio makes one for each task's first coroutine when it starts the task: the stream has one task (its
    connection's, which serves the request itself), and that is its only one."""
    async with _slow_stream():
        tasks = _walk(trio.lowlevel.current_root_task())
        chains = [[c.cr_code.co_name for c in _coroutines(t)] for t in tasks]
        (reader,) = [t for t, names in zip(tasks, chains, strict=True) if "_read_untimed" in names]
        assert not [names for names in chains if names[:1] == ["_serve_asgi"]]  # no task of the request's own
        framed = [c.cr_code.co_name for c in _coroutines(reader)
                  if any(type(r) is types.FrameType for r in gc.get_referents(c))]
        assert framed == ["_serve_one"], framed
        # and its name is one string for all of them, not one made per task
        assert reader.name is _CONNECTION_TASK


async def test_an_open_streams_task_holds_no_framework_frame() -> None:
    async with _slow_stream():
        tasks = [t for t in _walk(trio.lowlevel.current_root_task())
                 if "_read_untimed" in [c.cr_code.co_name for c in _coroutines(t)]]
        assert len(tasks) == 1
        all_frames = [(f.f_code.co_filename.rsplit("/", 2)[-2:], f.f_code.co_name)
                      for f, _ in tasks[0].iter_await_frames()]
        # the worker's handler returned once it began; ``run`` and ``_read_data`` only chose the coroutine to
        # await; the read loop serves the request itself (``LeanH1Protocol``): no frame of the protocol's between
        assert [name for _, name in all_frames[:4]] == ["_serve_one", "_run_plain", "_read_untimed", "_serve_asgi"]
        frames = all_frames[3:]
        names = [name for _, name in frames]
        assert names[:2] == ["_serve_asgi", "__call__"], frames  # the endpoint: no InFlight frame between
        assert frames[1][0] == ["app", "streaming.py"], frames
        assert frames[2] == (["engine", "run.py"], "stream"), frames  # the run's loop, under no lifecycle frame
        assert not any(path[0] == "quart" for path, _ in frames), frames


def _scopes() -> list[dict[str, object]]:
    return [o for o in gc.get_objects() if type(o) is dict and o.get("type") == "http" and "asgi" in o]


async def test_an_open_stream_does_not_hold_its_scope() -> None:
    """The application reads what it needs of the scope when the request begins (a client's headers: an SDK
    sends a dozen or more), and neither it nor the server's short way keeps the scope while the response lasts."""
    many = b"".join(b"x-stainless-%d: value-%d\r\n" % (i, i) for i in range(12))
    async with _slow_stream(many + b"x-request-id: req-kept-1\r\n") as first:
        assert b"\r\nx-request-id: req-kept-1\r\n" in first  # read before they went
        (serving,) = _handlers()
        assert "scope" not in serving.cr_frame.f_locals
        assert _scopes() == []
        assert not [o for o in gc.get_objects() if type(o) is tuple and o[:1] == (b"x-stainless-3",)]


async def test_a_scope_hypercorn_keeps_holds_no_headers() -> None:
    """hypercorn's own HTTP/1.1 way (a chunked upload) keeps the scope for as long as the response lasts: the
    application empties its headers once read, and swaps its copies of the method, path and version for one
    shared string each."""
    many = b"".join(b"x-stainless-%d: value-%d\r\n" % (i, i) for i in range(12))
    async with _slow_stream(many + b"x-request-id: req-kept-2\r\n", chunked=True) as first:
        assert b"\r\nx-request-id: req-kept-2\r\n" in first
        (stream,) = [o for o in gc.get_objects() if type(o) is DirectBodyHTTPStream]
        (scope,) = _scopes()
        assert scope is stream.scope and list(scope["headers"]) == []
        with_constants = {key: scope[key] for key in ("method", "path", "raw_path", "http_version")}
        assert with_constants == {"method": "POST", "path": "/v1/responses", "raw_path": b"/v1/responses",
                                  "http_version": "1.1"}
        assert all(value is _CONSTANTS[value] for value in with_constants.values()), with_constants


async def test_an_open_stream_does_not_hold_its_response_head() -> None:
    """hypercorn keeps the start message for as long as the response lasts; with no access log only its status
    (and trailers flag) is read later, so the headers sent (one with the request id) are not kept."""
    async with _slow_stream(b"x-request-id: req-head-1\r\n") as first:
        assert b"\r\nx-request-id: req-head-1\r\n" in first  # sent before they went
        assert not [o for o in gc.get_objects() if type(o) is DirectBodyHTTPStream]  # the short way serves it
        (exchange,) = [o for o in gc.get_objects() if type(o) is LeanExchange]
        assert exchange.state == 1 and exchange.held is None  # streaming; the head went with the first event
        assert not [o for o in gc.get_objects() if type(o) is RequestHead]  # nor the request's
        header = (b"x-request-id", b"req-head-1")
        assert not [o for o in gc.get_objects() if type(o) is list and header in o]  # neither head's headers
        (serving,) = _handlers()
        assert serving.cr_frame is not None  # still streaming

"""What an open stream keeps while it waits for its upstream (issue 15: memory per open stream).

A stream that is quiet for minutes should hold only what its next events need: not the first events
(their response snapshots and the snapshots' JSON text), no response object (one is built for each snapshot, from
the echoed fields' values and the output so far), not the last batch of deltas and events, not
the upstream's response headers, the ``httpx.Response`` around its body or the request body's JSON, no
per-request memory channel or socket error, no frame object (CPython makes one for a coroutine an exception
passed through, an empty socket's ``BlockingIOError`` for one, and keeps it as long as the coroutine); and its
request task waits under few coroutine frames (each costs ~0.25 KB for as long as the stream lasts: no socket
wrapper layers, no framework layers between hypercorn and the endpoint).  The gateway runs in this process, so
its live objects can be looked at.
"""

from __future__ import annotations

import gc
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import trio

from streamgw.config import Config, ProviderConfig, StoreConfig
from streamgw.core.deltas import TextDelta
from streamgw.core.jsontext import Snapshot
from streamgw.core.request import ResponsesRequest
from streamgw.testing.harness import RawClient, running_gateway
from streamgw.testing.process import start_mock, stop_process

T = TypeVar("T")

# a token every 2 s: between two of them the stream is quiet
SLOW = {"model": "up/text:tokens=50,token_delay=2", "input": "hi", "stream": True}
STREAMS = 3
#: coroutines a quiet SSE stream's request task waits under (from hypercorn's task entry down to trio's wait
#: on the upstream socket): 19 before issue 15's memory work; 10 since the worker counts requests without a
#: wrapper's frame and the lifecycle hands the door the run's loop (``begin_stream``); 8 since the socket's wait
#: goes to the epoll manager's own (``sockio.wait_readable``: not trio's two coroutines that pass it on)
MAX_COROUTINES_PER_STREAM = 8


def _held() -> dict[str, int]:
    """How many of each kind the process holds (earlier tests may have left some: compare, never expect 0)."""
    gc.collect()
    found = {"snapshots": 0, "text deltas": 0, "text delta events": 0, "upstream headers": 0,
             "upstream responses": 0, "request body JSON": 0, "memory channels": 0, "socket errors": 0,
             "coroutines with a frame object": 0, "response objects": 0}
    for o in gc.get_objects():
        kind = type(o)
        if kind is Snapshot:
            found["snapshots"] += 1
        elif kind is TextDelta:
            found["text deltas"] += 1
        elif kind is dict and o.get("type") == "response.output_text.delta" and "sequence_number" in o:
            found["text delta events"] += 1
        elif kind is dict and o.get("object") == "response":  # the emitter builds one when asked, keeps none
            found["response objects"] += 1
        elif kind is ResponsesRequest and o.raw:  # a dict of strings is not tracked: look at who holds it
            found["request body JSON"] += 1
        elif kind is httpx.Headers and "content-type" in o:
            found["upstream headers"] += 1
        elif kind is httpx.Response:
            found["upstream responses"] += 1
        elif kind is trio.MemoryReceiveChannel:
            found["memory channels"] += 1
        elif isinstance(o, BlockingIOError):
            found["socket errors"] += 1
        elif kind is trio.lowlevel.Task:
            found["coroutines with a frame object"] += _framed(o)
    return found


def _framed(task: trio.lowlevel.Task) -> int:
    """How many coroutines from a stream's endpoint down to its upstream wait hold a frame object (CPython makes one
    for a traceback through the coroutine, e.g. an empty socket's ``BlockingIOError``; it is kept as long as the
    coroutine lives).  Looked for without ``cr_frame``, which would make one."""
    coroutines: list[types.CoroutineType[object, object, object]] = []
    awaited: object = task.coro
    while type(awaited) is types.CoroutineType:
        coroutines.append(awaited)
        awaited = awaited.cr_await
    names = [c.cr_code.co_qualname for c in coroutines]
    if "ResponsesEndpoint.__call__" not in names:
        return 0
    below = coroutines[names.index("ResponsesEndpoint.__call__"):]
    return sum(any(type(r) is types.FrameType for r in gc.get_referents(c)) for c in below)


def _chain(task: trio.lowlevel.Task) -> list[str]:
    """The names of the coroutines (and generators) a task waits under, outermost first."""
    names = []
    awaited: object = task.coro
    while awaited is not None:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        names.append(code.co_qualname if code is not None else type(awaited).__name__)
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return names


def _stream_coroutines() -> int:
    """The coroutines the streams' request tasks wait under."""
    gc.collect()
    return sum(len(chain) for o in gc.get_objects()
               if type(o) is trio.lowlevel.Task and "ResponsesEndpoint.__call__" in (chain := _chain(o)))


@asynccontextmanager
async def _quiet_streams(measure: Callable[[], T], body: dict[str, Any] = SLOW,
                         store: str = "none") -> AsyncIterator[T]:
    """``STREAMS`` open streams of ``body`` through an in-process gateway (``store``: its backend), each between
    two of its events; yields what ``measure`` found with the gateway up before the streams.  The mock upstream
    is another process: only the gateway's objects are in this one."""
    mock, port = await trio.to_thread.run_sync(start_mock, [])
    config = Config(providers={"up": ProviderConfig(name="up", type="chat", base_url=f"http://127.0.0.1:{port}/v1")},
                    store=StoreConfig(backend=store))
    try:
        async with running_gateway(config) as gw_port:
            before = measure()
            clients = []
            try:
                for _ in range(STREAMS):
                    client = await RawClient.connect(gw_port)
                    await client.send_json("/v1/responses", body)
                    clients.append(client)
                for client in clients:
                    assert (await client.response_head()).status_code == 200
                # the first events are written with the first token; one more batch goes out ~2 s later, and the
                # one after that is ~2 s further: in between, the stream waits with a batch behind it
                await trio.sleep(3)
                yield before
            finally:
                for client in clients:
                    await client.aclose()
    finally:
        await trio.to_thread.run_sync(stop_process, mock)
        if mock.stdout is not None:
            mock.stdout.close()


async def test_a_quiet_open_stream_keeps_no_first_events_last_batch_or_upstream_headers() -> None:
    async with _quiet_streams(_held) as before:
        now = _held()
        assert {kind: max(0, count - before[kind]) for kind, count in now.items()} == dict.fromkeys(now, 0)


async def test_a_quiet_open_stream_waits_under_few_coroutines() -> None:
    async with _quiet_streams(_stream_coroutines) as before:
        assert before == 0
        per_stream = _stream_coroutines() / STREAMS
    assert per_stream <= MAX_COROUTINES_PER_STREAM, per_stream


def _user_messages() -> int:
    """The input items (user messages) the process holds."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is dict and o.get("type") == "message" and o.get("role") == "user"
               and "question" in str(o.get("content")))


async def test_a_stored_open_stream_holds_its_input_once() -> None:
    """A response to be stored keeps its input for the record, each item with an id (minted for those the client
    sent without one): the request keeps those items too, not a second copy of each (a conversation of many turns
    would otherwise be held twice for as long as its answer streams)."""
    body = {**SLOW, "input": [{"type": "message", "role": "user", "content": f"question {i}"} for i in range(4)]}
    async with _quiet_streams(_user_messages, body, store="memory") as before:
        held = _user_messages() - before
    assert held == 4 * STREAMS, held

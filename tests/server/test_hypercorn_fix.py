"""Regression tests for ``streamgw.serving.hypercorn_trio`` (see its docstring for each cause).

The wire tests run twice: with the fix, and with hypercorn's own classes (``uninstall()``), where the
same client behaviour breaks hypercorn 0.18 — the proof that they exercise the bug.  The scheduler
is tested by driving it, and hypercorn's ``PriorityTree``, exactly as hypercorn's sender does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import h2.exceptions
import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from priority.priority import DeadlockError, DuplicateStreamError, MissingStreamError, PriorityTree

from streamgw.serving import hypercorn_trio
from streamgw.serving.hypercorn_trio import RoundRobinScheduler

from .serving_support import TLSFiles, find, gateway_config, mock_port, serving, tls_files

__all__ = ["mock_port", "tls_files"]  # fixtures, used by name
from .h2client import H2Client


async def _goaway_while_streams_send(port: int, tls: TLSFiles | None) -> None:
    """10 streams flow; once 30 kB arrived the client sends GOAWAY and waits for the server to close.

    hypercorn answers GOAWAY with ``TCPServer._close`` -> ``send_eof`` while its sender task is still
    writing DATA frames; about one connection in four lands in the unguarded window.
    """
    context = tls.client_context() if tls else None
    async with trio.open_nursery() as nursery:
        client = await H2Client.open(nursery, port, tls=context)
        try:
            body = {"model": "mock/text:tokens=200", "input": "hi", "stream": True}
            for _ in range(10):
                await client.post("/v1/responses", body)
            with trio.fail_after(10):
                await client.wait_received(30_000)
            client.conn.close_connection()
            await client.flush()
            with trio.fail_after(10):
                await client.closed.wait()  # the server closes its side
        finally:
            await client.aclose()


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "hypercorn"])
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
async def test_goaway_while_streams_send(mock_port: int, tls_files: TLSFiles, tls: bool, fixed: bool,
                                         caplog: pytest.LogCaptureFixture) -> None:
    files = tls_files if tls else None
    # Without the fix hypercorn died within 6 h2c connections in each of 35 runs (never the first).
    connections = 4 if tls else 12 if fixed else 24
    crash: BaseException | None = None
    try:
        async with serving(gateway_config(mock_port, files), fixed=fixed) as port:
            for _ in range(connections):
                await _goaway_while_streams_send(port, files)
    except BaseExceptionGroup as group:
        crash = group
    if fixed or tls:
        # TLS never had the bug: trio's SSLStream has no send_eof, so hypercorn skips the half-close.
        assert crash is None, crash
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not logged, logged
    else:
        busy = find(crash, trio.BusyResourceError) if crash else None
        assert busy is not None, f"hypercorn survived {connections} connections: {crash!r}"
        assert "another task is currently sending data on this SocketStream" in str(busy)


async def _reset_while_queued(port: int) -> list[str]:
    """Fill the socket so the server's writes queue; then reset streams whose HEADERS wait in that queue.

    Returns what went wrong on the client's side (nothing, when every frame arrived in order).
    """
    async with trio.open_nursery() as nursery:
        client = await H2Client.open(nursery, port, initial_window=2**31 - 1)
        try:
            return await _reset_while_queued_on(client)
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()


async def _reset_while_queued_on(client: H2Client) -> list[str]:
    client.stream_socket().setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 65536)
    big = {"model": "mock/text:tokens=2000,token_text=" + "x" * 2000, "input": "hi", "stream": True}
    small = {"model": "mock/text:tokens=3", "input": "hi", "stream": True}
    client.hold_reading()
    backlog = [await client.post("/v1/responses", big) for _ in range(3)]
    with trio.fail_after(10):
        await client.wait_until_backed_up()  # the server's send_all now blocks, holding the send lock
    queued = [await client.post("/v1/responses", small) for _ in range(24)]
    await trio.sleep(0.3)  # their handlers now wait for the send lock, each with its HEADERS in hand
    for reply in queued[::2]:
        await client.reset(reply)  # quart-trio cancels those handlers
    await trio.sleep(0.2)
    keep = queued[1::2] + [await client.post("/v1/responses", small) for _ in range(4)]
    for reply in backlog:
        await client.reset(reply)  # done its job; no need to read megabytes of it
    client.release_reading()
    with trio.move_on_after(15):
        for reply in keep:
            await reply.ended.wait()
    problems = []
    if isinstance(client.error, h2.exceptions.ProtocolError):
        problems.append(f"client: {type(client.error).__name__}: {client.error}")
    for reply in keep:
        if not reply.ended.is_set() or reply.reset_code is not None or reply.status != 200:
            problems.append(f"stream {reply.stream_id}: status {reply.status}, reset {reply.reset_code}, "
                            f"ended {reply.ended.is_set()}")
    return problems


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "hypercorn"])
async def test_reset_while_queued_for_the_socket(mock_port: int, fixed: bool) -> None:
    async with serving(gateway_config(mock_port), fixed=fixed) as port:
        problems = await _reset_while_queued(port)
    if fixed:
        assert problems == []
    else:  # the cancelled handlers dropped HEADERS the client's HPACK decoder needed
        assert problems, "hypercorn kept the connection in step"


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "hypercorn"])
async def test_a_client_that_stopped_reading_does_not_hold_the_shutdown(mock_port: int, fixed: bool) -> None:
    """At the hard deadline the connection is cancelled; its write, blocked on a full socket and shielded,
    must end too.  hypercorn waited for the client to go away (here: after 3 s)."""
    big = {"model": "mock/text:tokens=3000,token_text=" + "x" * 2000, "input": "hi", "stream": True}
    async with trio.open_nursery() as nursery:
        async with serving(gateway_config(mock_port), fixed=fixed) as port:
            client = await H2Client.open(nursery, port, initial_window=2**31 - 1)
            client.stream_socket().setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 65536)
            client.hold_reading()
            await client.post("/v1/responses", big)
            with trio.fail_after(10):
                await client.wait_until_backed_up()
            stopping = trio.current_time()

            async def leave_later() -> None:
                await trio.sleep(3)
                await client.aclose()

            nursery.start_soon(leave_later)
        took = trio.current_time() - stopping  # serving() gives connections graceful_timeout = 0.5 s
        await client.aclose()
        nursery.cancel_scope.cancel()
    if fixed:
        assert took < 2.5, took
    else:
        assert took >= 3, took


def _send_like_hypercorn(scheduler: PriorityTree, rounds: int = 300) -> int:
    """Drive ``scheduler`` the way hypercorn's ``H2Protocol`` does; return the long stream's frames sent.

    Stream 1 has 10 frames to send.  Each round a new stream arrives with one frame (a short
    response): ``_create_stream`` inserts and blocks it, ``stream_send`` unblocks it, and the sender
    task (``send_task`` / ``_send_data``) takes ``next()``, sends one frame, blocks a stream that has
    nothing left and removes a finished one.
    """
    frames = {1: 10}
    scheduler.insert_stream(1)
    scheduler.block(1)
    scheduler.unblock(1)
    sent = 0
    for new in range(3, 3 + 2 * rounds, 2):
        scheduler.insert_stream(new)
        scheduler.block(new)
        frames[new] = 1
        scheduler.unblock(new)
        stream = next(scheduler)
        if frames[stream]:
            frames[stream] -= 1
            sent += stream == 1
        else:
            scheduler.block(stream)
        if not frames[stream]:
            scheduler.remove_stream(stream)
            del frames[stream]
    return sent


def test_streams_take_turns_where_the_priority_tree_starves_one() -> None:
    assert _send_like_hypercorn(PriorityTree()) <= 1  # hypercorn's scheduler: 1 frame in 300 rounds
    # In turn: stream 1 waits behind the streams that were ready before it, then sends again.
    assert _send_like_hypercorn(RoundRobinScheduler(), rounds=60) == 10


def test_round_robin_scheduler_keeps_the_priority_tree_contract() -> None:
    scheduler = RoundRobinScheduler()
    with pytest.raises(DeadlockError):
        next(scheduler)
    for stream in (1, 3, 5):
        scheduler.insert_stream(stream)
    with pytest.raises(DuplicateStreamError):
        scheduler.insert_stream(3)
    with pytest.raises(MissingStreamError):
        scheduler.block(7)
    scheduler.reprioritize(9, depends_on=1, weight=200, exclusive=True)  # ignored, adds nothing
    assert [next(scheduler) for _ in range(4)] == [1, 3, 5, 1]
    scheduler.block(3)
    scheduler.unblock(5)  # already waiting: keeps its place
    assert [next(scheduler) for _ in range(3)] == [5, 1, 5]
    scheduler.unblock(3)  # back at the end of the line
    assert [next(scheduler) for _ in range(3)] == [1, 5, 3]
    scheduler.remove_stream(1)
    with pytest.raises(MissingStreamError):
        scheduler.remove_stream(1)
    assert [next(scheduler) for _ in range(2)] == [5, 3]


def _request_limit(limit: int | None) -> Callable[[HypercornConfig], None] | None:
    if limit is None:
        return None

    def tweak(hc: HypercornConfig) -> None:
        hc.keep_alive_max_requests = limit

    return tweak


@pytest.mark.parametrize("limit", [None, 5], ids=["streamgw", "hypercorn-limit"])
async def test_no_request_limit_cuts_streams_in_flight(mock_port: int, limit: int | None) -> None:
    """hypercorn's ``keep_alive_max_requests`` (1000, here 5) ends an HTTP/2 connection with GOAWAY,
    which stops the streams still in flight on it too; streamgw sets no limit."""
    async with serving(gateway_config(mock_port), tweak=_request_limit(limit)) as port:
        async with trio.open_nursery() as nursery:
            client = await H2Client.open(nursery, port)
            try:
                body = {"model": "mock/text:tokens=30,token_delay=0.01", "input": "hi", "stream": True}
                replies = [await client.post("/v1/responses", body) for _ in range(5)]
                await trio.sleep(0.05)
                replies += [await client.post("/v1/responses", body) for _ in range(2)]
                if limit is None:
                    with trio.fail_after(10):
                        for reply in replies:
                            await reply.ended.wait()
                else:
                    # After its GOAWAY hypercorn's h2 state machine sends nothing more, and whether the
                    # socket closes soon depends on timing; the streams would have ended in 0.3 s.
                    with trio.fail_after(10):
                        await client.goaway.wait()
                    with trio.move_on_after(1):
                        for reply in replies:
                            await reply.ended.wait()
            finally:
                await client.aclose()
                nursery.cancel_scope.cancel()
    if limit is None:
        for reply in replies:
            reply.check()
    else:
        assert not any(reply.status == 200 and reply.reset_code is None and b"response.completed" in reply.body
                       for reply in replies[:5]), "hypercorn let the streams in flight finish"


def test_install_is_idempotent_and_reversible() -> None:
    hypercorn_trio.install()
    hypercorn_trio.install()
    assert hypercorn_trio.installed()
    hypercorn_trio.uninstall()
    try:
        assert not hypercorn_trio.installed()
    finally:
        hypercorn_trio.install()

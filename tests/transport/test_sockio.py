"""``receive_plain``: SocketStream.receive_some's bytes and semantics without its layers; ``wait_readable``:
trio's wait without the coroutines above it."""

from __future__ import annotations

import socket
import types

import pytest
import trio
import trio.lowlevel

from streamgw.transport import sockio
from streamgw.transport.sockio import plain_socket, receive_plain, wait_readable


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_paced_reads_get_every_byte_in_order() -> None:
    left, right = await _pair()
    sock = plain_socket(right)
    assert sock is not None
    got: list[bytes] = []
    async with left, right, trio.open_nursery() as nursery:
        async def reader() -> None:
            for _ in range(20):
                got.append(await receive_plain(sock, 100))

        nursery.start_soon(reader)
        for i in range(20):
            await trio.sleep(0.002)  # the reader is parked on the socket each time
            await left.send_all(b"%02d" % i)
    assert got == [b"%02d" % i for i in range(20)]


async def test_bytes_already_there_still_let_other_tasks_run() -> None:
    left, right = await _pair()
    sock = plain_socket(right)
    assert sock is not None
    await left.send_all(b"x" * 1000)
    ran = 0

    async def other() -> None:
        nonlocal ran
        while True:
            ran += 1
            await trio.lowlevel.checkpoint()

    async with left, right, trio.open_nursery() as nursery:
        nursery.start_soon(other)
        await trio.lowlevel.checkpoint()
        before = ran
        for _ in range(10):
            assert await receive_plain(sock, 100) == b"x" * 100
        assert ran >= before + 9  # each read served at once checkpoints
        nursery.cancel_scope.cancel()


async def test_eof_cancel_and_close() -> None:
    left, right = await _pair()
    sock = plain_socket(right)
    assert sock is not None
    with trio.move_on_after(0.01) as waited:
        await receive_plain(sock, 100)
    assert waited.cancelled_caught
    await left.send_all(b"after the cancel")
    assert await receive_plain(sock, 100) == b"after the cancel"  # nothing was lost to the cancel
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await receive_plain(sock, 100)  # a cancelled scope reads nothing, even with no wait needed
    async with trio.open_nursery() as nursery:
        async def close_soon() -> None:
            await trio.sleep(0.01)
            right.socket.close()  # another task closes the socket the read waits on

        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await receive_plain(sock, 100)
    await left.aclose()
    other_left, other_right = await _pair()
    await other_left.aclose()
    other = plain_socket(other_right)
    assert other is not None and await receive_plain(other, 100) == b""  # EOF
    await other_right.aclose()


def test_only_plain_socket_streams_have_a_plain_socket() -> None:
    raw = socket.socket()
    try:
        assert plain_socket(trio.SocketStream(trio.socket.from_stdlib_socket(raw))) is raw
    finally:
        raw.close()
    ssl_stream = trio.SSLStream.__new__(trio.SSLStream)  # any non-SocketStream stream
    assert plain_socket(ssl_stream) is None


async def test_wait_readable_is_the_epoll_wait_itself() -> None:
    """Nothing of ours (nor trio's public wrapper) stays between the caller and the wait."""
    left, right = await _pair()
    async with left, right:
        waiting = wait_readable(right.socket)
        assert type(waiting) is types.CoroutineType and waiting.cr_code.co_name == "_epoll_wait"
        waiting.close()


async def test_wait_readable_wakes_cancels_and_refuses_a_second_waiter() -> None:
    left, right = await _pair()
    sock = plain_socket(right)
    assert sock is not None
    async with left, right:
        with trio.move_on_after(0.01) as waited:
            await wait_readable(sock)
        assert waited.cancelled_caught
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_readable, sock)
            await trio.sleep(0.01)
            with pytest.raises(trio.BusyResourceError):  # as trio's: one reader of an fd at a time
                await wait_readable(sock)
            await left.send_all(b"x")  # wakes the first waiter; the cancel above left no registration behind
        await trio.lowlevel.wait_readable(sock)  # and trio's own wait still works on it
        assert sock.recv(10) == b"x"


async def test_wait_readable_without_the_epoll_manager_takes_trios_way(monkeypatch: pytest.MonkeyPatch) -> None:
    left, right = await _pair()
    manager_without_epoll = types.SimpleNamespace(runner=types.SimpleNamespace(io_manager=object()))
    monkeypatch.setattr(sockio, "_RUN", manager_without_epoll)
    sock = plain_socket(right)
    assert sock is not None
    async with left, right:
        waiting = wait_readable(sock)
        assert type(waiting) is types.CoroutineType and waiting.cr_code.co_name == "wait_readable"
        await left.send_all(b"y")
        await waiting
        assert sock.recv(10) == b"y"

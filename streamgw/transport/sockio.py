"""Reading a plain TCP socket without the layers of ``trio.SocketStream``.

``SocketStream.receive_some`` reaches the socket through a conflict detector, a context manager that
translates errors, the socket wrapper's method closure and an async context manager around the first
try: about 20,000 instructions a read, which on a stream paced by its sender (one read per event) is
a good part of what the event costs.  ``receive_plain`` does what they do for a reader that owns the
socket's reads: try the socket, wait until readable when it is empty, checkpoint after a read that did
not wait; nothing else.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable

import trio
from trio._core._run import GLOBAL_RUN_CONTEXT as _RUN  # trio's per-thread run state (pinned below 0.36)

__all__ = ["plain_socket", "receive_plain", "recv_now", "wait_readable"]


def wait_readable(sock: socket.socket) -> Awaitable[None]:
    """``trio.lowlevel.wait_readable(sock)`` without the two coroutine frames it holds while it waits.

    The public function reaches the epoll wait through two coroutines that only pass the call on (the
    module-level wrapper and the I/O manager's method); each is a frame kept alive for as long as the
    wait lasts, ~0.4 KB apiece, and a quiet open stream waits on two sockets all the time.  This is not a
    coroutine: with the epoll I/O manager (Linux) it returns that manager's wait itself, with any other
    the public function's.  The wrapper's other work, shielding its frame from ``KeyboardInterrupt``, is
    moot in a worker, which takes SIGINT as a signal (``trio.open_signal_receiver``).
    """
    wait = getattr(_RUN.runner.io_manager, "_epoll_wait", None)
    return trio.lowlevel.wait_readable(sock) if wait is None else wait(sock, "read_task")  # noqa: ASYNC105  (awaited by the caller)


def plain_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The stdlib socket under ``stream`` when it is a plain TCP ``trio.SocketStream`` (None otherwise, e.g. TLS)."""
    if type(stream) is not trio.SocketStream:
        return None
    raw: socket.socket = stream.socket._sock  # type: ignore[attr-defined]  # trio keeps the stdlib socket here
    return raw


async def receive_plain(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes from ``sock`` (b"" at EOF), as ``SocketStream.receive_some`` would give them.

    As in trio, a read that waited has yielded already and only a read served at once checkpoints (so a
    busy sender still lets other tasks run).  A cancellation lands only where nothing was read.  Errors are the
    socket's ``OSError`` (or ``trio.ClosedResourceError`` when another task closed it meanwhile).
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    data = recv_now(sock, size)
    if data is not None:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data
    while True:
        await wait_readable(sock)
        data = recv_now(sock, size)
        if data is not None:  # else a spurious wake-up
            return data


def recv_now(sock: socket.socket, size: int) -> bytes | None:
    """``sock.recv(size)`` on a non-blocking socket, or ``None`` when nothing is waiting.

    The ``BlockingIOError`` of an empty socket is caught in this short-lived frame.  Raised through a coroutine's
    frame, it makes CPython give that frame a frame object (for the traceback), which then stays with the
    coroutine as long as it lives: ~0.2 KB held by a stream's reader for as long as the stream waits.
    """
    try:
        return sock.recv(size)
    except BlockingIOError:
        return None

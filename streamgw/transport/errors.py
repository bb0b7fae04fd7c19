"""The transport's one exception boundary: failures from below become httpx exceptions here.

``TrioH11Transport`` stands in for httpcore under httpx, so it keeps httpx's contract:
every failure it reports is an ``httpx.TransportError``.  What raises underneath -- trio
streams and sockets, ``ssl`` (wrapped by trio), the head and body codecs, our own deadlines
(``trio.TooSlowError``) -- is translated in one place, by one table, the way httpcore's
``map_exceptions`` does it: the operation that was running (connecting, writing, reading,
waiting for a slot) picks the httpx class for I/O errors and timeouts; protocol errors
are the same whatever the operation.  Anything else (``trio.Cancelled``, a bug) passes
through untouched.

A ``map_exceptions`` is a plain object used as a context manager, not a generator: one is
entered per request phase, and it costs about as much as an empty ``with``.  The body
iterator, which runs once per chunk, uses ``translate`` in an ``except`` clause instead, so
the per-chunk path pays nothing unless a read fails.
"""

from __future__ import annotations

from types import TracebackType
from typing import Final

import httpx
import trio

from streamgw.transport.http1body import BodyFramingError
from streamgw.transport.http1head import HeadError, LocalHeadError

__all__ = ["CONNECTING", "READING", "WAITING", "WRITING", "ProtocolViolation", "describe", "map_exceptions"]


class ProtocolViolation(Exception):
    """The server broke HTTP/1.1 in a way neither head nor body codec reports itself (it closed early...)."""


#: what trio streams and sockets raise when the connection breaks or was closed under us
#: (``ssl.SSLError`` is an ``OSError``; trio wraps it in ``BrokenResourceError`` after connect)
IO_ERRORS: Final = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)
#: the server's bytes are not HTTP/1.1: the same in every phase
_PROTOCOL_ERRORS: Final = (HeadError, BodyFramingError, ProtocolViolation)
#: how deep ``describe`` follows ``__cause__`` for a message
_MAX_CAUSES: Final = 4


def describe(exc: BaseException) -> str:
    """Words for ``exc``: its message or, when it has none, its cause's (trio wraps ssl errors
    in a ``BrokenResourceError`` without text), else its type's name."""
    for _ in range(_MAX_CAUSES):
        text = str(exc)
        if text:
            return text
        if exc.__cause__ is None:
            break
        exc = exc.__cause__
    return type(exc).__name__


class map_exceptions:  # lower case like contextlib.suppress: it is used as ``with map_exceptions(...)``
    """Translate what a transport phase raises into httpx exceptions (see the module docstring).

    Args:
        error: what an I/O error (reset, broken pipe, TLS failure...) becomes in this phase.
        timeout: what ``trio.TooSlowError`` (a deadline of this phase) becomes.
    """

    __slots__ = ("_table",)

    def __init__(self, error: type[httpx.TransportError], timeout: type[httpx.TimeoutException]) -> None:
        self._table: tuple[tuple[tuple[type[Exception], ...], type[httpx.TransportError]], ...] = (
            ((trio.TooSlowError,), timeout),
            (_PROTOCOL_ERRORS, httpx.RemoteProtocolError),
            ((LocalHeadError,), httpx.LocalProtocolError),
            (IO_ERRORS, error),
        )

    def translate(self, exc: Exception) -> Exception:
        """``exc`` as the httpx exception it maps to, or ``exc`` itself when it is not ours to map."""
        for sources, target in self._table:
            if isinstance(exc, sources):
                return target(describe(exc))
        return exc

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if isinstance(exc, Exception):
            mapped = self.translate(exc)
            if mapped is not exc:
                raise mapped from exc


#: opening TCP and TLS
CONNECTING: Final = map_exceptions(httpx.ConnectError, httpx.ConnectTimeout)
#: sending the request
WRITING: Final = map_exceptions(httpx.WriteError, httpx.WriteTimeout)
#: receiving the response head or body
READING: Final = map_exceptions(httpx.ReadError, httpx.ReadTimeout)
#: waiting for a free connection slot (only its deadline can fail it)
WAITING: Final = map_exceptions(httpx.PoolTimeout, httpx.PoolTimeout)

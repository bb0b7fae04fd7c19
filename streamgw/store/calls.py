"""Store calls as a request's trace sees them: what was asked of the store, when, and how it went.

Only recorded when tracing is on (``streamgw.app.tracing`` turns each into a span): a request
then carries a list that ``expand`` (the ``previous_response_id`` / ``item_reference`` lookups)
and the recorder (the final record's write) append to.  Without the list nothing is timed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import trio

from streamgw.errors import GatewayError

__all__ = ["StoreCall", "timed"]

T = TypeVar("T")


@dataclass(slots=True)
class StoreCall:
    """One store operation of a request (times: ``trio.current_time``).

    ``op``: ``"get"`` (the previous response), ``"item"`` (an ``item_reference``) or ``"write"``
    (the response's final record).  ``outcome``: ``found`` / ``not_found`` for lookups,
    ``written`` / ``queued`` / ``timeout`` for a write, ``cancelled``, or the error code it failed with.
    """

    op: str
    started: float
    ended: float | None = None
    outcome: str = ""

    def end(self, outcome: str) -> None:
        """Record how the call ended, once."""
        if self.ended is None:
            self.ended = trio.current_time()
            self.outcome = outcome


async def timed(calls: list[StoreCall] | None, op: str, lookup: Callable[[], Awaitable[T | None]]) -> T | None:
    """Run ``lookup`` (a store read that answers ``None`` for "not found"), timed into ``calls`` when given."""
    if calls is None:
        return await lookup()
    call = StoreCall(op, trio.current_time())
    calls.append(call)
    try:
        found = await lookup()
    except GatewayError as error:
        call.end(error.code or error.type)
        raise
    except BaseException:
        call.end("cancelled")
        raise
    call.end("not_found" if found is None else "found")
    return found

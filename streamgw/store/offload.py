"""One blocking call in a worker thread, for the writer's hot path: a lighter hop than ``trio.to_thread``.

Every stored response costs the writer one trip to a thread (encode, then the SQLite
transaction or the Redis pipeline's encoding).  ``trio.to_thread.run_sync`` spends about as
many instructions on the trip as the work itself (a capacity limiter, a copied context, and
its general cancellation machinery); the writer needs none of that: its calls are serialised
already, and it must never abandon a write half-way.  This module makes the same trip with
trio's low-level pieces only: trio's thread cache runs the call, and the worker hands the
outcome back through the run's token.

Not cancellable, like ``trio.to_thread.run_sync`` without ``abandon_on_cancel``: a cancelled
caller still waits for the call to finish (bound what can hang with a thread-side timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import trio

__all__ = ["run_in_thread"]

T = TypeVar("T")


def _never_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # the call runs to its end: a write is never left half-done


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; its result, or its exception raised here."""
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: Any) -> None:  # in the worker thread; ``result``: an ``outcome.Outcome`` (trio's own type)
        token.run_sync_soon(trio.lowlevel.reschedule, task, result)

    trio.lowlevel.start_thread_soon(partial(fn, *args), deliver)
    value: T = await trio.lowlevel.wait_task_rescheduled(_never_abort)
    return value

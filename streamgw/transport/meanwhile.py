"""Work a request gets done while its upstream works on the answer.

Between the last byte of a request and the first byte of its answer an upstream takes hundreds of
microseconds at the least (a model's time to its first token: far more), and the request's task has
nothing to do.  What the answer's first events need that the answer does not (the response object they
open with, and its JSON) can be made in that time instead of after the answer came: the engine puts
that work in ``MEANWHILE`` while an upstream request is on its way (``streamgw.engine.run``), and the
transport calls ``meanwhile()`` once the request is written, before it waits for the response head.

The work runs in the request's own task, between two of its steps: it must neither block nor raise,
and it may run more than once (every attempt of a plan, each hedged one too), so it does its part once.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

__all__ = ["MEANWHILE", "meanwhile"]

#: the current request's work for the upstream's thinking time (None: nothing)
MEANWHILE: ContextVar[Callable[[], None] | None] = ContextVar("streamgw_meanwhile", default=None)


def meanwhile() -> None:
    """Do the current context's ``MEANWHILE`` work, if any."""
    work = MEANWHILE.get()
    if work is not None:
        work()

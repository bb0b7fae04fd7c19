"""Graceful shutdown of the engine: one deadline by which every run in the process ends.

A ``Drain`` starts at rest, with its ``deadline`` at +inf.  When the process is asked to stop,
``begin(timeout)`` sets the deadline once.  Every wait a run starts afterwards includes the
deadline in its own (``ResponseRun`` takes the minimum with its idle and total deadlines); the
waits that were already running when it was set are registered here with ``watch``, and ``begin``
lowers their cancel scopes' deadlines.  Registering costs one set insertion per run (and one per
``open`` phase), never anything per event, and no task.

What the deadline means to the client:

* a run cut by it ends with ``response.failed``, ``error.code`` ``server_error`` (the closest code
  the SDK's type allows, ``ResponseError.code`` in the openai SDK) and a message that says the gateway is shutting down;
* a request still opening (no output yet) gets ``GatewayShuttingDown``: HTTP 503 with the error
  envelope, or, when a keepalive already committed a stream, the same ``response.failed``;
* a non-streamed request cut while collecting gets the same 503.

A run that ends on its own before the deadline is not touched.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from streamgw.errors import GatewayError

__all__ = ["Drain", "Drainable", "GatewayShuttingDown"]


class Drainable(Protocol):
    """Something whose current wait must end by the drain deadline (a ``ResponseRun``)."""

    def drain_at(self, deadline: float) -> None:
        """Make the wait in progress, if any, end no later than ``deadline``."""


class GatewayShuttingDown(GatewayError):
    """The gateway is shutting down and the request did not finish within the drain timeout."""

    status = 503
    type = "provider_error"
    default_code = "server_error"
    stream_code = "server_error"

    def __init__(self, message: str) -> None:
        # Another instance behind the same load balancer can take the retry at once.
        super().__init__(message, headers={"retry-after": "1"})


class Drain:
    """The process-wide drain deadline, and the waits it must cut short."""

    __slots__ = ("_begun", "_watched", "deadline", "timeout")

    def __init__(self) -> None:
        #: the time (``trio.current_time()``) by which every run must have ended; +inf until ``begin``
        self.deadline = math.inf
        #: the drain timeout ``begin`` was given, for messages
        self.timeout = math.inf
        self._watched: set[trio.CancelScope | Drainable] = set()
        self._begun = trio.Event()

    @property
    def draining(self) -> bool:
        """True once ``begin`` was called."""
        return self._begun.is_set()

    def begin(self, timeout: float) -> None:
        """Start draining: whatever is in flight must end within ``timeout`` seconds (once; later calls do nothing)."""
        if self._begun.is_set():
            return
        self.timeout = max(0.0, timeout)
        self.deadline = trio.current_time() + self.timeout
        self._begun.set()
        for item in list(self._watched):
            if isinstance(item, trio.CancelScope):
                item.deadline = min(item.deadline, self.deadline)
            else:
                item.drain_at(self.deadline)

    async def wait(self) -> None:
        """Return once draining has begun."""
        await self._begun.wait()

    def watch(self, item: trio.CancelScope | Drainable) -> None:
        """Have ``begin`` cut ``item`` short (a cancel scope's deadline, or a run's current wait)."""
        self._watched.add(item)

    def unwatch(self, item: trio.CancelScope | Drainable) -> None:
        """Forget ``item`` (idempotent)."""
        self._watched.discard(item)

    def expired(self) -> bool:
        """True when draining and the deadline has passed: a wait that just ended was cut by the drain."""
        return trio.current_time() >= self.deadline

    def message(self) -> str:
        """What a client is told when its request is cut by the drain."""
        return (f"the gateway is shutting down and the response did not finish within the "
                f"{self.timeout:g} s drain timeout; retry the request")

    @property
    def watched(self) -> int:
        """How many runs and open phases are registered (for logs and tests)."""
        return len(self._watched)

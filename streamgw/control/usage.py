"""The usage writer: usage rows aggregated in memory and written by one background task.

``add`` is synchronous (no ``await``): a response's usage is added into the pending row of its
day x key x tenant x model x provider x upstream model, and the writer task writes every pending
row in one backend call every ``interval`` seconds.  So usage never delays a response, and a burst
of requests costs one write per distinct row, not one per request.  Pending rows are bounded
(``max_rows``): beyond it a response's usage is dropped and counted; when the backend is down the
rows stay pending (within the bound) and are written once it is back.  ``aclose`` writes what is
left (bounded by the backend's timeout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from streamgw.control.base import ControlBackend, ControlUnavailable, UsageCounts, UsageKey

log = logging.getLogger("streamgw.control")

_WARN_EVERY = 30.0


class UsageWriter:
    """Pending usage rows and the task that writes them."""

    def __init__(self, backend: ControlBackend, *, interval: float = 0.25, max_rows: int = 10_000,
                 dropped: Callable[[int], None] = lambda n: None,
                 observe: Callable[[float], None] = lambda seconds: None) -> None:
        self.backend = backend
        self.interval = interval
        self.max_rows = max_rows
        self._dropped = dropped
        self._observe = observe
        self._pending: dict[UsageKey, UsageCounts] = {}
        self._warned = 0.0
        self._lock = trio.Lock()

    @property
    def pending(self) -> int:
        """Rows waiting to be written."""
        return len(self._pending)

    def add(self, key: UsageKey, counts: UsageCounts) -> bool:
        """Add one response's usage; ``False`` if it was dropped (too many pending rows). Never blocks."""
        row = self._pending.get(key)
        if row is None:
            if len(self._pending) >= self.max_rows:
                self._dropped(1)
                return False
            self._pending[key] = row = UsageCounts()
        row.add(counts)
        return True

    async def flush(self) -> None:
        """Write every pending row now (rows that fail stay pending)."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            started = time.perf_counter()
            try:
                await self.backend.add_usage(batch)
            except ControlUnavailable as exc:
                self._keep(batch)
                now = time.monotonic()
                if now - self._warned >= _WARN_EVERY:
                    self._warned = now
                    log.warning("usage not written yet (kept, %d rows pending): %s", len(self._pending), exc)
                return
            self._observe(time.perf_counter() - started)

    def _keep(self, batch: dict[UsageKey, UsageCounts]) -> None:
        """Put a batch that could not be written back in front of what came in since (within the bound)."""
        for key, counts in batch.items():
            row = self._pending.get(key)
            if row is not None:
                row.add(counts)
            elif len(self._pending) < self.max_rows:
                self._pending[key] = counts
            else:
                self._dropped(counts.requests)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write pending rows every ``interval`` seconds until cancelled (then once more, shielded)."""
        task_status.started()
        try:
            while True:
                await trio.sleep(self.interval)
                try:
                    await self.flush()
                except Exception:  # a bug must not end usage accounting: log it and go on
                    log.exception("usage writer failed")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5.0):
                await self.flush()

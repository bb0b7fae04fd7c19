"""Many things timed by one task: a heap by due time, handled by a trio system task while it holds any.

A task per timed thing (a stream's deadline, a paced chunk) costs a task and a wake-up of it each time;
when most of them are waiting, one task that keeps them in a heap and wakes only for the earliest does
the same for far less.  ``DueHeap.add`` files an item; at its time ``handle(item, now)`` runs (without a
checkpoint, in the timer's task) and says when to handle it next (None: not again).  The task is a system
task of the trio run that added the first item, and ends when the heap is empty; the next ``add`` starts
another.  ``handle`` must not raise: an exception in a system task ends the whole run.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

__all__ = ["DueHeap", "prune", "run_local"]

T = TypeVar("T")


def run_local(var: trio.lowlevel.RunVar[T], make: Callable[[], T]) -> T:
    """``var``'s value in this trio run, made by ``make`` on first use (one per run: tests serve in several)."""
    try:
        return var.get()
    except LookupError:
        value = make()
        var.set(value)
        return value


def prune(heap: list[tuple[float, int, T]], alive: Callable[[T], bool]) -> None:
    """Drop, in place, every ``(due, order, item)`` entry of ``heap`` whose item is no longer ``alive``."""
    heap[:] = [entry for entry in heap if alive(entry[2])]
    heapq.heapify(heap)


class DueHeap(Generic[T]):
    """Items by due time (``trio.current_time()``), each handled when its time comes."""

    __slots__ = ("_ended", "_handle", "_heap", "_name", "_order", "_running", "_wake")

    def __init__(self, handle: Callable[[T, float], float | None], name: str) -> None:
        self._handle = handle
        self._name = name
        self._heap: list[tuple[float, int, T]] = []
        self._order = itertools.count()  # ties by filing order; items are never compared
        self._wake: trio.CancelScope | None = None
        self._running = False
        self._ended = 0  # filings known dead since the last sweep (``ended``)

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def running(self) -> bool:
        """Whether the heap's task is running (it ends when the heap is empty)."""
        return self._running

    def add(self, due: float, item: T) -> None:
        """Handle ``item`` at ``due`` (an item may be filed more than once; ``handle`` sees each filing)."""
        heapq.heappush(self._heap, (due, next(self._order), item))
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._tick, name=self._name)
        wake = self._wake
        if wake is not None and due < wake.deadline:
            wake.deadline = due

    def keep(self, alive: Callable[[T], bool]) -> None:
        """Drop every filing whose item is no longer ``alive`` (without waking the task)."""
        prune(self._heap, alive)

    def ended(self, alive: Callable[[T], bool]) -> None:
        """A filed item ended (its filing is dead): sweep the dead ones (``keep(alive)``) once they are half
        the heap.  Without it a dead filing stays until it comes up, keeping what its item refers to; the
        task is not woken for it (a wake-up costs more than a sweep now and then)."""
        self._ended += 1
        if self._ended * 2 >= len(self._heap):
            self.keep(alive)
            self._ended = 0

    async def _tick(self) -> None:
        heap, handle = self._heap, self._handle
        try:
            while heap:
                with trio.CancelScope(deadline=heap[0][0]) as wake:
                    self._wake = wake
                    await trio.sleep_forever()
                self._wake = None
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    item = heapq.heappop(heap)[2]
                    due = handle(item, now)
                    if due is not None:
                        heapq.heappush(heap, (due, next(self._order), item))
        finally:
            self._wake = None
            self._running = False

"""``DueHeap``: many things timed by one task."""

from __future__ import annotations

import trio
import trio.testing

from streamgw.timers import DueHeap


async def test_items_are_handled_at_their_times_in_order_and_refiled(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[tuple[str, float]] = []
    start = trio.current_time()

    def handle(item: str, now: float) -> float | None:
        seen.append((item, round(now - start, 3)))
        if item == "every 2 s" and now - start < 5:
            return now + 2  # filed again
        return None

    heap: DueHeap[str] = DueHeap(handle, "test timer")
    heap.add(start + 3, "at 3 s")
    heap.add(start + 1, "every 2 s")
    heap.add(start + 1, "also at 1 s")  # same time: filing order
    assert heap.running
    await trio.sleep(10)
    assert seen == [("every 2 s", 1.0), ("also at 1 s", 1.0), ("at 3 s", 3.0), ("every 2 s", 3.0),
                    ("every 2 s", 5.0)]
    assert not heap.running and len(heap) == 0  # the task ended with the heap
    heap.add(trio.current_time() + 0.5, "later")  # and a new one starts with the next item
    assert heap.running
    await trio.sleep(1)
    assert seen[-1] == ("later", 10.5) and not heap.running


async def test_an_earlier_item_wakes_the_task_sooner_and_keep_drops_dead_items(
        autojump_clock: trio.testing.MockClock) -> None:
    seen: list[int] = []

    def handle(item: int, now: float) -> None:
        seen.append(item)

    heap: DueHeap[int] = DueHeap(handle, "test timer")
    start = trio.current_time()
    heap.add(start + 100, 1)
    await trio.sleep(1)  # the task sleeps until 100 s
    heap.add(start + 2, 2)
    heap.add(start + 50, 3)
    heap.keep(lambda item: item != 3)
    assert len(heap) == 2
    await trio.sleep(5)
    assert seen == [2]
    await trio.sleep(100)
    assert seen == [2, 1]


async def test_dead_filings_are_swept_once_they_are_half_the_heap(autojump_clock: trio.testing.MockClock) -> None:
    """``ended``: items that ended before their time leave the heap in sweeps, not one by one, and only once
    half of it is dead; what is swept is never handled (a dead filing not yet swept is: handlers check)."""
    handled: list[int] = []
    heap: DueHeap[int] = DueHeap(lambda item, now: handled.append(item), "test timer")
    dead: set[int] = set()
    for i in range(10):
        heap.add(trio.current_time() + 60, i)
    sizes = []
    for i in range(6):
        dead.add(i)
        heap.ended(lambda item: item not in dead)
        sizes.append(len(heap))
    assert sizes == [10, 10, 10, 10, 5, 5]  # the 5th end makes them half: those five go; the 6th waits
    await trio.sleep(61)
    assert sorted(handled) == [5, 6, 7, 8, 9]

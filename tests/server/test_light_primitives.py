"""The small stand-ins for trio's lock, memory channel and hypercorn's event that each connection now holds.

``LightLock``, ``AppInbox`` and ``LazyEvent`` (``streamgw.serving.hypercorn_trio``) exist to hold less per
open connection; each scenario here runs against trio's (or hypercorn's) original and the stand-in, and the
two must behave alike: who gets what, in which order, what blocks, what raises, what a cancellation leaves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.trio.worker_context import EventWrapper

from streamgw.serving.hypercorn_trio import AppInbox, LazyEvent, LightLock


class _Channel:
    """trio's memory channel behind ``AppInbox``'s interface (what hypercorn opened per request)."""

    def __init__(self, limit: int) -> None:
        self.send_side, self.receive_side = trio.open_memory_channel[Any](limit)
        self.send = self.send_side.send
        self.receive = self.receive_side.receive
        self.receive_nowait = self.receive_side.receive_nowait


Inbox = Callable[[int], Any]
INBOXES = [pytest.param(_Channel, id="trio"), pytest.param(AppInbox, id="inbox")]
LOCKS = [pytest.param(trio.Lock, id="trio"), pytest.param(LightLock, id="light")]
EVENTS = [pytest.param(EventWrapper, id="hypercorn"), pytest.param(LazyEvent, id="lazy")]


async def _run_all(*steps: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        for step in steps:
            nursery.start_soon(step)
            await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("make", INBOXES)
async def test_inbox_queues_up_to_its_limit_then_senders_wait_in_order(make: Inbox) -> None:
    inbox = make(2)
    sent: list[str] = []

    def sender(name: str) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            await inbox.send(name)
            sent.append(name)
        return send

    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()
    async with trio.open_nursery() as nursery:
        for name in "abcd":
            nursery.start_soon(sender(name))
            await trio.testing.wait_all_tasks_blocked()
        assert sent == ["a", "b"]  # c and d wait: two are queued
        assert inbox.receive_nowait() == "a"
        await trio.testing.wait_all_tasks_blocked()
        assert sent == ["a", "b", "c"]  # room for c; d still waits
        got = [await inbox.receive() for _ in range(3)]
    assert got == ["b", "c", "d"]
    assert sent == ["a", "b", "c", "d"]


@pytest.mark.parametrize("make", INBOXES)
async def test_inbox_hands_a_message_to_waiting_receivers_first_come_first_served(make: Inbox) -> None:
    inbox = make(10)
    got: list[tuple[str, str]] = []

    def receiver(name: str) -> Callable[[], Awaitable[None]]:
        async def receive() -> None:
            got.append((name, await inbox.receive()))
        return receive

    async with trio.open_nursery() as nursery:
        for name in ("r1", "r2"):
            nursery.start_soon(receiver(name))
            await trio.testing.wait_all_tasks_blocked()
        await inbox.send("x")
        await inbox.send("y")
    assert got == [("r1", "x"), ("r2", "y")]


@pytest.mark.parametrize("make", INBOXES)
async def test_inbox_cancelled_waiters_leave_no_trace(make: Inbox) -> None:
    inbox = make(1)
    await inbox.send("kept")
    with trio.move_on_after(0.01):
        await inbox.send("dropped")  # the queue is full: waits, then is cancelled
    assert inbox.receive_nowait() == "kept"
    with trio.move_on_after(0.01):
        await inbox.receive()  # empty: waits, then is cancelled
    await inbox.send("next")
    assert inbox.receive_nowait() == "next"
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


@pytest.mark.parametrize("make", INBOXES)
async def test_inbox_without_room_is_a_rendezvous(make: Inbox) -> None:
    inbox = make(0)
    done: list[str] = []

    async def send() -> None:
        await inbox.send("m")
        done.append("sent")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        assert inbox.receive_nowait() == "m"
    assert done == ["sent"]


@pytest.mark.parametrize("make", INBOXES)
async def test_inbox_send_and_receive_are_checkpoints(make: Inbox) -> None:
    inbox = make(1)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await inbox.send("m")  # there is room, but the scope is cancelled: nothing sent
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()
    await inbox.send("m")
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await inbox.receive()  # a message waits, but the scope is cancelled: it stays
    assert inbox.receive_nowait() == "m"


@pytest.mark.parametrize("make", LOCKS)
async def test_lock_is_handed_to_waiters_in_order(make: Callable[[], Any]) -> None:
    lock = make()
    log: list[str] = []

    def worker(name: str) -> Callable[[], Awaitable[None]]:
        async def work() -> None:
            async with lock:
                log.append(f"{name} in")
                await trio.sleep(0.01)
                log.append(f"{name} out")
        return work

    await _run_all(worker("a"), worker("b"), worker("c"))
    assert log == ["a in", "a out", "b in", "b out", "c in", "c out"]
    assert not lock.locked()


@pytest.mark.parametrize("make", LOCKS)
async def test_lock_stays_locked_while_anyone_queues(make: Callable[[], Any]) -> None:
    lock = make()
    await lock.acquire()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lock.acquire)
        await trio.testing.wait_all_tasks_blocked()
        lock.release()  # handed over to the waiter, which has not run yet
        assert lock.locked()
        with pytest.raises(trio.WouldBlock):
            lock.acquire_nowait()
    assert lock.locked()  # the waiter holds it (and ended without releasing)


@pytest.mark.parametrize("make", LOCKS)
async def test_lock_misuse_and_cancellation(make: Callable[[], Any]) -> None:
    lock = make()
    lock.acquire_nowait()
    with pytest.raises(RuntimeError):
        lock.acquire_nowait()  # this task holds it already

    async def release_elsewhere() -> None:
        with pytest.raises(RuntimeError):
            lock.release()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_elsewhere)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lock.acquire)  # waits
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # the waiter gives up
    lock.release()
    assert not lock.locked()  # nobody left in the queue
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await lock.acquire()  # free, but a checkpoint first
    assert not lock.locked()


@pytest.mark.parametrize("make", EVENTS)
async def test_event_wait_set_clear(make: Callable[[], Any]) -> None:
    event = make()
    assert not event.is_set()
    await event.set()
    assert event.is_set()
    await event.wait()  # set: returns
    await event.clear()
    assert not event.is_set()
    woke: list[str] = []

    async def waiter() -> None:
        await event.wait()
        woke.append("woke")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        await event.set()
    assert woke == ["woke"]
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await event.wait()  # set, but a checkpoint first

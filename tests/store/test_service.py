"""The store service: pending records readable at once, one writer, failures counted and survived."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from streamgw.app.metrics import Metrics
from streamgw.config import StoreConfig
from streamgw.store.base import EncodedRecord, StoredResponse, StoreUnavailable
from streamgw.store.memory import MemoryBackend
from streamgw.store.redis import RedisBackend
from streamgw.store.service import StoreService

from .conftest import eventually


def errors(metrics: Metrics, op: str) -> float:
    return metrics.registry.get_sample_value("streamgw_store_errors_total", {"op": op}) or 0.0


def stored(response_id: str, status: str = "completed", text: str = "hi", created_at: float | None = None
           ) -> StoredResponse:
    output = [{"id": f"msg_out_{response_id}", "type": "message", "role": "assistant",
               "content": [{"type": "output_text", "text": text}]}]
    return StoredResponse(
        id=response_id, response={"id": response_id, "status": status, "output": output},
        input_items=({"id": f"msg_in_{response_id}", "type": "message", "role": "user", "content": []},),
        origins=("@gateway",), provider="mock", provider_type="chat",
        index_ids=(f"msg_in_{response_id}", f"msg_out_{response_id}"),
        created_at=time.time() if created_at is None else created_at,
    )


class GatedBackend(MemoryBackend):
    """A memory backend whose writes wait until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = trio.Event()
        self.release = trio.Event()
        self.batches: list[list[str]] = []

    async def put_many(self, records: Sequence[EncodedRecord]) -> None:
        self.batches.append([r.id for r in records])
        self.writing.set()
        await self.release.wait()
        await super().put_many(records)


async def status_of(service: StoreService, response_id: str) -> str:
    record = await service.get(response_id, "")
    assert record is not None
    return record.status


async def wait_written(service: StoreService) -> None:
    async def written() -> bool:
        return not service.pending

    await eventually(written)


async def test_pending_records_read_back_before_and_after_the_write(running: Any) -> None:
    backend = MemoryBackend()
    service = StoreService(StoreConfig(backend="memory"), Metrics(), backend)
    record = stored("resp_1")
    service.submit(record)
    assert (await service.get("resp_1", "")) == record, "readable before the writer ran"
    assert await backend.get("resp_1") is None
    await running(service)
    await wait_written(service)
    assert await backend.get("resp_1") is not None
    assert (await service.get("resp_1", "")) == record
    found = await service.item("msg_out_resp_1", "")
    assert found is not None and found[1] == "mock" and found[0]["content"][0]["text"] == "hi"


async def test_the_latest_version_wins(running: Any) -> None:
    backend = GatedBackend()
    service = await running(StoreService(StoreConfig(backend="memory"), Metrics(), backend))
    service.submit(stored("resp_1", status="in_progress"))
    with trio.fail_after(5):
        await backend.writing.wait()
    service.submit(stored("resp_1", status="completed", text="final"))  # arrives while the snapshot is written
    assert await status_of(service, "resp_1") == "completed"
    backend.release.set()
    await wait_written(service)
    assert backend.batches == [["resp_1"], ["resp_1"]]
    assert await status_of(service, "resp_1") == "completed"


async def test_a_delete_during_the_write_is_not_undone(running: Any) -> None:
    backend = GatedBackend()
    service = await running(StoreService(StoreConfig(backend="memory"), Metrics(), backend))
    service.submit(stored("resp_1"))
    with trio.fail_after(5):
        await backend.writing.wait()
    assert await service.delete("resp_1", "") is True
    backend.release.set()
    await wait_written(service)
    await trio.sleep(0.05)
    assert await service.get("resp_1", "") is None and await backend.get("resp_1") is None
    assert await service.delete("resp_1", "") is False


async def test_a_full_queue_drops_with_one_warning_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    service = StoreService(StoreConfig(backend="memory", queue_size=2), metrics, MemoryBackend())
    with caplog.at_level(logging.WARNING, logger="streamgw.store"):
        for i in range(10):
            service.submit(stored(f"resp_{i}"))
    assert errors(metrics, "queue_full") == 8
    assert service.pending == 2 and await service.get("resp_9", "") is None
    assert len([r for r in caplog.records if "queue is full" in r.getMessage()]) == 1


async def test_too_large_is_a_tombstone(running: Any) -> None:
    metrics = Metrics()
    service = await running(StoreService(StoreConfig(backend="memory", max_response_bytes=600), metrics,
                                         MemoryBackend()))
    service.submit(stored("resp_small"))
    service.submit(stored("resp_big", text="x" * 1000))
    await wait_written(service)
    big = await service.get("resp_big", "")
    assert big is not None and big.omitted is not None and "max_response_bytes (600)" in big.omitted
    assert big.input_items == () and await service.item("msg_in_resp_big", "") is None
    small = await service.get("resp_small", "")
    assert small is not None and small.omitted is None
    assert errors(metrics, "too_large") == 1


async def test_retention_sets_the_expiry(running: Any) -> None:
    clock = [1000.0]
    backend = MemoryBackend(clock=lambda: clock[0])
    service = await running(StoreService(StoreConfig(backend="memory", retention_days=1), Metrics(), backend,
                                         clock=lambda: clock[0]))
    service.submit(stored("resp_1", created_at=1000.0))
    await wait_written(service)
    clock[0] += 86399
    assert await service.get("resp_1", "") is not None
    clock[0] += 2
    assert await service.get("resp_1", "") is None


async def test_a_store_that_is_down_loses_records_but_not_requests(running: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    backend = RedisBackend("redis://127.0.0.1:1/0", timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="streamgw.store"):
        service = await running(StoreService(StoreConfig(backend="redis"), metrics, backend))
        service.submit(stored("resp_1"))
        await wait_written(service)
    assert errors(metrics, "open") == 1 and errors(metrics, "write") == 1
    with pytest.raises(StoreUnavailable) as failure:
        await service.get("resp_1", "")
    assert failure.value.status == 503 and failure.value.code == "store_unavailable"
    assert errors(metrics, "read") == 1
    assert any("not stored" in r.getMessage() for r in caplog.records)


async def test_close_drains_the_queue() -> None:
    backend = MemoryBackend()
    service = StoreService(StoreConfig(backend="memory"), Metrics(), backend)
    async with trio.open_nursery() as nursery:
        for i in range(200):
            service.submit(stored(f"resp_{i}"))
        await nursery.start(service.run)
        await service.aclose()
    assert all([await backend.get(f"resp_{i}") is not None for i in range(200)])
    service.submit(stored("resp_late"))  # after shutdown: dropped, never raised
    assert await service.get("resp_late", "") is None


async def test_disabled_store_keeps_nothing() -> None:
    service = StoreService(StoreConfig(backend="none"), Metrics())
    assert not service.enabled
    service.submit(stored("resp_1"))
    assert await service.get("resp_1", "") is None and await service.delete("resp_1", "") is False
    assert await service.item("msg_in_resp_1", "") is None


async def test_waiting_for_a_write_ends_when_it_is_written_or_given_up(running: Any) -> None:
    backend = GatedBackend()
    service = await running(StoreService(StoreConfig(backend="memory", queue_size=1), Metrics(), backend))
    await service.wait_written("resp_unknown")  # nothing pending: at once
    service.submit(stored("resp_1"))
    done = trio.Event()

    async def wait() -> None:
        await service.wait_written("resp_1")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await backend.writing.wait()
        service.submit(stored("resp_2"))  # queued
        service.submit(stored("resp_3"))  # the queue is full: dropped, so nobody waits for it
        await service.wait_written("resp_3")
        await trio.sleep(0.01)
        assert not done.is_set(), "still being written"
        backend.release.set()
    assert done.is_set() and await backend.get("resp_1") is not None


class CountingBackend(MemoryBackend):
    """A memory backend that lists the id of every record it writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []

    async def put_many(self, records: Sequence[EncodedRecord]) -> None:
        self.written += [r.id for r in records]
        await super().put_many(records)


class _Steps(trio.abc.Instrument):
    """How many times tasks named ``name`` were scheduled."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == self.name:
            self.count += 1


async def test_held_snapshots_are_written_only_if_still_current_and_come_due_in_groups(running: Any) -> None:
    """30 streams start 5 ms apart; 20 end at once.  The 10 still running have their snapshot written (not
    before ``snapshot_after``); the others only their final object.  The snapshots' timer wakes per group
    of due times (a tenth of the delay), not per stream."""
    backend = CountingBackend()
    service = await running(StoreService(StoreConfig(backend="memory", snapshot_after=0.5), Metrics(), backend))
    steps = _Steps("streamgw store snapshots")
    trio.lowlevel.add_instrument(steps)
    try:
        started = trio.current_time()
        for i in range(30):
            service.submit(stored(f"resp_{i}", status="in_progress"), snapshot=True)
            if i % 3:
                service.submit(stored(f"resp_{i}", status="completed"))
            await trio.sleep(0.005)
        with trio.fail_after(5):
            while len(set(backend.written)) < 30:  # noqa: ASYNC110 -- the writer signals nothing per record
                await trio.sleep(0.02)
        waited = trio.current_time() - started
        await wait_written(service)
    finally:
        trio.lowlevel.remove_instrument(steps)
    statuses = {i: await status_of(service, f"resp_{i}") for i in range(30)}
    assert [i for i, s in statuses.items() if s == "in_progress"] == list(range(0, 30, 3))
    assert all(s == "completed" for i, s in statuses.items() if i % 3)
    assert waited >= 0.5
    assert sorted(backend.written) == sorted(f"resp_{i}" for i in range(30))  # each written once
    assert 1 <= steps.count <= 6, steps.count  # 30 snapshots over 150 ms: 3-4 groups of 50 ms

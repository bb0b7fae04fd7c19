"""The store as the app uses it: one writer task, a bounded queue, and the records not yet written.

Storing never adds latency to a response: ``submit`` is synchronous (no ``await``), it puts
the record in ``pending`` and its id in a bounded queue, and one writer task (started in
the app's lifespan nursery) drains the queue in batches, encodes them in a worker thread
and hands them to the backend.  Reads (GET, chaining) look in ``pending`` first, so an id
whose write is still queued or in flight never reads as missing.  A newer version of a
record (a stream's final object after its ``in_progress`` snapshot) replaces the pending
one; the writer always writes the latest.

Every read takes the caller's tenant: a record of another tenant is treated exactly as a
missing one (``get`` and ``item`` return ``None``, ``delete`` returns ``False``), here and
nowhere else, so no route can forget the check.

When the queue is full, a record is too large, or the backend is down, the failure is
counted in ``streamgw_store_errors_total{op}``, logged at most once per interval per kind,
and the response is served all the same.  Reads raise ``StoreUnavailable`` (503).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio

from streamgw.app.metrics import Metrics
from streamgw.config import StoreConfig
from streamgw.store.base import (
    Backend,
    EncodedRecord,
    StoredResponse,
    StoreUnavailable,
    decode_record,
    encode_record,
)

log = logging.getLogger("streamgw.store")

_BATCH = 64  # records per backend write at most
_WARN_EVERY = 30.0  # seconds between two warnings of the same kind
_PURGE_EVERY = 3600.0  # seconds between two purges of expired records
_DECODE_INLINE = 64 * 1024  # bigger records are decoded in a worker thread
_CLOSE_GRACE = 5.0  # seconds the writer gets to drain the queue at shutdown


def open_backend(config: StoreConfig, clock: Callable[[], float] = time.time) -> Backend | None:
    """The backend ``config`` names (``None`` for ``"none"``); nothing is opened yet."""
    if config.backend == "sqlite":
        from streamgw.store.sqlite import SQLiteBackend

        return SQLiteBackend(config.path, clock=clock)
    if config.backend == "redis":
        from streamgw.store.redis import RedisBackend

        return RedisBackend(config.url, key_prefix=config.key_prefix, timeout=config.timeout, clock=clock)
    if config.backend == "memory":
        from streamgw.store.memory import MemoryBackend

        return MemoryBackend(clock=clock)
    return None


class StoreService:
    """Pending records, the writer task, and reads that see both."""

    def __init__(self, config: StoreConfig, metrics: Metrics, backend: Backend | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.backend = backend if backend is not None else open_backend(config, clock)
        self._metrics = metrics
        self._clock = clock
        self._pending: dict[str, StoredResponse] = {}
        self._queued: set[str] = set()
        self._in_flight: set[str] = set()
        self._deleted: set[str] = set()  # deleted while a write of theirs was in flight
        self._waiters: dict[str, trio.Event] = {}  # ids someone waits to see written (or given up)
        self._send, self._receive = trio.open_memory_channel[str](config.queue_size)
        self._warned: dict[str, float] = {}
        self._stopped = trio.Event()

    @property
    def enabled(self) -> bool:
        """False for ``backend = "none"``: nothing is stored, nothing can be read."""
        return self.backend is not None

    @property
    def pending(self) -> int:
        """Records submitted but not yet written."""
        return len(self._pending)

    # -- writing --------------------------------------------------------------------------------

    def submit(self, record: StoredResponse) -> None:
        """Queue ``record`` for writing (replacing a pending older version).  Never blocks."""
        if self.backend is None:
            return
        self._pending[record.id] = record
        if record.id not in self._queued and record.id not in self._in_flight:
            self._enqueue(record.id)

    async def wait_written(self, response_id: str) -> None:
        """Return once ``response_id`` has no pending version left: written, or given up on (bound it)."""
        if response_id not in self._pending:
            return
        event = self._waiters.setdefault(response_id, trio.Event())
        await event.wait()

    def _forget(self, response_id: str) -> None:
        """No version of ``response_id`` is pending any more: wake whoever waits for it."""
        self._pending.pop(response_id, None)
        event = self._waiters.pop(response_id, None)
        if event is not None:
            event.set()

    def _enqueue(self, response_id: str) -> None:
        try:
            self._send.send_nowait(response_id)
        except (trio.WouldBlock, trio.ClosedResourceError) as exc:
            self._forget(response_id)
            why = "the write queue is full" if isinstance(exc, trio.WouldBlock) else "the store is shutting down"
            self.report("queue_full", f"response {response_id} not stored: {why} ([store] queue_size)")
            return
        self._queued.add(response_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: open the backend, write until ``aclose``, purge expired records now and then.

        Reports started at once: a store that is slow to answer never delays the gateway's start.
        """
        task_status.started()
        try:
            if self.backend is not None:
                try:
                    await self.backend.open()
                except StoreUnavailable as exc:
                    self.report("open", f"{exc.message}; responses are served but not stored until it recovers")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._purge_loop)
                await self._write_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._stopped.set()
            if self.backend is not None:
                with trio.CancelScope(shield=True):
                    await self.backend.aclose()

    async def aclose(self) -> None:
        """Stop taking records, let the writer drain what is queued (a few seconds at most)."""
        self._send.close()
        with trio.move_on_after(_CLOSE_GRACE):
            await self._stopped.wait()

    async def _write_loop(self) -> None:
        async with self._receive:
            async for first in self._receive:
                ids = [first]
                while len(ids) < _BATCH:
                    try:
                        ids.append(self._receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._write_batch(ids)

    async def _write_batch(self, ids: list[str]) -> None:
        self._queued.difference_update(ids)
        records = [self._pending[i] for i in ids if i in self._pending]
        if not records or self.backend is None:
            return
        self._in_flight.update(r.id for r in records)
        started = trio.current_time()
        oversized: list[str] = []
        try:
            await self.backend.write(partial(self._encode_all, records, oversized))
        except StoreUnavailable as exc:
            self.report("write", f"{len(records)} response(s) not stored: {exc.message}")
        finally:
            self._in_flight.difference_update(r.id for r in records)
        for message in oversized:
            self.report("too_large", message)
        self._metrics.store_write_seconds.observe(trio.current_time() - started)
        for record in records:
            await self._after_write(record)

    async def _after_write(self, record: StoredResponse) -> None:
        """Forget what was written; requeue a newer version; undo a write that raced a DELETE."""
        if self._pending.get(record.id) is record:
            self._forget(record.id)
        elif record.id in self._pending and record.id not in self._queued:
            self._enqueue(record.id)
        if record.id in self._deleted and self.backend is not None:
            self._deleted.discard(record.id)
            try:
                await self.backend.delete(record.id, record.owner)
            except StoreUnavailable as exc:
                self.report("delete", exc.message)

    def _encode_all(self, records: Sequence[StoredResponse], oversized: list[str]) -> list[EncodedRecord]:
        """Worker thread: JSON for every record; one too large becomes a small tombstone (noted in ``oversized``)."""
        retention = self.config.retention_days * 86400.0
        limit = self.config.max_response_bytes
        encoded: list[EncodedRecord] = []
        for record in records:
            expires = record.created_at + retention if retention > 0 else None
            body = encode_record(record)
            if len(body) > limit:
                why = (f"response {record.id} was not stored: its record is {len(body)} bytes, over the "
                       f"store's max_response_bytes ({limit})")
                oversized.append(why)
                tombstone = StoredResponse(record.id, {"id": record.id}, created_at=record.created_at, omitted=why,
                                           owner=record.owner)
                encoded.append(EncodedRecord(record.id, encode_record(tombstone), expires, owner=record.owner))
                continue
            encoded.append(EncodedRecord(record.id, body, expires, tuple(record.pointers()), record.owner))
        return encoded

    async def _purge_loop(self) -> None:
        while self.backend is not None:
            try:
                await self.backend.purge(self._clock())
            except StoreUnavailable as exc:
                self.report("purge", exc.message)
            await trio.sleep(_PURGE_EVERY)

    # -- reading --------------------------------------------------------------------------------

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        """``tenant``'s record (pending first), or ``None`` — also when it is another tenant's.

        ``StoreUnavailable`` if the backend is down.
        """
        record = await self._read(response_id)
        # Another tenant's record is missing, not forbidden: the same answer leaks nothing.
        return record if record is not None and record.owner == tenant else None

    async def _read(self, response_id: str) -> StoredResponse | None:
        """The record whoever owns it: never hand it out without comparing its owner."""
        record = self._pending.get(response_id)
        if record is not None or self.backend is None:
            return record
        try:
            body = await self.backend.get(response_id)
        except StoreUnavailable as exc:
            self.report("read", exc.message)
            raise
        return None if body is None else await self._decode(response_id, body)

    async def item(self, item_id: str, tenant: str) -> tuple[dict[str, Any], str] | None:
        """An item by id and the origin of its id, from any of ``tenant``'s stored or pending responses."""
        if self.backend is None:
            return None
        try:
            pointer = await self.backend.locate(item_id, tenant)
        except StoreUnavailable as exc:
            self.report("read", exc.message)
            raise
        if pointer is not None:
            record = await self.get(pointer.response_id, tenant)
            found = record.item_at(pointer) if record is not None else None
            if found is not None:
                return found
        for record in reversed(list(self._pending.values())):
            if record.owner != tenant:
                continue
            for candidate in record.pointers():
                if candidate.item_id == item_id:
                    return record.item_at(candidate)
        return None

    async def delete(self, response_id: str, tenant: str) -> bool:
        """Delete ``tenant``'s record (pending or written); ``False`` if there was none (or it is another's)."""
        if self.backend is None or await self.get(response_id, tenant) is None:
            return False
        self._forget(response_id)
        if response_id in self._in_flight:
            self._deleted.add(response_id)
        try:
            await self.backend.delete(response_id, tenant)
        except StoreUnavailable as exc:
            self.report("delete", exc.message)
            raise
        return True

    async def _decode(self, response_id: str, body: bytes) -> StoredResponse | None:
        try:
            if len(body) > _DECODE_INLINE:
                return await trio.to_thread.run_sync(decode_record, body)
            return decode_record(body)
        except (ValueError, KeyError, TypeError) as exc:
            self.report("read", f"stored response {response_id} is unreadable ({exc}); treating it as missing")
            return None

    # -- failures -------------------------------------------------------------------------------

    def report(self, op: str, message: str) -> None:
        """Count a store failure; log it unless the same kind was logged less than 30 s ago."""
        self._metrics.store_errors.labels(op).inc()
        now = time.monotonic()
        last = self._warned.get(op)
        if last is None or now - last >= _WARN_EVERY:
            self._warned[op] = now
            log.warning("response store (%s): %s", op, message)

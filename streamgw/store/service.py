"""The store as the app uses it: one writer task, a bounded queue, and the records not yet written.

Storing never adds latency to a response: ``submit`` is synchronous (no ``await``), it puts
the record in ``pending`` and its id in a bounded queue, and one writer task (started in
the app's lifespan nursery) drains the queue in batches, encodes them in a worker thread
and hands them to the backend.  Reads (GET, chaining) look in ``pending`` first, so an id
whose write is still queued or in flight never reads as missing.  A newer version of a
record (a stream's final object after its ``in_progress`` snapshot) replaces the pending
one; the writer always writes the latest.  A snapshot is held back ``[store] snapshot_after``
seconds before it is queued at all (a ``DueHeap`` queues the ones still current then), so
a stream that ends sooner is written once: its final object.

Every read takes the caller's tenant: a record of another tenant is treated exactly as a
missing one (``get`` and ``item`` return ``None``, ``delete`` returns ``False``), here and
nowhere else, so no route can forget the check.

When the queue is full, a record is too large or cannot be encoded, or the backend is down,
the failure is counted in ``streamgw_store_errors_total{op}`` (and the records it cost in
``streamgw_store_records_dropped_total{reason}``), logged at most once per interval per kind,
and the response is served all the same.  Reads raise ``StoreUnavailable`` (503), after
``[store] timeout`` at most.

Nothing in one record can stop the writer: each record is encoded on its own (one that cannot
be becomes a tombstone that says why), a batch that fails for a reason other than an outage is
retried record by record, and the writer, purge and health tasks are supervised (a crashed
task is logged and restarted).  The service knows whether the store can write (the last
write or health check failed, or a write has hung past the timeout): ``/readyz`` reports it,
and while it cannot, a terminal event does not wait for its record (``confirm_writes``), so a
store that hangs never delays answers.  A health task checks the store now and then, and
every second while it is unwritable, so readiness recovers without traffic.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, Protocol

import trio
from prometheus_client import Counter, Gauge, Histogram

from streamgw.config import StoreConfig
from streamgw.store.base import (
    Backend,
    EncodedRecord,
    RecordNotEncodable,
    StoredResponse,
    StoreUnavailable,
    decode_record,
    encode_record,
)
from streamgw.timers import DueHeap

log = logging.getLogger("streamgw.store")


class StoreMetrics(Protocol):
    """The instruments the service reports to (``streamgw.app.metrics.Metrics`` has them all).

    A protocol rather than the app's class: the store sits below the app and must not import it.
    """

    @property
    def store_errors(self) -> Counter: ...  # labelled by op
    @property
    def store_dropped(self) -> Counter: ...  # labelled by reason
    @property
    def store_task_restarts(self) -> Counter: ...  # labelled by task
    @property
    def store_writable(self) -> Gauge: ...
    @property
    def store_write_seconds(self) -> Histogram: ...
    @property
    def store_seconds(self) -> Histogram: ...  # labelled by op

_BATCH = 64  # records per backend write at most
_WARN_EVERY = 30.0  # seconds between two warnings of the same kind
_PURGE_EVERY = 3600.0  # seconds between two purges of expired records
_DECODE_INLINE = 64 * 1024  # bigger records are decoded in a worker thread
_CLOSE_GRACE = 5.0  # seconds the writer gets to drain the queue at shutdown
_PROBE_EVERY = 1.0  # seconds between two health checks of a store that cannot write
_CHECK_EVERY = 10.0  # seconds between two health checks of a store that can (finds a deleted SQLite file)
_RESTART_FIRST, _RESTART_MAX = 0.1, 5.0  # seconds before a crashed task restarts (doubling)
_RESTART_RESET = 30.0  # a task that ran this long before crashing restarts after _RESTART_FIRST again


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

    def __init__(self, config: StoreConfig, metrics: StoreMetrics, backend: Backend | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.backend = backend if backend is not None else open_backend(config, clock)
        self._metrics = metrics
        self._write_seconds = metrics.store_seconds.labels("write")  # looked up once: every batch observes it
        self._clock = clock
        self._pending: dict[str, StoredResponse] = {}
        self._queued: set[str] = set()
        self._in_flight: set[str] = set()
        self._deleted: set[str] = set()  # deleted while a write of theirs was in flight
        self._waiters: dict[str, trio.Event] = {}  # ids someone waits to see written (or given up)
        self._send, self._receive = trio.open_memory_channel[str](config.queue_size)
        self._warned: dict[str, float] = {}
        self._stopped = trio.Event()
        self._problem: str | None = None  # why the store cannot write (last write or check failed)
        self._write_started: float | None = None  # trio clock: when the write in flight began
        self._writer_up = False
        self._batch: list[str] = []  # the ids the writer took from the queue and has not finished
        #: snapshots not queued yet: id -> (trio time when due, the snapshot); in due order (one delay for all)
        #: snapshots held back (``snapshot_after``), by when they are due; a task runs only while it holds any
        self._held: DueHeap[StoredResponse] = DueHeap(self._snapshot_due, "streamgw store snapshots")
        self._failing = trio.Event()  # set when the store starts failing: wakes the health task
        #: seconds between two health checks (writable, unwritable); attributes so tests can shorten them
        self.check_every = _CHECK_EVERY
        self.probe_every = _PROBE_EVERY
        if self.backend is not None:
            metrics.store_writable.set(1)

    @property
    def enabled(self) -> bool:
        """False for ``backend = "none"``: nothing is stored, nothing can be read."""
        return self.backend is not None

    @property
    def pending(self) -> int:
        """Records submitted but not yet written."""
        return len(self._pending)

    # -- writing --------------------------------------------------------------------------------

    def submit(self, record: StoredResponse, *, snapshot: bool = False) -> None:
        """Queue ``record`` for writing (replacing a pending older version).  Never blocks.

        A ``snapshot`` (a stream's ``in_progress`` object) is held back ``[store] snapshot_after``
        seconds and queued only if no newer version replaced it by then: most streams end sooner,
        and are then written once, not twice.  It is pending, so this instance reads it at once.
        """
        if self.backend is None:
            return
        self._pending[record.id] = record
        if record.id in self._queued or record.id in self._in_flight:
            return
        delay = self.config.snapshot_after
        if snapshot and delay > 0:
            # Due times rounded up to a tenth of the delay: the snapshots of a busy second come up together,
            # one wake-up for many, each at most 10 % later.
            step = delay / 10
            self._held.add(math.ceil((trio.current_time() + delay) / step) * step, record)
            return
        self._enqueue(record.id)

    def unwritable(self) -> str | None:
        """Why the store cannot take writes now (``None``: it can, or there is no store).

        The circuit breaker of ``wait_written`` and the store part of ``/readyz``.
        """
        if self.backend is None:
            return None
        if not self._writer_up:
            return "the writer task is not running"
        if self._problem is not None:
            return self._problem
        started = self._write_started
        if started is not None and trio.current_time() - started > self.config.timeout:
            return f"a write has not finished within the store timeout ({self.config.timeout:g} s)"
        return None

    async def wait_written(self, response_id: str) -> None:
        """Return once ``response_id`` has no pending version left: written, or given up on (bound it).

        Returns at once while the store cannot write: a store that is down or hangs must
        not make every response wait for its timeout.
        """
        if response_id not in self._pending or self.unwritable() is not None:
            return
        event = self._waiters.setdefault(response_id, trio.Event())
        await event.wait()

    def _forget(self, response_id: str) -> None:
        """No version of ``response_id`` is pending any more: wake whoever waits for it."""
        self._pending.pop(response_id, None)
        event = self._waiters.pop(response_id, None)
        if event is not None:
            event.set()

    def _release_waiters(self) -> None:
        """Wake everyone waiting for a write (the records stay pending): the store cannot write now."""
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()

    def _enqueue(self, response_id: str) -> None:
        try:
            self._send.send_nowait(response_id)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            self._forget(response_id)
            full = isinstance(exc, trio.WouldBlock)
            why = "the write queue is full ([store] queue_size)" if full else "the store is shutting down"
            self._drop(1, "queue_full" if full else "shutdown")
            self.report("queue_full", f"response {response_id} not stored: {why}")
            return
        self._queued.add(response_id)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: open the backend, write until ``aclose``, purge expired records now and then.

        Reports started at once: a store that is slow to answer never delays the gateway's start.
        """
        task_status.started()
        try:
            self._writer_up = True
            if self.backend is not None:
                await self._open_backend()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._supervised, "purge", self._purge_loop)
                nursery.start_soon(self._supervised, "health", self._health_loop)
                await self._supervised("writer", self._write_loop)
                nursery.cancel_scope.cancel()
        finally:
            self._writer_up = False
            self._stopped.set()
            if self.backend is not None:
                with trio.CancelScope(shield=True):
                    await self.backend.aclose()

    async def aclose(self) -> None:
        """Stop taking records, let the writer drain what is queued (a few seconds at most)."""
        self._send.close()
        with trio.move_on_after(_CLOSE_GRACE):
            await self._stopped.wait()

    async def _open_backend(self) -> None:
        assert self.backend is not None
        try:
            await self.backend.open()
        except StoreUnavailable as exc:
            self.report("open", f"{exc.message}; responses are served but not stored until it recovers")
            self._set_problem(exc.message)

    async def _supervised(self, task: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` until it returns; when it crashes, log it and restart it (with a growing pause)."""
        delay = _RESTART_FIRST
        while True:
            started = trio.current_time()
            try:
                await loop()
                return
            except Exception as exc:  # a bug: the store must outlive it, or every later response goes unstored
                if task == "writer":
                    self._writer_up = False
                    self._release_batch()
                self._metrics.store_task_restarts.labels(task).inc()
                if trio.current_time() - started >= _RESTART_RESET:
                    delay = _RESTART_FIRST
                log.error("response store: the %s task crashed (%s); restarting it in %.1f s",
                          task, type(exc).__name__, delay, exc_info=True)
            await trio.sleep(delay)
            delay = min(delay * 2, _RESTART_MAX)
            if task == "writer":
                self._writer_up = True
                log.warning("response store: the writer task restarted")

    def _release_batch(self) -> None:
        """After a writer crash: the batch it held is given up on (else it would stay pending forever)."""
        batch, self._batch = self._batch, []
        self._write_started = None
        self._queued.difference_update(batch)
        self._in_flight.difference_update(batch)
        lost = [response_id for response_id in batch if response_id in self._pending]
        for response_id in lost:
            self._forget(response_id)
        self._drop(len(lost), "error")

    def _snapshot_due(self, record: StoredResponse, now: float) -> None:
        """A held snapshot came due: queue it unless a newer version (or a DELETE) came first."""
        response_id = record.id
        if (self._pending.get(response_id) is record and response_id not in self._queued
                and response_id not in self._in_flight):
            self._enqueue(response_id)

    async def _write_loop(self) -> None:
        # The receiving end is not closed here: a writer restarted after a crash reads on from it.
        async for first in self._receive:
            ids = [first]
            while len(ids) < _BATCH:
                try:
                    ids.append(self._receive.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            self._batch = ids
            await self._write_batch(ids)
            self._batch = []

    async def _write_batch(self, ids: list[str]) -> None:
        self._queued.difference_update(ids)
        records = [self._pending[i] for i in ids if i in self._pending]
        if not records or self.backend is None:
            return
        self._in_flight.update(r.id for r in records)
        started = self._write_started = trio.current_time()
        try:
            await self._write_records(records)
        finally:
            self._write_started = None
            self._in_flight.difference_update(r.id for r in records)
        took = trio.current_time() - started
        self._metrics.store_write_seconds.observe(took)
        self._write_seconds.observe(took)
        for record in records:
            await self._after_write(record)

    async def _write_records(self, records: Sequence[StoredResponse]) -> None:
        """Write a batch; an outage drops it, any other failure is narrowed down to the record that caused it."""
        assert self.backend is not None
        notes: list[tuple[str, str]] = []  # (reason, message) per record replaced by a tombstone
        try:
            await self.backend.write(partial(self._encode_all, records, notes))
        except StoreUnavailable as exc:
            self._drop(len(records), "unavailable")
            self.report("write", f"{len(records)} response(s) not stored: {exc.message}")
            self._set_problem(exc.message)
            return
        except Exception as exc:  # not an outage (that is StoreUnavailable): something in one record, or a bug
            if len(records) > 1:
                for record in records:
                    await self._write_records([record])
                return
            self._drop(1, "error")
            self.report("write", f"response {records[0].id} not stored: {type(exc).__name__} while writing it")
            return
        self._set_problem(None)
        for reason, message in notes:
            self._drop(1, reason)
            self.report(reason, message)

    async def _after_write(self, record: StoredResponse) -> None:
        """Forget what was written; requeue a newer version; undo a write that raced a DELETE."""
        if self._pending.get(record.id) is record:
            self._forget(record.id)
        elif record.id in self._pending and record.id not in self._queued:
            self._enqueue(record.id)
        if record.id in self._deleted and self.backend is not None:
            self._deleted.discard(record.id)
            try:
                with self._bounded("delete"):
                    await self.backend.delete(record.id, record.owner)
            except StoreUnavailable as exc:
                self.report("delete", exc.message)

    def _encode_all(self, records: Sequence[StoredResponse], notes: list[tuple[str, str]]) -> list[EncodedRecord]:
        """Worker thread: JSON for every record, each on its own.

        A record too large, or one that cannot be encoded, becomes a small tombstone that says
        why (noted in ``notes``, never with its content); the others are written as usual.
        """
        retention = self.config.retention_days * 86400.0
        limit = self.config.max_response_bytes
        encoded: list[EncodedRecord] = []
        for record in records:
            expires = record.created_at + retention if retention > 0 else None
            try:
                body = encode_record(record)
            except RecordNotEncodable as exc:
                why = f"response {record.id} was not stored: its record could not be encoded: {exc}"
                self._tombstone(encoded, notes, record, expires, "unencodable", why)
                continue
            if len(body) > limit:
                why = (f"response {record.id} was not stored: its record is {len(body)} bytes, over the "
                       f"store's max_response_bytes ({limit})")
                self._tombstone(encoded, notes, record, expires, "too_large", why)
                continue
            encoded.append(EncodedRecord(record.id, body, expires, tuple(record.pointers()), record.owner))
        return encoded

    @staticmethod
    def _tombstone(encoded: list[EncodedRecord], notes: list[tuple[str, str]], record: StoredResponse,
                   expires: float | None, reason: str, why: str) -> None:
        """Add the tombstone of ``record`` (nothing if even that cannot be encoded: an id with a lone surrogate)."""
        notes.append((reason, why))
        tombstone = StoredResponse(record.id, {"id": record.id}, created_at=record.created_at, omitted=why,
                                   owner=record.owner)
        try:
            encoded.append(EncodedRecord(record.id, encode_record(tombstone), expires, owner=record.owner))
        except RecordNotEncodable:
            pass

    async def _purge_loop(self) -> None:
        while self.backend is not None:
            try:
                await self.backend.purge(self._clock())
            except StoreUnavailable as exc:
                self.report("purge", exc.message)
            await trio.sleep(_PURGE_EVERY)

    async def _health_loop(self) -> None:
        """Check the store now and then (every ``probe_every`` while it cannot write): readiness follows it."""
        while self.backend is not None:
            with trio.move_on_after(self.probe_every if self._problem is not None else self.check_every):
                await self._failing.wait()
            if self._failing.is_set():  # a write just failed: check again soon, not at the next slow tick
                self._failing = trio.Event()
                await trio.sleep(self.probe_every)
            try:
                with self._bounded("health check"):
                    await self.backend.check()
            except StoreUnavailable as exc:
                self.report("check", exc.message)
                self._set_problem(exc.message)
            else:
                self._set_problem(None)

    def _set_problem(self, problem: str | None) -> None:
        """Record whether the last write or check succeeded; log the changes, release waiters when it fails."""
        was, self._problem = self._problem, problem
        self._metrics.store_writable.set(0 if problem is not None else 1)
        if problem is not None:
            self._release_waiters()  # the circuit breaker: nobody waits for a store that cannot write
            if was is None:
                self._failing.set()
                log.error("response store cannot write (%s): /readyz answers 503 and terminal events do not "
                          "wait for their records until it can", problem)
        elif was is not None:
            log.warning("response store writes again: /readyz is back to 200")

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
            with self._bounded("read"):
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
            with self._bounded("read"):
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
            with self._bounded("delete"):
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

    @contextmanager
    def _bounded(self, what: str) -> Iterator[None]:
        """At most ``[store] timeout`` for one store operation, whatever the backend: then ``StoreUnavailable``.

        The time it took goes to ``streamgw_store_seconds{op}`` (``check`` for a health check).
        """
        timeout = self.config.timeout
        started = trio.current_time()
        try:
            with trio.fail_after(timeout):
                yield
        except trio.TooSlowError:
            raise StoreUnavailable(f"response store {what} took longer than {timeout:g} s ([store] timeout)") from None
        finally:
            self._metrics.store_seconds.labels("check" if what == "health check" else what).observe(
                trio.current_time() - started)

    def _drop(self, count: int, reason: str) -> None:
        """Count records whose content was not written."""
        self._metrics.store_dropped.labels(reason).inc(count)

    def report(self, op: str, message: str) -> None:
        """Count a store failure; log it unless the same kind was logged less than 30 s ago."""
        self._metrics.store_errors.labels(op).inc()
        now = time.monotonic()
        last = self._warned.get(op)
        if last is None or now - last >= _WARN_EVERY:
            self._warned[op] = now
            log.warning("response store (%s): %s", op, message)

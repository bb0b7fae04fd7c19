"""A process-local backend: dictionaries, lost when the process exits (tests, embedding, one process)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from streamgw.store.base import EncodedRecord, Encoder, ItemPointer
from streamgw.store.offload import run_in_thread


class MemoryBackend:
    """Encoded records in a dict; expiry is checked on read and on ``purge``."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[str, EncodedRecord] = {}
        self._items: dict[tuple[str, str], ItemPointer] = {}  # (owner, item id) -> pointer
        self._clock = clock

    async def open(self) -> None:
        """Nothing to open."""

    async def put_many(self, records: Sequence[EncodedRecord]) -> None:
        """Store every record and its pointers."""
        for record in records:
            self._drop_pointers(record.id)
            # a copy of exactly its size: orjson's bytes keep the whole buffer they were encoded in (16 KB
            # for a 1.5 KB record), harmless for a body written away at once but not for one kept here
            self._records[record.id] = replace(record, body=bytes(memoryview(record.body)))
            for pointer in record.pointers:
                self._items[record.owner, pointer.item_id] = pointer

    async def write(self, encode: Encoder) -> None:
        """Encode in a worker thread, then store."""
        await self.put_many(await run_in_thread(encode))

    async def get(self, response_id: str) -> bytes | None:
        """The record's bytes unless absent or expired."""
        record = self._records.get(response_id)
        if record is None or self._expired(record):
            return None
        return record.body

    async def locate(self, item_id: str, owner: str) -> ItemPointer | None:
        """``owner``'s pointer for ``item_id`` unless its record is gone."""
        pointer = self._items.get((owner, item_id))
        if pointer is None or await self.get(pointer.response_id) is None:
            return None
        return pointer

    async def delete(self, response_id: str, owner: str) -> bool:
        """Remove ``owner``'s record and its pointers."""
        record = self._records.get(response_id)
        if record is None or record.owner != owner:
            return False
        self._drop_pointers(response_id)
        del self._records[response_id]
        return True

    async def purge(self, now: float) -> int:
        """Remove expired records."""
        expired = [key for key, record in self._records.items() if self._expired(record, now)]
        for key in expired:
            await self.delete(key, self._records[key].owner)
        return len(expired)

    async def check(self) -> None:
        """Always writable."""

    async def aclose(self) -> None:
        """Nothing to close (the data stays with this object)."""

    def _expired(self, record: EncodedRecord, now: float | None = None) -> bool:
        return record.expires_at is not None and record.expires_at <= (self._clock() if now is None else now)

    def _drop_pointers(self, response_id: str) -> None:
        old = self._records.get(response_id)
        if old is None:
            return
        for pointer in old.pointers:
            key = (old.owner, pointer.item_id)
            if self._items.get(key) == pointer:
                del self._items[key]

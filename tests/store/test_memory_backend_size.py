"""The memory backend keeps each record's bytes at their own size, whatever buffer the encoder used."""

from __future__ import annotations

import tracemalloc

import trio

from streamgw.store.base import EncodedRecord, StoredResponse, encode_record
from streamgw.store.memory import MemoryBackend


async def test_stored_bodies_take_their_own_size_in_memory() -> None:
    backend = MemoryBackend()
    records = [StoredResponse(f"resp_{i}", {"id": f"resp_{i}", "output": [], "text": "x" * 1500})
               for i in range(50)]
    size = len(encode_record(records[0]))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        encoded = [EncodedRecord(r.id, encode_record(r), None) for r in records]
        await backend.put_many(encoded)
        del encoded
        await trio.lowlevel.checkpoint()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert await backend.get("resp_7") is not None
    # each record once, at about its own size (plus the dict entries): not the encoder's 16 KB buffer
    assert held < 50 * (size + 1024), (held / 50, size)

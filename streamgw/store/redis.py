"""The Redis backend: for several gateway instances behind one load balancer.

Keys (all under ``key_prefix``): ``resp:<id>`` holds the encoded record (its tenant is in
it), ``idx:<id>`` the ids of the items it introduced (newline-separated), and a pointer
``<response id> <input|output> <index>`` per item in its tenant's item index:
``item:<item id>`` for the anonymous tenant (as before tenants existed), ``titem:<h>:<item id>``
for the others, ``<h>`` a fixed-length hash of the tenant id.  Every key gets the retention as its TTL
(``PX``), so Redis expires old responses by itself.  A batch of records is one pipelined
round trip.  Commands go through ``streamgw.store.resp.RedisClient`` (trio sockets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from hashlib import sha256

from streamgw.store.base import EncodedRecord, Encoder, ItemPointer, StoreUnavailable
from streamgw.store.offload import run_in_thread
from streamgw.store.resp import Arg, RedisClient, RespError, failures_as


def _translated(what: str) -> AbstractContextManager[None]:
    """Connection, timeout and protocol errors become ``StoreUnavailable``."""
    return failures_as(StoreUnavailable, f"response store (redis) {what} failed")


class RedisBackend:
    """Records in Redis with a TTL per key."""

    name = "redis"

    def __init__(self, url: str, *, key_prefix: str = "streamgw:", timeout: float = 2.0,
                 max_connections: int = 16, clock: Callable[[], float] = time.time) -> None:
        self._client = RedisClient(url, timeout=timeout, max_connections=max_connections)
        self._prefix = key_prefix
        self._clock = clock

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    def _item_key(self, owner: str, item_id: str) -> str:
        """The pointer's key in ``owner``'s item index (fixed-length scope: no tenant name can forge another's)."""
        if not owner:
            return self._key("item", item_id)
        return self._key("titem", f"{sha256(owner.encode()).hexdigest()[:32]}:{item_id}")

    async def open(self) -> None:
        """Check that the server answers."""
        with _translated("PING"):
            await self._client.execute("PING")

    async def put_many(self, records: Sequence[EncodedRecord]) -> None:
        """Every record, its index and its pointers, in one pipeline."""
        commands: list[list[Arg]] = []
        for record in records:
            ttl = self._ttl(record.expires_at)
            ids = "\n".join(p.item_id for p in record.pointers)
            commands.append(["SET", self._key("resp", record.id), record.body, *ttl])
            commands.append(["SET", self._key("idx", record.id), ids, *ttl])
            commands += [["SET", self._item_key(record.owner, p.item_id), f"{p.response_id} {p.kind} {p.index}",
                          *ttl] for p in record.pointers]
        with _translated("write"):
            replies = await self._client.pipeline(commands)
            errors = [reply for reply in replies if isinstance(reply, RespError)]
            if errors:
                raise errors[0]

    async def write(self, encode: Encoder) -> None:
        """Encode in a worker thread, then one pipeline."""
        await self.put_many(await run_in_thread(encode))

    async def get(self, response_id: str) -> bytes | None:
        """The record's bytes, or ``None`` (Redis dropped it when it expired)."""
        with _translated("read"):
            reply = await self._client.execute("GET", self._key("resp", response_id))
        return reply if isinstance(reply, bytes) else None

    async def locate(self, item_id: str, owner: str) -> ItemPointer | None:
        """The pointer stored for ``item_id`` in ``owner``'s item index."""
        with _translated("read"):
            reply = await self._client.execute("GET", self._item_key(owner, item_id))
            if not isinstance(reply, bytes):
                return None
            response_id, kind, index = reply.decode().split(" ")
            return ItemPointer(item_id, response_id, kind, int(index))

    async def delete(self, response_id: str, owner: str) -> bool:
        """Remove the record, its index and the pointers it wrote (in ``owner``'s item index)."""
        with _translated("delete"):
            ids = await self._client.execute("GET", self._key("idx", response_id))
            items = ids.decode().split("\n") if isinstance(ids, bytes) and ids else []
            keys = [self._key("resp", response_id), self._key("idx", response_id)]
            keys += [self._item_key(owner, item_id) for item_id in items]
            replies = await self._client.pipeline([["UNLINK", key] for key in keys])
        return replies[0] == 1

    async def purge(self, now: float) -> int:
        """Nothing to do: every key carries its TTL."""
        return 0

    async def check(self) -> None:
        """A real (tiny, expiring) write: a server that answers PING may still refuse writes (read-only, OOM)."""
        with _translated("health check"):
            await self._client.execute("SET", self._key("health", "check"), "1", "PX", 60_000)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    def _ttl(self, expires_at: float | None) -> list[Arg]:
        if expires_at is None:
            return []
        return ["PX", max(1, int((expires_at - self._clock()) * 1000))]

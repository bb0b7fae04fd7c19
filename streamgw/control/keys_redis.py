"""Managed keys in Redis: what several gateway instances share.

Keys, all under the control prefix: ``mkey:d:<digest hex>`` holds the record (what authentication
reads: one ``GET``, or one ``MGET`` for a batch), ``mkey:id:<id>`` the digest of an id,
``mkey:name:<name>`` the id of a name, the sorted set ``mkey:ids`` every id (score 0, so that
``ZRANGEBYLEX`` pages them in id order) and ``mkey:version`` the version counter.  A change is one
Lua script, so it is atomic: a create claims the name or writes nothing; an update or delete
applies only over the record it was made from (compare and set).  Commands go through
``streamgw.store.resp.RedisClient`` under ``[control] timeout``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from streamgw.control.keys import ManagedKey, decoded
from streamgw.errors import ControlUnavailable
from streamgw.store.resp import RedisClient, failures_as

__all__ = ["RedisKeyStore"]


# KEYS: record, id -> digest, name -> id, ids, version; ARGV: record text, digest hex, id
_CREATE = """
if redis.call('EXISTS', KEYS[3]) == 1 or redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[3])
redis.call('INCR', KEYS[5])
return 1
"""

# KEYS: as _CREATE; ARGV: the record it was made from, the new record ('' to delete), id
_SWAP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('ZREM', KEYS[4], ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
redis.call('INCR', KEYS[5])
return 1
"""


def _translated(what: str) -> AbstractContextManager[None]:
    return failures_as(ControlUnavailable, f"The key store (redis) failed to {what}")


def _text(reply: object) -> bytes | None:
    return reply if isinstance(reply, bytes) else None


class RedisKeyStore:
    """Managed keys under ``key_prefix`` in one Redis database."""

    name = "redis"

    def __init__(self, url: str, *, key_prefix: str = "streamgw:", timeout: float = 1.0,
                 max_connections: int = 8) -> None:
        self._client = RedisClient(url, timeout=timeout, max_connections=max_connections)
        self._prefix = key_prefix + "mkey:"

    def _keys(self, key: ManagedKey) -> list[str]:
        p = self._prefix
        return [f"{p}d:{key.digest.hex()}", f"{p}id:{key.id}", f"{p}name:{key.name}", f"{p}ids", f"{p}version"]

    async def version(self) -> int:
        with _translated("read the version"):
            reply = await self._client.execute("GET", self._prefix + "version")
        raw = _text(reply)
        return int(raw) if raw is not None and raw.isdigit() and len(raw) < 20 else 0

    async def find(self, digests: Sequence[bytes]) -> dict[bytes, ManagedKey]:
        if not digests:
            return {}
        with _translated("look up keys"):
            reply = await self._client.execute("MGET", *(f"{self._prefix}d:{d.hex()}" for d in digests))
        found: dict[bytes, ManagedKey] = {}
        for digest, text in zip(digests, reply if isinstance(reply, list) else [], strict=False):
            key = decoded(_text(text), "redis")
            if key is not None and key.digest == digest:
                found[digest] = key
        return found

    async def get(self, key_id: str) -> ManagedKey | None:
        with _translated("read a key"):
            digest = _text(await self._client.execute("GET", f"{self._prefix}id:{key_id}"))
            if digest is None or len(digest) != 64:
                return None
            text = _text(await self._client.execute("GET", f"{self._prefix}d:{digest.decode('ascii', 'replace')}"))
        key = decoded(text, "redis")
        return key if key is not None and key.id == key_id else None

    async def page(self, after: str | None, limit: int) -> list[ManagedKey]:
        with _translated("list keys"):
            start = f"({after}" if after else "-"
            ids = await self._client.execute("ZRANGEBYLEX", self._prefix + "ids", start, "+", "LIMIT", 0, limit)
            names = [i.decode("ascii", "replace") for i in ids if isinstance(i, bytes)] if isinstance(ids, list) else []
            if not names:
                return []
            digests = await self._client.execute("MGET", *(f"{self._prefix}id:{i}" for i in names))
            hexes = [d.decode("ascii", "replace") for d in digests if isinstance(d, bytes)] \
                if isinstance(digests, list) else []
            records = await self._client.execute("MGET", *(f"{self._prefix}d:{h}" for h in hexes)) if hexes else []
        found = [decoded(_text(text), "redis") for text in (records if isinstance(records, list) else [])]
        return [key for key in found if key is not None]

    async def create(self, key: ManagedKey) -> bool:
        with _translated("create a key"):
            done = await self._client.execute("EVAL", _CREATE, 5, *self._keys(key), key.encode(), key.digest.hex(),
                                              key.id)
        return done == 1

    async def swap(self, old: ManagedKey, new: ManagedKey | None) -> bool:
        with _translated("change a key"):
            done = await self._client.execute("EVAL", _SWAP, 5, *self._keys(old), old.stored,
                                              "" if new is None else new.encode(), old.id)
        return done == 1

    async def aclose(self) -> None:
        await self._client.aclose()

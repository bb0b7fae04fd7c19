"""The Redis backend: gateway instances on several machines hold one limit together.

Each admission and each settlement is one Lua script (``EVALSHA``, ``EVAL`` when the server does
not know it yet): Redis runs a script alone, so the read, the decision and the write of every check
are one step — no read-modify-write race between instances.  The scripts take the time from Redis
(``TIME``), so the instances' clocks need not agree.  The arithmetic is ``streamgw.control.base``'s
(``evaluate``, ``charged_tat``), in Lua.

Keys (under ``key_prefix``, ``ctl:`` then the limiter's name): a rate is a string (its ``tat``,
expiring once the bucket is full again), a stream limit a sorted set of lease ids scored by their
expiry, a budget a float counter expiring after its period.  Usage is one hash per day,
``ctl:usage:<day>``, whose fields are ``[key, tenant, model, provider, upstream_model, counter]``
as JSON, incremented with ``HINCRBY`` / ``HINCRBYFLOAT``.  Everything read back is checked: the
backend is shared, so its bytes are not trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import date, timedelta

from streamgw.control.base import (
    USAGE_COUNTERS,
    Charge,
    Check,
    ControlUnavailable,
    UsageCounts,
    UsageKey,
    UsageRow,
    Verdict,
)
from streamgw.store.resp import Arg, RedisClient, RespError, failures_as

#: seconds usage rows are kept
USAGE_RETENTION = 400 * 86400
_MAX_FIELD = 2048  # a usage field longer than this was not written by us

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(v) return string.format('%.17g', v) end
local function ms(s) return math.max(1, math.ceil(s * 1000)) end
"""

ADMIT = _NOW + """
local commit = ARGV[1] == '1'
local out, tats, ok = {}, {}, true
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 4
  local kind, limit, lease, ttl = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local key = KEYS[i]
  local allowed, remaining, reset, retry = false, 0, 0, 0
  if kind == 'requests' or kind == 'tokens' then
    local step = 60 / limit
    local v = redis.call('GET', key)
    local base = now
    if v then base = math.max(tonumber(v) or now, now) end
    if kind == 'requests' then
      local new = base + step
      if new - now <= 60 + 1e-9 then
        allowed, remaining, reset = true, math.floor((60 - (new - now)) / step + 1e-9), new - now
        tats[i] = new
      else
        reset, retry = base - now, new - 60 - now
      end
    else
      local used = base - now
      reset = used
      if used < 60 - 1e-9 then
        allowed, remaining = true, math.max(0, math.floor(limit - used / step + 1e-9))
      else
        retry = used - 60 + step
      end
    end
  elseif kind == 'streams' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local live = redis.call('ZCARD', key)
    if live < limit then allowed, remaining = true, limit - live - 1 else retry = 1 end
  else
    local counter = tonumber(redis.call('GET', key) or '0') or 0
    reset = ttl
    if counter < limit then allowed, remaining = true, limit - counter else retry = ttl end
  end
  if not allowed then ok = false end
  out[#out + 1] = allowed and '1' or '0'
  out[#out + 1] = num(remaining)
  out[#out + 1] = num(reset)
  out[#out + 1] = num(retry)
end
if commit and ok then
  for i = 1, #KEYS do
    local a = 2 + (i - 1) * 4
    if tats[i] then
      redis.call('SET', KEYS[i], num(tats[i]), 'PX', ms(tats[i] - now) + 1000)
    elseif ARGV[a] == 'streams' then
      local ttl = tonumber(ARGV[a + 3])
      redis.call('ZADD', KEYS[i], now + ttl, ARGV[a + 2])
      redis.call('PEXPIRE', KEYS[i], ms(ttl) + 1000)
    end
  end
end
return out
"""

SETTLE = _NOW + """
for i = 1, #KEYS do
  local a = 1 + (i - 1) * 5
  local kind, amount, limit, lease, ttl = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), ARGV[a + 3],
    tonumber(ARGV[a + 4])
  local key = KEYS[i]
  if kind == 'tokens' then
    local v = redis.call('GET', key)
    local base = now
    if v then base = math.max(tonumber(v) or now, now) end
    local tat = base + amount * 60 / limit
    redis.call('SET', key, num(tat), 'PX', ms(tat - now) + 1000)
  elseif kind == 'add' then
    redis.call('INCRBYFLOAT', key, num(amount))
    redis.call('PEXPIRE', key, ms(ttl))
  elseif kind == 'release' then
    redis.call('ZREM', key, lease)
  end
end
return 1
"""


def _translated(what: str) -> AbstractContextManager[None]:
    return failures_as(ControlUnavailable, f"control store (redis) {what} failed")


class _Script:
    """A Lua script run by its SHA-1 (``EVALSHA``), loaded with ``EVAL`` when the server lacks it."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, client: RedisClient, keys: Sequence[str], args: Sequence[Arg]) -> object:
        try:
            return await client.execute("EVALSHA", self.sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await client.execute("EVAL", self.source, len(keys), *keys, *args)


_ADMIT, _SETTLE = _Script(ADMIT), _Script(SETTLE)


def _float(value: object) -> float:
    if not isinstance(value, bytes) or len(value) > 64:
        raise ValueError("unexpected reply from the control script")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("non-finite number from the control script")
    return result


class RedisControl:
    """Limits, budgets and usage in Redis, shared by every instance that uses the same server and prefix."""

    name = "redis"

    def __init__(self, url: str, *, key_prefix: str = "streamgw:", timeout: float = 1.0,
                 max_connections: int = 16) -> None:
        self._client = RedisClient(url, timeout=timeout, max_connections=max_connections, retry_after=0.5)
        self._prefix = key_prefix + "ctl:"

    async def admit(self, checks: Sequence[Check], commit: bool = True) -> list[Verdict]:
        keys = [self._prefix + c.name for c in checks]
        args: list[Arg] = ["1" if commit else "0"]
        for check in checks:
            args += [check.kind, repr(float(check.limit)), check.lease or "-", repr(float(check.ttl))]
        with _translated("admit"):
            reply = await _ADMIT(self._client, keys, args)
            if not isinstance(reply, list) or len(reply) != 4 * len(checks):
                raise ValueError("unexpected reply from the admission script")
            return [Verdict(reply[i] == b"1", _float(reply[i + 1]), _float(reply[i + 2]), _float(reply[i + 3]))
                    for i in range(0, len(reply), 4)]

    async def settle(self, charges: Sequence[Charge]) -> None:
        if not charges:
            return
        keys = [self._prefix + c.name for c in charges]
        args: list[Arg] = []
        for charge in charges:
            args += [charge.kind, repr(float(charge.amount)), repr(float(charge.limit)), charge.lease or "-",
                     repr(float(charge.ttl))]
        with _translated("settle"):
            await _SETTLE(self._client, keys, args)

    async def refresh(self, leases: Sequence[tuple[str, str]], ttl: float) -> None:
        if not leases:
            return
        with _translated("refresh"):
            (now_reply,) = await self._client.pipeline([["TIME"]])
            if not isinstance(now_reply, list) or len(now_reply) != 2:
                raise ValueError("unexpected TIME reply")
            now = int(now_reply[0]) + int(now_reply[1]) / 1e6  # type: ignore[arg-type]
            await self._client.pipeline([["ZADD", self._prefix + name, "XX", repr(now + ttl), lease]
                                         for name, lease in leases])

    async def add_usage(self, rows: dict[UsageKey, UsageCounts]) -> None:
        commands: list[list[Arg]] = []
        days = set()
        for key, counts in rows.items():
            day, dims = key[0], list(key[1:])
            hash_key = self._prefix + "usage:" + day
            days.add(hash_key)
            for name, value in zip(USAGE_COUNTERS, counts.values(), strict=True):
                if not value:
                    continue
                field = json.dumps([*dims, name], separators=(",", ":"))
                if name == "cost_usd":
                    commands.append(["HINCRBYFLOAT", hash_key, field, repr(float(value))])
                else:
                    commands.append(["HINCRBY", hash_key, field, int(value)])
        commands += [["EXPIRE", day, USAGE_RETENTION] for day in sorted(days)]
        if not commands:
            return
        with _translated("usage write"):
            replies = await self._client.pipeline(commands)
            errors = [r for r in replies if isinstance(r, RespError)]
            if errors:
                raise errors[0]

    async def usage(self, start: str, end: str, key: str | None = None,
                    tenant: str | None = None) -> list[UsageRow]:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
        days = [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]
        with _translated("usage read"):
            replies = await self._client.pipeline([["HGETALL", self._prefix + "usage:" + day] for day in days])
        rows: dict[UsageKey, UsageCounts] = {}
        for day, reply in zip(days, replies, strict=True):
            if not isinstance(reply, list):
                continue
            for field, value in zip(reply[::2], reply[1::2], strict=False):
                parsed = _usage_field(field, value)
                if parsed is None:
                    continue
                dims, counter, amount = parsed
                if (key is not None and dims[0] != key) or (tenant is not None and dims[1] != tenant):
                    continue
                row_key: UsageKey = (day, *dims)  # type: ignore[assignment]
                counts = rows.setdefault(row_key, UsageCounts())
                setattr(counts, counter, getattr(counts, counter) + amount)
        return [UsageRow(k, rows[k]) for k in sorted(rows)]

    async def maintain(self) -> None:
        """Nothing to do: expired state is dropped as it is met (memory) or by its TTL (redis)."""

    async def aclose(self) -> None:
        await self._client.aclose()


def _usage_field(field: object, value: object) -> tuple[tuple[str, ...], str, float] | None:
    """A usage hash field and value as (dimensions, counter, amount); ``None`` for anything we did not write."""
    if not isinstance(field, bytes) or not isinstance(value, bytes) or len(field) > _MAX_FIELD:
        return None
    try:
        parts = json.loads(field)
        amount = float(value)
    except ValueError:
        return None
    if (not isinstance(parts, list) or len(parts) != 6 or not all(isinstance(p, str) for p in parts)
            or parts[5] not in USAGE_COUNTERS or not math.isfinite(amount)):
        return None
    counter = parts[5]
    return tuple(parts[:5]), counter, amount if counter == "cost_usd" else int(amount)

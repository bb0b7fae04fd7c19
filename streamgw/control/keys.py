"""Managed keys: gateway keys made through the admin API and kept, hashed, in the control backend.

A managed key's secret (``sk-sgw-`` and 43 URL-safe characters) is shown once, when it is made.
The backend keeps its SHA-256 (``digest``) and its last four characters (for display), never the
secret.  A record also holds the key's id (``key_<hex>``, in creation order), its unique name, its
tenant, allowed models, limits, expiry and whether it is disabled.  Name and tenant never change: usage
is counted by name, and stored responses belong to the tenant.

How a change reaches every worker of every instance (``ManagedKeys``): each worker keeps the keys it
has seen in a cache by digest, so a request with a cached key costs no backend round trip.  A token of
the managed form that is not cached is looked up in the backend at once, so a key made on another
instance works at once.  A miss is remembered for ``NEGATIVE_TTL``: a flood of one unknown key costs
one lookup per worker and TTL (concurrent lookups of one digest share one read), a flood of distinct
ones at most ``LOOKUPS`` lookups at a time; since secrets are random, no key can later be made under a
digest that missed.  Every change bumps a version counter in the backend; while a worker holds cached
keys it reads that counter every ``POLL_INTERVAL`` and fetches again every entry it read before the
latest version, so a key disabled, changed or deleted anywhere stops working everywhere within one
poll and one round trip.

The backend is untrusted like any input: every record read is checked as strictly as an admin
request, and one that fails the checks is treated as absent (and logged).
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from hashlib import sha256
from typing import Any, Protocol

import trio

from streamgw.config import (
    KEY_NAME_PATTERN,
    MAX_MODEL_PATTERN_LENGTH,
    MAX_MODEL_PATTERNS,
    TENANT_PATTERN,
    KeyPolicy,
    Limits,
    tenant_id,
)
from streamgw.errors import ControlUnavailable, InvalidRequest

__all__ = [
    "LIMIT_FIELDS",
    "KeyNameTaken",
    "KeyStore",
    "ManagedKey",
    "ManagedKeys",
    "MemoryKeyStore",
    "is_managed_secret",
    "key_fields",
    "limits_json",
    "valid_key_id",
]

log = logging.getLogger("streamgw")

SECRET_PREFIX = "sk-sgw-"
_SECRET = re.compile(r"sk-sgw-[A-Za-z0-9_-]{43}")
_KEY_ID = re.compile(r"key_[0-9a-f]{28}")
_KEY_NAME = re.compile(KEY_NAME_PATTERN)
_TENANT = re.compile(TENANT_PATTERN)
#: seconds between two reads of the version counter (while a worker holds cached keys)
POLL_INTERVAL = 0.25
#: seconds a digest that is no managed key is remembered as such
NEGATIVE_TTL = 2.0
#: keys (and misses) one worker caches
MAX_CACHED = 10_000
#: backend lookups of uncached keys one worker runs at once
LOOKUPS = 16
#: digests per backend read when the cache is refreshed
_BATCH = 500
#: the largest integer limit and cost budget (USD) accepted
MAX_COUNT = 10**15
MAX_COST = 1e12
#: the latest expiry accepted: 9999-12-31T23:59:59Z
MAX_EXPIRES = 253402300799.0
#: the longest record the backend may hand back (bytes)
MAX_RECORD = 1024 * 1024

LIMIT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Limits))
_COST_FIELDS = frozenset(f.name for f in fields(Limits) if f.type in ("float", float))
_KEY_FIELDS = frozenset({"name", "tenant", "models", "model_limits", "expires", "disabled", *LIMIT_FIELDS})
_FIXED = frozenset({"name", "tenant"})


def new_secret() -> str:
    """A fresh managed key: ``sk-sgw-`` and 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def is_managed_secret(token: str) -> bool:
    """Whether ``token`` has the form of a managed key (anything else is never looked up)."""
    return _SECRET.fullmatch(token) is not None


def new_key_id(now: float) -> str:
    """``key_`` + milliseconds (12 hex digits) + 64 random bits: ids sort in creation order."""
    return f"key_{int(now * 1000) & (16**12 - 1):012x}{secrets.token_hex(8)}"


def valid_key_id(text: str) -> bool:
    """Whether ``text`` has the form of a managed key's id."""
    return _KEY_ID.fullmatch(text) is not None


class KeyNameTaken(InvalidRequest):
    """Another key (managed or ``[keys.NAME]``) already has this name."""

    status = 409
    default_code = "key_name_taken"


# --- the fields of a key, checked --------------------------------------------------------------------------


def _fail(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}", param=param)


def _plain(value: str) -> bool:
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def _count(value: Any, param: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise _fail(param, f"must be an integer from 0 to {MAX_COUNT}.")
    return value


def _cost(value: Any, param: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_COST:
        raise _fail(param, f"must be a number from 0 to {MAX_COST:g}.")
    return float(value)


def _limit(name: str, value: Any, param: str) -> int | float:
    return _cost(value, param) if name in _COST_FIELDS else _count(value, param)


def _pattern(value: Any, param: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_MODEL_PATTERN_LENGTH or not _plain(value):
        raise _fail(param, f"must be a model pattern of 1 to {MAX_MODEL_PATTERN_LENGTH} characters "
                           "without control characters.")
    return value


def _models(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_MODEL_PATTERNS:
        raise _fail("models", f"must be a list of 1 to {MAX_MODEL_PATTERNS} model patterns "
                              "(null: every model).")
    return tuple(_pattern(item, f"models[{index}]") for index, item in enumerate(value))


def _limits_object(value: Any, param: str) -> Limits:
    if not isinstance(value, dict):
        raise _fail(param, "must be an object of limits.")
    values: dict[str, Any] = {}
    for name, number in value.items():
        if name not in LIMIT_FIELDS:
            raise _fail(f"{param}.{name}" if len(name) <= 64 else param,
                        f"unknown limit (known: {', '.join(LIMIT_FIELDS)}).")
        values[name] = _limit(name, number, f"{param}.{name}")
    return Limits(**values)


def _model_limits(value: Any) -> tuple[tuple[str, Limits], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_MODEL_PATTERNS:
        raise _fail("model_limits", f"must be an object of at most {MAX_MODEL_PATTERNS} model patterns, each "
                                    "mapped to an object of limits.")
    out: list[tuple[str, Limits]] = []
    for pattern, limits in value.items():
        _pattern(pattern, "model_limits")
        out.append((pattern, _limits_object(limits, f"model_limits.{pattern}")))
    return tuple(out)


def _expires(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            moment = None
        if moment is None or moment.tzinfo is None or "T" not in value.upper():
            raise _fail("expires", "must be an RFC 3339 time with its time zone (2027-01-31T00:00:00Z), "
                                   "Unix seconds, or null.")
        value = moment.timestamp()
    if type(value) not in (int, float) or not math.isfinite(value) or not 0 <= value <= MAX_EXPIRES:
        raise _fail("expires", "must be an RFC 3339 time with its time zone (2027-01-31T00:00:00Z), "
                               "Unix seconds, or null.")
    return float(value)


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _KEY_NAME.fullmatch(value):
        raise _fail("name", "must be 1 to 64 letters, digits and . _ - (starting with a letter or digit).")
    return value


def _tenant(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _TENANT.fullmatch(value):
        raise _fail("tenant", "must be 1 to 64 letters, digits and . _ : - (starting with a letter or digit), "
                              "or null for a tenant of the key's own.")
    return value


def key_fields(body: Mapping[str, Any], *, creating: bool) -> dict[str, Any]:
    """The ``ManagedKey`` fields an admin request body sets, checked; ``InvalidRequest`` naming ``param``.

    Limits come back as ``limits``: a dict of the limit fields set.  Creating needs ``name``;
    updating refuses ``name`` and ``tenant`` (they never change).
    """
    out: dict[str, Any] = {}
    limits: dict[str, int | float] = {}
    for name, value in body.items():
        if name not in _KEY_FIELDS:
            raise InvalidRequest(f"Unknown parameter: '{name[:64]}'.", param=name[:64], code="unknown_parameter")
        if name in _FIXED and not creating:
            raise _fail(name, f"a key's {name} cannot be changed"
                              + (" (its stored responses belong to its tenant): make a new key."
                                 if name == "tenant" else " (usage is counted by name): make a new key."))
        if name in LIMIT_FIELDS:
            limits[name] = _limit(name, value, name)
        elif name == "name":
            out["name"] = _name(value)
        elif name == "tenant":
            out["tenant"] = _tenant(value)
        elif name == "models":
            out["models"] = _models(value)
        elif name == "model_limits":
            out["model_limits"] = _model_limits(value)
        elif name == "expires":
            out["expires"] = _expires(value)
        elif type(value) is not bool:
            raise _fail("disabled", "must be true or false.")
        else:
            out["disabled"] = value
    if creating and "name" not in out:
        raise InvalidRequest("Missing required parameter: 'name'.", param="name", code="missing_required_parameter")
    out["limits"] = limits
    return out


def limits_json(limits: Limits) -> dict[str, int | float]:
    return {name: getattr(limits, name) for name in LIMIT_FIELDS}


# --- the record -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManagedKey:
    """One managed key as the backend holds it (no secret); ``policy`` is what a request with it carries.

    ``stored``: the record's text as it was read from the backend, so that a change is written only
    over the very version it was made from (``KeyStore.swap``).
    """

    id: str
    name: str
    digest: bytes
    tenant: str = ""  # "": the key is a tenant of its own
    models: tuple[str, ...] = ()  # (): every model
    limits: Limits = field(default_factory=Limits)
    model_limits: tuple[tuple[str, Limits], ...] = ()
    expires: float | None = None
    disabled: bool = False
    created: float = 0.0
    updated: float = 0.0
    last4: str = ""
    stored: str = field(default="", repr=False, compare=False)
    policy: KeyPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        policy = KeyPolicy(name=self.name, tenant=tenant_id(self.tenant, self.digest), models=self.models,
                           limits=self.limits, model_limits=self.model_limits, managed=True)
        object.__setattr__(self, "policy", policy)

    def usable(self, now: float) -> bool:
        """Neither disabled nor expired at ``now`` (Unix time)."""
        return not self.disabled and (self.expires is None or now < self.expires)

    def public(self) -> dict[str, Any]:
        """What the admin API shows: everything but the digest (and there is no secret to show)."""
        return {
            "object": "gateway.key", "id": self.id, "name": self.name, "source": "managed",
            "tenant": self.tenant or None, "models": list(self.models) or None, **limits_json(self.limits),
            "model_limits": {pattern: limits_json(limits) for pattern, limits in self.model_limits},
            "expires": self.expires, "disabled": self.disabled, "created": self.created,
            "updated": self.updated, "redacted": f"{SECRET_PREFIX}...{self.last4}",
        }

    def encode(self) -> str:
        """The record's text in the backend (JSON, keys sorted: the same key always encodes alike)."""
        record = {
            "id": self.id, "name": self.name, "digest": self.digest.hex(), "tenant": self.tenant,
            "models": list(self.models) or None, "limits": limits_json(self.limits),
            "model_limits": {pattern: limits_json(limits) for pattern, limits in self.model_limits},
            "expires": self.expires, "disabled": self.disabled, "created": self.created,
            "updated": self.updated, "last4": self.last4,
        }
        return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @classmethod
    def decode(cls, text: str | bytes) -> ManagedKey:
        """A record read from the backend, checked like an admin request; ``ValueError`` if it is not one."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if len(text) > MAX_RECORD:
            raise ValueError("record too large")
        try:
            raw = json.loads(text, parse_constant=_no_constant)
            if not isinstance(raw, dict) or set(raw) != _RECORD_FIELDS:
                raise ValueError("not a managed key record")
            key_id, digest, last4 = raw["id"], raw["digest"], raw["last4"]
            stamps = [raw["created"], raw["updated"]]
            if (not isinstance(key_id, str) or not valid_key_id(key_id) or not isinstance(digest, str)
                    or not re.fullmatch(r"[0-9a-f]{64}", digest) or not isinstance(last4, str)
                    or not re.fullmatch(r"[A-Za-z0-9_-]{4}", last4) or type(raw["disabled"]) is not bool
                    or any(type(s) not in (int, float) or not 0 <= s <= MAX_EXPIRES for s in stamps)):
                raise ValueError("malformed managed key record")
            return cls(
                id=key_id, name=_name(raw["name"]), digest=bytes.fromhex(digest), tenant=_tenant(raw["tenant"]),
                models=_models(raw["models"]), limits=_limits_object(raw["limits"], "limits"),
                model_limits=_model_limits(raw["model_limits"]), expires=_expires(raw["expires"]),
                disabled=raw["disabled"], created=float(stamps[0]), updated=float(stamps[1]), last4=last4,
                stored=text,
            )
        except InvalidRequest as error:
            raise ValueError(error.message) from None


_RECORD_FIELDS = frozenset({"id", "name", "digest", "tenant", "models", "limits", "model_limits", "expires",
                            "disabled", "created", "updated", "last4"})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decoded(text: str | bytes | None, where: str) -> ManagedKey | None:
    """``ManagedKey.decode``, with a record that fails the checks logged and treated as absent."""
    if text is None:
        return None
    try:
        return ManagedKey.decode(text)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("managed keys: ignoring a malformed record in the control backend (%s): %s", where, exc)
        return None


# --- where records live ----------------------------------------------------------------------------------------


class KeyStore(Protocol):
    """A backend of managed keys.  Every call raises ``ControlUnavailable`` when the backend does not answer
    within its timeout; every successful change bumps the version counter."""

    name: str

    async def version(self) -> int:
        """The version counter: bumped by every change of any key."""
        ...

    async def find(self, digests: Sequence[bytes]) -> dict[bytes, ManagedKey]:
        """The keys of these digests (absent: no such key)."""
        ...

    async def get(self, key_id: str) -> ManagedKey | None:
        """One key by id."""
        ...

    async def page(self, after: str | None, limit: int) -> list[ManagedKey]:
        """Up to ``limit`` keys in id (= creation) order, after the id ``after``."""
        ...

    async def create(self, key: ManagedKey) -> bool:
        """Add ``key``; ``False`` (nothing written) if its name is taken."""
        ...

    async def swap(self, old: ManagedKey, new: ManagedKey | None) -> bool:
        """Replace ``old`` by ``new`` (``None``: delete it) if the record is still ``old.stored``; else ``False``."""
        ...

    async def aclose(self) -> None:
        """Let go of connections."""
        ...


class MemoryKeyStore:
    """Keys in this process only (``[control] backend = "memory"``): other workers never see them."""

    name = "memory"

    def __init__(self) -> None:
        self._records: dict[str, str] = {}  # id -> record text
        self._by_digest: dict[bytes, str] = {}  # digest -> id
        self._names: set[str] = set()
        self._version = 0

    async def version(self) -> int:
        return self._version

    async def find(self, digests: Sequence[bytes]) -> dict[bytes, ManagedKey]:
        found = {d: decoded(self._records.get(self._by_digest.get(d, "")), "memory") for d in digests}
        return {d: key for d, key in found.items() if key is not None}

    async def get(self, key_id: str) -> ManagedKey | None:
        return decoded(self._records.get(key_id), "memory")

    async def page(self, after: str | None, limit: int) -> list[ManagedKey]:
        ids = sorted(i for i in self._records if after is None or i > after)[:limit]
        return [k for k in (decoded(self._records[i], "memory") for i in ids) if k is not None]

    async def create(self, key: ManagedKey) -> bool:
        if key.name in self._names or key.digest in self._by_digest:
            return False
        self._records[key.id] = key.encode()
        self._by_digest[key.digest] = key.id
        self._names.add(key.name)
        self._version += 1
        return True

    async def swap(self, old: ManagedKey, new: ManagedKey | None) -> bool:
        if self._records.get(old.id) != old.stored:
            return False
        if new is None:
            del self._records[old.id], self._by_digest[old.digest]
            self._names.discard(old.name)
        else:
            self._records[old.id] = new.encode()
        self._version += 1
        return True

    async def aclose(self) -> None:
        return None


# --- the service: cache, propagation, admin operations -----------------------------------------------------------


@dataclass(slots=True)
class _Cached:
    key: ManagedKey
    seen: int  # the version counter read before this record was


class _Miss:
    pass


#: what ``ManagedKeys.cached`` returns for a digest it knows nothing about
MISS = _Miss()


class ManagedKeys:
    """Managed keys as one worker sees them: a cache by digest kept fresh by polling the version counter,
    and the admin operations (see the module docstring)."""

    def __init__(self, store: KeyStore, *, timeout: float = 1.0, reserved: Iterable[str] = (),
                 clock: Callable[[], float] = time.time, poll: float = POLL_INTERVAL,
                 negative_ttl: float = NEGATIVE_TTL, max_cached: int = MAX_CACHED) -> None:
        self.store = store
        self._timeout = timeout
        self._reserved = frozenset(reserved)  # names of ``[keys.NAME]`` tables
        self._clock = clock
        self._poll = poll
        self._negative_ttl = negative_ttl
        self._max_cached = max_cached
        self._cache: dict[bytes, _Cached] = {}
        self._negative: dict[bytes, float] = {}  # digest -> trio time until which it is no key
        self._version = 0
        self._limiter = trio.CapacityLimiter(LOOKUPS)
        self._pending: dict[bytes, trio.Event] = {}  # digests being looked up
        self._down: str | None = None  # why the last poll failed (logged once per outage)

    # -- authentication --

    def cached(self, digest: bytes) -> ManagedKey | _Miss | None:
        """The key of ``digest`` if this worker knows it (``None``: known to be no key), else ``MISS``."""
        entry = self._cache.get(digest)
        if entry is not None:
            return entry.key
        until = self._negative.get(digest)
        if until is not None:
            if trio.current_time() < until:
                return None
            del self._negative[digest]
        return MISS

    async def lookup(self, digest: bytes) -> ManagedKey | None:
        """The key of ``digest``: from the cache, else from the backend (``ControlUnavailable`` if it is down).

        Concurrent lookups of one digest share one backend read.
        """
        hit = self.cached(digest)
        if not isinstance(hit, _Miss):
            return hit
        with trio.move_on_after(self._timeout):
            while (pending := self._pending.get(digest)) is not None:
                await pending.wait()
                hit = self.cached(digest)
                if not isinstance(hit, _Miss):
                    return hit  # else that lookup failed: try again
            done = self._pending[digest] = trio.Event()
            try:
                async with self._limiter:
                    seen = self._version
                    key = (await self.store.find([digest])).get(digest)
                if key is None:
                    if len(self._negative) >= self._max_cached:
                        self._negative.clear()
                    self._negative[digest] = trio.current_time() + self._negative_ttl
                else:
                    self._remember(key, seen)
            finally:
                del self._pending[digest]
                done.set()
            return key
        raise ControlUnavailable("The gateway could not check this API key: its key store did not answer in "
                                 "time. Retry shortly.", headers={"retry-after": "1"})

    def _remember(self, key: ManagedKey, seen: int) -> None:
        if key.digest not in self._cache and len(self._cache) >= self._max_cached:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        self._cache[key.digest] = _Cached(key, seen)

    def forget(self, digest: bytes) -> None:
        """Drop what this worker knows about ``digest`` (after it changed the key itself)."""
        self._cache.pop(digest, None)
        self._negative.pop(digest, None)

    # -- propagation --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll the version counter every ``poll`` seconds while keys are cached (the worker's lifetime)."""
        task_status.started()
        while True:
            await trio.sleep(self._poll)
            if not self._cache:
                continue
            try:
                with trio.fail_after(self._timeout * 4):
                    await self.refresh()
            except (ControlUnavailable, trio.TooSlowError) as exc:
                reason = getattr(exc, "message", "") or "no answer in time"
                if self._down is None:
                    log.warning("managed keys: the control backend (%s) is unreachable: %s; cached keys keep "
                                "working, changes arrive when it is back", self.store.name, reason)
                self._down = reason
                continue
            if self._down is not None:
                log.warning("managed keys: the control backend (%s) answers again", self.store.name)
                self._down = None

    async def refresh(self) -> None:
        """Read the version counter; fetch again every cached key read before it (drop the deleted ones)."""
        version = await self.store.version()
        if version != self._version:
            self._negative.clear()
        reset = version < self._version  # the backend lost its state (a Redis without persistence restarted)
        self._version = version
        stale = [d for d, entry in self._cache.items() if reset or entry.seen < version]
        for start in range(0, len(stale), _BATCH):
            chunk = stale[start:start + _BATCH]
            found = await self.store.find(chunk)
            for digest in chunk:
                if digest not in self._cache:
                    continue
                key = found.get(digest)
                if key is None:
                    del self._cache[digest]
                else:
                    self._cache[digest] = _Cached(key, version)

    # -- the admin API --

    async def create(self, body: Mapping[str, Any]) -> tuple[ManagedKey, str]:
        """A new key from an admin request body; returns it and its secret (never stored, shown once)."""
        values = key_fields(body, creating=True)
        name = values["name"]
        if name in self._reserved:
            raise KeyNameTaken(f"A key named '{name}' is configured in [keys.{name}].", param="name")
        secret = new_secret()
        now = self._clock()
        values["limits"] = Limits(**values["limits"])
        key = ManagedKey(id=new_key_id(now), digest=sha256(secret.encode()).digest(), created=now, updated=now,
                         last4=secret[-4:], **values)
        if not await self.store.create(key):
            raise KeyNameTaken(f"A key named '{name}' exists already.", param="name")
        self.forget(key.digest)
        return key, secret

    async def get(self, key_id: str) -> ManagedKey | None:
        """One key by id (``None``: no such key, also for a malformed id)."""
        return await self.store.get(key_id) if valid_key_id(key_id) else None

    async def page(self, after: str | None, limit: int) -> tuple[list[ManagedKey], bool]:
        """Up to ``limit`` keys after the id ``after``, and whether more follow."""
        keys = await self.store.page(after, limit + 1)
        return keys[:limit], len(keys) > limit

    async def update(self, key_id: str, body: Mapping[str, Any]) -> ManagedKey | None:
        """Apply an admin request body to a key; ``None``: no such key."""
        values = key_fields(body, creating=False)
        limits = values.pop("limits")

        def changed(old: ManagedKey) -> ManagedKey:
            return replace(old, **values, limits=replace(old.limits, **limits), updated=max(self._clock(), old.updated),
                           stored="")

        return await self._change(key_id, changed)

    async def delete(self, key_id: str) -> ManagedKey | None:
        """Delete a key; the key it was, or ``None``: no such key."""
        return await self._change(key_id, lambda old: None, deleted=True)

    async def _change(self, key_id: str, change: Callable[[ManagedKey], ManagedKey | None], *,
                      deleted: bool = False) -> ManagedKey | None:
        for _ in range(8):  # another admin changed the same key meanwhile: apply ours to theirs
            old = await self.get(key_id)
            if old is None:
                return None
            new = change(old)
            if await self.store.swap(old, new):
                self.forget(old.digest)
                return old if deleted else new
        raise ControlUnavailable("The key kept changing while this change was applied; retry.",
                                 headers={"retry-after": "1"})

    async def aclose(self) -> None:
        """Let go of the backend's connections."""
        await self.store.aclose()

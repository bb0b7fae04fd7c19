"""Managed keys: the records, their checks, every backend's contract, and how workers see changes."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import trio

from streamgw.config import Limits
from streamgw.control.keys import (
    MISS,
    KeyNameTaken,
    KeyStore,
    ManagedKey,
    ManagedKeys,
    MemoryKeyStore,
    is_managed_secret,
    key_fields,
    new_key_id,
)
from streamgw.control.keys_redis import RedisKeyStore
from streamgw.control.keys_sqlite import SQLiteKeyStore
from streamgw.errors import ControlUnavailable, InvalidRequest
from streamgw.store.resp import RedisClient
from streamgw.testing.redis_server import redis_process, require_redis

from .conftest import unique_prefix


def a_key(name: str = "alice", secret: str = "sk-sgw-" + "a" * 43, when: float = 1_800_000_000.0,
          **values: Any) -> ManagedKey:
    return ManagedKey(id=new_key_id(when), name=name, digest=sha256(secret.encode()).digest(), created=when,
                      updated=when, last4=secret[-4:], **values)


# --- the record and its checks -------------------------------------------------------------------------------


def test_a_record_round_trips_and_carries_its_policy() -> None:
    key = a_key(tenant="team-a", models=("demo/*",), limits=Limits(requests_per_minute=60, cost_per_day=1.5),
                model_limits=(("demo/fast*", Limits(concurrent_streams=2)),), expires=1_900_000_000.0)
    again = ManagedKey.decode(key.encode())
    assert again == key and again.stored == key.encode()
    assert again.policy.name == "alice" and again.policy.tenant == "t:team-a" and again.policy.managed
    assert again.policy.models == ("demo/*",) and again.policy.limits.requests_per_minute == 60
    assert a_key().policy.tenant == "key:" + a_key().digest.hex()[:24]  # no tenant: a tenant of its own
    public = key.public()
    assert "digest" not in public and key.digest.hex() not in json.dumps(public)
    assert public["redacted"] == "sk-sgw-...aaaa" and public["tenant"] == "team-a"


def test_secrets_have_the_managed_form() -> None:
    from streamgw.control.keys import new_secret

    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100 and all(is_managed_secret(s) and len(s) == 50 for s in secrets)
    assert not is_managed_secret("sk-alice-0123456789") and not is_managed_secret(new_secret() + "x")


@pytest.mark.parametrize("record", [
    "{", "[]", '{"id": 1}', "NaN",
    lambda r: {**r, "name": "bad name"}, lambda r: {**r, "digest": "00"}, lambda r: {**r, "limits": {"x": 1}},
    lambda r: {**r, "limits": {"requests_per_minute": -1}}, lambda r: {**r, "models": ["a\nb"]},
    lambda r: {**r, "disabled": 0}, lambda r: {**r, "extra": True}, lambda r: {**r, "last4": "abc"},
    lambda r: {**r, "created": float("nan")},
])
def test_a_malformed_record_is_refused(record: Any) -> None:
    text = record if isinstance(record, str) else json.dumps(record(json.loads(a_key().encode())))
    with pytest.raises(ValueError):
        ManagedKey.decode(text)


@pytest.mark.parametrize(("body", "param"), [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"name": 7}, "name"),
    ({"name": "a", "tenant": "bad tenant"}, "tenant"),
    ({"name": "a", "tenant": 3}, "tenant"),
    ({"name": "a", "models": "demo/*"}, "models"),
    ({"name": "a", "models": []}, "models"),
    ({"name": "a", "models": ["ok", ""]}, "models[1]"),
    ({"name": "a", "models": ["x" * 257]}, "models[0]"),
    ({"name": "a", "models": ["ok"] * 257}, "models"),
    ({"name": "a", "requests_per_minute": -1}, "requests_per_minute"),
    ({"name": "a", "requests_per_minute": 1.5}, "requests_per_minute"),
    ({"name": "a", "tokens_per_day": True}, "tokens_per_day"),
    ({"name": "a", "tokens_per_minute": 10**16}, "tokens_per_minute"),
    ({"name": "a", "cost_per_day": -0.5}, "cost_per_day"),
    ({"name": "a", "cost_per_month": "1"}, "cost_per_month"),
    ({"name": "a", "model_limits": []}, "model_limits"),
    ({"name": "a", "model_limits": {"demo/*": 5}}, "model_limits.demo/*"),
    ({"name": "a", "model_limits": {"demo/*": {"rpm": 5}}}, "model_limits.demo/*.rpm"),
    ({"name": "a", "model_limits": {"demo/*": {"concurrent_streams": -2}}}, "model_limits.demo/*.concurrent_streams"),
    ({"name": "a", "model_limits": {"": {}}}, "model_limits"),
    ({"name": "a", "expires": "tomorrow"}, "expires"),
    ({"name": "a", "expires": "2027-01-01T00:00:00"}, "expires"),  # no time zone
    ({"name": "a", "expires": "2027-01-01"}, "expires"),
    ({"name": "a", "expires": -1}, "expires"),
    ({"name": "a", "expires": 1e300}, "expires"),
    ({"name": "a", "expires": False}, "expires"),
    ({"name": "a", "disabled": "yes"}, "disabled"),
    ({"name": "a", "secret": "sk-sgw-mine"}, "secret"),
])
def test_each_bad_field_is_named(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        key_fields(body, creating=True)
    assert caught.value.param == param and caught.value.status == 400


def test_fields_that_never_change() -> None:
    for name in ("name", "tenant"):
        with pytest.raises(InvalidRequest) as caught:
            key_fields({name: "x"}, creating=False)
        assert caught.value.param == name and "cannot be changed" in caught.value.message
    assert key_fields({"expires": "2027-01-31T00:00:00Z", "models": None, "requests_per_minute": 5},
                      creating=False) == {"expires": 1801353600.0, "models": (), "limits": {"requests_per_minute": 5}}


# --- every backend's contract --------------------------------------------------------------------------------


async def test_create_find_page_and_name_uniqueness(key_store: KeyStore) -> None:
    start = await key_store.version()
    keys = [a_key(f"k{i}", "sk-sgw-" + f"{i:02d}" * 21 + "x", 1_800_000_000.0 + i) for i in range(5)]
    for key in keys:
        assert await key_store.create(key)
    assert await key_store.version() == start + 5
    assert not await key_store.create(a_key("k0", "sk-sgw-" + "z" * 43))  # the name is taken
    assert await key_store.version() == start + 5  # a refused change changes nothing
    found = await key_store.find([keys[1].digest, keys[3].digest, b"\0" * 32])
    assert set(found) == {keys[1].digest, keys[3].digest} and found[keys[1].digest] == keys[1]
    assert await key_store.get(keys[2].id) == keys[2] and await key_store.get("key_" + "0" * 28) is None
    assert [k.name for k in await key_store.page(None, 3)] == ["k0", "k1", "k2"]  # creation order
    assert [k.name for k in await key_store.page(keys[2].id, 10)] == ["k3", "k4"]


async def test_changes_apply_only_over_the_record_they_were_made_from(key_store: KeyStore) -> None:
    key = a_key()
    assert await key_store.create(key)
    old = await key_store.get(key.id)
    assert old is not None
    version = await key_store.version()
    disabled = replace(old, disabled=True, updated=1_800_000_001.0, stored="")
    assert await key_store.swap(old, disabled)
    assert await key_store.version() == version + 1
    assert not await key_store.swap(old, None)  # made from the record before the change: refused
    current = await key_store.get(key.id)
    assert current is not None and current.disabled
    assert await key_store.swap(current, None)
    assert await key_store.get(key.id) is None and await key_store.find([key.digest]) == {}
    assert await key_store.version() == version + 2
    assert await key_store.create(a_key("alice", "sk-sgw-" + "b" * 43))  # the name is free again


async def test_a_malformed_record_in_sqlite_is_no_key(tmp_path: Path) -> None:
    store = SQLiteKeyStore(str(tmp_path / "control.db"))
    key = a_key()
    assert await store.create(key)
    with sqlite3.connect(tmp_path / "control.db") as conn:
        conn.execute("UPDATE managed_keys SET record = ? WHERE id = ?", ('{"id": "x"}', key.id))
    assert await store.find([key.digest]) == {} and await store.get(key.id) is None
    assert await store.page(None, 10) == []
    await store.aclose()


async def test_a_malformed_record_in_redis_is_no_key(redis_url: str) -> None:
    prefix = unique_prefix()
    store = RedisKeyStore(redis_url, key_prefix=prefix)
    key = a_key()
    assert await store.create(key)
    client = RedisClient(redis_url)
    await client.execute("SET", f"{prefix}mkey:d:{key.digest.hex()}", b"\xff\xfe not json")
    await client.execute("SET", f"{prefix}mkey:version", "not a number")
    assert await store.find([key.digest]) == {} and await store.get(key.id) is None
    assert await store.version() == 0
    await client.aclose()
    await store.aclose()


# --- what workers see ------------------------------------------------------------------------------------------


async def test_a_key_made_by_one_worker_works_at_once_on_another_and_changes_reach_it(key_store: KeyStore) -> None:
    one, two = ManagedKeys(key_store), ManagedKeys(key_store)
    stranger = sha256(b"sk-sgw-" + b"q" * 43).digest()
    assert await two.lookup(stranger) is None  # remembered as no key
    key, secret = await one.create({"name": "alice", "models": ["demo/*"]})
    digest = sha256(secret.encode()).digest()
    assert two.cached(digest) is MISS
    seen = await two.lookup(digest)  # not cached: asked of the backend at once
    assert seen is not None and seen.usable(0) and seen.policy.models == ("demo/*",)
    changed = await one.update(key.id, {"disabled": True, "requests_per_minute": 5})
    assert changed is not None and changed.disabled and changed.limits.requests_per_minute == 5
    cached = two.cached(digest)
    assert isinstance(cached, ManagedKey) and not cached.disabled  # until the next poll ...
    await two.refresh()
    cached = two.cached(digest)
    assert isinstance(cached, ManagedKey) and cached.disabled and cached.limits.requests_per_minute == 5
    assert await one.delete(key.id) is not None
    await two.refresh()
    assert two.cached(digest) is MISS and await two.lookup(digest) is None
    assert await one.update(key.id, {"disabled": False}) is None and await one.delete(key.id) is None


async def test_the_poller_carries_a_change_within_one_poll() -> None:
    store = MemoryKeyStore()
    one, two = ManagedKeys(store), ManagedKeys(store, poll=0.05)
    key, secret = await one.create({"name": "alice"})
    digest = sha256(secret.encode()).digest()
    assert await two.lookup(digest) is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(two.run)
        await one.update(key.id, {"disabled": True})
        changed = trio.current_time()
        with trio.fail_after(2):
            while isinstance(hit := two.cached(digest), ManagedKey) and not hit.disabled:  # noqa: ASYNC110 (polling)
                await trio.sleep(0.005)
        assert trio.current_time() - changed < 0.5
        nursery.cancel_scope.cancel()


async def test_names_are_unique_across_config_and_managed_keys() -> None:
    keys = ManagedKeys(MemoryKeyStore(), reserved={"ops"})
    with pytest.raises(KeyNameTaken) as caught:
        await keys.create({"name": "ops"})
    assert caught.value.status == 409 and caught.value.param == "name"
    await keys.create({"name": "dev"})
    with pytest.raises(KeyNameTaken):
        await keys.create({"name": "dev"})


async def test_an_unreachable_backend_keeps_cached_keys_and_never_hangs(tmp_path: Path) -> None:
    require_redis()
    with redis_process() as (url, proc):
        keys = ManagedKeys(RedisKeyStore(url, key_prefix=unique_prefix(), timeout=0.3), timeout=0.3)
        _, secret = await keys.create({"name": "alice"})
        digest = sha256(secret.encode()).digest()
        assert await keys.lookup(digest) is not None
        proc.send_signal(19)  # SIGSTOP: the server hangs
        try:
            started = trio.current_time()
            with pytest.raises(ControlUnavailable) as caught:
                await keys.lookup(sha256(b"sk-sgw-" + b"u" * 43).digest())
            assert caught.value.status == 503 and trio.current_time() - started < 1.0
            with pytest.raises(ControlUnavailable):
                await keys.refresh()
            assert isinstance(keys.cached(digest), ManagedKey)  # the cached key keeps working
        finally:
            proc.send_signal(18)  # SIGCONT
        await keys.aclose()


async def test_an_unknown_key_flood_costs_one_lookup(redis_url: str) -> None:
    keys = ManagedKeys(RedisKeyStore(redis_url, key_prefix=unique_prefix()))
    client = RedisClient(redis_url)

    async def mgets() -> int:
        info = await client.execute("INFO", "commandstats")
        assert isinstance(info, bytes)
        line = next((row for row in info.decode().splitlines() if row.startswith("cmdstat_mget:")), "calls=0,")
        return int(line.split("calls=", 1)[1].split(",", 1)[0])

    before = await mgets()
    digest = sha256(b"sk-sgw-" + b"f" * 43).digest()
    async with trio.open_nursery() as nursery:
        for _ in range(200):
            nursery.start_soon(keys.lookup, digest)
    assert await mgets() - before == 1
    await client.aclose()
    await keys.aclose()

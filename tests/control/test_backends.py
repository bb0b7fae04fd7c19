"""One suite for every limits backend (memory, SQLite, a real redis-server): the same checks, the same answers.

The redis-server is the session's (``conftest.redis_url``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from streamgw.control.base import Charge, Check, ControlBackend, ControlUnavailable, UsageCounts
from streamgw.control.memory import MemoryControl
from streamgw.control.redis import RedisControl
from streamgw.control.sqlite import SQLiteControl
from streamgw.testing.process import free_port


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ControlBackend]:
    made: ControlBackend
    if request.param == "memory":
        made = MemoryControl()
    elif request.param == "sqlite":
        made = SQLiteControl(str(tmp_path / "control.db"))
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisControl(url, key_prefix=f"t{free_port()}:")
    yield made
    await made.aclose()


async def test_requests_per_minute_is_a_bucket_of_the_limit(backend: ControlBackend) -> None:
    check = Check("requests", "rq:k", 3)
    first = await backend.admit([check])
    assert first[0].allowed and first[0].remaining == 2 and first[0].reset == pytest.approx(20, abs=0.5)
    assert [(await backend.admit([check]))[0].remaining for _ in range(2)] == [1, 0]
    refused = (await backend.admit([check]))[0]
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == pytest.approx(20, abs=0.5)  # one request back every 60/3 s
    assert refused.reset == pytest.approx(60, abs=0.5)


async def test_a_refusal_commits_nothing(backend: ControlBackend) -> None:
    rate = Check("requests", "rq:a", 10)
    budget = Check("budget", "bt:a:day", 5, ttl=100)
    stream = Check("streams", "ls:a", 1, lease="L1", ttl=30)
    await backend.settle([Charge("add", "bt:a:day", 5, ttl=100)])
    verdicts = await backend.admit([rate, stream, budget])
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert verdicts[2].retry_after == 100
    # neither the request nor the lease was taken
    assert (await backend.admit([rate, stream]))[0].remaining == 9
    assert not (await backend.admit([Check("streams", "ls:a", 1, lease="L2", ttl=30)]))[0].allowed


async def test_peeking_takes_nothing(backend: ControlBackend) -> None:
    check = Check("requests", "rq:p", 2)
    for _ in range(3):
        assert (await backend.admit([check], commit=False))[0].remaining == 1
    assert (await backend.admit([check]))[0].remaining == 1


async def test_tokens_are_counted_when_charged(backend: ControlBackend) -> None:
    check = Check("tokens", "tk:k", 100)
    assert (await backend.admit([check]))[0].remaining == 100
    await backend.settle([Charge("tokens", "tk:k", 60, 100)])
    verdict = (await backend.admit([check]))[0]
    assert verdict.allowed and verdict.remaining == 40 and verdict.reset == pytest.approx(36, abs=0.5)
    await backend.settle([Charge("tokens", "tk:k", 90, 100)])  # 150 counted: more than the limit
    refused = (await backend.admit([check]))[0]
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == pytest.approx(30.6, abs=0.5)  # until fewer than 100 are counted


async def test_stream_leases_are_released_and_expire(backend: ControlBackend) -> None:
    def lease(name: str, ttl: float = 30) -> Check:
        return Check("streams", "ls:k", 2, lease=name, ttl=ttl)

    assert (await backend.admit([lease("a")]))[0].remaining == 1
    assert (await backend.admit([lease("b", ttl=0.3)]))[0].allowed
    assert not (await backend.admit([lease("c")]))[0].allowed
    await backend.settle([Charge("release", "ls:k", lease="a")])
    assert (await backend.admit([lease("d")]))[0].allowed
    await trio.sleep(0.5)  # "b" was never released nor refreshed: it expired
    assert (await backend.admit([lease("e")]))[0].allowed
    assert not (await backend.admit([lease("f")]))[0].allowed


async def test_refreshed_leases_live_on(backend: ControlBackend) -> None:
    assert (await backend.admit([Check("streams", "ls:r", 1, lease="a", ttl=0.4)]))[0].allowed
    for _ in range(3):
        await trio.sleep(0.2)
        await backend.refresh([("ls:r", "a")], 0.4)
    assert not (await backend.admit([Check("streams", "ls:r", 1, lease="b", ttl=1)]))[0].allowed


async def test_budgets_add_up(backend: ControlBackend) -> None:
    check = Check("budget", "bc:k:2026-01", 0.5, ttl=3600)
    await backend.settle([Charge("add", "bc:k:2026-01", 0.25, ttl=3600)])
    verdict = (await backend.admit([check]))[0]
    assert verdict.allowed and verdict.remaining == pytest.approx(0.25)
    await backend.settle([Charge("add", "bc:k:2026-01", 0.25, ttl=3600)])
    assert not (await backend.admit([check]))[0].allowed


async def test_one_settlement_of_every_kind_and_expired_counters_restart(backend: ControlBackend) -> None:
    assert (await backend.admit([Check("streams", "ls:m", 1, lease="a", ttl=30)]))[0].allowed
    await backend.settle([Charge("add", "bt:m:day", 7, ttl=0.3), Charge("tokens", "tk:m", 30, 100)])
    await trio.sleep(0.5)  # the counter expired: the next addition starts from 0
    await backend.settle([Charge("release", "ls:m", lease="a"), Charge("tokens", "tk:m", 30, 100),
                          Charge("add", "bt:m:day", 4, ttl=100)])
    verdicts = await backend.admit([Check("streams", "ls:m", 1, lease="b", ttl=30), Check("tokens", "tk:m", 100),
                                    Check("budget", "bt:m:day", 10, ttl=100)])
    assert [v.allowed for v in verdicts] == [True, True, True]
    assert 40 <= verdicts[1].remaining <= 42  # 60 tokens counted, less what refilled while it slept
    assert verdicts[2].remaining == 6


async def test_usage_is_summed_and_filtered(backend: ControlBackend) -> None:
    one = UsageCounts(requests=1, completed=1, input_tokens=10, cached_tokens=2, output_tokens=5, cost_usd=0.5)
    await backend.add_usage({("2026-01-01", "alice", "team", "demo/x", "demo", "x"): one})
    await backend.add_usage({("2026-01-01", "alice", "team", "demo/x", "demo", "x"): one,
                             ("2026-01-02", "bob", "", "r", "p", "m"): UsageCounts(requests=1, failed=1)})
    rows = await backend.usage("2026-01-01", "2026-01-31")
    assert [r.key for r in rows] == [("2026-01-01", "alice", "team", "demo/x", "demo", "x"),
                                     ("2026-01-02", "bob", "", "r", "p", "m")]
    alice = rows[0].counts
    assert (alice.requests, alice.completed, alice.input_tokens, alice.cached_tokens, alice.output_tokens) == (
        2, 2, 20, 4, 10)
    assert alice.cost_usd == pytest.approx(1.0)
    assert [r.key[1] for r in await backend.usage("2026-01-01", "2026-01-31", key="bob")] == ["bob"]
    assert [r.key[1] for r in await backend.usage("2026-01-01", "2026-01-31", tenant="team")] == ["alice"]
    assert await backend.usage("2026-01-03", "2026-01-31") == []


async def test_an_unreachable_backend_is_unavailable(tmp_path: Path) -> None:
    down = RedisControl(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(ControlUnavailable):
        await down.admit([Check("requests", "rq:x", 1)])
    with pytest.raises(ControlUnavailable):
        await SQLiteControl(str(tmp_path / "missing" / "dir" / "c.db")).admit([Check("requests", "rq:x", 1)])


async def test_sqlite_housekeeping_runs_off_the_request_path(tmp_path: Path) -> None:
    import sqlite3

    now = [1_000_000.0]
    path = str(tmp_path / "control.db")
    control = SQLiteControl(path, clock=lambda: now[0])
    await control.admit([Check("requests", "rq:h", 60), Check("streams", "ls:h", 2, lease="a", ttl=30)])
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # a new connection's default
        assert conn.execute("SELECT COUNT(*) FROM state").fetchone()[0] == 2
    assert control._connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    now[0] += 3600  # everything expired long ago
    await control.maintain()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM state").fetchone()[0] == 0
    await control.aclose()

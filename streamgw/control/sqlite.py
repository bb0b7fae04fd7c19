"""The SQLite backend: the workers of one machine share limits, budgets and usage through one file.

Every operation is one tiny transaction (``BEGIN IMMEDIATE`` … ``COMMIT``) on a WAL database with
``synchronous=NORMAL`` (no fsync per commit), run **on the event loop**: it takes tens of
microseconds, less than a hop to a worker thread and back (README, "Limits, budgets and usage", has
the measurement).  SQLite's own busy handler would sleep while another worker holds the write lock
and so block the loop: it is off (``busy_timeout = 0``), and a ``SQLITE_BUSY`` is retried after a
short ``trio.sleep`` until ``[control] timeout``.  ``BEGIN IMMEDIATE`` takes the write lock before
the first read, so no two processes read the same state and both write it back.

Rates, budget counters and stream leases share one table (``state``), so a commit writes one
B-tree; checkpoints and the purge of expired rows run in a worker thread (``maintain``), never in a
request's commit.  Usage rows have their own table, written in batches by the usage writer.

The file and its tables are created on first use; failing to open it makes every operation raise
``ControlUnavailable`` (and opening is retried on the next one).
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from streamgw.control.base import (
    USAGE_COUNTERS,
    USAGE_DIMENSIONS,
    WINDOW,
    Charge,
    Check,
    ControlUnavailable,
    UsageCounts,
    UsageKey,
    UsageRow,
    Verdict,
    evaluate,
)

T = TypeVar("T")

_SCHEMA = (
    # rates (value: tat), budget counters (value: the sum) and leases (name "<limit>\x1f<lease id>") in one
    # table: a transaction then writes one B-tree, the cheapest commit SQLite has
    "CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value REAL NOT NULL, expires REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS usage (" + ", ".join(f"{d} TEXT NOT NULL" for d in USAGE_DIMENSIONS) + ", "
    + ", ".join(f"{c} {'REAL' if c == 'cost_usd' else 'INTEGER'} NOT NULL DEFAULT 0" for c in USAGE_COUNTERS)
    + ", PRIMARY KEY (" + ", ".join(USAGE_DIMENSIONS) + "))",
)
_SEP = "\x1f"  # between a stream limit's name and a lease id (names never contain control characters)
_AFTER = "\x20"  # the character after _SEP: every lease of a limit sorts between name + _SEP and name + _AFTER
_UPSERT_USAGE = (
    "INSERT INTO usage (" + ", ".join((*USAGE_DIMENSIONS, *USAGE_COUNTERS)) + ") VALUES ("
    + ", ".join("?" * (len(USAGE_DIMENSIONS) + len(USAGE_COUNTERS))) + ") ON CONFLICT ("
    + ", ".join(USAGE_DIMENSIONS) + ") DO UPDATE SET " + ", ".join(f"{c} = {c} + excluded.{c}" for c in USAGE_COUNTERS)
)
#: a settle's token charge and budget addition in one statement.  Parameters: name, the new row's value and
#: expires, now, the floor (a rate: ``max(tat, now)``; a counter: none), the amount added, and whether the
#: row is a rate (its expiry is its new ``tat``) or a counter (``expires`` as given); an expired row counts
#: from ``now`` (a rate) or 0 (a counter)
_CHARGE = (
    "INSERT INTO state (name, value, expires) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET "
    "value = CASE WHEN expires > ?4 THEN max(value, ?5) ELSE CASE WHEN ?7 THEN ?4 ELSE 0 END END + ?6, "
    "expires = CASE WHEN ?7 THEN CASE WHEN expires > ?4 THEN max(value, ?5) ELSE ?4 END + ?6 ELSE excluded.expires END"
)
_NO_FLOOR = -math.inf
_PURGE_EVERY = 60.0  # seconds between two clean-ups of expired rows (by ``maintain``)


class SQLiteControl:
    """Limits, budgets and usage in one SQLite file."""

    name = "sqlite"

    def __init__(self, path: str, *, timeout: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._timeout = timeout
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._purged = 0.0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False, isolation_level=None)
                try:
                    conn.execute("PRAGMA busy_timeout = 0")
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute("PRAGMA wal_autocheckpoint = 0")  # ``maintain`` checkpoints, off the loop
                    for statement in _SCHEMA:
                        conn.execute(statement)
                except BaseException:
                    conn.close()
                    raise
            except sqlite3.OperationalError as exc:
                if _busy(exc):
                    raise
                raise ControlUnavailable(f"control store (sqlite) {self.path!r} cannot be opened: {exc}") from exc
            self._conn = conn
        return self._conn

    async def _transaction(self, work: Callable[[sqlite3.Connection, float], T]) -> T:
        """``work(conn, now)`` in one ``BEGIN IMMEDIATE`` transaction, retried while another process writes."""
        deadline = trio.current_time() + self._timeout
        pause = 0.0002
        while True:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn, self._clock())
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    self._reset()
                    raise ControlUnavailable(f"control store (sqlite) failed: {exc}") from exc
                if trio.current_time() + pause > deadline:
                    raise ControlUnavailable(f"control store (sqlite) stayed locked for {self._timeout:g} s") from exc
            except sqlite3.Error as exc:
                self._reset()
                raise ControlUnavailable(f"control store (sqlite) failed: {exc}") from exc
            await trio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.01)

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def admit(self, checks: Sequence[Check], commit: bool = True) -> list[Verdict]:
        def work(conn: sqlite3.Connection, now: float) -> list[Verdict]:
            verdicts: list[Verdict] = []
            writes: list[tuple[str, float, float]] = []
            # every rate and budget row and every stream's count of live leases in one statement (a statement
            # costs more than the rows it reads); a count comes back under its name + _SEP, which no row has
            names = [check.name for check in checks if check.kind != "streams"]
            streams = [check.name for check in checks if check.kind == "streams"]
            parts = [f"SELECT name, value FROM state WHERE name IN ({','.join('?' * len(names))}) AND expires > ?"
                     ] if names else []
            args: list[str | float] = [*names, now] if names else []
            for name in streams:
                parts.append("SELECT ?, COUNT(*) FROM state WHERE name > ? AND name < ? AND expires > ?")
                args += (name + _SEP, name + _SEP, name + _AFTER, now)
            values: dict[str, float] = dict(conn.execute(" UNION ALL ".join(parts), args).fetchall()) if parts else {}
            for check in checks:
                rate, live, counter = None, 0, 0.0
                if check.kind == "streams":
                    live = int(values.get(check.name + _SEP, 0))
                elif check.kind == "budget":
                    counter = values.get(check.name, 0.0)
                else:
                    rate = values.get(check.name)
                verdict, tat = evaluate(check, now, rate, live, counter)
                verdicts.append(verdict)
                if tat is not None:
                    writes.append((check.name, tat, tat))
                elif check.kind == "streams":
                    writes.append((check.name + _SEP + check.lease, 0.0, now + check.ttl))
            if commit and all(v.allowed for v in verdicts):
                conn.executemany("INSERT OR REPLACE INTO state (name, value, expires) VALUES (?, ?, ?)", writes)
            return verdicts

        return await self._transaction(work)

    async def settle(self, charges: Sequence[Charge]) -> None:
        def work(conn: sqlite3.Connection, now: float) -> None:
            releases: list[tuple[str]] = []
            adds: list[tuple[str, float, float, float, float, float, bool]] = []
            for charge in charges:
                if charge.kind == "tokens":
                    # ``charged_tat`` in SQL: from max(tat, now), or from now when the row expired or is missing
                    step = charge.amount * WINDOW / charge.limit
                    adds.append((charge.name, now + step, now + step, now, now, step, True))
                elif charge.kind == "add":
                    adds.append((charge.name, charge.amount, now + charge.ttl, now, _NO_FLOOR, charge.amount, False))
                elif charge.kind == "release":
                    releases.append((charge.name + _SEP + charge.lease,))
            if releases:
                conn.executemany("DELETE FROM state WHERE name = ?", releases)
            if adds:
                conn.executemany(_CHARGE, adds)

        await self._transaction(work)

    async def refresh(self, leases: Sequence[tuple[str, str]], ttl: float) -> None:
        def work(conn: sqlite3.Connection, now: float) -> None:
            conn.executemany("UPDATE state SET expires = ? WHERE name = ? AND expires > ?",
                             [(now + ttl, name + _SEP + lease, now) for name, lease in leases])

        await self._transaction(work)

    async def maintain(self) -> None:
        """Checkpoint the WAL and drop expired rows, in a worker thread on a connection of its own.

        The request path's connection never checkpoints (``wal_autocheckpoint = 0``): a checkpoint copies
        pages and syncs the file, which on the event loop would stall every request of the worker.
        """
        now = self._clock()
        purge = now - self._purged >= _PURGE_EVERY
        if purge:
            self._purged = now

        def work() -> None:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            try:
                if purge:
                    conn.execute("DELETE FROM state WHERE expires < ?", (now - WINDOW,))
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                conn.close()

        if self._conn is None:
            return  # nothing opened yet: nothing written
        try:
            await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except sqlite3.Error as exc:
            raise ControlUnavailable(f"control store (sqlite) maintenance failed: {exc}") from exc

    async def add_usage(self, rows: dict[UsageKey, UsageCounts]) -> None:
        def work(conn: sqlite3.Connection, now: float) -> None:
            conn.executemany(_UPSERT_USAGE, [(*key, *counts.values()) for key, counts in rows.items()])

        await self._transaction(work)

    async def usage(self, start: str, end: str, key: str | None = None,
                    tenant: str | None = None) -> list[UsageRow]:
        def work(conn: sqlite3.Connection, now: float) -> list[UsageRow]:
            sql = f"SELECT {', '.join((*USAGE_DIMENSIONS, *USAGE_COUNTERS))} FROM usage WHERE day >= ? AND day <= ?"
            args: list[str] = [start, end]
            if key is not None:
                sql, args = sql + " AND key = ?", [*args, key]
            if tenant is not None:
                sql, args = sql + " AND tenant = ?", [*args, tenant]
            out = []
            for row in conn.execute(sql + " ORDER BY " + ", ".join(USAGE_DIMENSIONS), args):
                dims = tuple(str(v) for v in row[: len(USAGE_DIMENSIONS)])
                counts = UsageCounts(*row[len(USAGE_DIMENSIONS):])
                out.append(UsageRow(dims, counts))  # type: ignore[arg-type]
            return out

        return await self._transaction(work)

    async def aclose(self) -> None:
        self._reset()


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text

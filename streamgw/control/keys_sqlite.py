"""Managed keys in an SQLite file: what the workers of one machine share (``[control] path``).

WAL lets the workers read while one writes; every change is one short ``BEGIN IMMEDIATE``
transaction that also bumps the version counter.  ``sqlite3`` blocks, so each call runs in a worker
thread under ``[control] timeout``: a call that does not finish in time (the file is locked, the disk
hangs) raises ``ControlUnavailable`` and its thread is abandoned, never waited for.  One connection per
process, used by one thread at a time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from streamgw.control.keys import ManagedKey, decoded
from streamgw.errors import ControlUnavailable

__all__ = ["SQLiteKeyStore"]

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS managed_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "
    "digest BLOB NOT NULL UNIQUE, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS managed_keys_version (one INTEGER PRIMARY KEY CHECK (one = 1), "
    "version INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO managed_keys_version (one, version) VALUES (1, 0)",
)
_BUMP = "UPDATE managed_keys_version SET version = version + 1 WHERE one = 1"


def _version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT version FROM managed_keys_version WHERE one = 1").fetchone()
    return int(row[0]) if row is not None and type(row[0]) is int else 0


def _find(conn: sqlite3.Connection, digests: Sequence[bytes]) -> list[str]:
    marks = ",".join("?" * len(digests))
    return [str(row[0]) for row in conn.execute(f"SELECT record FROM managed_keys WHERE digest IN ({marks})",
                                                tuple(digests))]


def _get(conn: sqlite3.Connection, key_id: str) -> str | None:
    row = conn.execute("SELECT record FROM managed_keys WHERE id = ?", (key_id,)).fetchone()
    return None if row is None else str(row[0])


def _page(conn: sqlite3.Connection, after: str, limit: int) -> list[str]:
    rows = conn.execute("SELECT record FROM managed_keys WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
    return [str(row[0]) for row in rows]


def _create(conn: sqlite3.Connection, key: ManagedKey) -> bool:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT INTO managed_keys (id, name, digest, record) VALUES (?, ?, ?, ?)",
                         (key.id, key.name, key.digest, key.encode()))
        except sqlite3.IntegrityError:
            return False  # the name (or, never in practice, the digest or id) is taken
        conn.execute(_BUMP)
        return True


def _swap(conn: sqlite3.Connection, old: ManagedKey, new: ManagedKey | None) -> bool:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if new is None:
            done = conn.execute("DELETE FROM managed_keys WHERE id = ? AND record = ?", (old.id, old.stored))
        else:
            done = conn.execute("UPDATE managed_keys SET record = ? WHERE id = ? AND record = ?",
                                (new.encode(), old.id, old.stored))
        if done.rowcount != 1:
            return False
        conn.execute(_BUMP)
        return True


class SQLiteKeyStore:
    """Managed keys in the tables ``managed_keys`` and ``managed_keys_version`` of an SQLite file."""

    name = "sqlite"

    def __init__(self, path: str, *, timeout: float = 1.0) -> None:
        self._path = path
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one thread at a time on the connection (abandoned ones included)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, timeout=self._timeout, check_same_thread=False, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                with conn:  # workers opening the file at once create the tables once
                    conn.execute("BEGIN IMMEDIATE")
                    for statement in _SCHEMA:
                        conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _locked(self, fn: Callable[..., T], *args: object) -> T:
        """Worker thread: ``fn(connection, *args)``; an SQLite or OS error closes the connection (reopened later)."""
        with self._lock:
            try:
                return fn(self._connection(), *args)
            except (sqlite3.Error, OSError) as exc:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise ControlUnavailable(f"The key store (sqlite) failed: {exc}") from exc

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        with trio.move_on_after(self._timeout):
            return await trio.to_thread.run_sync(self._locked, fn, *args, abandon_on_cancel=True)
        raise ControlUnavailable(f"The key store (sqlite) did not answer within {self._timeout:g} s.")

    async def version(self) -> int:
        return await self._run(_version)

    async def find(self, digests: Sequence[bytes]) -> dict[bytes, ManagedKey]:
        if not digests:
            return {}
        found = [decoded(text, "sqlite") for text in await self._run(_find, list(digests))]
        return {key.digest: key for key in found if key is not None}

    async def get(self, key_id: str) -> ManagedKey | None:
        return decoded(await self._run(_get, key_id), "sqlite")

    async def page(self, after: str | None, limit: int) -> list[ManagedKey]:
        found = [decoded(text, "sqlite") for text in await self._run(_page, after or "", limit)]
        return [key for key in found if key is not None]

    async def create(self, key: ManagedKey) -> bool:
        return await self._run(_create, key)

    async def swap(self, old: ManagedKey, new: ManagedKey | None) -> bool:
        return await self._run(_swap, old, new)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        with trio.move_on_after(self._timeout):
            await trio.to_thread.run_sync(close, abandon_on_cancel=True)

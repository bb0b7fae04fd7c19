"""The SQLite backend: one file, WAL, no server; every call runs in a worker thread.

``sqlite3`` blocks, so it never runs on the event loop: each operation is one trip to a
worker thread (``streamgw.store.offload`` for writes, ``trio.to_thread`` for reads, which a
timeout may abandon).  Writes go through one connection (the service's single
writer task, and the rare DELETE, take turns on a ``trio.Lock``); reads use a small pool of
their own connections, which WAL lets run while a write is in progress.  The file and its
schema are created on first use; a file that cannot be opened makes the store "down" (every
call raises ``StoreUnavailable``), and opening is retried at most every few seconds.

Each record has its tenant in an ``owner`` column, and the item index is keyed by
``(owner, id)``: a tenant's item ids never collide with another tenant's.  A database
written before tenants existed is migrated when it is opened: its rows belong to the
anonymous tenant ``''``.

A database file deleted (or replaced) while the gateway runs would go unnoticed by SQLite:
its open connections keep writing into the unlinked file, and everything is gone at the next
start.  So every write, and the service's health check, first compares the file at ``path``
(device and inode) with the one that was opened; when they differ, the write fails, the
connections are closed, and the next attempt opens (creates) the file at ``path`` again.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import trio

from streamgw.store.base import EncodedRecord, Encoder, ItemPointer, StoreUnavailable
from streamgw.store.offload import run_in_thread

T = TypeVar("T")

_ITEMS = ("CREATE TABLE IF NOT EXISTS items (owner TEXT NOT NULL, id TEXT NOT NULL, response_id TEXT NOT NULL, "
          "kind TEXT NOT NULL, idx INTEGER NOT NULL, PRIMARY KEY (owner, id))")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, body BLOB NOT NULL, expires_at REAL, "
    "owner TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS responses_by_expiry ON responses (expires_at)",
    _ITEMS,
    "CREATE INDEX IF NOT EXISTS items_by_response ON items (response_id)",
)
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_READERS = 4
_REOPEN_AFTER = 1.0  # seconds between two attempts to open a store that failed to open (one per health check)
_NOT_A_FILE = ("", ":memory:")  # paths SQLite keeps in memory: no file to watch

Identity = tuple[int, int] | None  # (st_dev, st_ino) of the opened file; None: nothing to compare


class _FileGone(Exception):
    """The database file at the path is not the one the connections have open (deleted or replaced)."""


def _identity(path: str) -> Identity:
    if path in _NOT_A_FILE:
        return None
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _verify(path: str, opened: Identity) -> None:
    """``_FileGone`` unless ``path`` is still the file that was opened."""
    if opened is None:
        return
    try:
        current = _identity(path)
    except FileNotFoundError:
        raise _FileGone(f"the database file {path!r} was deleted while the gateway ran") from None
    if current != opened:
        raise _FileGone(f"the database file {path!r} was replaced while the gateway ran")


def _checked(path: str, opened: Identity, fn: Callable[..., T], conn: sqlite3.Connection, *args: object) -> T:
    """Worker thread: ``fn(conn, *args)``, unless the file was deleted or replaced (then nothing is written)."""
    _verify(path, opened)
    return fn(conn, *args)


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """``sqlite3``/OS errors become ``StoreUnavailable``."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"response store (sqlite) {what} failed: {exc}") from exc


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def _migrate(conn: sqlite3.Connection) -> None:
    """A database from before tenants: every existing row goes to the anonymous tenant ``''``."""
    responses = _columns(conn, "responses")
    if responses and "owner" not in responses:
        conn.execute("ALTER TABLE responses ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
    items = _columns(conn, "items")
    if items and "owner" not in items:  # the primary key changes: a new table (its index goes with the old one)
        conn.execute("ALTER TABLE items RENAME TO items_before_tenants")
        conn.execute(_ITEMS)
        conn.execute("INSERT INTO items (owner, id, response_id, kind, idx) "
                     "SELECT '', id, response_id, kind, idx FROM items_before_tenants")
        conn.execute("DROP TABLE items_before_tenants")


#: the writing connection's page cache, KiB (SQLite's default is 2,000).  It only writes: a response's row and its
#: items' pointers, by random ids, so the pages it comes back to are the B-trees' upper levels; reads have their own
#: connections.  At the default, 5,000 responses written filled it (~1.9 MB more of the worker's RSS for good).
_WRITER_CACHE_KIB = 256


def _create(path: str) -> tuple[sqlite3.Connection, Identity]:
    directory = os.path.dirname(path) or "."
    if path not in _NOT_A_FILE and not os.path.isdir(directory):  # SQLite would only say "unable to open"
        raise FileNotFoundError(f"the directory {directory!r} does not exist")
    conn = _connect(path)
    conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
    try:
        with conn:  # one transaction: worker processes opening the same file at once migrate it once
            conn.execute("BEGIN IMMEDIATE")
            _migrate(conn)
            for statement in _SCHEMA:
                conn.execute(statement)
        return conn, _identity(path)
    except BaseException:
        conn.close()
        raise


def _write(conn: sqlite3.Connection, records: Sequence[EncodedRecord]) -> None:
    """One transaction for the whole batch: the records, then their item pointers."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        for record in records:
            conn.execute("DELETE FROM items WHERE response_id = ?", (record.id,))
        conn.executemany(
            "INSERT OR REPLACE INTO responses (id, body, expires_at, owner) VALUES (?, ?, ?, ?)",
            [(r.id, r.body, r.expires_at, r.owner) for r in records],
        )
        conn.executemany(
            "INSERT OR REPLACE INTO items (owner, id, response_id, kind, idx) VALUES (?, ?, ?, ?, ?)",
            [(r.owner, p.item_id, p.response_id, p.kind, p.index) for r in records for p in r.pointers],
        )


def _encode_and_write(conn: sqlite3.Connection, encode: Encoder) -> None:
    _write(conn, encode())


def _probe(conn: sqlite3.Connection) -> None:
    """Take the write lock and let it go: the database can be written (not locked, not read-only)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")


def _delete(conn: sqlite3.Connection, response_id: str, owner: str) -> bool:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).rowcount == 0:
            return False
        conn.execute("DELETE FROM items WHERE response_id = ?", (response_id,))
        return True


def _purge(conn: sqlite3.Connection, now: float) -> int:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM items WHERE response_id IN "
                     "(SELECT id FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?)", (now,))
        return conn.execute("DELETE FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?",
                            (now,)).rowcount


def _get(conn: sqlite3.Connection, response_id: str, now: float) -> bytes | None:
    row = conn.execute(f"SELECT body FROM responses WHERE id = ? AND {_LIVE}", (response_id, now)).fetchone()
    return None if row is None else bytes(row[0])


def _locate(conn: sqlite3.Connection, item_id: str, owner: str, now: float) -> ItemPointer | None:
    row = conn.execute(
        f"SELECT i.response_id, i.kind, i.idx FROM items i JOIN responses r ON r.id = i.response_id "
        f"WHERE i.owner = ? AND i.id = ? AND {_LIVE.replace('expires_at', 'r.expires_at')}", (owner, item_id, now),
    ).fetchone()
    return None if row is None else ItemPointer(item_id, str(row[0]), str(row[1]), int(row[2]))


class SQLiteBackend:
    """Records in an SQLite file (WAL), every call in a worker thread."""

    name = "sqlite"

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self._path = path
        self._clock = clock
        self._writer: sqlite3.Connection | None = None
        self._write_lock = trio.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._reader_limit = trio.CapacityLimiter(_READERS)
        self._failed_at: float | None = None
        self._identity: Identity = None
        self._generation = 0  # bumped when the connections are dropped: a reader of an older one is not reused

    async def open(self) -> None:
        """Create the file and schema (if needed) and open the writing connection."""
        if self._writer is None:
            async with self._write_lock:
                await self._open_locked()

    async def _open_locked(self) -> None:
        if self._writer is not None:
            return
        if self._failed_at is not None and time.monotonic() - self._failed_at < _REOPEN_AFTER:
            raise StoreUnavailable(f"response store (sqlite) {self._path!r} could not be opened")
        try:
            with _translated(f"opening {self._path!r}"):
                self._writer, self._identity = await trio.to_thread.run_sync(_create, self._path)
        except StoreUnavailable:
            self._failed_at = time.monotonic()
            raise
        self._failed_at = None

    async def put_many(self, records: Sequence[EncodedRecord]) -> None:
        """Write the batch in one transaction."""
        await self._on_writer(_write, records)

    async def write(self, encode: Encoder) -> None:
        """Encode and write in the same worker thread: one hop off the event loop per batch."""
        await self._on_writer(_encode_and_write, encode)

    async def delete(self, response_id: str, owner: str) -> bool:
        """Remove ``owner``'s record and its pointers."""
        return await self._on_writer(_delete, response_id, owner)

    async def purge(self, now: float) -> int:
        """Remove records (and their pointers) that expired before ``now``."""
        return await self._on_writer(_purge, now)

    async def get(self, response_id: str) -> bytes | None:
        """The live record's bytes, or ``None``."""
        return await self._on_reader(_get, response_id, self._clock())

    async def locate(self, item_id: str, owner: str) -> ItemPointer | None:
        """``owner``'s pointer of an item whose record is live."""
        return await self._on_reader(_locate, item_id, owner, self._clock())

    async def check(self) -> None:
        """The file is still the one opened (else reopen it), and its write lock can be taken."""
        await self._on_writer(_probe)

    async def aclose(self) -> None:
        """Close every connection (in a thread: closing checkpoints the WAL)."""
        async with self._write_lock:
            await self._drop_connections()

    async def _drop_connections(self) -> None:
        conns = [c for c in (self._writer, *self._readers) if c is not None]
        self._writer, self._readers, self._identity = None, [], None
        self._generation += 1
        for conn in conns:
            await trio.to_thread.run_sync(conn.close)

    async def _on_writer(self, fn: Callable[..., T], *args: object) -> T:
        try:  # uncontended (the usual case): no schedule point of its own, the trip to the thread is one
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._write_lock.acquire()
        try:
            await self._open_locked()
            conn = self._writer
            assert conn is not None
            try:
                with _translated("write"):
                    return await run_in_thread(_checked, self._path, self._identity, fn, conn, *args)
            except _FileGone as exc:
                # Close the stale connections: the next write or health check creates the file afresh.
                with trio.CancelScope(shield=True):
                    await self._drop_connections()
                raise StoreUnavailable(f"response store (sqlite): {exc}; what it held is lost, and the file is "
                                       f"created again on the next write") from exc
        finally:
            self._write_lock.release()

    async def _on_reader(self, fn: Callable[..., T], *args: object) -> T:
        await self.open()
        async with self._reader_limit:
            conn = self._readers.pop() if self._readers else None
            generation = self._generation
            with _translated("read"):
                if conn is None:
                    conn = await trio.to_thread.run_sync(_connect, self._path)
                try:
                    # Abandoned when the service's timeout cancels it: a hung disk must not hang the request.
                    result = await trio.to_thread.run_sync(fn, conn, *args, abandon_on_cancel=True)
                except trio.Cancelled:
                    raise  # the abandoned thread may still use the connection: it is neither closed nor reused
                except BaseException:
                    conn.close()
                    raise
            if generation == self._generation:
                self._readers.append(conn)
            else:
                conn.close()
            return result

"""Log appends on SQLite: one connection of their own, on one thread, one hand-off a commit.

Through SQLAlchemy's async engine every step of an append (the pool's checkout, BEGIN, a head
bump per room, the INSERT, COMMIT, the pool's reset) was a round trip to aiosqlite's thread.
The group commit runs one append at a time, one per keystroke at human typing speed, and those
hand-offs (a queue's futex wake, the event loop's wake-up, the GIL passed back and forth) were
most of the server's CPU: ~1 ms a keystroke at 20 rooms x 5 clients, four times PostgreSQL's.
Here the whole transaction is one call on the appender's thread, which holds the GIL only to
bind parameters: SQLite releases it while it works.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any, Protocol

from .errors import StoreUnavailable

#: Seconds a write waits for SQLite's write lock (another writer: a compaction, the admin CLI).
BUSY_TIMEOUT_SECONDS = 30.0
#: Run on every connection to the database, the store's pooled ones too: WAL for concurrent
#: readers, a commit durable once it returns.
PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON")
_BUMP_HEAD = (
    "UPDATE rooms SET head = head + ?, log_updates = log_updates + ?, log_bytes = log_bytes + ?"
    " WHERE id = ? RETURNING head"
)
_INSERT_ROW = "INSERT INTO room_updates (room_id, seq, data, created_at) VALUES (?, ?, ?, ?)"


class Cursor(Protocol):
    """What `append_rows` needs of a DB-API cursor: sqlite3's, or SQLAlchemy's adapter of
    aiosqlite's (inside `AsyncConnection.run_sync`)."""

    def execute(self, sql: str, parameters: Sequence[Any], /) -> Any: ...

    def executemany(self, sql: str, parameters: Sequence[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...


def append_rows(cursor: Cursor, batches: Mapping[str, Sequence[bytes]]) -> dict[str, int]:
    """Append each room's rows inside the cursor's transaction (rooms in the order given: lock
    order); the rooms' heads after it, rooms gone absent."""
    created_at = _timestamp()
    heads: dict[str, int] = {}
    rows: list[tuple[str, int, bytes, str]] = []
    for room_id, updates in batches.items():
        count = len(updates)
        cursor.execute(_BUMP_HEAD, (count, count, sum(map(len, updates)), room_id))
        bumped = cursor.fetchone()
        if bumped is None:
            continue
        head = heads[room_id] = bumped[0]
        first = head - count + 1
        rows.extend((room_id, first + i, data, created_at) for i, data in enumerate(updates))
    if rows:
        cursor.executemany(_INSERT_ROW, rows)
    return heads


def _timestamp() -> str:
    """Now, as SQLAlchemy stores a `DateTime` on SQLite (UTC, naive), so it reads it back."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class SQLiteAppender:
    """Runs `append_rows` in a transaction of its own, one at a time, on a connection it opens
    when first needed and closes after an error (the next append opens another). Its thread
    starts with the first append and ends at `close`."""

    def __init__(self, path: str, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._thread: ThreadPoolExecutor | None = None
        #: Used on the appender's thread only.
        self._conn: sqlite3.Connection | None = None

    async def append(self, batches: Mapping[str, Sequence[bytes]]) -> dict[str, int]:
        """The rooms' heads after the append (rooms gone are absent). Raises `StoreUnavailable`
        when SQLite cannot write (its write lock still held after the busy timeout, a full
        disk, an unreadable file). Cancelled, the append still commits or rolls back whole."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-append")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._thread, self._append, batches
            )
        except (sqlite3.OperationalError, sqlite3.InterfaceError) as error:
            raise StoreUnavailable(f"database unavailable: {error}") from error

    async def reset(self) -> None:
        """Close the connection (after a failure seen elsewhere)."""
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._close)

    async def close(self) -> None:
        """Close the connection and end the thread, after the appends already asked for."""
        await self.reset()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown()

    def _append(self, batches: Mapping[str, Sequence[bytes]]) -> dict[str, int]:
        conn = self._conn or self._open()
        try:
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            heads = append_rows(cursor, batches)
            cursor.execute("COMMIT")
        except BaseException:
            self._close()
            raise
        return heads

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None)
        for pragma in PRAGMAS:
            conn.execute(pragma)
        self._conn = conn
        return conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Rolled back first: closing alone keeps the write lock while a statement of the
        # transaction is still referenced (by a traceback, say).
        with suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.rollback()
        conn.close()

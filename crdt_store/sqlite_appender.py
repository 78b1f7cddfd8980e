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
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from queue import SimpleQueue
from typing import Any, Protocol

from .errors import StoreUnavailable
from .futures import settle

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


#: A call for the appender's thread, the loop to answer on, and who hears the outcome there.
_Job = tuple[Callable[[], object], asyncio.AbstractEventLoop, Callable[[Any], None]]
#: What `SQLiteAppender.try_send` reports: the rooms' heads, or the error that ended the append
#: (`StoreUnavailable` when SQLite cannot write; else the statement's own).
Answer = Callable[["dict[str, int] | Exception"], None]


class SQLiteAppender:
    """Runs `append_rows` in a transaction of its own, one at a time in the order asked, on a
    connection it opens when first needed and closes after an error (the next append opens
    another). Its thread starts with the first append and ends at `close`.

    The thread hands each outcome back with `call_soon_threadsafe`, with no future or task on
    either side: at human typing speed each keystroke is a commit, and the group commit's path
    (`try_send`) then wakes nothing but the event loop.
    """

    def __init__(self, path: str, *, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        #: Work for the thread, in order: a call, the loop to answer on and who hears it; None
        #: ends the thread.
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        #: Used on the appender's thread only.
        self._conn: sqlite3.Connection | None = None

    def try_send(self, batches: Mapping[str, Sequence[bytes]], done: Answer) -> bool:
        """Queue the append for the thread; `done` hears its outcome from the event loop.
        Always True: SQLite needs no connection open beforehand."""
        self._ask(partial(self._append, batches), done)
        return True

    async def append(self, batches: Mapping[str, Sequence[bytes]]) -> dict[str, int]:
        """The rooms' heads after the append (rooms gone are absent). Raises `StoreUnavailable`
        when SQLite cannot write (its write lock still held after the busy timeout, a full
        disk, an unreadable file). Cancelled, the append still commits or rolls back whole."""
        heads = await self._asked(partial(self._append, batches))
        assert isinstance(heads, dict)
        return heads

    async def reset(self) -> None:
        """Close the connection (after a failure seen elsewhere), after the appends already
        asked for."""
        if self._thread is not None:
            await self._asked(self._close)

    async def close(self) -> None:
        """As `reset`, then end the thread."""
        await self.reset()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()  # at once: the thread is idle, its last job answered

    def _ask(self, work: Callable[[], object], done: Callable[[Any], None]) -> None:
        if self._thread is None:
            # A daemon: a store never closed must not keep the interpreter from exiting (a
            # commit cut short by the exit rolls back whole).
            self._thread = threading.Thread(target=self._serve, name="sqlite-append", daemon=True)
            self._thread.start()
        self._jobs.put((work, asyncio.get_running_loop(), done))

    async def _asked(self, work: Callable[[], object]) -> object:
        answered: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._ask(work, partial(settle, answered))
        return await answered

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, loop, done = job
            outcome: object
            try:
                outcome = work()
            except (sqlite3.OperationalError, sqlite3.InterfaceError) as error:
                outcome = StoreUnavailable(f"database unavailable: {error}")
                outcome.__cause__ = error
            except Exception as error:
                outcome = error
            with suppress(RuntimeError):  # the loop is closed: nobody is left to hear it
                loop.call_soon_threadsafe(done, outcome)

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

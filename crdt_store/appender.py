"""Log appends on PostgreSQL: one statement, on one connection of their own, without SQLAlchemy.

The group commit runs one append at a time, many a second (one per keystroke at human typing
speed). Through SQLAlchemy's async engine an append cost ~850 µs of CPU (pool checkout, the
greenlet bridge, the transaction and reset wrappers) where the statement on a plain psycopg
connection costs ~360 µs (measured 2026-12-01, one room, one row): that difference was most of
the server's CPU in the fan-out benchmark. So appends keep one autocommit psycopg connection,
made like the pool's (the same answer bound and TCP parameters), and replace it when it is lost.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from .errors import StoreUnavailable

#: Every room's head bump and every row in ONE statement, a single round trip: the group commit
#: of many rooms at human typing speed had spent most of its time in one UPDATE round trip per
#: room, BEGIN, an INSERT and COMMIT (profiled: 100 rooms, 20-250 ms a commit). Rooms are locked
#: in id order (a fixed lock order, so two processes appending to the same rooms cannot
#: deadlock) and the row locks are held to the commit, so a room's sequence numbers are handed
#: out in commit order. Parameters go in binary (`%b`), or every bytea is hex-escaped.
APPEND_ROWS = """
WITH locked AS (
    SELECT id FROM rooms WHERE id = ANY(%(rooms)b::text[]) ORDER BY id FOR UPDATE
), batch AS (
    SELECT b.room_id, b.n, b.size
    FROM unnest(%(rooms)b::text[], %(counts)b::int8[], %(sizes)b::int8[]) AS b(room_id, n, size)
    JOIN locked ON locked.id = b.room_id
), bumped AS (
    UPDATE rooms SET head = rooms.head + batch.n,
                     log_updates = rooms.log_updates + batch.n,
                     log_bytes = rooms.log_bytes + batch.size
    FROM batch WHERE rooms.id = batch.room_id
    RETURNING rooms.id, rooms.head, batch.n
), appended AS (
    INSERT INTO room_updates (room_id, seq, data, created_at)
    SELECT u.room_id, bumped.head - bumped.n + u.ord, u.data, now()
    FROM unnest(%(row_rooms)b::text[], %(row_ords)b::int8[], %(row_data)b::bytea[])
        AS u(room_id, ord, data)
    JOIN bumped ON bumped.id = u.room_id
)
SELECT id, head FROM bumped
"""


def append_parameters(batches: Mapping[str, Sequence[bytes]]) -> dict[str, list[Any]]:
    """`APPEND_ROWS`'s parameters for these rooms' rows (rooms in the order given)."""
    room_ids = list(batches)
    return {
        "rooms": room_ids,
        "counts": [len(batches[r]) for r in room_ids],
        "sizes": [sum(map(len, batches[r])) for r in room_ids],
        "row_rooms": [r for r in room_ids for _ in batches[r]],
        "row_ords": [i for r in room_ids for i in range(1, len(batches[r]) + 1)],
        "row_data": [data for r in room_ids for data in batches[r]],
    }


class LogAppender:
    """Runs `APPEND_ROWS`, one call at a time, on a connection it opens when first needed."""

    def __init__(self, conninfo: str, connect: Any, parameters: Mapping[str, int]) -> None:
        self._conninfo = conninfo
        self._connect = connect
        self._parameters = parameters
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def append(self, batches: Mapping[str, Sequence[bytes]]) -> dict[str, int]:
        """The rooms' heads after the append (rooms gone are absent). Raises `StoreUnavailable`
        when the connection is lost or the database does not answer in time; the connection is
        then dropped and the next append opens another."""
        async with self._lock:
            try:
                conn = await self._connection()
                cursor = await conn.execute(APPEND_ROWS, append_parameters(batches), prepare=True)
                return dict(await cursor.fetchall())
            except psycopg.Error as error:
                if self._conn is not None and not (self._conn.closed or self._conn.broken):
                    raise  # the statement failed, the connection is fine
                await self._drop()
                raise StoreUnavailable(f"database unavailable: {error}") from error
            except BaseException:
                await self._drop()  # cancelled mid-statement: its answer may still arrive
                raise

    async def reset(self) -> None:
        """Close the connection unless an append is using it (after a loss seen elsewhere: it
        shares that network path)."""
        if not self._lock.locked():
            await self._drop()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None:
            self._conn = await self._connect(
                self._conninfo,
                autocommit=True,
                application_name=f"collab-server:append {os.getpid()}",
                **self._parameters,
            )
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

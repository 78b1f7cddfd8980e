"""The store: rooms, their append-only update logs and their snapshots, on PostgreSQL or SQLite.

One API serves the server, the admin CLI and the tests; `tests/test_store.py` runs the same
contract against both backends. Loading a room is "its snapshot, then every log row after it".
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.abc import PQGen
from sqlalchemy import delete, event, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .appender import APPEND_ROWS, LogAppender, append_parameters
from .errors import LogChanged, RoomNotFound, StoreUnavailable
from .schema import room_snapshots, room_updates, rooms
from .sqlite_appender import BUSY_TIMEOUT_SECONDS, PRAGMAS, SQLiteAppender, append_rows
from .urls import (
    async_url,
    is_postgresql,
    libpq_url,
    network_parameters,
    redact,
    sqlite_path,
)


@dataclass(frozen=True)
class RoomRecord:
    """A room's metadata and the size of what is stored for it."""

    id: str
    name: str
    language: str
    created_at: datetime
    head: int
    log_updates: int
    log_bytes: int
    snapshot_bytes: int


@dataclass(frozen=True)
class RoomPage:
    rooms: list[RoomRecord]
    total: int


@dataclass(frozen=True)
class RoomState:
    """Everything needed to rebuild a room's document: apply `snapshot`, then `updates` in order."""

    room_id: str
    snapshot: bytes | None
    snapshot_seq: int
    updates: list[bytes]
    head: int


@dataclass(frozen=True)
class AppendResult:
    """The head sequence number of each room after the append, and the rooms that were gone."""

    heads: dict[str, int] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)


#: Rows fetched per round trip when loading a log: each partition is processed on the event
#: loop, so it is kept small (5,000 rows held the loop ~145 ms).
_LOAD_PARTITION_ROWS = 1000
#: Advisory lock of a room's compaction: (a class of our own, the room id's hash).
_TRY_LOCK = text("SELECT pg_try_advisory_lock(7312, hashtext(:room))")
_UNLOCK = text("SELECT pg_advisory_unlock(7312, hashtext(:room))")


class _SnapshotMoved(Exception):
    """Raised inside a compaction's transaction to roll it back: another one won the race."""


#: An absolute deadline (event-loop time) for every answer awaited in this context, tighter than
#: the connections' own answer timeout: `Store.ping` sets it so a probe answers in time.
_DEADLINE: ContextVar[float | None] = ContextVar("crdt_store_deadline", default=None)


def _answer_limit(answer_timeout: float) -> float:
    """Seconds to wait for the next answer: the answer timeout, or less if a deadline is near."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return answer_timeout
    return max(0.0, min(answer_timeout, deadline - asyncio.get_running_loop().time()))


#: Seconds between polls of a psycopg wait that nothing woke (see `_AnswerBoundedConnection`).
_REPOLL_SECONDS = 60.0


class _AnswerBoundedConnection(psycopg.AsyncConnection[Any]):
    """A psycopg connection that stops waiting for a database that stops answering.

    A network partition drops packets and closes nothing, so without a bound a query waits on
    its socket forever. Every wait for the server goes through `wait`; past the limit the
    socket is shut down, which fails the wait at once as a lost connection: SQLAlchemy then
    invalidates the connection (it never returns to the pool) and the pool's others. Cancelling
    the query instead would make psycopg send a cancel request, which needs a new connection to
    the unreachable server and holds the caller for seconds.

    A wait is polled again only every `_REPOLL_SECONDS`, not psycopg's 0.1 s (its blocking
    waits' chance to see Ctrl-C): the event loop wakes the wait when the socket is ready, and
    the fan-out's idle LISTEN connection, waiting for notifications, woke the server ten times
    a second for nothing (~0.5% of a core, each wake-up unmaking and remaking its reader).
    """

    answer_timeout: float = math.inf
    _abandoned_after: float | None = None

    async def wait(
        self,
        gen: PQGen[Any],
        interval: float = _REPOLL_SECONDS,
        timeout: float | None = None,  # noqa: ASYNC109 (psycopg's signature)
    ) -> Any:
        limit = _answer_limit(self.answer_timeout)
        timer = asyncio.get_running_loop().call_later(limit, self._abandon, limit)
        try:
            return await super().wait(gen, interval=interval, timeout=timeout)
        except psycopg.Error as error:
            if self._abandoned_after is None:
                raise
            raise psycopg.errors.ConnectionTimeout(
                f"the database did not answer in time ({self._abandoned_after:.3g} s)"
            ) from error
        finally:
            timer.cancel()

    def _abandon(self, limit: float) -> None:
        self._abandoned_after = limit
        with (
            contextlib.suppress(OSError, psycopg.Error),
            socket.socket(fileno=os.dup(self.pgconn.socket)) as sock,
        ):
            sock.shutdown(socket.SHUT_RDWR)


def answer_bounded_connector(answer_timeout: float) -> Any:
    """The `async_creator_fn` of psycopg's SQLAlchemy dialect: connections whose every answer,
    the connection's own handshake included, is awaited at most `answer_timeout` seconds.

    libpq's `connect_timeout` cannot bound the handshake by less than 2 s (a probe's limit is
    shorter), so the connect is bounded here; cancelling a connect sends nothing to the server.
    """

    async def connect(*args: Any, **kwargs: Any) -> _AnswerBoundedConnection:
        limit = _answer_limit(answer_timeout)
        try:
            async with asyncio.timeout(limit):
                conn = await _AnswerBoundedConnection.connect(*args, **kwargs)
        except TimeoutError as error:
            raise psycopg.errors.ConnectionTimeout(
                f"could not connect to the database in time ({limit:.3g} s)"
            ) from error
        conn.answer_timeout = answer_timeout
        return conn

    return connect


def new_room_id() -> str:
    """A URL-safe random id (72 bits): unguessable enough that knowing it is the invitation.

    Never starting with "-": `collab-server compact -abc` would read such an id as an option.
    """
    while (room_id := secrets.token_urlsafe(9)).startswith("-"):
        pass
    return room_id


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything we write is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_ROOM_COLUMNS = (
    rooms.c.id,
    rooms.c.name,
    rooms.c.language,
    rooms.c.created_at,
    rooms.c.head,
    rooms.c.log_updates,
    rooms.c.log_bytes,
    func.coalesce(room_snapshots.c.state_bytes, 0).label("snapshot_bytes"),
)
_ROOM_SELECT = select(*_ROOM_COLUMNS).select_from(
    rooms.outerjoin(room_snapshots, room_snapshots.c.room_id == rooms.c.id)
)


def _room_record(row: Any) -> RoomRecord:
    return RoomRecord(
        id=row.id,
        name=row.name,
        language=row.language,
        created_at=_aware(row.created_at),
        head=row.head,
        log_updates=row.log_updates,
        log_bytes=row.log_bytes,
        snapshot_bytes=row.snapshot_bytes,
    )


class Store:
    """Async access to the rooms, logs and snapshots of one database.

    Usage::

        store = Store.connect("postgresql://postgres@127.0.0.1:5432/collab")
        room = await store.create_room(name="demo", language="python")
        await store.append_updates(room.id, [update_bytes])
        state = await store.load_room_state(room.id)
        await store.close()
    """

    def __init__(
        self, engine: AsyncEngine, url: str, *, appender: LogAppender | SQLiteAppender
    ) -> None:
        self.engine = engine
        #: Where log appends run: a connection of their own (`LogAppender`, `SQLiteAppender`).
        self._appender = appender
        self.url = url
        self.is_postgresql = is_postgresql(url)

    @classmethod
    def connect(cls, url: str, *, pool_size: int = 10, answer_timeout: float = 10.0) -> Store:
        """Create a store for `url` (`postgresql://...` or `sqlite:///path`); connects lazily.
        A URL it cannot run on raises `ValueError` (see `urls.check_database_url`).

        PostgreSQL: each answer of the database (a statement's result, a batch of rows, a
        commit, a new connection) is awaited at most `answer_timeout` seconds, then the
        connection is dropped and the operation raises `StoreUnavailable`. The bound is per
        answer, not per operation, so loading a long log in batches is never cut. TCP
        parameters in `url` (`keepalives_idle`, `tcp_user_timeout`, ...) win over ours.
        SQLite has no network: waits for its locks are bounded by its busy timeout (30 s).

        Log appends (the group commit, many a second) get a connection of their own on
        PostgreSQL (`LogAppender`): autocommit, since an append is one statement, and without a
        pre-ping, whose round trip cost as much as the append; a connection that died since its
        last use fails the append as `StoreUnavailable` (the room retries) and is replaced.
        On SQLite they run on a connection and a thread of their own (`SQLiteAppender`), one
        hand-off to the thread and one back an append.
        """
        if not is_postgresql(url):
            path = sqlite_path(url)
            engine = create_async_engine(
                async_url(url), connect_args={"timeout": BUSY_TIMEOUT_SECONDS}
            )
            _configure_sqlite(engine)
            return cls(engine, url, appender=SQLiteAppender(path))
        connect = answer_bounded_connector(answer_timeout)
        network = network_parameters(url, answer_timeout)
        return cls(
            create_async_engine(
                async_url(url),
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=answer_timeout,
                pool_pre_ping=True,
                connect_args={"async_creator_fn": connect, **network},
            ),
            url,
            appender=LogAppender(libpq_url(url), connect, network, answer_timeout),
        )

    async def close(self) -> None:
        await self.engine.dispose()
        await self._appender.close()

    def __repr__(self) -> str:
        return f"Store({redact(self.url)!r})"

    @asynccontextmanager
    async def _transaction(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A transaction whose connection failures surface as `StoreUnavailable`.

        `snapshot=True` reads every statement from one snapshot (REPEATABLE READ on PostgreSQL;
        SQLite transactions always are), so a compaction committing between two reads cannot
        make a load skip the rows it folded away.
        """
        try:
            async with self.engine.connect() as conn:
                if snapshot and self.is_postgresql:
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                async with conn.begin():
                    yield conn
        except (OperationalError, InterfaceError) as error:
            await self._dispose_pools()
            raise StoreUnavailable(f"database unavailable: {error.orig or error}") from error
        except PoolTimeout as error:
            # Every pooled connection is busy (stuck on a database that stopped answering).
            raise StoreUnavailable(f"no database connection free: {error}") from error
        except DBAPIError as error:
            if error.connection_invalidated:
                await self._dispose_pools()
                raise StoreUnavailable(f"database connection lost: {error.orig}") from error
            raise

    async def _dispose_pools(self) -> None:
        """Close the idle connections, the pool's and the appender's; connections in use are
        left alone. Also after a lost connection: the idle ones share its network path, and
        each dead one would cost an answer timeout on its next use."""
        await self.engine.dispose()
        await self._appender.reset()

    async def ping(self, *, within: float | None = None) -> None:
        """Raise `StoreUnavailable` unless the database answers a query, in at most `within`
        seconds if given, whatever the answer timeout (PostgreSQL): a readiness probe that
        answers late counts as failed."""
        now = asyncio.get_running_loop().time()
        token = _DEADLINE.set(None if within is None else now + within)
        try:
            async with self._transaction() as conn:
                await conn.execute(select(1))
        finally:
            _DEADLINE.reset(token)

    async def create_room(
        self, *, name: str, language: str, room_id: str | None = None
    ) -> RoomRecord:
        record = RoomRecord(
            id=room_id or new_room_id(),
            name=name,
            language=language,
            created_at=_now(),
            head=0,
            log_updates=0,
            log_bytes=0,
            snapshot_bytes=0,
        )
        async with self._transaction() as conn:
            await conn.execute(
                insert(rooms).values(
                    id=record.id,
                    name=record.name,
                    language=record.language,
                    created_at=record.created_at,
                    head=0,
                    log_updates=0,
                    log_bytes=0,
                )
            )
        return record

    async def get_room(self, room_id: str) -> RoomRecord:
        async with self._transaction() as conn:
            row = (await conn.execute(_ROOM_SELECT.where(rooms.c.id == room_id))).one_or_none()
        if row is None:
            raise RoomNotFound(room_id)
        return _room_record(row)

    async def room_exists(self, room_id: str) -> bool:
        async with self._transaction() as conn:
            found = await conn.scalar(select(rooms.c.id).where(rooms.c.id == room_id))
        return found is not None

    async def list_rooms(self, *, limit: int = 50, offset: int = 0) -> RoomPage:
        """Rooms, newest first."""
        async with self._transaction() as conn:
            total = await conn.scalar(select(func.count()).select_from(rooms))
            result = await conn.execute(
                _ROOM_SELECT.order_by(rooms.c.created_at.desc(), rooms.c.id)
                .limit(limit)
                .offset(offset)
            )
            records = [_room_record(row) for row in result]
        return RoomPage(rooms=records, total=total or 0)

    async def update_room(
        self, room_id: str, *, name: str | None = None, language: str | None = None
    ) -> RoomRecord:
        values = {
            key: value
            for key, value in (("name", name), ("language", language))
            if value is not None
        }
        if values:
            async with self._transaction() as conn:
                result = await conn.execute(
                    update(rooms).where(rooms.c.id == room_id).values(**values)
                )
                if result.rowcount == 0:
                    raise RoomNotFound(room_id)
        return await self.get_room(room_id)

    async def delete_room(self, room_id: str) -> None:
        """Delete the room and all its data.

        The room's row is locked first: an append in flight (which holds that lock) commits
        before its rows are deleted, and one after finds the room gone, so none of its rows
        outlives the room (the log has no foreign key to cascade from)."""
        async with self._transaction() as conn:
            await conn.execute(select(rooms.c.id).where(rooms.c.id == room_id).with_for_update())
            await conn.execute(delete(room_updates).where(room_updates.c.room_id == room_id))
            await conn.execute(delete(room_snapshots).where(room_snapshots.c.room_id == room_id))
            result = await conn.execute(delete(rooms).where(rooms.c.id == room_id))
            if result.rowcount == 0:
                raise RoomNotFound(room_id)

    async def append_updates(self, room_id: str, updates: Sequence[bytes]) -> int:
        """Append to one room's log in one transaction; returns the seq of the last update."""
        result = await self.append_batches({room_id: updates})
        if room_id in result.missing:
            raise RoomNotFound(room_id)
        return result.heads.get(room_id, 0)

    async def append_batches(self, batches: Mapping[str, Sequence[bytes]]) -> AppendResult:
        """Append to several rooms' logs in ONE transaction with one multi-row INSERT.

        Rooms deleted meanwhile are reported in `missing` and do not fail the others.
        """
        ordered = _in_lock_order(batches)
        if not ordered:
            return AppendResult()
        try:
            return _appended(ordered, await self._appender.append(ordered))
        except StoreUnavailable:
            await self._dispose_pools()
            raise

    def try_append(
        self,
        batches: Mapping[str, Sequence[bytes]],
        done: Callable[[dict[str, int] | Exception], None],
    ) -> bool:
        """`append_batches` without a task: sent now (PostgreSQL: its log connection open and
        idle; SQLite: always, to the appender's thread); `done` hears, from the event loop,
        the rooms' heads after it (rooms gone are absent), or an error for `append_failure`.
        False (nothing sent): call `append_batches`."""
        ordered = _in_lock_order(batches)
        return bool(ordered) and self._appender.try_send(ordered, done)

    async def append_failure(self, error: Exception) -> Exception:
        """What an error `try_append` reported means, as `append_batches` would have raised it:
        `StoreUnavailable` if the database cannot be written or the connection is lost (idle
        connections are closed too), else the statement's own error."""
        if isinstance(self._appender, LogAppender) and isinstance(error, psycopg.Error):
            error = await self._appender.failure(error)
        if isinstance(error, StoreUnavailable):
            await self._dispose_pools()
        return error

    async def load_room_state(
        self, room_id: str, *, after: int = 0, upto: int | None = None
    ) -> RoomState:
        """The room's snapshot and the log rows after it, read from one consistent snapshot.

        With `after`, what a document holding rows up to `after` lacks: the rows after it, or,
        if a compaction folded some of those away, the snapshot and the rows after the snapshot.
        With `upto`, only the rows up to that seq (the state as of that row; a snapshot beyond
        it is returned as it is, with no rows). Rows are streamed in partitions so a long log
        does not hold the event loop.
        """
        async with self._transaction(snapshot=True) as conn:
            head = await conn.scalar(select(rooms.c.head).where(rooms.c.id == room_id))
            if head is None:
                raise RoomNotFound(room_id)
            if upto is not None:
                head = min(head, upto)
            snapshot = None
            if head > after:
                snapshot = (
                    await conn.execute(
                        select(room_snapshots.c.upto_seq, room_snapshots.c.state).where(
                            room_snapshots.c.room_id == room_id,
                            room_snapshots.c.upto_seq > after,
                        )
                    )
                ).one_or_none()
            snapshot_seq = snapshot.upto_seq if snapshot else after
            updates: list[bytes] = []
            if head > snapshot_seq:
                rows = await conn.stream_scalars(
                    select(room_updates.c.data)
                    .where(
                        room_updates.c.room_id == room_id,
                        room_updates.c.seq > snapshot_seq,
                        room_updates.c.seq <= head,
                    )
                    .order_by(room_updates.c.seq)
                    .execution_options(yield_per=_LOAD_PARTITION_ROWS)
                )
                updates = [data async for partition in rows.partitions() for data in partition]
        return RoomState(
            room_id=room_id,
            snapshot=snapshot.state if snapshot else None,
            snapshot_seq=snapshot_seq,
            updates=updates,
            head=head,
        )

    async def heads(self, room_ids: Sequence[str]) -> dict[str, int]:
        """The head seq of each of these rooms that exists (one query, for many rooms)."""
        async with self._transaction() as conn:
            result = await conn.execute(
                select(rooms.c.id, rooms.c.head).where(rooms.c.id.in_(room_ids))
            )
            return {row.id: row.head for row in result}

    @asynccontextmanager
    async def compaction_lock(self, room_id: str) -> AsyncIterator[bool]:
        """Try to take the room's compaction lock; yields whether it was taken.

        PostgreSQL: a session advisory lock, so compactions in other processes skip this room
        instead of doing the work twice (released if the process dies). SQLite: always taken;
        `replace_log_with_snapshot` refuses to overwrite a newer snapshot either way.
        """
        if not self.is_postgresql:
            yield True
            return
        key = {"room": room_id}
        async with self.engine.connect() as conn:
            taken = await conn.scalar(_TRY_LOCK, key)
            await conn.commit()
            try:
                yield bool(taken)
            finally:
                if taken:
                    await conn.execute(_UNLOCK, key)
                    await conn.commit()

    async def replace_log_with_snapshot(self, state: RoomState, snapshot: bytes) -> bool:
        """In one transaction: store `snapshot` as covering every row up to `state.head` and
        delete exactly the rows of `state` (seq in (state.snapshot_seq, state.head]).

        Returns False, writing nothing, if the room's snapshot is no longer the one `state`
        was read with (another compaction finished first). Raises `LogChanged` if the rows to
        delete are not exactly those read, `RoomNotFound` if the room is gone.
        """
        try:
            await self._replace_log_with_snapshot(state, snapshot)
        except _SnapshotMoved:
            return False
        return True

    async def _replace_log_with_snapshot(self, state: RoomState, snapshot: bytes) -> None:
        count, size = len(state.updates), sum(map(len, state.updates))
        async with self._transaction() as conn:
            # The room row first: the lock order of appends, so the two cannot deadlock.
            changed = await conn.execute(
                update(rooms)
                .where(rooms.c.id == state.room_id)
                .values(log_updates=rooms.c.log_updates - count, log_bytes=rooms.c.log_bytes - size)
            )
            if changed.rowcount == 0:
                raise RoomNotFound(state.room_id)
            values = {
                "upto_seq": state.head,
                "state": snapshot,
                "state_bytes": len(snapshot),
                "created_at": _now(),
            }
            if state.snapshot is None:
                if (
                    await conn.scalar(
                        select(room_snapshots.c.upto_seq).where(
                            room_snapshots.c.room_id == state.room_id
                        )
                    )
                    is not None
                ):
                    raise _SnapshotMoved
                await conn.execute(insert(room_snapshots).values(room_id=state.room_id, **values))
            else:
                replaced = await conn.execute(
                    update(room_snapshots)
                    .where(
                        room_snapshots.c.room_id == state.room_id,
                        room_snapshots.c.upto_seq == state.snapshot_seq,
                    )
                    .values(**values)
                )
                if replaced.rowcount != 1:
                    raise _SnapshotMoved
            deleted = await conn.execute(
                delete(room_updates).where(
                    room_updates.c.room_id == state.room_id,
                    room_updates.c.seq > state.snapshot_seq,
                    room_updates.c.seq <= state.head,
                )
            )
            if deleted.rowcount != count:
                raise LogChanged(
                    f"room {state.room_id}: expected to fold {count} rows, found {deleted.rowcount}"
                )


async def append_in_transaction(
    conn: AsyncConnection, batches: Mapping[str, Sequence[bytes]]
) -> AppendResult:
    """The statements of `Store.append_batches`, inside the caller's transaction.

    Each room's head counter is bumped with its rows, rooms locked in id order (a fixed lock
    order, so two processes appending to the same rooms cannot deadlock); the row lock is held
    to COMMIT, so a room's sequence numbers are handed out in commit order.
    """
    ordered = _in_lock_order(batches)
    if not ordered:
        return AppendResult()
    if conn.dialect.name == "postgresql":
        return _appended(ordered, await _append_in_one_statement(conn, ordered))
    heads = await conn.run_sync(lambda sync: append_rows(sync.connection.cursor(), ordered))
    return _appended(ordered, heads)


def _in_lock_order(batches: Mapping[str, Sequence[bytes]]) -> dict[str, Sequence[bytes]]:
    """The rooms that have rows, in id order: the order their rows are locked in."""
    return {room_id: batches[room_id] for room_id in sorted(batches) if batches[room_id]}


def _appended(batches: Mapping[str, Sequence[bytes]], heads: dict[str, int]) -> AppendResult:
    return AppendResult(heads=heads, missing=set(batches) - heads.keys())


async def _append_in_one_statement(
    conn: AsyncConnection, batches: Mapping[str, Sequence[bytes]]
) -> dict[str, int]:
    """`APPEND_ROWS` inside the caller's SQLAlchemy transaction (`LogAppender` runs it alone)."""
    raw = await conn.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    try:
        cursor = await driver.execute(APPEND_ROWS, append_parameters(batches), prepare=True)
        heads = dict(await cursor.fetchall())
    except psycopg.Error as error:
        # Raised by the driver, past SQLAlchemy: translated as SQLAlchemy translates its own,
        # so that `Store._transaction` reports a lost connection as `StoreUnavailable`.
        raise DBAPIError.instance(APPEND_ROWS, None, error, psycopg.Error) from error
    return heads


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL for concurrent readers, a busy timeout for the admin CLI beside a live server, and
    BEGIN IMMEDIATE so a transaction that reads then writes never fails to upgrade its lock."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

"""Log appends on PostgreSQL: one prepared statement, on one connection of their own, through
libpq itself.

The group commit runs one append at a time, many a second (one per keystroke at human typing
speed), so the append's fixed cost is most of the server's CPU in the fan-out benchmark.
Measured 2026-12-01, one room, one row, CPU of the server process per append:

- through SQLAlchemy's async engine, ~850 µs (pool checkout, the greenlet bridge, the
  transaction and reset wrappers);
- `AsyncConnection.execute` on a plain psycopg connection, ~100 µs, and 6 epoll_ctl, 2
  io_uring_enter and an ioctl: psycopg waits for each answer by adding a reader to the event
  loop, and uvloop makes (and unmakes) a poll handle for it each time;
- the prepared statement sent with `psycopg.pq`, its answer read by a reader that stays
  registered for the connection's life, ~65 µs, and only the send and the receive.

So appends keep one autocommit connection, made like the pool's (the same answer bound and TCP
parameters), and replace it when it is lost. The standing reader also hears a connection that
the database ends while it is idle, so the next append opens another instead of failing.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import psycopg
from psycopg import pq

from .errors import StoreUnavailable
from .futures import settle

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

#: `APPEND_ROWS`'s parameters, in the order of their PostgreSQL placeholders ($1, $2, ...).
_PARAMETERS = ("rooms", "counts", "sizes", "row_rooms", "row_ords", "row_data")
_PARAMETER_TYPES = tuple(
    psycopg.postgres.types[name].array_oid
    for name in ("text", "int8", "int8", "text", "int8", "bytea")
)
#: The int8[] parameters go as text (`{1,2,3}`, joined in C): psycopg's binary dumper sends
#: small numbers as int2, which the prepared int8[] refuses, unless each is wrapped in `Int8`
#: (one object per row, 5% of the server's CPU in the trace replay). The text[] and bytea[]
#: parameters go in PostgreSQL's binary array format, built here: psycopg's list dumper, looking
#: up each list's element type and dumper, took ~11 µs a commit, one commit per keystroke at
#: human typing speed.
_TEXT_ARRAYS = frozenset({"counts", "sizes", "row_ords"})
_FORMATS = [pq.Format.TEXT if name in _TEXT_ARRAYS else pq.Format.BINARY for name in _PARAMETERS]
_STATEMENT = b"collab_append_rows"
_TEXT_OID = psycopg.postgres.types["text"].oid
_BYTEA_OID = psycopg.postgres.types["bytea"].oid
#: One dimension, no NULLs, the element type's oid, the length, the lower bound (1).
_ARRAY_HEADER = struct.Struct("!iiIii")
_ELEMENT_LENGTH = struct.Struct("!i")


def _with_numbered_placeholders(query: str) -> bytes:
    for number, name in enumerate(_PARAMETERS, start=1):
        query = query.replace(f"%({name})b", f"${number}")
    return query.encode()


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


def _binary_array(element_oid: int, items: Sequence[bytes]) -> bytes:
    header = _ARRAY_HEADER.pack(1, 0, element_oid, len(items), 1)
    return header + b"".join([_ELEMENT_LENGTH.pack(len(item)) + item for item in items])


def _int_array(numbers: Sequence[int]) -> bytes:
    return f"{{{','.join(map(str, numbers))}}}".encode()


def _dumped(parameters: Mapping[str, list[Any]]) -> list[bytes]:
    """The statement's parameters as sent, in `_FORMATS`."""
    return [
        _binary_array(_TEXT_OID, [room_id.encode() for room_id in parameters["rooms"]]),
        _int_array(parameters["counts"]),
        _int_array(parameters["sizes"]),
        _binary_array(_TEXT_OID, [room_id.encode() for room_id in parameters["row_rooms"]]),
        _int_array(parameters["row_ords"]),
        _binary_array(_BYTEA_OID, parameters["row_data"]),
    ]


def _heads(result: pq.abc.PGresult) -> dict[str, int]:
    heads = {}
    for row in range(result.ntuples):
        room_id, head = result.get_value(row, 0), result.get_value(row, 1)
        assert room_id is not None and head is not None
        heads[bytes(room_id).decode()] = int(head)
    return heads


def _send(pgconn: pq.abc.PGconn, batches: Mapping[str, Sequence[bytes]]) -> None:
    pgconn.send_query_prepared(
        _STATEMENT, _dumped(append_parameters(batches)), param_formats=_FORMATS
    )


#: What `LogAppender.try_send` reports: the rooms' heads, or the error that ended the append
#: (`LogAppender.failure` says what it means).
Answer = Callable[["dict[str, int] | psycopg.Error"], None]
_Results = Callable[["list[pq.abc.PGresult] | psycopg.Error"], None]


class LogAppender:
    """Runs `APPEND_ROWS`, one call at a time, on a connection it opens when first needed.

    `try_send` is the group commit's path: it sends at once and hears the answer in the
    connection's standing reader, with no task and no future (at human typing speed each
    keystroke is a commit, and the wake-ups of the tasks around an awaited append were a third
    of the commit's CPU). `append` awaits, and opens the connection when there is none.
    """

    def __init__(
        self, conninfo: str, connect: Any, parameters: Mapping[str, int], answer_timeout: float
    ) -> None:
        self._conninfo = conninfo
        self._connect = connect
        self._parameters = parameters
        self._answer_timeout = answer_timeout
        self._lock = asyncio.Lock()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        #: The socket the standing reader watches (the connection's, while it is open).
        self._socket = -1
        #: Set when the connection can no longer be trusted: lost, or abandoned unanswered.
        self._broken = False
        #: Who hears the answer of the statement in flight (None: nothing is in flight).
        self._on_answer: _Results | None = None
        #: When the statement in flight was sent (loop time), for the answer timeout's watchdog.
        self._asked_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        #: Whether a writer waits for the socket to take the rest of a statement.
        self._writing = False
        self._results: list[pq.abc.PGresult] = []
        #: Set while no answer is awaited.
        self._quiet = asyncio.Event()
        self._quiet.set()

    async def append(self, batches: Mapping[str, Sequence[bytes]]) -> dict[str, int]:
        """The rooms' heads after the append (rooms gone are absent). Raises `StoreUnavailable`
        when the connection is lost or the database does not answer in time; the connection is
        then dropped and the next append opens another."""
        async with self._lock:
            await self._quiet.wait()  # for a `try_send` in flight
            try:
                pgconn = await self._connection()
                _send(pgconn, batches)
                return _heads(await self._answered(pgconn, pq.ExecStatus.TUPLES_OK))
            except psycopg.Error as error:
                failure = await self.failure(error)
                if failure is error:
                    raise
                raise failure from error
            except BaseException:
                await self._drop()  # cancelled mid-statement: its answer may still arrive
                raise

    def try_send(self, batches: Mapping[str, Sequence[bytes]], done: Answer) -> bool:
        """Send the append now if the connection is open and idle; `done` hears the answer
        from the event loop's reader. False (nothing sent): use `append`."""
        if self._lock.locked() or self._on_answer is not None or not self._usable():
            return False
        assert self._conn is not None
        pgconn = self._conn.pgconn
        try:
            _send(pgconn, batches)
        except psycopg.Error:
            self._broken = True  # `append` replaces the connection
            return False

        def answered(results: list[pq.abc.PGresult] | psycopg.Error) -> None:
            if isinstance(results, psycopg.Error):
                done(results)
                return
            try:
                heads = _heads(self._checked(results, pq.ExecStatus.TUPLES_OK))
            except psycopg.Error as error:
                done(error)
                return
            done(heads)

        self._await_answer(pgconn, answered)
        return True

    async def failure(self, error: psycopg.Error) -> Exception:
        """What an append's error means: the statement's own while the connection is fine;
        else `StoreUnavailable`, and the connection is dropped (the next append opens another)."""
        if self._usable():
            return error
        await self._drop()
        return StoreUnavailable(f"database unavailable: {error}")

    async def reset(self) -> None:
        """Close the connection unless an append is using it (after a loss seen elsewhere: it
        shares that network path)."""
        if not self._lock.locked() and self._on_answer is None:
            await self._drop()

    async def close(self) -> None:
        """At the store's close: close the connection once the append in flight, if any, is
        answered (or abandoned at its answer timeout)."""
        async with self._lock:
            await self._quiet.wait()
            await self._drop()

    def _usable(self) -> bool:
        return (
            self._conn is not None
            and not self._broken
            and self._conn.pgconn.status == pq.ConnStatus.OK
        )

    async def _connection(self) -> pq.abc.PGconn:
        if not self._usable():
            await self._drop()
        if self._conn is None:
            conn = await self._connect(
                self._conninfo,
                autocommit=True,
                application_name=f"collab-server:append {os.getpid()}",
                **self._parameters,
            )
            self._conn = conn
            self._socket = conn.pgconn.socket
            asyncio.get_running_loop().add_reader(self._socket, self._on_readable)
            try:
                conn.pgconn.send_prepare(
                    _STATEMENT, _with_numbered_placeholders(APPEND_ROWS), _PARAMETER_TYPES
                )
                await self._answered(conn.pgconn, pq.ExecStatus.COMMAND_OK)
            except psycopg.Error:
                self._broken = True  # a connection without the statement is of no use
                raise
        return self._conn.pgconn

    async def _answered(self, pgconn: pq.abc.PGconn, expected: pq.ExecStatus) -> pq.abc.PGresult:
        """Wait for the one result of what was sent."""
        answer: asyncio.Future[list[pq.abc.PGresult]] = asyncio.get_running_loop().create_future()
        answered = partial(settle, answer)
        self._await_answer(pgconn, answered)
        try:
            return self._checked(await answer, expected)
        finally:
            if self._on_answer is answered:  # cancelled: nobody hears the answer any more
                self._answer_heard()

    def _checked(self, results: list[pq.abc.PGresult], expected: pq.ExecStatus) -> pq.abc.PGresult:
        result = results[-1]
        if result.status != expected:
            assert self._conn is not None
            raise psycopg.errors.error_from_result(result, encoding=self._conn.info.encoding)
        return result

    def _await_answer(self, pgconn: pq.abc.PGconn, on_answer: _Results) -> None:
        """Flush what was sent; `on_answer` hears its results, or in at most the answer timeout
        an error."""
        loop = asyncio.get_running_loop()
        self._results = []
        self._on_answer = on_answer
        self._quiet.clear()
        self._asked_at = loop.time()
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._asked_at + self._answer_timeout, self._watch)
        self._flush(pgconn)

    def _watch(self) -> None:
        """Abandon the answer awaited if it is overdue; else look again when it will be. (One
        timer for many appends: a timer set and cancelled for each was 2% of the server's CPU at
        human typing speed, where each keystroke is an append.)"""
        self._watchdog = None
        if self._on_answer is None:
            return
        due = self._asked_at + self._answer_timeout
        loop = asyncio.get_running_loop()
        if loop.time() >= due:
            self._abandon()
        else:
            self._watchdog = loop.call_at(due, self._watch)

    def _answer_heard(self) -> _Results | None:
        on_answer, self._on_answer = self._on_answer, None
        self._quiet.set()
        return on_answer

    def _flush(self, pgconn: pq.abc.PGconn) -> None:
        """Send what libpq holds; if the socket is full, again once it is writable."""
        try:
            if pgconn.flush():
                asyncio.get_running_loop().add_writer(self._socket, self._flush, pgconn)
                self._writing = True
            elif self._writing:
                asyncio.get_running_loop().remove_writer(self._socket)
                self._writing = False
        except psycopg.OperationalError as error:
            self._lost(error)

    def _on_readable(self) -> None:
        """Read what arrived; hand the answer awaited to its listener once its results are all
        in (when libpq reports no more)."""
        if self._conn is None:
            return
        pgconn = self._conn.pgconn
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    if self._on_answer is not None and self._results:
                        results, self._results = self._results, []
                        on_answer = self._answer_heard()
                        assert on_answer is not None
                        on_answer(results)
                    break
                self._results.append(result)
        except psycopg.OperationalError as error:
            self._lost(error)
            return
        if pgconn.status != pq.ConnStatus.OK:  # ended by the server while idle
            self._lost(psycopg.OperationalError("the database closed the connection"))

    def _lost(self, error: psycopg.Error) -> None:
        self._broken = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._socket)  # a closed socket stays readable: read it no more
        loop.remove_writer(self._socket)
        self._writing = False
        on_answer = self._answer_heard()
        if on_answer is not None:
            on_answer(error)

    def _abandon(self) -> None:
        """A partition closes nothing and answers nothing: give up on the connection (a cancel
        request would need a new connection to the unreachable server)."""
        self._lost(
            psycopg.errors.ConnectionTimeout(
                f"the database did not answer in time ({self._answer_timeout:.3g} s)"
            )
        )

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._broken = False
        if conn is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._socket)
            loop.remove_writer(self._socket)
            self._writing = False
            self._socket = -1
            await conn.close()

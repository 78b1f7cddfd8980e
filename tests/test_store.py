"""The store contract, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import psycopg
import pytest
import uvloop
from pycrdt import Doc, Text
from sqlalchemy import delete, insert

from crdt_store import (
    GroupCommitter,
    RoomNotFound,
    Rows,
    Store,
    StoreUnavailable,
    doc_from_state,
    new_room_id,
    text_of,
    text_update,
)
from crdt_store.schema import room_updates
from crdt_store.sqlite_appender import SQLiteAppender
from crdt_store.store import answer_bounded_connector, append_in_transaction
from crdt_store.urls import libpq_url, network_parameters
from tests.support.postgres import connections_named, terminate_connections
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.anyio


def typed_updates(text: str) -> list[bytes]:
    """One update per character, as an editor produces them."""
    doc = Doc()
    code = doc.get("code", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for char in text:
        code.insert(len(code), char)
    return updates


async def loaded_text(store: Store, room_id: str) -> str:
    return text_of(doc_from_state(await store.load_room_state(room_id)))


async def test_created_room_can_be_read_back(store: Store) -> None:
    created = await store.create_room(name="Pairing", language="python")
    fetched = await store.get_room(created.id)
    assert (fetched.id, fetched.name, fetched.language) == (created.id, "Pairing", "python")
    assert fetched.created_at == created.created_at
    assert (fetched.head, fetched.log_updates, fetched.snapshot_bytes) == (0, 0, 0)


async def test_room_ids_are_url_safe_and_unique(store: Store) -> None:
    ids = {(await store.create_room(name="r", language="plaintext")).id for _ in range(20)}
    assert len(ids) == 20
    assert all(id_.replace("-", "").replace("_", "").isalnum() for id_ in ids)


def test_room_ids_never_start_with_a_dash_so_the_cli_cannot_mistake_them_for_options() -> None:
    assert not any(new_room_id().startswith("-") for _ in range(5000))


async def test_unknown_room_raises_room_not_found(store: Store) -> None:
    with pytest.raises(RoomNotFound):
        await store.get_room("missing")
    with pytest.raises(RoomNotFound):
        await store.load_room_state("missing")
    with pytest.raises(RoomNotFound):
        await store.append_updates("missing", [text_update("x")])
    with pytest.raises(RoomNotFound):
        await store.delete_room("missing")


async def test_list_rooms_is_paginated_newest_first(store: Store) -> None:
    names = [f"room {i}" for i in range(5)]
    for name in names:
        await store.create_room(name=name, language="plaintext")
    first = await store.list_rooms(limit=2, offset=0)
    rest = await store.list_rooms(limit=10, offset=2)
    assert first.total == rest.total == 5
    assert [r.name for r in first.rooms + rest.rooms] == names[::-1]


async def test_update_room_changes_name_and_language(store: Store) -> None:
    room = await store.create_room(name="a", language="plaintext")
    updated = await store.update_room(room.id, language="typescript")
    assert (updated.name, updated.language) == ("a", "typescript")


async def test_appended_updates_load_back_as_the_same_text(store: Store) -> None:
    room = await store.create_room(name="r", language="plaintext")
    text = "héllo wörld, 你好, 😀 emoji"
    head = await store.append_updates(room.id, typed_updates(text))
    assert head == len(text)
    assert await loaded_text(store, room.id) == text


async def test_a_batch_larger_than_a_socket_buffer_is_committed_whole(store: Store) -> None:
    """Twenty pastes of the largest frame the server accepts (1 MiB) in one append: libpq
    cannot send it in one write, and the rest goes out as the socket drains."""
    room = await store.create_room(name="r", language="plaintext")
    pastes = [text_update(char * 1_000_000) for char in "abcdefghijklmnopqrst"]
    assert await store.append_updates(room.id, pastes) == 20
    text = await loaded_text(store, room.id)
    assert sorted(set(text)) == list("abcdefghijklmnopqrst")
    assert len(text) == 20_000_000


async def test_log_stats_count_rows_and_bytes(store: Store) -> None:
    room = await store.create_room(name="r", language="plaintext")
    updates = typed_updates("abc")
    await store.append_updates(room.id, updates)
    record = await store.get_room(room.id)
    assert (record.log_updates, record.log_bytes) == (3, sum(map(len, updates)))


async def test_sequence_numbers_are_contiguous_under_concurrent_writers(store: Store) -> None:
    room = await store.create_room(name="r", language="plaintext")
    heads: list[int] = []

    async def writer(char: str) -> None:
        for update in typed_updates(char * 10):
            heads.append(await store.append_updates(room.id, [update]))

    async with anyio.create_task_group() as tg:
        for char in "abcd":
            tg.start_soon(writer, char)
    assert sorted(heads) == list(range(1, 41))
    state = await store.load_room_state(room.id)
    assert (state.head, len(state.updates)) == (40, 40)


async def test_append_batches_commits_several_rooms_and_reports_missing_ones(
    store: Store,
) -> None:
    a = await store.create_room(name="a", language="plaintext")
    b = await store.create_room(name="b", language="plaintext")
    result = await store.append_batches(
        {a.id: [text_update("A")], b.id: [text_update("B")], "gone": [text_update("C")]}
    )
    assert result.heads == {a.id: 1, b.id: 1}
    assert result.missing == {"gone"}
    assert await loaded_text(store, a.id) == "A"
    assert await loaded_text(store, b.id) == "B"


async def test_a_failed_append_rolls_back_and_leaves_the_log_writable(store: Store) -> None:
    room = await store.create_room(name="r", language="plaintext")
    # A row the store did not hand out holds the next sequence number.
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(room_updates).values(
                room_id=room.id, seq=1, data=text_update("row"), created_at=datetime.now(UTC)
            )
        )
    # `failed` keeps the error, and the append's frames in its traceback, alive until the log
    # is written again, as a caller that logs or re-raises it does.
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.UniqueViolation)) as failed:
        await store.append_updates(room.id, [text_update("conflicting")])
    # Not held up by a write lock the failed append kept (SQLite: "database is locked").
    async with store.engine.begin() as conn:
        await conn.execute(delete(room_updates).where(room_updates.c.room_id == room.id))
    assert await store.append_updates(room.id, [text_update("next")]) == 1
    del failed
    assert await loaded_text(store, room.id) == "next"


async def test_an_sqlite_append_kept_waiting_past_the_busy_timeout_is_unavailable(
    sqlite_url: str,
) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    store = Store.connect(sqlite_url)
    appender = SQLiteAppender(path, busy_timeout=0.2)
    try:
        room = await store.create_room(name="r", language="plaintext")
        with closing(sqlite3.connect(path)) as lock:
            lock.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreUnavailable, match="locked"):
                await appender.append({room.id: [text_update("waited")]})
            lock.rollback()
        assert await appender.append({room.id: [text_update("committed")]}) == {room.id: 1}
        assert await loaded_text(store, room.id) == "committed"
    finally:
        await appender.close()
        await store.close()


async def test_closing_an_sqlite_store_ends_its_append_thread(sqlite_url: str) -> None:
    store = Store.connect(sqlite_url)
    room = await store.create_room(name="r", language="plaintext")
    await store.append_updates(room.id, [text_update("x")])
    assert any(t.name.startswith("sqlite-append") for t in threading.enumerate())
    await store.close()
    assert not any(t.name.startswith("sqlite-append") for t in threading.enumerate())


async def test_deleted_room_is_gone_with_its_log(store: Store) -> None:
    room = await store.create_room(name="r", language="plaintext")
    await store.append_updates(room.id, [text_update("x")])
    await store.delete_room(room.id)
    assert not await store.room_exists(room.id)
    recreated = await store.create_room(name="r", language="plaintext", room_id=room.id)
    assert await loaded_text(store, recreated.id) == ""


@pytest.mark.postgres
async def test_a_room_deleted_while_an_append_to_it_commits_leaves_no_rows_behind(
    postgres_url: str,
) -> None:
    """The delete waits for the append in flight and then deletes its rows too: a room made
    again with the same id starts with an empty log (a row left behind would hold seq 1)."""
    store = Store.connect(postgres_url)
    try:
        room = await store.create_room(name="r", language="plaintext")
        async with store.engine.connect() as appending:
            await appending.begin()
            await append_in_transaction(appending, {room.id: [text_update("late")]})
            deleting = asyncio.create_task(store.delete_room(room.id))
            await asyncio.sleep(0.3)
            await appending.commit()
        await deleting
        again = await store.create_room(name="r", language="plaintext", room_id=room.id)
        await store.append_updates(again.id, [text_update("new")])
        assert await loaded_text(store, again.id) == "new"
    finally:
        await store.close()


def counting_commits(store: Store) -> list[int]:
    """Count the store's append transactions, sent at once or awaited: the list holds one
    entry per commit."""
    commits: list[int] = []
    append_batches, try_append = store.append_batches, store.try_append

    async def counting(batches):  # type: ignore[no-untyped-def]
        commits.append(len(batches))
        return await append_batches(batches)

    def counting_sent(batches, done):  # type: ignore[no-untyped-def]
        sent = try_append(batches, done)
        if sent:
            commits.append(len(batches))
        return sent

    store.append_batches = counting  # type: ignore[method-assign]
    store.try_append = counting_sent  # type: ignore[method-assign]
    return commits


async def test_group_committer_folds_concurrent_appends_into_one_transaction(
    store: Store,
) -> None:
    rooms = [await store.create_room(name=str(i), language="plaintext") for i in range(3)]
    commits = counting_commits(store)
    async with GroupCommitter(store) as committer, anyio.create_task_group() as tg:
        for room in rooms:
            for update in typed_updates("xyz"):
                tg.start_soon(committer.append, room.id, [update])
    assert len(commits) <= 2  # the first append may commit alone; the rest join one batch
    for room in rooms:
        assert await loaded_text(store, room.id) == "xyz"


async def test_rooms_flushed_in_one_turn_of_the_event_loop_share_one_commit(
    store: Store,
) -> None:
    """Rooms that received updates in one turn of the event loop ask to be flushed at its end
    (`gather`); what they submit then is one commit, whose rows each of them hears."""
    rooms = [await store.create_room(name=str(i), language="plaintext") for i in range(3)]
    commits = counting_commits(store)
    heard: dict[str, Rows | BaseException] = {}
    async with GroupCommitter(store) as committer:
        for room in rooms:

            def flush(room_id: str = room.id) -> None:
                committer.submit(room_id, typed_updates("ab"), partial(heard.__setitem__, room_id))

            committer.gather(flush)
        with anyio.fail_after(5):
            while len(heard) < len(rooms):
                await anyio.sleep(0.01)
    assert commits == [3]
    assert heard == {room.id: Rows(1, 2) for room in rooms}
    for room in rooms:
        assert await loaded_text(store, room.id) == "ab"


async def test_a_room_flushed_as_it_hears_its_commit_joins_the_next_commit(store: Store) -> None:
    """A room holds what it receives while its batch commits and asks to be flushed as it
    hears the commit's outcome: that goes in the very next commit, beside what other rooms
    submitted meanwhile, not in one after it."""
    first, second = [await store.create_room(name=str(i), language="plaintext") for i in range(2)]
    commits = counting_commits(store)
    heard: dict[str, Rows | BaseException] = {}
    async with GroupCommitter(store) as committer:

        def flush_what_arrived_meanwhile() -> None:
            committer.submit(first.id, [text_update("b")], partial(heard.__setitem__, "b"))

        def first_committed(outcome: Rows | BaseException) -> None:
            heard["a"] = outcome
            committer.gather(flush_what_arrived_meanwhile)

        committer.submit(first.id, [text_update("a")], first_committed)
        await asyncio.sleep(0)  # the first commit is under way
        committer.submit(second.id, [text_update("z")], partial(heard.__setitem__, "z"))
        with anyio.fail_after(5):
            while len(heard) < 3:
                await anyio.sleep(0.01)
    assert commits == [1, 2]
    assert heard == {"a": Rows(1, 1), "b": Rows(2, 2), "z": Rows(1, 1)}


async def test_appends_arriving_within_the_commit_interval_share_one_commit(
    store: Store,
) -> None:
    """A steady stream (a keystroke every 20 ms in each of three rooms) is gathered for the
    interval after a commit, instead of a commit each."""
    rooms = [await store.create_room(name=str(i), language="plaintext") for i in range(3)]
    commits = counting_commits(store)
    async with GroupCommitter(store, min_interval=0.5) as committer:
        await committer.append(rooms[0].id, [text_update("first")])
        async with anyio.create_task_group() as tg:
            for room in rooms:
                tg.start_soon(committer.append, room.id, [text_update(room.name)])
                await anyio.sleep(0.02)
    assert commits == [1, 3]


class TimerCountingLoop(uvloop.Loop):
    """The server's event loop, counting the timers armed on it."""

    def __init__(self) -> None:
        super().__init__()
        self.timers = 0

    def call_later(
        self, delay: float, callback: Callable[..., Any], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        self.timers += 1
        return super().call_later(delay, callback, *args, context=context)


#: Runs a test on a `TimerCountingLoop` instead of the default event loop.
on_timer_counting_uvloop = pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("asyncio", {"loop_factory": TimerCountingLoop}), id="uvloop")]
)


@on_timer_counting_uvloop
async def test_a_commit_interval_below_uvloops_timer_resolution_arms_one_timer_a_wait(
    store: Store,
) -> None:
    """uvloop fires a timer of less than half a millisecond at once, while its clock stands
    still: waiting out the rest of the interval timer after timer would spin the loop."""
    room = await store.create_room(name="r", language="plaintext")
    loop = asyncio.get_running_loop()
    assert isinstance(loop, TimerCountingLoop)
    commits = counting_commits(store)
    async with GroupCommitter(store, min_interval=0.0004) as committer:
        for index in range(20):
            await committer.append(room.id, [text_update(str(index))])
    assert len(commits) == 20
    # One for the interval, and the store's own (its answer watchdog, psycopg's waits): about
    # 2.6 a commit on PostgreSQL. Timer after timer, it took over 10,000.
    assert loop.timers <= 5 * len(commits)


@on_timer_counting_uvloop
async def test_a_wait_for_a_silent_socket_wakes_the_server_only_when_it_ends(
    postgres_url: str,
) -> None:
    """A LISTEN connection waiting for notifications (the fan-out's, all day in a process
    alone) arms no timer but its answer bound and its end: psycopg's own wait polled again
    every 0.1 s."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, TimerCountingLoop)
    connect = answer_bounded_connector(answer_timeout=10.0)
    async with await connect(libpq_url(postgres_url), autocommit=True) as conn:
        await conn.execute("LISTEN nobody_speaks_here")
        armed_before = loop.timers
        async for notification in conn.notifies(timeout=1.0):
            raise AssertionError(f"unexpected notification {notification}")
        assert loop.timers - armed_before <= 2


async def test_the_group_commit_awaits_no_append_after_the_first(store: Store) -> None:
    """Each commit is sent from the event loop's callbacks and its outcome heard in one (on
    SQLite, handed back by the appender's thread); only PostgreSQL's first awaits its
    connection's opening."""
    room = await store.create_room(name="r", language="plaintext")
    awaited: list[object] = []
    append_batches = store.append_batches

    async def counting(batches):  # type: ignore[no-untyped-def]
        awaited.append(batches)
        return await append_batches(batches)

    store.append_batches = counting  # type: ignore[method-assign]
    async with GroupCommitter(store) as committer:
        for seq, update in enumerate(typed_updates("0123456789"), start=1):
            assert await committer.append(room.id, [update]) == (seq, seq)
    assert len(awaited) <= 1
    assert await loaded_text(store, room.id) == "0123456789"


async def test_an_sqlite_commit_kept_waiting_past_the_busy_timeout_fails_then_the_next_commits(
    sqlite_url: str,
) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    # The store `connect` makes, but with an appender that gives up on the lock after 0.2 s.
    engine = Store.connect(sqlite_url).engine
    store = Store(engine, sqlite_url, appender=SQLiteAppender(path, busy_timeout=0.2))
    try:
        room = await store.create_room(name="r", language="plaintext")
        async with GroupCommitter(store) as committer:
            with closing(sqlite3.connect(path)) as lock:
                lock.execute("BEGIN IMMEDIATE")
                with pytest.raises(StoreUnavailable, match="locked"):
                    await committer.append(room.id, [text_update("waited")])
                lock.rollback()
            assert await committer.append(room.id, [text_update("committed")]) == (1, 1)
        assert await loaded_text(store, room.id) == "committed"
    finally:
        await store.close()


async def test_an_append_after_a_quiet_moment_is_committed_at_once(store: Store) -> None:
    room = await store.create_room(name="r", language="plaintext")
    async with GroupCommitter(store, min_interval=30.0) as committer:
        with anyio.fail_after(5):
            assert await committer.append(room.id, [text_update("x")]) == (1, 1)


async def test_group_committer_reports_a_deleted_room_without_failing_others(
    store: Store,
) -> None:
    kept = await store.create_room(name="kept", language="plaintext")
    async with GroupCommitter(store) as committer:
        with pytest.raises(RoomNotFound):
            await committer.append("gone", [text_update("x")])
        assert await committer.append(kept.id, [text_update("y")]) == (1, 1)


async def test_group_committer_returns_committed_rows_even_if_announcing_them_fails(
    store: Store,
) -> None:
    room = await store.create_room(name="r", language="plaintext")

    def broken_fanout(_: object) -> None:
        raise RuntimeError("announcement failed")

    async with GroupCommitter(store, on_committed=broken_fanout) as committer:
        with anyio.fail_after(5):
            assert await committer.append(room.id, [text_update("x")]) == (1, 1)
            assert await committer.append(room.id, [text_update("y")]) == (2, 2)


@pytest.mark.postgres
async def test_an_append_connection_the_database_terminated_fails_one_append_then_reconnects(
    postgres_url: str,
) -> None:
    """Appends keep one connection of their own (named for `pg_stat_activity`); after the
    database ends it (a restart, a failover, an operator), the next append after the failed
    one runs on a new connection."""
    store = Store.connect(postgres_url)
    try:
        room = await store.create_room(name="r", language="plaintext")
        await store.append_updates(room.id, [text_update("a")])
        assert terminate_connections(postgres_url, f"collab-server:append {os.getpid()}") == 1
        with pytest.raises(StoreUnavailable):
            await store.append_updates(room.id, [text_update("lost")])
        assert await store.append_updates(room.id, [text_update("b")]) == 2
        assert sorted(await loaded_text(store, room.id)) == ["a", "b"]
    finally:
        await store.close()


@pytest.mark.postgres
async def test_closing_a_store_with_an_append_in_flight_closes_its_log_connection_once_answered(
    postgres_url: str,
) -> None:
    store = Store.connect(postgres_url)
    room = await store.create_room(name="r", language="plaintext")
    await store.append_updates(room.id, [text_update("opens the log connection")])
    heard: list[dict[str, int] | Exception] = []
    assert store.try_append({room.id: [text_update("in flight")]}, heard.append)
    await store.close()
    assert heard == [{room.id: 2}]
    name = f"collab-server:append {os.getpid()}"
    with anyio.fail_after(5):
        while connections_named(postgres_url, name):
            await anyio.sleep(0.02)


@pytest.mark.postgres
async def test_an_append_connection_the_database_ended_while_idle_is_replaced_before_an_append(
    postgres_url: str,
) -> None:
    """The appender keeps reading its idle connection: it hears the database end it and opens
    another for the next append, which then does not fail."""
    store = Store.connect(postgres_url)
    try:
        room = await store.create_room(name="r", language="plaintext")
        await store.append_updates(room.id, [text_update("a")])
        assert terminate_connections(postgres_url, f"collab-server:append {os.getpid()}") == 1
        await anyio.sleep(0.1)  # the event loop reads the closed socket
        assert await store.append_updates(room.id, [text_update("b")]) == 2
        assert sorted(await loaded_text(store, room.id)) == ["a", "b"]
    finally:
        await store.close()


async def test_unreachable_database_raises_store_unavailable() -> None:
    store = Store.connect("postgresql://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
    finally:
        await store.close()


# -- a database that stops answering (a network partition: nothing closed, nothing arrives) ---


@pytest.fixture
def database_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    with TcpProxy.in_front_of(postgres_url) as proxy:
        yield proxy


@pytest.fixture
async def store_behind_proxy(
    postgres_url: str, database_proxy: TcpProxy
) -> AsyncIterator[Callable[[float], Store]]:
    """Connect stores, with the answer timeout given, to a database reached through the proxy."""
    stores: list[Store] = []

    def connect(answer_timeout: float) -> Store:
        stores.append(
            Store.connect(database_proxy.url_for(postgres_url), answer_timeout=answer_timeout)
        )
        return stores[-1]

    yield connect
    for store in stores:
        await store.close()


@pytest.mark.postgres
async def test_a_commit_the_database_never_answers_fails_without_stalling_the_event_loop(
    store_behind_proxy: Callable[[float], Store], database_proxy: TcpProxy
) -> None:
    """The pooled connection's pre-ping, then a new connection, each wait one answer timeout;
    giving up must not block the loop (a cancel request would connect to the lost server)."""
    store = store_behind_proxy(1.0)
    room = await store.create_room(name="r", language="plaintext")
    database_proxy.partition()
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while True:
            await anyio.sleep(0.01)
            gaps.append(time.perf_counter() - last)
            last = time.perf_counter()

    with anyio.fail_after(10):
        async with GroupCommitter(store) as committer, anyio.create_task_group() as ticking:
            ticking.start_soon(tick)
            with pytest.raises(StoreUnavailable, match="in time"):
                await committer.append(room.id, [text_update("x")])
            ticking.cancel_scope.cancel()
    assert max(gaps) < 0.5


@pytest.mark.postgres
async def test_an_unanswered_commit_after_answered_ones_fails_one_answer_timeout_after_it_was_sent(
    store_behind_proxy: Callable[[float], Store], database_proxy: TcpProxy
) -> None:
    """Commits sent on the open log connection share one timer for their answers: after a
    stream of answered commits longer than the timeout, one that is never answered still
    fails one answer timeout after it was sent, not sooner and not later."""
    store = store_behind_proxy(1.0)
    room = await store.create_room(name="r", language="plaintext")
    with anyio.fail_after(10):
        async with GroupCommitter(store) as committer:
            streaming_since = time.perf_counter()
            while time.perf_counter() - streaming_since < 1.5:
                await committer.append(room.id, [text_update("x")])
                await anyio.sleep(0.05)
            database_proxy.partition()
            sent = time.perf_counter()
            with pytest.raises(StoreUnavailable, match="in time"):
                await committer.append(room.id, [text_update("y")])
            assert 0.9 < time.perf_counter() - sent < 1.5


@pytest.mark.postgres
async def test_the_store_serves_at_once_when_a_partition_heals(
    store_behind_proxy: Callable[[float], Store], database_proxy: TcpProxy
) -> None:
    """Connections lost in the partition stay dead (as after a failover): none of them, the
    timed-out one or the idle one beside it, may be used again."""
    store = store_behind_proxy(2.0)
    room = await store.create_room(name="r", language="plaintext")
    async with anyio.create_task_group() as tg:  # two connections in the pool
        for char in "ab":
            tg.start_soon(store.append_updates, room.id, [text_update(char)])
    database_proxy.partition()
    with anyio.fail_after(15), pytest.raises(StoreUnavailable):
        await store.append_updates(room.id, [text_update("c")])
    database_proxy.restore()
    with anyio.fail_after(1.5):  # less than an answer timeout: no wait on a dead connection
        await store.append_updates(room.id, [text_update("d")])
    assert sorted(await loaded_text(store, room.id)) == ["a", "b", "d"]


@pytest.mark.postgres
async def test_a_ping_gives_up_within_its_limit_while_the_database_does_not_answer(
    store_behind_proxy: Callable[[float], Store], database_proxy: TcpProxy
) -> None:
    """The limit covers the whole ping, the pooled connection's pre-ping and a new connection
    included, however long the answer timeout."""
    store = store_behind_proxy(30.0)
    await store.ping()
    database_proxy.partition()
    for _ in range(2):  # the first ping finds the pooled connection, the second connects anew
        started = time.perf_counter()
        with anyio.fail_after(5), pytest.raises(StoreUnavailable):
            await store.ping(within=0.5)
        assert time.perf_counter() - started < 1.5


@pytest.mark.postgres
async def test_a_store_whose_connections_are_all_busy_raises_store_unavailable(
    postgres_url: str,
) -> None:
    """Waiting longer than an answer timeout for a free connection means the database is not
    answering (every connection is stuck on it): the same `StoreUnavailable`."""
    store = Store.connect(postgres_url, pool_size=1, answer_timeout=0.5)
    try:
        async with store.engine.connect(), store.engine.connect():  # the pool and its overflow
            with anyio.fail_after(5), pytest.raises(StoreUnavailable, match="no database"):
                await store.ping()
    finally:
        await store.close()


def test_network_parameters_written_in_the_url_win() -> None:
    url = "postgresql://u@h/db?tcp_user_timeout=0&connect_timeout=3"
    chosen = network_parameters(url, 10.0, connect_timeout=10)
    assert "tcp_user_timeout" not in chosen and "connect_timeout" not in chosen
    assert chosen["keepalives_idle"] == 10


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("sqlite://", "names no SQLite file"),
        ("sqlite:///:memory:", "names no SQLite file"),
        ("sqlite:///file:collab?mode=memory&uri=true", "names no SQLite file"),
        ("sqlite:///collab.sqlite3?mode=ro", "has options"),
        ("mysql://u@h/db", "unsupported database URL scheme"),
    ],
)
def test_a_url_the_store_cannot_run_on_is_refused_when_connecting(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Store.connect(url)

"""A room's update path: apply (the document validates), commit, relay, and what waits for the
commit. Real rooms on a real SQLite store, driven through in-memory sockets."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager
from datetime import UTC, datetime

import anyio
import pytest
from prometheus_client import REGISTRY
from pycrdt import Doc, YMessageType, YSyncMessageType, create_update_message, write_message
from sqlalchemy import insert

from collab_server.closecodes import CloseCode
from collab_server.connection import Connection
from collab_server.protocol import read_var_bytes
from collab_server.room import GAP_WAIT_SECONDS, CollabRoom
from collab_server.settings import Settings
from crdt_store import EncodedDocument, Store, compact_room, text_of, text_update
from crdt_store.fanout import Committed
from crdt_store.schema import room_updates
from tests.support.memory_socket import MemoryWebSocket, memory_connection
from tests.test_store import loaded_text
from tests.test_upstream_defects import (
    received_text,
    running_manager,
    serve_with_writer,
    serving,
)

pytestmark = pytest.mark.anyio

SYNC_REQUEST = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1]) + write_message(b"\x00")
SYNC_REPLY = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings(database_url=sqlite_url)


def sync_replies(socket: MemoryWebSocket) -> list[str]:
    """The text of each sync step 2 the room sent to `socket`."""
    texts = []
    for message in socket.sent:
        if message.startswith(SYNC_REPLY):
            doc: Doc[object] = Doc()
            doc.apply_update(read_var_bytes(message, len(SYNC_REPLY))[0])
            texts.append(text_of(doc))
    return texts


async def first_sync_reply(socket: MemoryWebSocket) -> str:
    with anyio.fail_after(10):
        while not (replies := sync_replies(socket)):
            await anyio.sleep(0.01)
    return replies[0]


@contextmanager
def database_write_locked(sqlite_url: str) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock from another connection: the room's commits wait for it (up to
    the store's busy timeout) until `rollback()`."""
    with closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as lock:
        lock.isolation_level = None
        lock.execute("BEGIN IMMEDIATE")
        yield lock


async def test_a_sync_request_is_answered_after_the_updates_its_sender_sent_before_it(
    settings: Settings,
) -> None:
    async with running_manager(settings) as (manager, store):
        record = await store.create_room(name="r", language="plaintext")
        room = await manager.get_room(record.id)
        client, socket = memory_connection(record.id)
        async with serving(room, client):
            socket.feed(create_update_message(text_update("typed")), SYNC_REQUEST)
            assert await first_sync_reply(socket) == "typed"


async def test_an_unexpected_error_handling_a_message_closes_only_its_sender_with_1011(
    settings: Settings,
) -> None:
    async with running_manager(settings) as (manager, store):
        record = await store.create_room(name="r", language="plaintext")
        room = await manager.get_room(record.id)
        failing, failing_socket = memory_connection(record.id)
        other, other_socket = memory_connection(record.id)
        receive = room._receive

        def receive_failing_for_one(connection: Connection, message: bytes) -> None:
            if connection is failing:
                raise RuntimeError("injected failure")
            receive(connection, message)

        room._receive = receive_failing_for_one  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:
            for connection in (failing, other):
                tg.start_soon(serve_with_writer, manager, connection)
            failing_socket.feed(SYNC_REQUEST)
            other_socket.feed(create_update_message(text_update("served")), SYNC_REQUEST)
            assert await first_sync_reply(other_socket) == "served"
            with anyio.fail_after(5):
                while failing_socket.close_code is None:
                    await anyio.sleep(0.01)
            assert failing_socket.close_code == CloseCode.INTERNAL_ERROR
            other_socket.hang_up()


async def test_a_joiner_is_answered_only_once_the_edits_in_the_document_are_committed(
    settings: Settings, sqlite_url: str
) -> None:
    async with running_manager(settings) as (manager, store):
        record = await store.create_room(name="r", language="plaintext")
        room = await manager.get_room(record.id)
        writer, writer_socket = memory_connection(record.id)
        joiner, joiner_socket = memory_connection(record.id)
        with database_write_locked(sqlite_url) as lock:
            async with serving(room, writer):
                writer_socket.feed(create_update_message(text_update("typed")))
                with anyio.fail_after(5):
                    while text_of(room.ydoc) != "typed":
                        await anyio.sleep(0.01)
                async with serving(room, joiner):
                    joiner_socket.feed(SYNC_REQUEST)
                    await anyio.sleep(0.5)
                    assert joiner_socket.sent == [], "nothing is sent while the edit is uncommitted"
                    lock.rollback()
                    assert await first_sync_reply(joiner_socket) == "typed"
        assert await loaded_text(store, record.id) == "typed"


async def test_a_commit_that_fails_unexpectedly_closes_every_client_and_the_room_reloads(
    settings: Settings,
) -> None:
    async with running_manager(settings) as (manager, store):
        record = await store.create_room(name="r", language="plaintext")
        await store.append_updates(record.id, [text_update("kept")])
        room = await manager.get_room(record.id)
        writer, writer_socket = memory_connection(record.id)
        observer, observer_socket = memory_connection(record.id)
        # A row the store did not hand out holds the next sequence number: the room's next
        # commit fails with an integrity error, not with the database being unavailable.
        async with store.engine.begin() as conn:
            await conn.execute(
                insert(room_updates).values(
                    room_id=record.id, seq=2, data=text_update("row"), created_at=datetime.now(UTC)
                )
            )
        async with serving(room, writer), serving(room, observer):
            writer_socket.feed(create_update_message(text_update("lost")))
            with anyio.fail_after(5):
                while writer_socket.close_code is None or observer_socket.close_code is None:
                    await anyio.sleep(0.01)
        assert writer_socket.close_code == observer_socket.close_code == CloseCode.INTERNAL_ERROR
        assert "lost" in text_of(room.ydoc)
        reloaded = await manager.get_room(record.id)
        assert reloaded is not room
        assert text_of(reloaded.ydoc) == await loaded_text(store, record.id)
        assert "lost" not in text_of(reloaded.ydoc)


# -- rows committed by other processes -------------------------------------------------------
# The rows are appended through the store (as another process would) and announced by hand:
# the running manager's fan-out is `SingleProcess`, which announces nothing.


async def appended_elsewhere(store: Store, room_id: str, *texts: str) -> Committed:
    """Rows appended by "another process": the announcement it would send."""
    updates = [text_update(text) for text in texts]
    last = await store.append_updates(room_id, updates)
    return Committed(room_id, last - len(updates) + 1, last, tuple(updates))


async def wait_text(room: CollabRoom, expected: str) -> None:
    with anyio.fail_after(5):
        while text_of(room.ydoc) != expected:
            await anyio.sleep(0.01)


@pytest.fixture
def checking_often(sqlite_url: str) -> Settings:
    """Head checks ten times a second, so tests of what only they find are quick."""
    return Settings(database_url=sqlite_url, fanout_check_seconds=0.1)


@asynccontextmanager
async def a_loaded_room(settings: Settings) -> AsyncIterator[tuple[Store, CollabRoom]]:
    """A new room, loaded by a running manager (whose fan-out announces nothing)."""
    async with running_manager(settings) as (manager, store):
        record = await store.create_room(name="r", language="plaintext")
        yield store, await manager.get_room(record.id)


async def test_rows_announced_out_of_order_are_applied_in_log_order(settings: Settings) -> None:
    async with a_loaded_room(settings) as (store, room):
        first = await appended_elsewhere(store, room.room_id, "a")
        second = await appended_elsewhere(store, room.room_id, "b", "c")
        observer, observer_socket = memory_connection(room.room_id)
        async with serving(room, observer):
            room.receive_committed(second)
            assert (room.head, text_of(room.ydoc)) == (0, "")
            room.receive_committed(first)
            assert room.head == 3
            assert text_of(room.ydoc) == await loaded_text(store, room.room_id)
            assert received_text(observer_socket) == text_of(room.ydoc)


async def test_rows_missing_before_an_announcement_are_read_from_the_log(
    settings: Settings,
) -> None:
    async with a_loaded_room(settings) as (store, room):
        await appended_elsewhere(store, room.room_id, "lost")
        room.receive_committed(await appended_elsewhere(store, room.room_id, "heard"))
        await wait_text(room, await loaded_text(store, room.room_id))
        assert room.head == 2


async def test_a_quiet_room_whose_announcements_were_lost_catches_up_at_the_head_check(
    checking_often: Settings,
) -> None:
    async with a_loaded_room(checking_often) as (store, room):
        observer, observer_socket = memory_connection(room.room_id)
        async with serving(room, observer):
            await appended_elsewhere(store, room.room_id, "never announced")
            await wait_text(room, "never announced")
            with anyio.fail_after(5):
                while received_text(observer_socket) != "never announced":
                    await anyio.sleep(0.01)


async def test_a_room_behind_a_compaction_catches_up_from_the_snapshot(
    settings: Settings,
) -> None:
    async with a_loaded_room(settings) as (store, room):
        await appended_elsewhere(store, room.room_id, "folded")
        assert (await compact_room(store, room.room_id)).compacted
        room.receive_committed(await appended_elsewhere(store, room.room_id, "after"))
        await wait_text(room, await loaded_text(store, room.room_id))
        assert "folded" in text_of(room.ydoc)
        assert room.head == 2


async def typed_and_committing(room: CollabRoom, socket: MemoryWebSocket, text: str) -> None:
    """A client types `text` into the room; returns once it is in the room's document and
    taken into a commit (nothing pending)."""
    socket.feed(create_update_message(text_update(text)))
    with anyio.fail_after(5):
        while text not in text_of(room.ydoc) or room._pending:
            await anyio.sleep(0.01)


async def test_an_own_commit_after_rows_not_yet_heard_of_ends_with_both_applied(
    settings: Settings,
) -> None:
    async with a_loaded_room(settings) as (store, room):
        elsewhere = await appended_elsewhere(store, room.room_id, "theirs")
        writer, writer_socket = memory_connection(room.room_id)
        async with serving(room, writer):
            await typed_and_committing(room, writer_socket, "mine")
            room.receive_committed(elsewhere)
            await wait_text(room, await loaded_text(store, room.room_id))
            assert room.head == 2


async def test_a_room_deleted_by_another_process_closes_its_clients_at_the_head_check(
    checking_often: Settings,
) -> None:
    async with a_loaded_room(checking_often) as (store, room):
        client, socket = memory_connection(room.room_id)
        async with serving(room, client):
            await store.delete_room(room.room_id)
            with anyio.fail_after(5):
                while socket.close_code is None:
                    await anyio.sleep(0.01)
        assert socket.close_code == CloseCode.ROOM_NOT_FOUND
        assert room.poisoned


def gap_catch_ups() -> float:
    return REGISTRY.get_sample_value("collab_catch_ups_total", {"reason": "gap"}) or 0.0


async def test_gaps_that_keep_being_filled_in_time_never_read_the_log(
    settings: Settings,
) -> None:
    """Several processes writing keep a new gap in flight nearly all the time; each one closes
    within milliseconds, so none of them is a reason to read the log."""
    async with a_loaded_room(settings) as (store, room):
        rows = {seq: await appended_elsewhere(store, room.room_id, str(seq)) for seq in range(1, 9)}
        before = gap_catch_ups()
        room.receive_committed(rows[2])
        for opened, filled in ((4, 1), (6, 3), (8, 5)):
            await anyio.sleep(GAP_WAIT_SECONDS * 0.3)
            room.receive_committed(rows[opened])
            room.receive_committed(rows[filled])
            assert room.head == filled + 1
        await anyio.sleep(GAP_WAIT_SECONDS * 0.3)
        room.receive_committed(rows[7])
        assert room.head == 8
        assert text_of(room.ydoc) == await loaded_text(store, room.room_id)
        await anyio.sleep(GAP_WAIT_SECONDS * 1.5)
        assert gap_catch_ups() == before


# -- the document offered to compaction ------------------------------------------------------


async def test_a_room_offers_compaction_its_document_once_the_commit_in_flight_is_done(
    settings: Settings, sqlite_url: str
) -> None:
    async with a_loaded_room(settings) as (_store, room):
        writer, writer_socket = memory_connection(room.room_id)
        offered: list[EncodedDocument | None] = []

        async def offer() -> None:
            offered.append(await room._document_at_head())

        with database_write_locked(sqlite_url) as lock:
            async with serving(room, writer), anyio.create_task_group() as tg:
                writer_socket.feed(create_update_message(text_update("typed")))
                await wait_text(room, "typed")
                tg.start_soon(offer)
                await anyio.sleep(0.3)
                assert offered == [], "nothing is offered while the edit is uncommitted"
                lock.rollback()
        [document] = offered
        assert document is not None and (document.head, document.text) == (1, "typed")


async def test_a_room_holding_its_own_commit_above_a_gap_offers_no_document(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its document holds a row past its head: it is not the log as of the head."""
    monkeypatch.setattr("collab_server.room.GAP_WAIT_SECONDS", 60.0)  # the gap stays open
    async with a_loaded_room(settings) as (store, room):
        await appended_elsewhere(store, room.room_id, "theirs")
        writer, writer_socket = memory_connection(room.room_id)
        async with serving(room, writer):
            await typed_and_committing(room, writer_socket, "mine")
            assert room.head == 0
            assert await room._document_at_head() is None

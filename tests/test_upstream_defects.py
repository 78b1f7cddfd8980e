"""Each pycrdt-websocket 0.16.5 defect we patch, proven on our classes and, where it can be
shown in a test, reproduced on the unpatched upstream class (strict xfail: if upstream fixes
the defect, the xfail turns into a failure and tells us the patch can go)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from pycrdt import Doc, Text, create_update_message
from pycrdt.websocket import WebsocketServer, YRoom

from collab_server.compactor import Compactor
from collab_server.connection import Connection
from collab_server.protocol import DocumentUpdate, parse_frame
from collab_server.rooms import RoomManager
from collab_server.settings import Settings
from crdt_store import GroupCommitter, Store, text_of
from crdt_store.fanout import SingleProcess
from tests.support.memory_socket import MemoryWebSocket, memory_connection

pytestmark = pytest.mark.anyio

#: One more than pycrdt-websocket's broadcast buffer holds.
PAST_THE_BUFFER = 65_536 + 4_000


def typed_update_messages(count: int) -> list[bytes]:
    doc = Doc()
    code = doc.get("code", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(create_update_message(event.update)))
    for i in range(count):
        code.insert(i, "x")
    return updates


def received_text(socket: MemoryWebSocket) -> str:
    doc = Doc()
    for message in socket.sent:
        frame = parse_frame(message, max_awareness_bytes=1 << 20)
        if isinstance(frame, DocumentUpdate):
            doc.apply_update(frame.update)
    return text_of(doc)


@pytest.fixture
def settings(sqlite_url: str) -> Settings:
    return Settings(database_url=sqlite_url)


@asynccontextmanager
async def running_manager(settings: Settings) -> AsyncIterator[tuple[RoomManager, Store]]:
    store = Store.connect(settings.database_url)
    try:
        async with (
            GroupCommitter(store) as committer,
            RoomManager(
                store, committer, Compactor(store, settings), settings, SingleProcess()
            ) as manager,
        ):
            yield manager, store
    finally:
        await store.close()


RoomFactory = Callable[[], Any]


@asynccontextmanager
async def patched_room(settings: Settings) -> AsyncIterator[YRoom]:
    async with running_manager(settings) as (manager, store):
        room = await store.create_room(name="r", language="plaintext")
        yield await manager.get_room(room.id)


@asynccontextmanager
async def upstream_room(settings: Settings) -> AsyncIterator[YRoom]:
    async with YRoom() as room:
        yield room


ROOMS = [
    pytest.param(patched_room, id="patched"),
    pytest.param(
        upstream_room,
        id="upstream",
        marks=pytest.mark.xfail(strict=True, reason="pycrdt-websocket 0.16.5 defect"),
    ),
]


@asynccontextmanager
async def serving(room: YRoom, connection: Connection) -> AsyncIterator[None]:
    """Serve `connection` in `room` for the duration of the block, once it has joined."""
    async with anyio.create_task_group() as tg, connection.running():
        tg.start_soon(room.serve, connection)
        with anyio.fail_after(5):
            while connection not in room.clients or not room.ydoc_observed.is_set():
                await anyio.sleep(0.01)
        yield
        tg.cancel_scope.cancel()


async def serve_with_writer(server: WebsocketServer, connection: Connection) -> None:
    async with connection.running():
        await server.serve(connection)


async def wait_for_progress(socket: MemoryWebSocket, target: int, *, stall: float = 3) -> int:
    """The length of the text `socket` received, once it reaches `target` or stops growing."""
    length, last_change = 0, anyio.current_time()
    while length < target and anyio.current_time() - last_change < stall:
        await anyio.sleep(0.25)
        new_length = len(received_text(socket))
        if new_length != length:
            length, last_change = new_length, anyio.current_time()
    return length


@pytest.mark.parametrize("make_room", ROOMS)
async def test_fast_writer_past_65536_updates_reaches_observers(
    settings: Settings, make_room: RoomFactory
) -> None:
    messages = typed_update_messages(PAST_THE_BUFFER)
    async with make_room(settings) as room:
        room_id = getattr(room, "room_id", "room")
        observer, observer_socket = memory_connection(room_id)
        writer, writer_socket = memory_connection(room_id)
        async with serving(room, observer), serving(room, writer):
            writer_socket.feed(*messages)
            assert await wait_for_progress(observer_socket, PAST_THE_BUFFER) == PAST_THE_BUFFER


@pytest.mark.parametrize("make_room", ROOMS)
async def test_updates_are_not_sent_back_to_their_sender(
    settings: Settings, make_room: RoomFactory
) -> None:
    async with make_room(settings) as room:
        room_id = getattr(room, "room_id", "room")
        observer, observer_socket = memory_connection(room_id)
        writer, writer_socket = memory_connection(room_id)
        async with serving(room, observer), serving(room, writer):
            writer_socket.feed(*typed_update_messages(3))
            with anyio.fail_after(5):
                while received_text(observer_socket) != "xxx":
                    await anyio.sleep(0.01)
        assert received_text(writer_socket) == ""


@pytest.mark.parametrize(
    "upstream",
    [
        pytest.param(False, id="patched"),
        pytest.param(
            True,
            id="upstream",
            marks=pytest.mark.xfail(strict=True, reason="0.16.5 hangs on concurrent first joins"),
        ),
    ],
)
async def test_concurrent_first_joins_all_get_the_sync_message(
    settings: Settings, upstream: bool
) -> None:
    async with (
        running_manager(settings) as (manager, store),
        WebsocketServer(auto_clean_rooms=False) as plain_server,
    ):
        room = await store.create_room(name="r", language="plaintext")
        server: WebsocketServer = plain_server if upstream else manager
        sockets = []
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                connection, socket = memory_connection(room.id)
                sockets.append(socket)
                tg.start_soon(serve_with_writer, server, connection)
            with anyio.move_on_after(3):
                while not all(s.sent for s in sockets):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # upstream, one join never returns
        assert all(s.sent for s in sockets)


async def test_room_unloads_only_after_committing_what_it_received(settings: Settings) -> None:
    async with running_manager(settings) as (manager, store):
        room = await store.create_room(name="r", language="plaintext")
        connection, socket = memory_connection(room.id)
        socket.feed(*typed_update_messages(500))
        socket.hang_up()
        async with connection.running():
            await manager.serve(connection)
        assert manager.loaded(room.id) is None
        state = await store.load_room_state(room.id)
        assert state.head == 500


async def test_a_failing_room_leaves_other_rooms_serving(settings: Settings) -> None:
    async with running_manager(settings) as (manager, store):
        broken_id = (await store.create_room(name="broken", language="plaintext")).id
        healthy_id = (await store.create_room(name="healthy", language="plaintext")).id
        broken = await manager.get_room(broken_id)

        async def explode(updates: list[bytes]) -> int:
            raise RuntimeError("injected failure")

        broken._commit = explode  # type: ignore[method-assign]
        broken_connection, broken_socket = memory_connection(broken_id)
        healthy_connection, healthy_socket = memory_connection(healthy_id)
        observer, observer_socket = memory_connection(healthy_id)
        async with anyio.create_task_group() as tg:
            for connection in (broken_connection, healthy_connection, observer):
                tg.start_soon(serve_with_writer, manager, connection)
            broken_socket.feed(*typed_update_messages(3))
            healthy_socket.feed(*typed_update_messages(3))
            with anyio.fail_after(5):
                while received_text(observer_socket) != "xxx":
                    await anyio.sleep(0.01)
            for socket in (broken_socket, healthy_socket, observer_socket):
                socket.hang_up()
        assert manager.running


async def test_the_server_announces_no_awareness_peer_of_its_own(settings: Settings) -> None:
    async with patched_room(settings) as room:
        connection, socket = memory_connection(room.room_id)
        async with serving(room, connection):
            await anyio.sleep(0.1)
        assert room.awareness.states == {}
        assert all(message[0] != 1 for message in socket.sent)

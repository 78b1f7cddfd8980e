"""Several server processes serve the same rooms from one database, behind a plain balancer.

Every test runs real `collab-server serve` processes on one fresh PostgreSQL database, once with
the PostgreSQL fan-out (LISTEN/NOTIFY) and once with the Redis Streams one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio
import pytest
from pycrdt import Doc, Text, YMessageType, YSyncMessageType, create_sync_message
from websockets.asyncio.client import connect

from collab_server.protocol import DocumentUpdate, parse_frame
from crdt_store import Store, text_update
from crdt_store.store import append_in_transaction
from tests.conftest import ServerFactory
from tests.support.node_client import NodeYClient, utf16_len
from tests.support.postgres import terminate_connections
from tests.support.server import ServerProcess
from tests.support.tcp_proxy import TcpProxy
from tests.test_sync import create_room, synced_client, wait_rest_content

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

Processes = Callable[..., list[ServerProcess]]


@pytest.fixture(params=["postgresql", "redis"])
def fanout_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings that select the fan-out backend (none: PostgreSQL's own)."""
    if request.param == "redis":
        return {"COLLAB_REDIS_URL": request.getfixturevalue("redis_url")}
    return {}


@pytest.fixture
def processes(
    postgres_url: str, start_server: ServerFactory, fanout_env: dict[str, str]
) -> Processes:
    """`processes(n, **env)`: n server processes sharing one database."""

    def start(count: int, **env: str) -> list[ServerProcess]:
        return [start_server(postgres_url, **fanout_env, **env) for _ in range(count)]

    return start


async def close_all(clients: list[NodeYClient]) -> None:
    for client in clients:
        await client.aclose()


@pytest.mark.node
async def test_clients_of_one_room_spread_over_three_processes_converge(
    processes: Processes,
) -> None:
    servers = processes(3)
    room_id = create_room(servers[0], "shared: ")
    clients = [await synced_client(server, room_id) for server in servers]
    try:
        async with anyio.create_task_group() as typing:
            for seed, client in enumerate(clients):
                typing.start_soon(client.type_random, 150, seed, 2)
        for client in clients:
            await client.wait_length(len("shared: ") + 450, timeout=20)
        texts = {await client.text() for client in clients}
        assert len(texts) == 1
        text = texts.pop()
        for server in servers:
            await wait_rest_content(server, room_id, text)
    finally:
        await close_all(clients)


@pytest.mark.node
async def test_updates_relayed_from_another_process_arrive_in_commit_order(
    processes: Processes,
) -> None:
    """Every frame the observer gets applies at once: none arrives before one it depends on
    (an early one would wait in the document as pending, and the text would not grow)."""
    writer_server, observer_server = processes(2)
    room_id = create_room(writer_server)
    async with connect(f"{observer_server.ws_url}/{room_id}") as observer:
        doc: Doc = Doc()
        text = doc.get("code", type=Text)
        await observer.send(create_sync_message(doc))
        async with NodeYClient.spawn(writer_server.ws_url, room_id) as writer:
            await writer.wait_synced()
            await _wait_sync_reply(observer, doc)
            typing = asyncio.create_task(writer.type_random(300, seed=7, interval_ms=2))
            grew_every_time = True
            with anyio.fail_after(20):
                while utf16_len(str(text)) < 300:
                    frame = parse_frame(await observer.recv(), max_awareness_bytes=1 << 20)
                    if isinstance(frame, DocumentUpdate):
                        before = str(text)
                        doc.apply_update(frame.update)
                        grew_every_time &= len(str(text)) > len(before)
            await typing
            assert str(text) == await writer.text()
            assert grew_every_time


async def _wait_sync_reply(observer: object, doc: Doc) -> None:
    """Consume frames up to the server's SyncStep2 (the answer to our SyncStep1)."""
    step2 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])
    with anyio.fail_after(10):
        while not (message := await observer.recv()).startswith(step2):  # type: ignore[attr-defined]
            pass
    frame = parse_frame(message, max_awareness_bytes=1 << 20)
    assert isinstance(frame, DocumentUpdate)
    doc.apply_update(frame.update)


@pytest.mark.node
async def test_clients_of_a_killed_process_reconnect_to_another_and_lose_nothing(
    processes: Processes,
) -> None:
    servers = processes(2)
    room_id = create_room(servers[0])
    with TcpProxy.balancing([server.port for server in servers]) as balancer:
        on_first = await synced_client(balancer, room_id)
        on_second = await synced_client(balancer, room_id)
        clients = [on_first, on_second]
        try:
            async with anyio.create_task_group() as typing:
                for seed, client in enumerate(clients):
                    typing.start_soon(client.type_random, 300, seed, 5)
                await anyio.sleep(0.6)
                servers[0].kill()
            for client in clients:
                await client.wait_length(600, timeout=30)
            text = await on_first.text()
            assert await on_second.text() == text
            await wait_rest_content(servers[1], room_id, text)
            servers[0].start()
            await wait_rest_content(servers[0], room_id, text)
        finally:
            await close_all(clients)


@pytest.mark.node
async def test_awareness_reaches_the_clients_of_other_processes(processes: Processes) -> None:
    first, second = processes(2)
    room_id = create_room(first)
    async with (
        NodeYClient.spawn(first.ws_url, room_id) as ann,
        NodeYClient.spawn(second.ws_url, room_id) as bob,
    ):
        await ann.wait_synced()
        await bob.wait_synced()
        await ann.set_awareness({"user": {"name": "Ann"}})
        ann_id = await ann.client_id()
        with anyio.fail_after(10):
            while (await bob.awareness()).get(ann_id) != {"user": {"name": "Ann"}}:
                await anyio.sleep(0.05)


@pytest.mark.node
@pytest.mark.parametrize("fanout_env", ["postgresql"], indirect=True)
async def test_processes_compacting_a_room_they_all_serve_stay_in_step(
    processes: Processes,
) -> None:
    # Compactions every 40 rows, by whichever process gets the room's lock first; a process
    # left behind a snapshot catches up from it. A late process loads the result cold.
    servers = processes(3, COLLAB_COMPACT_AFTER_UPDATES="40")
    room_id = create_room(servers[0])
    clients = [await synced_client(server, room_id) for server in servers[:2]]
    try:
        async with anyio.create_task_group() as typing:
            for seed, client in enumerate(clients):
                typing.start_soon(client.type_random, 200, seed, 2)
        for client in clients:
            await client.wait_length(400, timeout=20)
        text = await clients[0].text()
        assert await clients[1].text() == text
        for server in servers:
            await wait_rest_content(server, room_id, text)
    finally:
        await close_all(clients)


@pytest.mark.node
@pytest.mark.parametrize("fanout_env", ["postgresql"], indirect=True)
async def test_a_process_whose_listen_connection_is_terminated_catches_up(
    processes: Processes, postgres_url: str
) -> None:
    # A minute between head checks: only the catch-up after the reconnect can save the rows
    # whose notifications were sent while the listener was gone.
    writer_server, reader_server = processes(2, COLLAB_FANOUT_CHECK_SECONDS="60")
    room_id = create_room(writer_server)
    async with (
        NodeYClient.spawn(writer_server.ws_url, room_id) as writer,
        NodeYClient.spawn(reader_server.ws_url, room_id) as reader,
    ):
        await writer.wait_synced()
        await reader.wait_synced()
        await writer.insert(0, "heard, ")
        await reader.wait_text("heard, ")
        assert terminate_listener(postgres_url, reader_server) == 1
        # Committed and notified while the reader's listener reconnects (after 50 ms at least).
        await writer.insert(0, "missed, ")
        await reader.wait_text("missed, heard, ", timeout=15)


def terminate_listener(database_url: str, server: ServerProcess) -> int:
    """pg_terminate_backend on the server's LISTEN connection; how many were terminated."""
    assert server.process is not None
    return terminate_connections(database_url, f"collab-server:listen {server.process.pid}")


async def test_a_row_is_never_visible_before_an_earlier_row_commits(postgres_url: str) -> None:
    """The BIGSERIAL race: a sequence hands out seq 1 then 2 at INSERT, and if 2 commits first
    a reader that saw 2 skips 1 for ever. The per-room head counter makes the second writer
    wait for the first one's commit, so seqs become visible in order."""
    store = Store.connect(postgres_url)
    try:
        room = await store.create_room(name="race", language="plaintext")
        first, second = text_update("1"), text_update("2")
        async with store.engine.connect() as slow_writer:
            await slow_writer.begin()
            await append_in_transaction(slow_writer, {room.id: [first]})
            fast_writer = asyncio.create_task(store.append_updates(room.id, [second]))
            await asyncio.sleep(0.3)
            assert not fast_writer.done()
            seen = await store.load_room_state(room.id)
            assert (seen.head, seen.updates) == (0, [])
            await slow_writer.commit()
        assert await fast_writer == 2
        state = await store.load_room_state(room.id)
        assert (state.head, state.updates) == (2, [first, second])
    finally:
        await store.close()


async def test_processes_appending_to_the_same_rooms_never_deadlock(postgres_url: str) -> None:
    stores = [Store.connect(postgres_url) for _ in range(2)]
    try:
        rooms = [await stores[0].create_room(name=n, language="plaintext") for n in "ab"]
        update = text_update("x")

        async def append_many(store: Store, order: list[str]) -> None:
            for _ in range(100):
                await store.append_batches({room_id: [update] for room_id in order})

        ids = [room.id for room in rooms]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as writers:
                writers.start_soon(append_many, stores[0], ids)
                writers.start_soon(append_many, stores[1], ids[::-1])
        assert await stores[0].heads(ids) == dict.fromkeys(ids, 200)
    finally:
        for store in stores:
            await store.close()

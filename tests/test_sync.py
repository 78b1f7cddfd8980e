"""Real-time sync with real clients: Node yjs + y-websocket against a real server process."""

from __future__ import annotations

import anyio
import httpx
import pytest
from pycrdt import Doc, Text, create_update_message, get_state
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from collab_server.protocol import DocumentUpdate, parse_frame
from crdt_store.encoding import decode_state_vector
from tests.support.node_client import NodeYClient, utf16_len
from tests.support.server import ServerProcess
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.anyio, pytest.mark.node]

NON_ASCII = "Crème brûlée, 日本語のテキスト, 😀👍🏽 and 🇫🇷"


def create_room(server: ServerProcess, content: str = "") -> str:
    response = httpx.post(f"{server.http_url}/api/v1/rooms", json={"content": content})
    response.raise_for_status()
    room_id: str = response.json()["id"]
    return room_id


def rest_content(server: ServerProcess, room_id: str) -> str:
    response = httpx.get(f"{server.http_url}/api/v1/rooms/{room_id}/content")
    response.raise_for_status()
    content: str = response.json()["content"]
    return content


async def wait_rest_content(
    server: ServerProcess, room_id: str, expected: str, timeout: float = 10
) -> None:
    with anyio.fail_after(timeout):
        while rest_content(server, room_id) != expected:
            await anyio.sleep(0.05)


async def synced_client(server: ServerProcess | TcpProxy, room_id: str) -> NodeYClient:
    """A client of the room, synced, through a server process or a balancer in front of some."""
    client = NodeYClient()
    await client.start()
    await client.connect(server.ws_url, room_id)
    await client.wait_synced()
    return client


async def test_three_clients_editing_concurrently_converge(live_server: ServerProcess) -> None:
    room_id = create_room(live_server)
    clients = [await synced_client(live_server, room_id) for _ in range(3)]
    try:
        async with anyio.create_task_group() as tg:
            for seed, client in enumerate(clients):
                tg.start_soon(client.type_random, 200, seed, 2)
        expected_length = 600
        for client in clients:
            await client.wait_length(expected_length)
        texts = {await client.text() for client in clients}
        assert len(texts) == 1
        await wait_rest_content(live_server, room_id, texts.pop())
    finally:
        for client in clients:
            await client.aclose()


async def test_non_ascii_text_round_trips(live_server: ServerProcess) -> None:
    room_id = create_room(live_server, content="seed: ")
    async with NodeYClient.spawn(live_server.ws_url, room_id) as writer:
        await writer.wait_synced()
        await writer.insert(utf16_len("seed: "), NON_ASCII)
        await wait_rest_content(live_server, room_id, "seed: " + NON_ASCII)
        async with NodeYClient.spawn(live_server.ws_url, room_id) as reader:
            await reader.wait_synced()
            await reader.wait_text("seed: " + NON_ASCII)


async def test_late_joiner_receives_the_full_text(live_server: ServerProcess) -> None:
    room_id = create_room(live_server)
    async with NodeYClient.spawn(live_server.ws_url, room_id) as writer:
        await writer.wait_synced()
        await writer.type_random(300, seed=7)
        expected = await writer.text()
        await wait_rest_content(live_server, room_id, expected)
        async with NodeYClient.spawn(live_server.ws_url, room_id) as late:
            await late.wait_synced()
            await late.wait_text(expected)


async def test_text_survives_a_server_crash_and_restart(live_server: ServerProcess) -> None:
    room_id = create_room(live_server)
    async with (
        NodeYClient.spawn(live_server.ws_url, room_id) as writer,
        NodeYClient.spawn(live_server.ws_url, room_id) as observer,
    ):
        await writer.wait_synced()
        await observer.wait_synced()
        await writer.insert(0, NON_ASCII)
        # The observer only receives an update once it is committed.
        await observer.wait_text(NON_ASCII)
        live_server.kill()
    live_server.start()
    assert rest_content(live_server, room_id) == NON_ASCII
    async with NodeYClient.spawn(live_server.ws_url, room_id) as reader:
        await reader.wait_synced()
        await reader.wait_text(NON_ASCII)


async def test_unknown_room_closes_with_4404(live_server: ServerProcess) -> None:
    async with NodeYClient.spawn(live_server.ws_url, "no-such-room") as client:
        code, reason = await client.wait_closed()
    assert (code, reason) == (4404, "room not found")


async def test_invalid_room_id_closes_with_4400(live_server: ServerProcess) -> None:
    async with connect(f"{live_server.ws_url}/bad.id!") as socket:
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400


async def expect_close(socket: ClientConnection) -> tuple[int, str]:
    with anyio.fail_after(10):
        try:
            while True:
                await socket.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None
            return closed.rcvd.code, closed.rcvd.reason


async def test_malformed_frame_closes_only_its_sender(live_server: ServerProcess) -> None:
    room_id = create_room(live_server, content="kept")
    async with (
        NodeYClient.spawn(live_server.ws_url, room_id) as a,
        NodeYClient.spawn(live_server.ws_url, room_id) as b,
    ):
        await a.wait_synced()
        await b.wait_synced()
        async with connect(f"{live_server.ws_url}/{room_id}") as attacker:
            await attacker.send(create_update_message(b"\x05garbage-update"))
            assert await expect_close(attacker) == (4400, "update does not apply")
        await a.insert(0, "still ")
        await b.wait_text("still kept")
        assert a.events[-1].get("event") != "close"
    assert rest_content(live_server, room_id) == "still kept"


async def test_updates_are_not_echoed_to_their_sender(live_server: ServerProcess) -> None:
    room_id = create_room(live_server)
    doc = Doc()
    doc.get("code", type=Text).insert(0, "mine")
    own_client_id = doc.client_id
    async with (
        NodeYClient.spawn(live_server.ws_url, room_id) as other,
        connect(f"{live_server.ws_url}/{room_id}") as sender,
    ):
        await other.wait_synced()
        await sender.send(create_update_message(doc.get_update()))
        await other.wait_text("mine")
        await other.insert(4, " and theirs")
        relayed: list[bytes] = []
        with anyio.move_on_after(1):
            while True:
                frame = parse_frame(await sender.recv(), max_awareness_bytes=65536)  # type: ignore[arg-type]
                if isinstance(frame, DocumentUpdate):
                    relayed.append(frame.update)
    assert relayed, "the other client's update was relayed"
    for update in relayed:
        assert own_client_id not in decode_state_vector(get_state(update))


async def test_concurrent_first_joins_load_the_room_once(live_server: ServerProcess) -> None:
    room_id = create_room(live_server, content="ready")
    clients = [NodeYClient() for _ in range(8)]
    try:
        async with anyio.create_task_group() as tg:
            for client in clients:
                await client.start()
                tg.start_soon(client.connect, live_server.ws_url, room_id)
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(client.wait_text, "ready")
    finally:
        for client in clients:
            await client.aclose()
    assert live_server.log().count(f"room {room_id}: loaded") == 1


async def test_joiner_sees_the_awareness_of_clients_already_there(
    live_server: ServerProcess,
) -> None:
    room_id = create_room(live_server)
    async with NodeYClient.spawn(live_server.ws_url, room_id) as first:
        await first.wait_synced()
        await first.set_awareness({"user": {"name": "Ada"}})
        first_id = await first.client_id()
        async with NodeYClient.spawn(live_server.ws_url, room_id) as second:
            await second.wait_synced()
            with anyio.fail_after(5):
                while (await second.awareness()).get(first_id) != {"user": {"name": "Ada"}}:
                    await anyio.sleep(0.05)


async def test_awareness_of_a_closed_client_is_removed_at_once(
    live_server: ServerProcess,
) -> None:
    room_id = create_room(live_server)
    async with NodeYClient.spawn(live_server.ws_url, room_id) as stays:
        await stays.wait_synced()
        async with NodeYClient.spawn(live_server.ws_url, room_id) as leaves:
            await leaves.wait_synced()
            await leaves.set_awareness({"user": {"name": "Grace"}})
            leaving_id = await leaves.client_id()
            with anyio.fail_after(5):
                while leaving_id not in await stays.awareness():
                    await anyio.sleep(0.05)
            await leaves.kill()
        # The killed client said no goodbye: y-websocket peers would keep its cursor for 30 s.
        with anyio.fail_after(3):
            while leaving_id in await stays.awareness():
                await anyio.sleep(0.05)

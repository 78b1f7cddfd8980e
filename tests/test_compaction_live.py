"""Compaction beside live editing: real clients type while the server and the admin command
compact the same room; nothing is lost, nothing is duplicated."""

from __future__ import annotations

import sys

import anyio
import httpx
import pytest

from tests.conftest import ServerFactory
from tests.support.node_client import NodeYClient
from tests.support.server import ServerProcess
from tests.test_sync import create_room, rest_content, synced_client, wait_rest_content

pytestmark = [pytest.mark.anyio, pytest.mark.node]


@pytest.fixture
def compacting_server(database_url: str, start_server: ServerFactory) -> ServerProcess:
    """A server that compacts a room every 40 log rows."""
    return start_server(database_url, COLLAB_COMPACT_AFTER_UPDATES="40")


def room_detail(server: ServerProcess, room_id: str) -> dict[str, int]:
    detail: dict[str, int] = httpx.get(f"{server.http_url}/api/v1/rooms/{room_id}").json()
    return detail


async def run_admin_compactions(server: ServerProcess, room_id: str, stop: anyio.Event) -> int:
    runs = 0
    env = {"COLLAB_DATABASE_URL": server.database_url, "PATH": "/usr/bin:/bin"}
    while not stop.is_set():
        result = await anyio.run_process(
            [sys.executable, "-m", "collab_server", "compact", room_id], env=env, check=False
        )
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
        runs += 1
    return runs


async def test_compaction_during_live_editing_loses_nothing(
    compacting_server: ServerProcess,
) -> None:
    room_id = create_room(compacting_server)
    clients = [await synced_client(compacting_server, room_id) for _ in range(3)]
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_admin_compactions, compacting_server, room_id, stop)
            async with anyio.create_task_group() as typing:
                for seed, client in enumerate(clients):
                    typing.start_soon(client.type_random, 150, seed, 5)
            stop.set()
        for client in clients:
            await client.wait_length(450)
        expected = await clients[0].text()
        for client in clients[1:]:
            assert await client.text() == expected
        await wait_rest_content(compacting_server, room_id, expected)
    finally:
        for client in clients:
            await client.aclose()
    assert room_detail(compacting_server, room_id)["snapshot_bytes"] > 0
    compacting_server.kill()
    compacting_server.start()
    assert rest_content(compacting_server, room_id) == expected


async def test_server_compacts_a_room_when_its_log_passes_the_threshold(
    compacting_server: ServerProcess,
) -> None:
    room_id = create_room(compacting_server)
    async with NodeYClient.spawn(compacting_server.ws_url, room_id) as writer:
        await writer.wait_synced()
        await writer.type_random(100, seed=1, interval_ms=2)
        with anyio.fail_after(10):
            while room_detail(compacting_server, room_id)["snapshot_bytes"] == 0:
                await anyio.sleep(0.05)
        assert room_detail(compacting_server, room_id)["log_updates"] < 100
        await wait_rest_content(compacting_server, room_id, await writer.text())


async def test_server_compacts_a_room_when_its_last_client_leaves(
    live_server: ServerProcess,
) -> None:
    room_id = create_room(live_server)
    async with NodeYClient.spawn(live_server.ws_url, room_id) as writer:
        await writer.wait_synced()
        await writer.type_random(30, seed=2)
        text = await writer.text()
        await wait_rest_content(live_server, room_id, text)
    with anyio.fail_after(10):
        while room_detail(live_server, room_id)["log_updates"] != 0:
            await anyio.sleep(0.05)
    assert room_detail(live_server, room_id)["snapshot_bytes"] > 0
    assert rest_content(live_server, room_id) == text

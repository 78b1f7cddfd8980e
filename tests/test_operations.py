"""Operating the server: metrics, logs, graceful shutdown, starting before the database."""

from __future__ import annotations

import json
import signal
import uuid
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest
from psycopg import sql

from tests.conftest import POSTGRES_ADMIN_URL, ServerFactory
from tests.support.node_client import NodeYClient
from tests.support.server import ServerProcess
from tests.test_sync import create_room, rest_content, wait_rest_content

pytestmark = [pytest.mark.anyio, pytest.mark.node]

SECRET_TEXT = "payload-that-must-not-be-logged"


def metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.http_url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")


async def test_metrics_count_connections_updates_and_commits(live_server: ServerProcess) -> None:
    room_id = create_room(live_server)
    async with (
        NodeYClient.spawn(live_server.ws_url, room_id) as writer,
        NodeYClient.spawn(live_server.ws_url, room_id) as observer,
    ):
        await writer.wait_synced()
        await observer.wait_synced()
        await writer.insert(0, "hello")
        await observer.wait_text("hello")
        assert metric(live_server, "collab_connections") == 2
        assert metric(live_server, "collab_rooms_loaded") == 1
        assert metric(live_server, "collab_updates_received_total") >= 1
        assert metric(live_server, "collab_updates_relayed_total") >= 1
        assert metric(live_server, "collab_commit_seconds_count") >= 1
        assert metric(live_server, "collab_relay_latency_seconds_count") >= 1
        assert metric(live_server, "collab_bytes_in_total") > 0
        assert metric(live_server, "collab_log_rows_pending_compaction") >= 1


@pytest.fixture
def json_logging_server(sqlite_url: str, start_server: ServerFactory) -> ServerProcess:
    return start_server(sqlite_url, COLLAB_LOG_FORMAT="json")


async def test_json_logs_carry_the_room_id_and_no_payloads(
    json_logging_server: ServerProcess,
) -> None:
    room_id = create_room(json_logging_server)
    async with NodeYClient.spawn(json_logging_server.ws_url, room_id) as writer:
        await writer.wait_synced()
        await writer.insert(0, SECRET_TEXT)
        await wait_rest_content(json_logging_server, room_id, SECRET_TEXT)
    with anyio.fail_after(10):
        while "unloaded" not in json_logging_server.log():
            await anyio.sleep(0.05)
    records = [json.loads(line) for line in json_logging_server.log().splitlines() if line]
    room_records = [r for r in records if r.get("room_id") == room_id]
    assert {"loaded", "unloaded"} <= {r["message"].split(" ")[2] for r in room_records}
    assert all(r["message"].startswith(f"room {room_id}: ") for r in room_records)
    assert SECRET_TEXT not in json_logging_server.log()


async def test_sigterm_closes_clients_with_1012_commits_and_exits(
    live_server: ServerProcess,
) -> None:
    room_id = create_room(live_server)
    async with (
        NodeYClient.spawn(live_server.ws_url, room_id) as writer,
        NodeYClient.spawn(live_server.ws_url, room_id) as observer,
    ):
        await writer.wait_synced()
        await observer.wait_synced()
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.type_random, 300, 3, 1)
            await anyio.sleep(0.2)
            exit_code = await anyio.to_thread.run_sync(live_server.terminate)
        # uvicorn re-raises the signal once shut down: "terminated by SIGTERM", after cleanup.
        assert exit_code in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in live_server.log()
        for client in (writer, observer):
            assert (await client.wait_closed())[0] == 1012
        expected = await writer.text()
        live_server.start()
        # Both reconnect on their own (1012 means "come back"); edits the server had not
        # received are sent again by the writer; nothing is duplicated.
        await observer.wait_text(expected, timeout=20)
        await wait_rest_content(live_server, room_id, expected)
    assert len(expected) == 300


@pytest.mark.postgres
async def test_server_started_before_its_database_becomes_ready_when_it_appears(
    postgres_template: str, tmp_path: Path
) -> None:
    name = f"collab_test_{uuid.uuid4().hex[:16]}_late"
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    server = ServerProcess(database_url=url, log_path=tmp_path / "server.log")
    server.start(wait_ready=False)
    try:
        with anyio.fail_after(20):
            while "retrying" not in server.log():
                await anyio.sleep(0.1)
        assert httpx.get(f"{server.http_url}/readyz").status_code == 503
        assert httpx.get(f"{server.http_url}/healthz").status_code == 200
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        await anyio.to_thread.run_sync(lambda: server.wait_ready(timeout=30))
        room_id = create_room(server)
        assert rest_content(server, room_id) == ""
    finally:
        server.kill()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

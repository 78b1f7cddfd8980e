"""The `collab-server` command line, run as a real subprocess against both backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio

from crdt_store import Store, text_update
from tests.test_store import loaded_text, typed_updates


def collab_server(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLLAB_DATABASE_URL": database_url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "collab_server", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def seed_rooms(database_url: str, count: int, text: str) -> list[str]:
    async def seed() -> list[str]:
        store = Store.connect(database_url)
        try:
            ids = []
            for _ in range(count):
                room = await store.create_room(name="r", language="plaintext")
                await store.append_updates(room.id, typed_updates(text))
                ids.append(room.id)
            return ids
        finally:
            await store.close()

    return anyio.run(seed)


def log_rows_and_text(database_url: str, room_id: str) -> tuple[int, str]:
    async def read() -> tuple[int, str]:
        store = Store.connect(database_url)
        try:
            state = await store.load_room_state(room_id)
            return len(state.updates), await loaded_text(store, room_id)
        finally:
            await store.close()

    return anyio.run(read)


def test_compact_named_rooms_folds_their_logs_and_prints_a_summary(database_url: str) -> None:
    first, second = seed_rooms(database_url, 2, "héllo")
    run = collab_server(database_url, "compact", first)
    assert run.returncode == 0, run.stdout + run.stderr
    assert first in run.stdout and "compacted" in run.stdout
    assert log_rows_and_text(database_url, first) == (0, "héllo")
    assert log_rows_and_text(database_url, second) == (5, "héllo")


def test_compact_all_compacts_every_room(database_url: str) -> None:
    rooms = seed_rooms(database_url, 3, "abc")
    run = collab_server(database_url, "compact", "--all")
    assert run.returncode == 0, run.stdout + run.stderr
    for room_id in rooms:
        assert log_rows_and_text(database_url, room_id) == (0, "abc")


def test_dry_run_reports_and_writes_nothing(database_url: str) -> None:
    (room_id,) = seed_rooms(database_url, 1, "abc")
    run = collab_server(database_url, "compact", "--dry-run", room_id)
    assert run.returncode == 0 and "dry run" in run.stdout
    assert log_rows_and_text(database_url, room_id) == (3, "abc")


def test_min_updates_skips_small_logs(database_url: str) -> None:
    (room_id,) = seed_rooms(database_url, 1, "ab")
    run = collab_server(database_url, "compact", "--min-updates", "10", room_id)
    assert run.returncode == 0 and "skipped" in run.stdout
    assert log_rows_and_text(database_url, room_id) == (2, "ab")


def test_unknown_room_exits_non_zero_with_a_message(database_url: str) -> None:
    run = collab_server(database_url, "compact", "no-such-room")
    assert run.returncode == 1
    assert "room 'no-such-room' not found" in run.stdout


def test_unreachable_database_exits_non_zero_with_a_message() -> None:
    run = collab_server("postgresql://nobody@127.0.0.1:1/none", "compact", "--all")
    assert run.returncode == 1
    assert "cannot reach the database" in run.stdout


def test_compact_needs_rooms_or_all(database_url: str) -> None:
    run = collab_server(database_url, "compact")
    assert run.returncode == 2


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    run = collab_server(url, "migrate")
    assert run.returncode == 0 and "up to date" in run.stdout

    async def use() -> str:
        store = Store.connect(url)
        try:
            room = await store.create_room(name="r", language="plaintext")
            await store.append_updates(room.id, [text_update("ok")])
            return await loaded_text(store, room.id)
        finally:
            await store.close()

    assert anyio.run(use) == "ok"

"""The `collab-server` command line, run as a real subprocess against both backends."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from http.client import HTTPConnection
from pathlib import Path

import anyio
import pytest

from crdt_store import Store, text_update
from tests.support.server import ServerProcess, child_pids, is_running
from tests.test_store import loaded_text, typed_updates


def collab_server(
    database_url: str, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """`collab-server args...` on this database, with more `COLLAB_*` settings if given."""
    env = {**os.environ, "COLLAB_DATABASE_URL": database_url, "COLUMNS": "200", **settings}
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


def test_a_served_app_leaves_what_it_was_built_from_out_of_garbage_collections(
    tmp_path: Path,
) -> None:
    script = (
        "import gc\n"
        "from collab_server.cli import app_from_environment\n"
        "app_from_environment()\n"
        "print(gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    env = {**os.environ, "COLLAB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite3'}"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    frozen, still_collected = map(int, result.stdout.split())
    assert frozen > 10_000
    assert still_collected < frozen / 100


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'collab.sqlite3'}"
    run = collab_server(url, "serve", "--workers", "2")
    assert run.returncode == 2
    assert "error: --workers 2 needs PostgreSQL" in run.stderr
    assert url in run.stderr


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_serve_refuses_an_in_memory_sqlite_database(url: str) -> None:
    run = collab_server(url, "serve")
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: COLLAB_DATABASE_URL: {url!r} names no SQLite file")


def test_a_bad_setting_is_named_by_its_variable_in_one_line(tmp_path: Path) -> None:
    run = collab_server(f"sqlite:///{tmp_path / 'c.sqlite3'}", "migrate", COLLAB_PORT="eighty")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        "error: COLLAB_PORT: Input should be a valid integer, unable to parse string as an integer"
    ]


@pytest.fixture
def two_workers(postgres_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(
        database_url=postgres_url, log_path=tmp_path / "server.log", args=["--workers", "2"]
    )
    server.start()
    yield server
    server.kill()


def ready_pids(server: ServerProcess, *, count: int, timeout: float = 30.0) -> set[int]:
    """The processes that answered /readyz 200 on fresh connections, until `count` of them had.

    The kernel hands each connection to whichever worker accepts it first, so it takes a few.
    """
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < count and time.monotonic() < deadline:
        with closing(HTTPConnection("127.0.0.1", server.port, timeout=5)) as connection:
            connection.request("GET", "/readyz")
            response = connection.getresponse()
            response.read()
            if response.status == 200:  # 503 from a worker still migrating
                assert connection.sock is not None
                pids.add(server.serving_pid(connection.sock))
    return pids


@pytest.mark.postgres
def test_serve_with_two_workers_answers_from_two_child_processes(
    two_workers: ServerProcess,
) -> None:
    answering = ready_pids(two_workers, count=2)
    assert len(answering) == 2, two_workers.log()
    assert two_workers.process is not None
    assert answering <= child_pids(two_workers.process.pid)


@pytest.mark.postgres
def test_sigterm_to_the_server_shuts_every_worker_down(two_workers: ServerProcess) -> None:
    assert two_workers.process is not None
    children = child_pids(two_workers.process.pid)
    two_workers.terminate()  # raises unless the supervisor exits within 20 s
    workers = {
        int(pid) for pid in re.findall(r"Started server process \[(\d+)\]", two_workers.log())
    }
    assert len(workers) == 2 and workers <= children
    for pid in workers:
        assert f"Finished server process [{pid}]" in two_workers.log()
    deadline = time.monotonic() + 10
    while any(map(is_running, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(is_running, children))

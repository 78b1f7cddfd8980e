"""The server's compaction scheduler."""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY
from pycrdt import Doc, Text

from collab_server import compactor as compactor_module
from collab_server.compactor import Compactor
from collab_server.settings import Settings
from crdt_store import Store, text_update

pytestmark = pytest.mark.anyio


def failed_compactions() -> float:
    return REGISTRY.get_sample_value("collab_compactions_total", {"result": "failed"}) or 0.0


async def test_a_failed_compaction_is_not_retried_at_every_trigger(store: Store) -> None:
    doc: Doc[Any] = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text = doc.get("code", type=Text)
    text.insert(0, "a")
    text.insert(1, "b")
    room = await store.create_room(name="r", language="plaintext")
    await store.append_updates(room.id, [updates[1]])  # waits for "a": cannot be folded
    compactor = Compactor(store, Settings(database_url=store.url))
    before = failed_compactions()
    for _ in range(3):
        compactor.request(room.id)
        with anyio.fail_after(10):
            while room.id in compactor._running:
                await anyio.sleep(0.01)
    assert failed_compactions() == before + 1


@pytest.mark.postgres
async def test_many_rooms_compacting_at_once_leave_connections_for_everything_else(
    postgres_url: str,
) -> None:
    """Each compaction holds a connection for its lock and needs another to read and write:
    as many compactions as the pool has connections must not take them all."""
    store = Store.connect(postgres_url, pool_size=2, answer_timeout=2.0)  # 4 connections
    try:
        rooms = [await store.create_room(name=f"r{i}", language="plaintext") for i in range(8)]
        for room in rooms:
            await store.append_updates(room.id, [text_update("x")])
        compactor = Compactor(store, Settings(database_url=postgres_url))
        for room in rooms:
            compactor.request(room.id)
        with anyio.fail_after(1.5):  # less than the pool's timeout
            await store.create_room(name="beside", language="plaintext")
        with anyio.fail_after(10):
            while compactor._running:
                await anyio.sleep(0.01)
        assert [(await store.get_room(room.id)).log_updates for room in rooms] == [0] * 8
    finally:
        await store.close()


async def test_stopping_does_not_wait_for_ever_on_a_compaction_that_will_not_stop(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    let_go = asyncio.Event()

    async def compaction_that_ignores_its_cancel(*_: object, **__: object) -> None:
        with suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        await let_go.wait()

    monkeypatch.setattr(compactor_module, "compact_room", compaction_that_ignores_its_cancel)
    monkeypatch.setattr(compactor_module, "STOP_WAIT_SECONDS", 0.2)
    room = await store.create_room(name="r", language="plaintext")
    compactor = Compactor(store, Settings(database_url=store.url))
    compactor.request(room.id)
    await asyncio.sleep(0.05)
    with anyio.fail_after(5):
        await compactor.aclose()
    let_go.set()

"""The server's compaction scheduler."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY
from pycrdt import Doc, Text

from collab_server.compactor import Compactor
from collab_server.settings import Settings
from crdt_store import Store

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

"""Schema migrations keep what the database holds."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command

from crdt_store import Store, doc_from_state, text_of, text_update, upgrade_database
from crdt_store.migrate import alembic_config
from crdt_store.urls import sync_url

pytestmark = pytest.mark.anyio


def migrate_to(url: str, revision: str) -> None:
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


async def test_a_log_written_under_the_first_schema_is_kept_by_the_upgrade(
    database_url: str,
) -> None:
    migrate_to(database_url, "0001")
    store = Store.connect(database_url)
    try:
        room = await store.create_room(name="r", language="plaintext")
        await store.append_updates(room.id, [text_update("kept")])
        upgrade_database(database_url)
        state = await store.load_room_state(room.id)
    finally:
        await store.close()
    assert state.head == 1
    assert text_of(doc_from_state(state)) == "kept"
    assert (
        sa.inspect(sa.create_engine(sync_url(database_url))).get_foreign_keys("room_updates") == []
    )

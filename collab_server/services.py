"""The long-lived objects of one server process, started and stopped together.

Startup does not wait for the database: migrations are retried with backoff in the background
while `/readyz` answers 503, so a server started before its database comes up by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

from crdt_store import (
    GroupCommitter,
    Store,
    StoreUnavailable,
    doc_from_state,
    text_of,
    upgrade_database,
)
from crdt_store.fanout import fanout_for
from crdt_store.urls import redact

from .autocomplete import CompletionEngine, RuleBasedEngine
from .closecodes import CloseCode
from .compactor import Compactor
from .rooms import RoomManager
from .settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: Store
    rooms: RoomManager
    completion: CompletionEngine
    migrated: asyncio.Event = field(default_factory=asyncio.Event)
    #: Wall-clock time in seconds, for token expiry (tests pass their own).
    clock: Callable[[], float] = time.time

    async def ready(self) -> bool:
        """The schema is in place and the database answers now."""
        if not self.migrated.is_set():
            return False
        try:
            await self.store.ping(within=self.settings.readiness_timeout_seconds)
        except StoreUnavailable:
            return False
        return True

    async def room_text(self, room_id: str) -> str:
        """The room's committed text: from memory when loaded, else rebuilt from the store."""
        room = self.rooms.loaded(room_id)
        if room is not None:
            try:
                async with asyncio.timeout(self.settings.committed_read_seconds):
                    return await room.read_committed(text_of)
            except TimeoutError:
                raise StoreUnavailable("the room's latest edits are not committed yet") from None
        state = await self.store.load_room_state(room_id)
        doc = await anyio.to_thread.run_sync(doc_from_state, state)
        return text_of(doc)


async def _migrate_until_done(settings: Settings, migrated: asyncio.Event) -> None:
    delay = 0.5
    while True:
        try:
            await anyio.to_thread.run_sync(upgrade_database, settings.database_url)
        except Exception as error:
            logger.warning(
                "database %s not ready (%s); retrying in %.1f s",
                redact(settings.database_url),
                str(error).splitlines()[0] if str(error) else type(error).__name__,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        else:
            logger.info("database %s ready", redact(settings.database_url))
            migrated.set()
            return


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    if settings.token_secret is None:
        logger.warning(
            "open mode: COLLAB_TOKEN_SECRET is not set, anyone who knows a room id can join it"
        )
    store = Store.connect(
        settings.database_url,
        pool_size=settings.db_pool_size,
        answer_timeout=settings.db_answer_timeout_seconds,
    )
    compactor = Compactor(store, settings)
    fanout = fanout_for(
        settings.database_url,
        redis_url=settings.redis_url,
        answer_timeout=settings.db_answer_timeout_seconds,
    )
    try:
        async with (
            GroupCommitter(
                store,
                on_committed=fanout.publish_committed,
                min_interval=settings.commit_interval_seconds,
            ) as committer,
            RoomManager(store, committer, compactor, settings, fanout) as rooms,
            fanout.running(rooms.deliver),
        ):
            services = Services(settings, store, rooms, RuleBasedEngine())
            migration = asyncio.create_task(_migrate_until_done(settings, services.migrated))
            try:
                yield services
            finally:
                migration.cancel()
                await rooms.close_all(CloseCode.SERVICE_RESTART, "server restarting")
                await compactor.aclose()
    finally:
        await store.close()

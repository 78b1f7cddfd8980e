"""Automatic compaction of loaded rooms: when a room's log passes a size, and when it unloads.

Compactions run as background tasks, at most one per room at a time, with their CPU-heavy part
in a worker thread (see `crdt_store.compaction`), so a big room compacting does not stall the
others. A failed compaction is logged and not retried for `RETRY_AFTER_FAILURE_SECONDS` (a
room whose log waits for a missing update would otherwise re-encode its document after every
commit); the log is untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from crdt_store import CurrentDocument, RoomNotFound, RoomRecord, Store, compact_room

from . import metrics
from .logs import room_logger
from .settings import Settings

logger = logging.getLogger(__name__)

RETRY_AFTER_FAILURE_SECONDS = 60.0
#: Compactions running at once. Each holds two pooled connections while it runs (its room's
#: advisory lock, and its reads and writes), and their CPU-bound part shares one GIL anyway.
#: Unbounded, twenty rooms unloading together took every connection of the pool for their
#: locks and waited for a second one until the pool's timeout, failing them all and the REST
#: requests beside them (503).
MAX_RUNNING = 2
#: How long stopping waits for the cancelled compactions. A compaction on SQLite cancelled at
#: shutdown could wait for ever on SQLAlchemy's shielded close of its aiosqlite connection (the
#: benchmark's servers, stopped as the rooms of a run unloaded, hung 1 stop in 5 or so); the
#: database rolls back what an abandoned one wrote.
STOP_WAIT_SECONDS = 5.0
#: Called with the room's stored figures once a compaction attempt ends (the log may have been
#: compacted by another process meanwhile: the stored figures are the truth).
OnDone = Callable[[RoomRecord], None]


class Compactor:
    def __init__(self, store: Store, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._running: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_RUNNING)
        self._failed_at: dict[str, float] = {}

    def due(self, log_updates: int, log_bytes: int) -> bool:
        return (
            log_updates >= self._settings.compact_after_updates
            or log_bytes >= self._settings.compact_after_bytes
        )

    def request(
        self,
        room_id: str,
        on_done: OnDone | None = None,
        current: CurrentDocument | None = None,
    ) -> None:
        """Compact the room in the background unless a compaction of it is already running
        or one failed less than `RETRY_AFTER_FAILURE_SECONDS` ago; from its `current` document
        when the room is loaded (see `compact_room`)."""
        failed_at = self._failed_at.get(room_id)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_AFTER_FAILURE_SECONDS:
            return
        if room_id not in self._running:
            task = asyncio.create_task(
                self._compact(room_id, on_done, current), name=f"compact:{room_id}"
            )
            self._running[room_id] = task
            task.add_done_callback(lambda _: self._running.pop(room_id, None))

    async def _compact(
        self, room_id: str, on_done: OnDone | None, current: CurrentDocument | None
    ) -> None:
        log = room_logger(logger, room_id)
        try:
            async with self._slots:
                result = await compact_room(self._store, room_id, current=current)
            record = await self._store.get_room(room_id)
        except RoomNotFound:
            return
        except Exception:
            self._failed_at[room_id] = time.monotonic()
            metrics.COMPACTIONS.labels("failed").inc()
            log.exception("compaction failed; the log is kept")
            return
        self._failed_at.pop(room_id, None)
        metrics.COMPACTIONS.labels("compacted" if result.compacted else "skipped").inc()
        if result.compacted:
            log.info(
                "compacted %d log rows (%d bytes) into a %d-byte snapshot in %.3f s",
                result.log_rows,
                result.log_bytes,
                result.snapshot_bytes,
                result.seconds,
            )
        if on_done is not None:
            on_done(record)

    async def aclose(self) -> None:
        """Stop running compactions: an interrupted one rolls back and loses nothing."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=STOP_WAIT_SECONDS)
        if stuck:
            logger.warning(
                "%d compaction(s) still stopping after %.0f s; leaving them",
                len(stuck),
                STOP_WAIT_SECONDS,
            )

"""The rooms loaded in this process: load once, serve, unload when the last client leaves.

`RoomManager` subclasses pycrdt-websocket 0.16.5's `WebsocketServer` (its task group, room
registry and start/stop) and replaces the defective points:

* `get_room`: two clients joining a new room at once could hang one of them (both called
  `room.start`; the second waited forever on the first's start lock). Here a per-room lock
  makes the first join load and start the room and every concurrent join wait for it.
* `serve` with `auto_clean_rooms` stopped a room while its store writes were in flight
  (lost edits). Here a room is unloaded only after `drain()`: everything it received is
  committed first.
* `exception_handler=None` let one failing room take the whole server down: every room gets a
  handler that logs with the room id (see `room.py`), and errors while serving one client are
  logged here and close only that client.
"""

from __future__ import annotations

import logging
import weakref
from functools import partial
from typing import Any

import anyio
from pycrdt import Doc
from pycrdt.websocket import WebsocketServer

from crdt_store import GroupCommitter, RoomState, Store, doc_from_state

from . import metrics
from .closecodes import CloseCode
from .compactor import Compactor
from .connection import Connection
from .room import CollabRoom
from .settings import Settings

logger = logging.getLogger(__name__)


class RoomManager(WebsocketServer):
    """Owns the loaded rooms. Use as `async with RoomManager(...) as rooms:`."""

    rooms: dict[str, CollabRoom]  # type: ignore[assignment]

    def __init__(
        self,
        store: Store,
        committer: GroupCommitter,
        compactor: Compactor,
        settings: Settings,
    ) -> None:
        super().__init__(rooms_ready=True, auto_clean_rooms=False, log=logger)
        self._store = store
        self._committer = committer
        self._compactor = compactor
        self._settings = settings
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = weakref.WeakValueDictionary()

    async def __aenter__(self) -> RoomManager:
        await super().__aenter__()
        return self

    def _lock(self, room_id: str) -> anyio.Lock:
        lock = self._locks.get(room_id)
        if lock is None:
            lock = self._locks[room_id] = anyio.Lock()
        return lock

    def loaded(self, room_id: str) -> CollabRoom | None:
        return self.rooms.get(room_id)

    async def get_room(self, name: str) -> CollabRoom:
        """The loaded room, loading it from the store first if needed (raises RoomNotFound)."""
        async with self._lock(name):
            room = self.rooms.get(name)
            if room is not None and room.poisoned:
                await self._stop(room)
                room = None
            if room is None:
                state, doc = await self._load(name)
                room = CollabRoom(
                    name,
                    ydoc=doc,
                    head=state.head,
                    log_updates=len(state.updates),
                    log_bytes=sum(map(len, state.updates)),
                    committer=self._committer,
                    compactor=self._compactor,
                    settings=self._settings,
                    reload_doc=partial(self._reload_doc, name),
                )
                await self.start_room(room)
                await room.running.wait()
                self.rooms[name] = room
                metrics.ROOMS_LOADED.inc()
                room.log.info("loaded (%d log rows after the snapshot)", len(state.updates))
            return room

    async def _load(self, room_id: str) -> tuple[RoomState, Doc[Any]]:
        state = await self._store.load_room_state(room_id)
        return state, await anyio.to_thread.run_sync(doc_from_state, state)

    async def _reload_doc(self, room_id: str) -> Doc[Any]:
        """The room's committed document, rebuilt from the store."""
        _, doc = await self._load(room_id)
        return doc

    async def serve(self, websocket: Connection) -> None:  # type: ignore[override]
        """Serve one client until it leaves; unload the room if it was the last one."""
        connection = websocket
        room = await self.get_room(connection.path)
        try:
            await room.serve(connection)
        except Exception:
            room.log.exception("error while serving a client")
            connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if not room.clients:
                await self._unload_if_idle(room)

    async def _unload_if_idle(self, room: CollabRoom) -> None:
        async with self._lock(room.room_id):
            if room.clients or self.rooms.get(room.room_id) is not room:
                return
            await room.drain()
            if room.clients:
                return
            await self._stop(room)
            room.log.info("unloaded")
            if self._settings.compact_on_unload and room.log_updates:
                self._compactor.request(room.room_id)

    async def _stop(self, room: CollabRoom) -> None:
        del self.rooms[room.room_id]
        await room.stop()
        metrics.ROOMS_LOADED.dec()
        metrics.LOG_ROWS_PENDING.dec(room.log_updates)

    async def delete(self, room_id: str) -> None:
        """Delete the room: close its clients (4404), commit what they sent, remove its data."""
        async with self._lock(room_id):
            room = self.rooms.get(room_id)
            if room is not None:
                for client in list(room.clients):
                    client.close(CloseCode.ROOM_NOT_FOUND, "room deleted")
                await room.drain()
                await self._stop(room)
            await self._store.delete_room(room_id)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every client and unload every room after committing what it received
        (bounded by `shutdown_drain_seconds`: a dead database must not block shutdown)."""
        for room in list(self.rooms.values()):
            for client in list(room.clients):
                client.close(code, reason)
        with anyio.move_on_after(self._settings.shutdown_drain_seconds) as scope:
            for room in list(self.rooms.values()):
                await room.drain()
        if scope.cancelled_caught:
            logger.error("shutdown: gave up committing; clients resend their edits on reconnect")
        for room in list(self.rooms.values()):
            await self._stop(room)

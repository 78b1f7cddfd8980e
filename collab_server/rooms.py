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

Other processes serving the same database announce their commits through the fan-out
(`crdt_store.fanout`); `deliver` hands them to the loaded room. A room is subscribed to before
its log is read, and what arrives while it loads is kept for it, so nothing falls between the
read and the subscription. Every `fanout_check_seconds` the loaded rooms' heads are compared
with the store's: a room whose messages were lost catches up by itself.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from functools import partial

import anyio
from pycrdt.websocket import WebsocketServer

from crdt_store import GroupCommitter, RoomState, Store, StoreUnavailable, doc_from_state
from crdt_store.fanout import AwarenessChanged, Committed, Event, Fanout, Resubscribed

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
        fanout: Fanout,
    ) -> None:
        super().__init__(rooms_ready=True, auto_clean_rooms=False, log=logger)
        self._store = store
        self._committer = committer
        self._compactor = compactor
        self._settings = settings
        self._fanout = fanout
        self._locks: weakref.WeakValueDictionary[str, anyio.Lock] = weakref.WeakValueDictionary()
        #: Fan-out events of the rooms being loaded, for them once they are.
        self._arriving: dict[str, list[Event]] = {}

    async def __aenter__(self) -> RoomManager:
        await super().__aenter__()
        assert self._task_group is not None
        self._task_group.start_soon(self._check_heads_forever)
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
                room = await self._load(name)
            return room

    async def _load(self, room_id: str) -> CollabRoom:
        self._arriving[room_id] = []
        try:
            await self._fanout.watch(room_id)
            state = await self._read_log(room_id, 0)
            doc = await anyio.to_thread.run_sync(doc_from_state, state)
            room = CollabRoom(
                room_id,
                ydoc=doc,
                head=state.head,
                log_updates=len(state.updates),
                log_bytes=sum(map(len, state.updates)),
                committer=self._committer,
                compactor=self._compactor,
                settings=self._settings,
                read_log=partial(self._read_log, room_id),
                fanout=self._fanout,
            )
            await self.start_room(room)
            await room.running.wait()
        except BaseException:
            self._fanout.unwatch(room_id)
            raise
        finally:
            arrived = self._arriving.pop(room_id)
        self.rooms[room_id] = room
        metrics.ROOMS_LOADED.inc()
        room.log.info("loaded (%d log rows after the snapshot)", len(state.updates))
        for event in arrived:
            self._deliver_to(room, event)
        return room

    async def _read_log(self, room_id: str, after: int) -> RoomState:
        return await self._store.load_room_state(room_id, after=after)

    def deliver(self, event: Event) -> None:
        """A fan-out event from another process, for the room it names if loaded here."""
        if isinstance(event, Resubscribed):
            for room in self.rooms.values():
                room.catch_up("reconnect")
            for arriving in self._arriving.values():
                arriving.append(event)
            return
        loaded = self.rooms.get(event.room_id)
        if loaded is not None:
            self._deliver_to(loaded, event)
        elif event.room_id in self._arriving:
            self._arriving[event.room_id].append(event)

    @staticmethod
    def _deliver_to(room: CollabRoom, event: Event) -> None:
        if isinstance(event, Committed):
            room.receive_committed(event)
        elif isinstance(event, AwarenessChanged):
            room.receive_awareness(event.payload)
        else:
            room.catch_up("reconnect")

    async def _check_heads_forever(self) -> None:
        while True:
            await asyncio.sleep(self._settings.fanout_check_seconds)
            rooms = dict(self.rooms)
            if not rooms:
                continue
            try:
                heads = await self._store.heads(list(rooms))
            except StoreUnavailable as error:
                logger.warning("checking the rooms' log heads failed: %s", error)
                continue
            for room_id, room in rooms.items():
                room.check_head(heads.get(room_id))

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
        self._fanout.unwatch(room.room_id)
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

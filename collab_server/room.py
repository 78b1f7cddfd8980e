"""A room: one document, its clients, and the path of every update through it.

    socket -> Connection -> CollabRoom.serve (parse, validate) -> pending
           -> flush: store commit (group commit) -> apply to the document -> relay to the others

`CollabRoom` subclasses pycrdt-websocket 0.16.5's `YRoom` (its lifecycle, task group and
awareness) and replaces the points where 0.16.5 is defective for a durable server:

* `_broadcast_updates` relayed every update to every client before any store write (and wrote
  through one task per update). Here updates are committed first, then applied and relayed:
  the room's `ydoc` holds exactly the committed state, so a joiner's sync reply can never
  contain an edit the log might lose.
* `_watch_ready` fed updates into a memory stream of 65,536 items through `send_nowait`,
  silently dropping everything past it (observers of a fast writer stuck at 79,466 of 259,778
  updates until they reconnected). Here the pending list is unbounded in the type and bounded
  by backpressure: `serve` stops reading a socket while `max_pending_updates` wait for commit.
* `serve` echoed updates back to their sender, re-broadcast a phantom empty awareness peer (the
  server's own), never sent the current awareness states to a joiner, left a disconnected
  client's cursor for ~30 s, and fed unvalidated bytes to quadratic decoders. Here frames are
  parsed strictly first (`protocol.py`), updates go to everyone but their sender, and a closed
  connection's awareness states are removed at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pycrdt import (
    Doc,
    TransactionEvent,
    YMessageType,
    create_sync_message,
    create_update_message,
    get_state,
    merge_updates,
    write_message,
)
from pycrdt.websocket import YRoom

from crdt_store import (
    GroupCommitter,
    RoomNotFound,
    RoomRecord,
    StoreUnavailable,
    is_update_error,
)

from . import metrics
from .closecodes import CloseCode
from .compactor import Compactor
from .connection import Connection
from .logs import room_logger
from .protocol import (
    EMPTY_UPDATE,
    AwarenessUpdate,
    DocumentUpdate,
    ProtocolError,
    QueryAwareness,
    RateLimited,
    SyncStep1,
    parse_frame,
    sync_step2_message,
)
from .settings import Settings

logger = logging.getLogger(__name__)

_EMPTY_STATE_VECTOR = b"\x00"


def _log_and_continue(exception: Exception, log: logging.Logger) -> bool:
    """pycrdt-websocket re-raises unhandled room errors, which took the whole server down."""
    log.error("unexpected error", exc_info=exception)
    return True


class CollabRoom(YRoom):
    """A loaded room. Create it with the document rebuilt from the store (`ydoc`)."""

    clients: set[Connection]  # type: ignore[assignment]

    def __init__(
        self,
        room_id: str,
        *,
        ydoc: Doc[Any],
        head: int,
        log_updates: int,
        log_bytes: int,
        committer: GroupCommitter,
        compactor: Compactor,
        settings: Settings,
    ) -> None:
        super().__init__(
            ready=True,
            ydoc=ydoc,
            exception_handler=_log_and_continue,
            log=room_logger(logger, room_id),  # type: ignore[arg-type]
        )
        self.room_id = room_id
        #: Seq of the newest log row the document holds.
        self.head = head
        #: Rows and bytes of the log not yet folded into the snapshot.
        self.log_updates = log_updates
        self.log_bytes = log_bytes
        metrics.LOG_ROWS_PENDING.inc(log_updates)
        self._committer = committer
        self._compactor = compactor
        self._settings = settings
        self._pending: list[tuple[bytes, Connection | None]] = []
        self._oldest_pending_at = 0.0
        self._work = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._full_update: bytes | None = None
        #: Set once every task of the room runs: only then may it be stopped.
        self.running = asyncio.Event()
        self._awareness_owners: dict[int, Connection] = {}
        self._transaction_updates: list[bytes] = []
        # The server has no cursor of its own: without this it announced an empty peer.
        self.awareness.set_local_state(None)

    # -- pycrdt-websocket overrides -------------------------------------------------------

    async def _start(self, task_status: Any) -> None:
        # YRoom reports "started" before its tasks are; stopping it in between (its last client
        # left at once) crashed YRoom.start inside the server's task group, stopping every room.
        await super()._start(task_status)
        self.running.set()

    async def _watch_ready(self) -> None:
        await self.ready_event.wait()
        self._subscription = self.ydoc.observe(self._on_transaction)
        self.ydoc_observed.set()

    async def _broadcast_updates(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._flush(batch)
                except Exception:
                    # Nothing of the batch reached the document or the other clients; its
                    # senders resync on reconnect and send their edits again.
                    self.log.exception("a batch failed; closing its senders")
                    for origin in {origin for _, origin in batch if origin is not None}:
                        origin.close(CloseCode.INTERNAL_ERROR, "internal error: reconnect")
            self._idle.set()

    def send_server_awareness(self, type: str, changes: tuple[dict[str, Any], Any]) -> None:
        """The server's own awareness state is never broadcast (it has none)."""

    async def serve(self, channel: Connection) -> None:  # type: ignore[override]
        connection = channel
        self.clients.add(connection)
        try:
            connection.send_nowait(create_sync_message(self.ydoc))
            if self.awareness.states:
                connection.send_nowait(self._awareness_message(list(self.awareness.states)))
            async for message in connection:
                self._receive(connection, message)
                delay = connection.throttle(len(message))
                if delay:
                    await asyncio.sleep(delay)
                if len(self._pending) >= self._settings.max_pending_updates:
                    self._capacity.clear()
                    await self._capacity.wait()
        except ProtocolError as error:
            self.log.info("closing a client that sent a bad frame: %s", error)
            metrics.FRAMES_REJECTED.labels(error.reason).inc()
            connection.close(error.close_code, str(error))
        finally:
            self.clients.discard(connection)
            self._forget_awareness(connection)

    # -- receiving --------------------------------------------------------------------------

    def _receive(self, connection: Connection, message: bytes) -> None:
        frame = parse_frame(message, max_awareness_bytes=self._settings.max_awareness_bytes)
        if isinstance(frame, DocumentUpdate):
            self._receive_update(connection, frame.update)
        elif isinstance(frame, SyncStep1):
            if not connection.sync_requests.try_take():
                raise RateLimited("too many sync requests")
            connection.send_nowait(sync_step2_message(self._update_since(frame.state_vector)))
        elif isinstance(frame, AwarenessUpdate):
            self._receive_awareness(connection, frame, message)
        elif isinstance(frame, QueryAwareness):
            connection.send_nowait(self._awareness_message(list(self.awareness.states)))

    def _receive_update(self, connection: Connection, update: bytes) -> None:
        if connection.read_only:
            metrics.FRAMES_REJECTED.labels("read-only").inc()
            return
        connection.updates_received += 1
        if update == EMPTY_UPDATE:
            if connection.uncommitted == 0:
                connection.acknowledge(connection.updates_received)
            return
        try:
            # Decoding is not enough: yrs panics on some updates that decode (a zero-length
            # item, say). A trial apply into an empty document catches those before commit.
            get_state(update)
            Doc().apply_update(update)
        except BaseException as error:
            if not is_update_error(error):
                raise
            raise ProtocolError("update does not decode") from None
        metrics.UPDATES_RECEIVED.inc()
        self.submit(update, connection)

    def submit(self, update: bytes, origin: Connection | None = None) -> None:
        """Queue a validated update for commit, then relay to everyone but `origin`."""
        if not self._pending:
            self._oldest_pending_at = time.perf_counter()
        self._pending.append((update, origin))
        if origin is not None:
            origin.uncommitted += 1
        self._idle.clear()
        self._work.set()

    def _update_since(self, state_vector: bytes) -> bytes:
        if state_vector == _EMPTY_STATE_VECTOR:
            # Joins of a loaded room reuse one encoding until the document changes.
            if self._full_update is None:
                self._full_update = self.ydoc.get_update()
            return self._full_update
        try:
            return self.ydoc.get_update(state_vector)
        except Exception:
            raise ProtocolError("state vector does not decode") from None

    def _receive_awareness(
        self, connection: Connection, frame: AwarenessUpdate, message: bytes
    ) -> None:
        """Apply and relay a client's awareness, at most once per `awareness_interval_seconds`
        per client: a flood is coalesced to its latest state (each message carries the whole
        state of its entries, so the latest supersedes the others)."""
        # A client id belongs to the first connection that announced it, until it closes: a
        # client cannot set or remove another client's cursor. (Messages mixing in another
        # client's entry are dropped whole; y-websocket clients only send their own.)
        owners = self._awareness_owners
        if any(owners.setdefault(e.client_id, connection) is not connection for e in frame.entries):
            metrics.FRAMES_REJECTED.labels("awareness of another client").inc()
            return
        pending = connection.pending_awareness
        connection.pending_awareness = (frame, message)
        if pending is None:
            wait = connection.last_awareness_at + self._settings.awareness_interval_seconds
            asyncio.get_running_loop().call_at(wait, self._relay_awareness, connection)

    def _relay_awareness(self, connection: Connection) -> None:
        if connection.pending_awareness is None or connection not in self.clients:
            return
        (frame, message), connection.pending_awareness = connection.pending_awareness, None
        connection.last_awareness_at = asyncio.get_running_loop().time()
        for entry in frame.entries:
            if entry.state is None:
                self._awareness_owners.pop(entry.client_id, None)
        try:
            self.awareness.apply_awareness_update(frame.payload, connection)
        except Exception:
            connection.close(CloseCode.BAD_FRAME, "awareness update does not apply")
            return
        # Sent back to its sender too: y-websocket clients reconnect when they hear nothing for
        # 30 s, and their own awareness renewal (every 15 s) is what they hear in a quiet room.
        for client in self.clients:
            client.send_nowait(message)

    def _forget_awareness(self, connection: Connection) -> None:
        owned = [i for i, owner in self._awareness_owners.items() if owner is connection]
        for client_id in owned:
            del self._awareness_owners[client_id]
        ids = [i for i in owned if i in self.awareness.states]
        if ids:
            self.awareness.remove_awareness_states(ids, connection)
            message = self._awareness_message(ids)
            for client in self.clients:
                client.send_nowait(message)

    def _awareness_message(self, client_ids: list[int]) -> bytes:
        payload = self.awareness.encode_awareness_update(client_ids)
        return bytes([YMessageType.AWARENESS]) + write_message(payload)

    # -- commit, apply, relay ---------------------------------------------------------------

    async def _flush(self, batch: list[tuple[bytes, Connection | None]]) -> None:
        # Messages received before this cut are in the batch (or were empty).
        received_at_cut: dict[Connection, int] = {}
        for _, origin in batch:
            if origin is not None:
                received_at_cut[origin] = origin.updates_received
        received_at = self._oldest_pending_at
        committing_at = time.perf_counter()
        try:
            self.head = await self._commit([update for update, _ in batch])
        except RoomNotFound:
            self.log.info("deleted while loaded; closing its clients")
            for client in list(self.clients):
                client.close(CloseCode.ROOM_NOT_FOUND, "room deleted")
            return
        finally:
            self._capacity.set()
            for _, origin in batch:
                if origin is not None:
                    origin.uncommitted -= 1
        committed_at = time.perf_counter()
        metrics.COMMIT_SECONDS.observe(committed_at - committing_at)
        metrics.COMMIT_BATCH_UPDATES.observe(len(batch))
        self._apply_and_relay(batch)
        metrics.RELAY_LATENCY_SECONDS.observe(time.perf_counter() - received_at)
        for connection, count in received_at_cut.items():
            connection.acknowledge(
                connection.updates_received if connection.uncommitted == 0 else count
            )
        self.log_updates += len(batch)
        self.log_bytes += sum(len(update) for update, _ in batch)
        metrics.LOG_ROWS_PENDING.inc(len(batch))
        if self._compactor.due(self.log_updates, self.log_bytes):
            self._compactor.request(self.room_id, self._compacted)

    def _compacted(self, stored: RoomRecord) -> None:
        metrics.LOG_ROWS_PENDING.inc(stored.log_updates - self.log_updates)
        self.log_updates, self.log_bytes = stored.log_updates, stored.log_bytes

    async def _commit(self, updates: list[bytes]) -> int:
        """Commit, retrying while the database is unavailable: nothing is relayed meanwhile."""
        delay = 0.05
        while True:
            try:
                return await self._committer.append(self.room_id, updates)
            except StoreUnavailable as error:
                self.log.warning("commit failed (%s); retrying in %.2f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.commit_retry_max_seconds)

    def _on_transaction(self, event: TransactionEvent) -> None:
        self._transaction_updates.append(event.update)

    def _apply_and_relay(self, batch: list[tuple[bytes, Connection | None]]) -> None:
        by_origin: dict[Connection | None, list[bytes]] = {}
        for update, origin in batch:
            by_origin.setdefault(origin, []).append(update)
        # One transaction per origin: the observed update of each is that origin's batch,
        # merged by the CRDT itself.
        merged: list[tuple[Connection | None, bytes]] = []
        for origin, updates in by_origin.items():
            self._transaction_updates.clear()
            with self.ydoc.transaction():
                for update in updates:
                    try:
                        self.ydoc.apply_update(update)
                    except BaseException as error:
                        if not is_update_error(error):
                            raise
                        self.log.exception("a committed update did not apply")
            merged.extend((origin, u) for u in self._transaction_updates)
        self._transaction_updates.clear()
        self._full_update = None
        self._relay(merged)

    def _relay(self, merged: list[tuple[Connection | None, bytes]]) -> None:
        everyone = [u for _, u in merged]
        message_for_all = self._update_message(everyone)
        origins = {origin for origin, _ in merged}
        sent = 0
        for client in self.clients:
            if client not in origins:
                message = message_for_all
            else:
                message = self._update_message([u for o, u in merged if o is not client])
            if message is not None:
                client.send_nowait(message)
                sent += 1
        metrics.UPDATES_RELAYED.inc(sent)

    @staticmethod
    def _update_message(updates: list[bytes]) -> bytes | None:
        if not updates:
            return None
        # Few updates here (one per origin in the batch): merge_updates is cheap at this size.
        update = updates[0] if len(updates) == 1 else merge_updates(*updates)
        return create_update_message(update)

    async def drain(self) -> None:
        """Return once every update received so far is committed and relayed."""
        while not self._idle.is_set():
            await self._idle.wait()

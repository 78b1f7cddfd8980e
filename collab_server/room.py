"""A room: one document, its clients, and the path of every update through it.

    socket -> Connection -> CollabRoom.serve (parse) -> pending
           -> flush: apply to the document (validate) -> store commit (group commit)
           -> relay to the others -> answer the sync requests that waited for the commit

    other processes' commits (fan-out) -> LogCursor (in log order) -> apply -> relay to all

`CollabRoom` subclasses pycrdt-websocket 0.16.5's `YRoom` (its lifecycle, task group and
awareness) and replaces the points where 0.16.5 is defective for a durable server:

* `_broadcast_updates` relayed every update to every client before any store write (and wrote
  through one task per update). Here a batch is applied, committed, and only then relayed; a
  sync request is answered only while the document holds nothing uncommitted (else right
  after the commit in flight), so no client ever receives an edit the log might lose.
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
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import Any, TypeVar

import anyio
from pycrdt import (
    Doc,
    TransactionEvent,
    YMessageType,
    create_sync_message,
    create_update_message,
    write_message,
)
from pycrdt.websocket import YRoom

from crdt_store import (
    UPDATES_PER_TRANSACTION,
    EncodedDocument,
    GroupCommitter,
    RoomNotFound,
    RoomRecord,
    RoomState,
    Rows,
    StoreUnavailable,
    doc_from_state,
    is_update_error,
)
from crdt_store.fanout import Committed, Fanout

from . import metrics
from .closecodes import CloseCode
from .compactor import Compactor
from .connection import Connection
from .log_cursor import LogCursor, Span
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
T = TypeVar("T")

_EMPTY_STATE_VECTOR = b"\x00"
#: How long rows announced ahead of a gap wait for the rows before them (another process's
#: notification racing this one) before the log is read instead.
GAP_WAIT_SECONDS = 0.1
#: How long a compaction waits for a moment the document holds only committed edits, before it
#: folds the log instead.
COMMITTED_MOMENT_WAIT_SECONDS = 5.0
#: Reads a room's log: the rows after the given seq (or the snapshot covering some of them).
ReadLog = Callable[[int], Awaitable[RoomState]]


def _log_and_continue(exception: Exception, log: logging.Logger) -> bool:
    """pycrdt-websocket re-raises unhandled room errors, which took the whole server down."""
    log.error("unexpected error", exc_info=exception)
    return True


@dataclass
class Applied:
    """What a batch did to the document: the updates it accepted, in the order applied (to be
    committed), and what each sender's transaction integrated (to be relayed)."""

    accepted: list[tuple[Connection, bytes]] = field(default_factory=list)
    integrated: list[tuple[Connection, bytes]] = field(default_factory=list)

    @property
    def to_commit(self) -> list[bytes]:
        """The accepted updates as received, in the order applied."""
        return [update for _, update in self.accepted]


class Batch:
    """Updates taken together from a room's pending list: applied, committed, relayed at once."""

    __slots__ = ("received_at", "received_at_cut", "updates")

    def __init__(self, updates: list[tuple[bytes, Connection]], received_at: float) -> None:
        self.updates = updates
        #: When the oldest of them arrived.
        self.received_at = received_at
        #: How many messages each sender had sent when the batch was taken: those are in it
        #: (or were empty), for its acknowledgements.
        self.received_at_cut = {origin: origin.updates_received for _, origin in updates}


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
        read_log: ReadLog,
        fanout: Fanout,
    ) -> None:
        super().__init__(
            ready=True,
            ydoc=ydoc,
            exception_handler=_log_and_continue,
            log=room_logger(logger, room_id),  # type: ignore[arg-type]
        )
        self.room_id = room_id
        self._cursor = LogCursor(head)
        #: Rows and bytes of the log not yet folded into the snapshot.
        self.log_updates = log_updates
        self.log_bytes = log_bytes
        metrics.LOG_ROWS_PENDING.inc(log_updates)
        self._committer = committer
        self._compactor = compactor
        self._settings = settings
        self._read_log = read_log
        self._fanout = fanout
        #: Set while the document is rebuilt from the store: other processes' rows wait.
        self._reloading = False
        self._catch_up_task: asyncio.Task[None] | None = None
        #: Why the log must be read whether the room looks behind or not (None: only if it does).
        self._catch_up_forced: str | None = None
        #: The store's head seen at the last check while this room was behind it.
        self._lagging_to: int | None = None
        self._pending: list[tuple[bytes, Connection]] = []
        self._oldest_pending_at = 0.0
        #: The batch taken from `_pending` and not yet committed (one at a time, in order).
        self._batch: Batch | None = None
        #: Tasks finishing batches the slow way (`_flush_slowly`).
        self._background: set[asyncio.Task[None]] = set()
        #: Clients not read from while `max_pending_updates` wait for the next batch.
        self._held: set[Connection] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._full_update: bytes | None = None
        #: Batches taken from `_pending` so far, and how many of them are committed. What must
        #: see only committed state, in order with the updates received before it (sync
        #: replies, REST reads), waits in `_after_commit` for the batch it needs.
        self._batches_taken = 0
        self._batches_done = 0
        self._after_commit: list[tuple[int, Callable[[], None]]] = []
        #: Set when the document may hold edits that will never be committed: the room must be
        #: reloaded from the store (`RoomManager.get_room` does it).
        self.poisoned = False
        #: Set once every task of the room runs: only then may it be stopped.
        self.running = asyncio.Event()
        self._awareness_owners: dict[int, Connection] = {}
        self._transaction_updates: list[bytes] = []
        # The server has no cursor of its own: without this it announced an empty peer.
        self.awareness.set_local_state(None)

    @property
    def head(self) -> int:
        """Seq of the newest log row the document holds, with every row before it."""
        return self._cursor.head

    # -- pycrdt-websocket overrides -------------------------------------------------------

    async def _start(self, task_status: Any) -> None:
        # YRoom reports "started" before its tasks are; stopping it in between (its last client
        # left at once) crashed YRoom.start inside the server's task group, stopping every room.
        await super()._start(task_status)
        self.running.set()

    async def stop(self) -> None:
        if self._catch_up_task is not None:
            self._catch_up_task.cancel()
        for task in self._background:
            task.cancel()
        await super().stop()

    async def _watch_ready(self) -> None:
        await self.ready_event.wait()
        self._subscription = self.ydoc.observe(self._on_transaction)
        self.ydoc_observed.set()

    async def _broadcast_updates(self) -> None:
        """Batches are flushed by the group commit's gather step (`_flush`), not by a task."""

    def send_server_awareness(self, type: str, changes: tuple[dict[str, Any], Any]) -> None:
        """The server's own awareness state is never broadcast (it has none)."""

    async def serve(self, channel: Connection) -> None:  # type: ignore[override]
        connection = channel
        self.clients.add(connection)
        try:
            self._when_committed(lambda: connection.send_nowait(create_sync_message(self.ydoc)))
            if self.awareness.states:
                connection.send_nowait(self._awareness_message(list(self.awareness.states)))
            await connection.deliver(
                lambda message: self._receive(connection, message),
                lambda error: self._reject(connection, error),
            )
        finally:
            self.clients.discard(connection)
            self._held.discard(connection)
            self._forget_awareness(connection)

    # -- receiving --------------------------------------------------------------------------

    def _receive(self, connection: Connection, message: bytes) -> None:
        frame = parse_frame(message, max_awareness_bytes=self._settings.max_awareness_bytes)
        if isinstance(frame, DocumentUpdate):
            self._receive_update(connection, frame.update)
        elif isinstance(frame, SyncStep1):
            if not connection.sync_requests.try_take():
                raise RateLimited("too many sync requests")
            self._when_committed(lambda: self._answer_sync(connection, frame.state_vector))
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
        self._submit(update, connection)
        full = len(self._pending) >= self._settings.max_pending_updates
        if full and connection not in self._held:
            self._held.add(connection)
            connection.pause_reading()

    def _submit(self, update: bytes, origin: Connection) -> None:
        """Queue an update to be applied, committed, then relayed to everyone but `origin`."""
        if not self._pending:
            self._oldest_pending_at = time.perf_counter()
            if self._batch is None:
                self._committer.gather(self._flush)
        self._pending.append((update, origin))
        origin.uncommitted += 1
        self._idle.clear()

    def _reject(self, connection: Connection, error: ProtocolError) -> None:
        self.log.info("closing a client that sent a bad frame: %s", error)
        metrics.FRAMES_REJECTED.labels(error.reason).inc()
        connection.close(error.close_code, str(error))

    def _when_committed(self, action: Callable[[], None]) -> None:
        """Run `action` once every update received so far is committed (now, if it is), at a
        moment the document holds only committed edits: right after that batch's commit."""
        needed = self._batches_taken + (1 if self._pending else 0)
        if needed == self._batches_done:
            action()
        else:
            self._after_commit.append((needed, action))

    async def read_committed(self, read: Callable[[Doc[Any]], T]) -> T:
        """`read(ydoc)` at a moment the document holds only committed edits (waits for the
        commit in flight; for as long as the database is down, so callers bound it)."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def run() -> None:
            if not done.done():
                done.set_result(read(self.ydoc))

        self._when_committed(run)
        return await done

    def _answer_sync(self, connection: Connection, state_vector: bytes) -> None:
        try:
            update = self._update_since(state_vector)
        except ProtocolError as error:
            self._reject(connection, error)
        else:
            connection.send_nowait(sync_step2_message(update))

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
        self._fanout.publish_awareness(self.room_id, frame.payload)
        # Sent back to its sender too: y-websocket clients reconnect when they hear nothing for
        # 30 s, and their own awareness renewal (every 15 s) is what they hear in a quiet room.
        self._send_to_all(message)

    def _forget_awareness(self, connection: Connection) -> None:
        owned = [i for i, owner in self._awareness_owners.items() if owner is connection]
        for client_id in owned:
            del self._awareness_owners[client_id]
        ids = [i for i in owned if i in self.awareness.states]
        if ids:
            self.awareness.remove_awareness_states(ids, connection)
            payload = self.awareness.encode_awareness_update(ids)
            self._fanout.publish_awareness(self.room_id, payload)
            self._send_to_all(_awareness_frame(payload))

    def receive_awareness(self, payload: bytes) -> None:
        """Cursors of another process's clients: kept for joiners, sent to every client."""
        try:
            self.awareness.apply_awareness_update(payload, "fan-out")
        except Exception:
            self.log.warning("ignored an awareness update from another process that does not apply")
            return
        self._send_to_all(_awareness_frame(payload))

    def _send_to_all(self, frame: bytes) -> None:
        for client in self.clients:
            client.send_nowait(frame)

    def _awareness_message(self, client_ids: list[int]) -> bytes:
        return _awareness_frame(self.awareness.encode_awareness_update(client_ids))

    # -- commit, apply, relay ---------------------------------------------------------------

    def _flush(self) -> None:
        """Take the pending updates as one batch, apply them and hand them to the group commit,
        in this turn of the event loop with every other room's; relay them once committed
        (`_committed`). The rare batch whose apply fails, or whose commit must be retried,
        finishes in a task (`_flush_slowly`)."""
        if self._batch is not None or not self._pending:
            return
        batch = self._batch = Batch(self._pending, self._oldest_pending_at)
        self._pending = []
        self._batches_taken += 1
        metrics.UPDATES_RECEIVED.inc(len(batch.updates))
        try:
            applied, failed = self._apply(batch.updates)
            if failed:
                self._in_background(self._flush_slowly(batch, applied, reapply=True))
            elif applied.accepted:
                updates = applied.to_commit
                self._committer.submit(
                    self.room_id,
                    updates,
                    partial(self._committed, batch, applied, updates, time.perf_counter()),
                )
            else:
                self._finish(batch, applied)
        except Exception:
            self._fail(batch)

    def _committed(
        self,
        batch: Batch,
        applied: Applied,
        updates: list[bytes],
        committing_at: float,
        outcome: Rows | BaseException,
    ) -> None:
        try:
            if isinstance(outcome, Rows):
                self._record_commit(updates, outcome, committing_at)
                self._finish(batch, applied)
            elif isinstance(outcome, RoomNotFound):
                self._deleted()
                self._end(batch)
            elif isinstance(outcome, StoreUnavailable):
                self._in_background(self._flush_slowly(batch, applied, failure=outcome))
            else:
                raise outcome
        except Exception:
            self._fail(batch)

    async def _flush_slowly(
        self,
        batch: Batch,
        applied: Applied,
        *,
        reapply: bool = False,
        failure: StoreUnavailable | None = None,
    ) -> None:
        """Finish a batch whose apply failed (`reapply`: reload the document, apply again what
        was accepted) or whose commit failed (`failure`: retry it while the database is down)."""
        try:
            if reapply:
                applied = await self._reapply(applied)
            if applied.accepted:
                updates = applied.to_commit
                committing_at = time.perf_counter()
                rows = await self._retrying(
                    "commit", lambda: self._committer.append(self.room_id, updates), failure
                )
                self._record_commit(updates, rows, committing_at)
        except RoomNotFound:
            self._deleted()
            self._end(batch)
            return
        except Exception:
            self._fail(batch)
            return
        self._finish(batch, applied)

    def _finish(self, batch: Batch, applied: Applied) -> None:
        """The batch is committed: relay it, answer what waited for it, acknowledge it."""
        self._end(batch)
        if applied.integrated:
            self._full_update = None
            self._relay(applied.integrated)
        self._run_after_commit()
        metrics.RELAY_LATENCY_SECONDS.observe(time.perf_counter() - batch.received_at)
        for connection, count in batch.received_at_cut.items():
            connection.acknowledge(
                connection.updates_received if connection.uncommitted == 0 else count
            )
        self._compact_if_due()

    def _fail(self, batch: Batch) -> None:
        """The batch may be in the document but not in the log, and nothing of it was relayed:
        every client reconnects to the room reloaded from the store and sends its edits again."""
        self.log.exception("a batch failed; closing every client to reload")
        self.poisoned = True
        for client in list(self.clients):
            client.close(CloseCode.INTERNAL_ERROR, "internal error: reconnect")
        self._end(batch)

    def _end(self, batch: Batch) -> None:
        """Release what the batch held back; flush what arrived meanwhile."""
        if self._held:
            held, self._held = self._held, set()
            for connection in held:
                connection.resume_reading()
        for _, origin in batch.updates:
            origin.uncommitted -= 1
        self._batch = None
        if self._pending:
            self._committer.gather(self._flush)
        else:
            self._idle.set()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reapply(self, applied: Applied) -> Applied:
        """After an update failed to apply: the document is reloaded from the store and only
        the accepted updates are applied again, until none fails.

        yrs rejects some updates only against the document they meet (an item whose parent is
        a string, a zero-length item: a trial apply into an empty document finds them merely
        pending). The sender of an update that fails is closed (4400) and nothing more of its
        batch is applied. A failed apply may have integrated part of the update, and a panic
        leaves the document unlike any replay of the log (found by
        `test_fuzzed_updates_are_committed_whole_or_close_their_sender_with_4400`).
        """
        while True:
            self.log.warning("an update did not apply; reloading the document from the store")
            await self._reload()
            applied, failed = self._apply([(update, origin) for origin, update in applied.accepted])
            if not failed:
                return applied

    async def _reload(self) -> None:
        """Rebuild the document from the store. Rows other processes committed meanwhile are in
        the new document: they are sent to the clients, as the difference from the old one."""
        self._reloading = True
        try:
            state = await self._retrying("reload", lambda: self._read_log(0))
            doc = await anyio.to_thread.run_sync(doc_from_state, state)
        finally:
            self._reloading = False
        missed = doc.get_update(self.ydoc.get_state())
        self._replace_doc(doc)
        self._cursor.caught_up(state.head)
        if missed != EMPTY_UPDATE:
            self._relay([(None, missed)])
        self._advance()

    def _apply(self, batch: list[tuple[bytes, Connection]]) -> tuple[Applied, bool]:
        """Apply the batch, one transaction per sender; and whether an update failed."""
        by_origin: dict[Connection, list[bytes]] = {}
        for update, origin in batch:
            by_origin.setdefault(origin, []).append(update)
        applied = Applied()
        failed = False
        for origin, updates in by_origin.items():
            self._transaction_updates.clear()
            with self.ydoc.transaction():
                for update in updates:
                    if not self._applies(update):
                        self._reject(origin, ProtocolError("update does not apply"))
                        failed = True
                        break
                    applied.accepted.append((origin, update))
            applied.integrated.extend((origin, update) for update in self._transaction_updates)
        self._transaction_updates.clear()
        return applied, failed

    def _applies(self, update: bytes) -> bool:
        """Apply `update` to the document; False if pycrdt rejects it (or panics on it)."""
        try:
            self.ydoc.apply_update(update)
        except BaseException as error:
            if not is_update_error(error):
                raise
            return False
        return True

    def _replace_doc(self, doc: Doc[Any]) -> None:
        if self._subscription is not None:
            self.ydoc.unobserve(self._subscription)
        self.ydoc = doc
        self._subscription = doc.observe(self._on_transaction)
        self._full_update = None

    def _record_commit(self, updates: list[bytes], rows: Rows, committing_at: float) -> None:
        """The accepted updates are in the log as received (neither the observed updates nor a
        merge of them would do: yrs integrates structs that skip clocks, which the observed
        update leaves out, and merging some forged updates that each apply yields one that
        does not), so the log replays to exactly the document."""
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - committing_at)
        metrics.COMMIT_BATCH_UPDATES.observe(len(updates))
        self._count_log_rows(updates)
        self._cursor.add(Span(rows.first, rows.last, None, applied=True))
        self._advance()

    def _count_log_rows(self, updates: list[bytes]) -> None:
        self.log_updates += len(updates)
        self.log_bytes += sum(map(len, updates))
        metrics.LOG_ROWS_PENDING.inc(len(updates))

    def _run_after_commit(self) -> None:
        self._batches_done = self._batches_taken
        if not self._after_commit:
            return
        waiting, self._after_commit = self._after_commit, []
        for needed, action in waiting:
            if needed <= self._batches_done:
                action()
            else:
                self._after_commit.append((needed, action))

    def _compact_if_due(self) -> None:
        if self._compactor.due(self.log_updates, self.log_bytes):
            self._compactor.request(self.room_id, self._compacted, self._document_at_head)

    async def _document_at_head(self) -> EncodedDocument | None:
        """The document encoded at a moment it holds nothing uncommitted, for the compaction
        to skip folding the log again; None if it also holds rows above a gap (this process's
        own commits), or if no such moment comes soon (a commit waits for the database)."""

        def encode(doc: Doc[Any]) -> EncodedDocument | None:
            return None if self._cursor.behind else EncodedDocument.of(doc, self.head)

        try:
            async with asyncio.timeout(COMMITTED_MOMENT_WAIT_SECONDS):
                return await self.read_committed(encode)
        except TimeoutError:
            return None

    def _compacted(self, stored: RoomRecord) -> None:
        metrics.LOG_ROWS_PENDING.inc(stored.log_updates - self.log_updates)
        self.log_updates, self.log_bytes = stored.log_updates, stored.log_bytes

    async def _retrying(
        self,
        what: str,
        operation: Callable[[], Awaitable[T]],
        failure: StoreUnavailable | None = None,
    ) -> T:
        """Run a store operation, retrying while the database is unavailable (nothing is
        relayed meanwhile); `failure`: how its first attempt, made elsewhere, failed."""
        delay = 0.05
        while True:
            if failure is not None:
                self.log.warning("%s failed (%s); retrying in %.2f s", what, failure, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._settings.commit_retry_max_seconds)
            try:
                return await operation()
            except StoreUnavailable as error:
                failure = error

    def _on_transaction(self, event: TransactionEvent) -> None:
        self._transaction_updates.append(event.update)

    # -- other processes' commits -----------------------------------------------------------

    def receive_committed(self, event: Committed) -> None:
        """Rows another process committed: applied and relayed in log order, once."""
        self._cursor.add(Span(event.first, event.last, event.updates))
        self._advance()

    def catch_up(self, reason: str) -> None:
        """Read the log after `head` now (messages may have been lost)."""
        self._catch_up_forced = reason
        self._schedule_catch_up(0.0)

    def check_head(self, stored_head: int | None) -> None:
        """Compare with the store's head (a periodic check): catch up if the room has been
        behind it since the previous check, whose messages are then taken as lost."""
        if stored_head is None:
            self._deleted()
            return
        if self._lagging_to is not None and self.head < self._lagging_to:
            self.catch_up("head check")
        self._lagging_to = stored_head if stored_head > self.head else None

    def _advance(self) -> None:
        if self._reloading:
            return
        runs = self._cursor.take_ready()
        if runs:
            self._apply_committed(list(chain.from_iterable(runs)))
        if self._cursor.behind:
            self._schedule_catch_up(GAP_WAIT_SECONDS)

    def _schedule_catch_up(self, wait: float) -> None:
        if self._catch_up_task is None:
            self._catch_up_task = asyncio.create_task(
                self._catch_up(wait), name=f"catch-up:{self.room_id}"
            )

    async def _catch_up(self, wait: float) -> None:
        waited_from = self.head
        try:
            await asyncio.sleep(wait)
            # Behind now is not enough: with several processes writing, a new gap is nearly
            # always in flight. Only a gap that nothing filled for the whole wait is read.
            stalled = self._cursor.behind and self.head == waited_from
            if self._catch_up_forced or stalled:
                metrics.CATCH_UPS.labels(self._catch_up_forced or "gap").inc()
                self._catch_up_forced = None
                after = self.head
                state = await self._retrying("catch up", lambda: self._read_log(after))
                if not self._reloading:
                    if state.snapshot is not None:
                        self._apply_committed([state.snapshot, *state.updates])
                    else:
                        self._apply_committed(self._cursor.not_applied(after + 1, state.updates))
                    self._cursor.caught_up(state.head)
        except RoomNotFound:
            self._deleted()
            return
        except Exception:
            self.log.exception("catching up with the log failed; retrying at the next check")
            return
        finally:
            self._catch_up_task = None
        self._advance()

    def _apply_committed(self, updates: list[bytes]) -> None:
        """Apply committed rows (`UPDATES_PER_TRANSACTION` per transaction, so a long catch-up
        does not hold the loop in one native commit) and relay what they changed to everyone."""
        for start in range(0, len(updates), UPDATES_PER_TRANSACTION):
            part = updates[start : start + UPDATES_PER_TRANSACTION]
            self._transaction_updates.clear()
            with self.ydoc.transaction():
                for update in part:
                    if not self._applies(update):
                        self.log.error("skipped a committed update that does not apply")
            integrated, self._transaction_updates = self._transaction_updates, []
            if integrated:
                self._full_update = None
                self._relay([(None, update) for update in integrated])
        metrics.ROWS_FROM_OTHER_PROCESSES.inc(len(updates))
        self._count_log_rows(updates)
        self._compact_if_due()

    def _deleted(self) -> None:
        self.log.info("deleted while loaded; closing its clients")
        self.poisoned = True
        for client in list(self.clients):
            client.close(CloseCode.ROOM_NOT_FOUND, "room deleted")

    def _relay(self, integrated: Iterable[tuple[Connection | None, bytes]]) -> None:
        """Send what each sender's transaction integrated to every other client (every client,
        for another process's rows), each frame encoded once. Not merged across senders: a
        merge of forged updates that each applied can fail, after their commit."""
        frames = [(origin, create_update_message(update)) for origin, update in integrated]
        sent = 0
        for client in self.clients:
            for origin, frame in frames:
                if origin is not client:
                    client.send_nowait(frame)
                    sent += 1
        metrics.UPDATES_RELAYED.inc(sent)

    async def drain(self) -> None:
        """Return once every update received so far is committed and relayed."""
        while not self._idle.is_set():
            await self._idle.wait()


def _awareness_frame(payload: bytes) -> bytes:
    return bytes([YMessageType.AWARENESS]) + write_message(payload)

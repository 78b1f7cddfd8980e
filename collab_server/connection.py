"""One client's WebSocket as a pycrdt `Channel`, with a bounded send queue and its own writer.

pycrdt-websocket ships no Starlette adapter, and its rooms start one task per message sent.
Here a frame is written at once while nothing waits ahead of it: uvicorn's `send` only
suspends while the socket's buffer is full, so the send is driven by hand, without a task
switch (a quarter of the server's CPU at human typing speed went to the event loop's task
switches). Behind a full buffer, frames wait in a queue that the connection's one writer
task drains: the room never waits on a slow socket, and a client that stops reading is closed
(1013, it resyncs on reconnect) once `send_queue_max_bytes` are queued, instead of growing
memory or being silently skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from . import metrics
from .closecodes import CloseCode
from .logs import room_logger
from .protocol import AwarenessUpdate, ProtocolError, committed_message
from .ratelimit import TokenBucket
from .settings import Settings

logger = logging.getLogger(__name__)


class Connection:
    """A client connection to one room (implements `pycrdt.Channel`)."""

    def __init__(
        self,
        websocket: WebSocket,
        room_id: str,
        *,
        settings: Settings,
        wants_acks: bool = False,
        read_only: bool = False,
    ) -> None:
        self._websocket = websocket
        self._room_id = room_id
        self._send_queue_max_bytes = settings.send_queue_max_bytes
        burst = settings.client_burst_seconds
        self._messages = TokenBucket(
            settings.client_updates_per_second, settings.client_updates_per_second * burst
        )
        self._bytes = TokenBucket(
            settings.client_bytes_per_second, settings.client_bytes_per_second * burst
        )
        per_minute = settings.sync_requests_per_minute
        self.sync_requests = TokenBucket(per_minute / 60, per_minute)
        #: The awareness message waiting for its relay slot, and when the last one went out.
        self.pending_awareness: tuple[AwarenessUpdate, bytes] | None = None
        self.last_awareness_at = 0.0
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake_writer = asyncio.Event()
        #: True while the writer waits with nothing queued: a new frame may be written at once.
        self._writer_idle = False
        #: A send that suspended (the socket's buffer was full), for the writer to finish.
        self._suspended: tuple[Coroutine[Any, Any, None], Any] | None = None
        self._close: tuple[int, str] | None = None
        self.wants_acks = wants_acks
        #: Read-only clients receive everything; their updates are dropped, never stored.
        self.read_only = read_only
        #: Document update messages received from this client, and how many are committed.
        self.updates_received = 0
        self.updates_committed = 0
        #: Updates from this client queued or in a commit not yet finished.
        self.uncommitted = 0

    @property
    def path(self) -> str:
        return self._room_id

    @property
    def closing(self) -> bool:
        return self._close is not None

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> bytes:
        if self._close is not None:
            raise StopAsyncIteration
        try:
            message = await self._websocket.receive()
        except (WebSocketDisconnect, RuntimeError):
            raise StopAsyncIteration from None
        if message["type"] == "websocket.disconnect":
            raise StopAsyncIteration
        data = message.get("bytes")
        if data is None:
            raise ProtocolError("text frames are not part of the protocol")
        metrics.BYTES_IN.inc(len(data))
        return bytes(data)

    def throttle(self, size: int) -> float:
        """Charge one message of `size` bytes; seconds to wait before reading the next."""
        return max(self._messages.take(), self._bytes.take(size))

    async def recv(self) -> bytes:
        return await self.__anext__()

    async def send(self, message: bytes) -> None:
        self.send_nowait(message)

    def send_nowait(self, message: bytes) -> None:
        """Send a frame: at once while the socket takes it, else queued behind what waits for
        the writer; close the client if it has stopped reading."""
        if self._close is not None:
            return
        if self._writer_idle:
            self._send_now(message)
            return
        # The bound is on the backlog behind this frame: one frame larger than the bound (the
        # sync reply of a large document) still goes out to a client that reads.
        backlog = self._queued_bytes
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._wake_writer.set()
        if backlog > self._send_queue_max_bytes:
            room_logger(logger, self._room_id).warning("closing a client that does not read")
            self.close(CloseCode.TRY_AGAIN_LATER, "client too slow: reconnect to resync")

    def acknowledge(self, committed: int) -> None:
        """Tell an `?ack=1` client how many of its update messages are committed."""
        if committed > self.updates_committed:
            self.updates_committed = committed
            if self.wants_acks:
                self.send_nowait(committed_message(committed))

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued are sent (idempotent)."""
        if self._close is None:
            self._close = (int(code), reason)
            self._wake_writer.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the writer for the duration of the block; close the socket at the end."""
        writer = asyncio.create_task(self._write(), name=f"writer:{self._room_id}")
        try:
            yield
        finally:
            if self._close is None:
                self.close(1000, "")
            with suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout=5)
            writer.cancel()
            with suppress(BaseException):
                await writer

    def _send_now(self, message: bytes) -> None:
        """Write `message` without a task switch; if the send suspends, the writer finishes it
        and every frame after it queues behind it."""
        metrics.BYTES_OUT.inc(len(message))
        send = self._websocket.send_bytes(message)
        try:
            waiting_on = send.send(None)
        except StopIteration:
            return
        except Exception:
            self._lost()
            return
        self._suspended = (send, waiting_on)
        self._writer_idle = False
        self._wake_writer.set()

    def _lost(self) -> None:
        """The peer went away: the reader side sees the disconnect and ends the session."""
        self._close = self._close or (1006, "")
        self._writer_idle = False
        self._wake_writer.set()

    async def _write(self) -> None:
        try:
            while True:
                if self._suspended is not None:
                    await _finish(*self._suspended)
                    self._suspended = None
                while self._queue:
                    message = self._queue.popleft()
                    self._queued_bytes -= len(message)
                    if self._close is not None and self._close[0] == CloseCode.TRY_AGAIN_LATER:
                        break  # a slow client's backlog is dropped: it resyncs on reconnect
                    await self._websocket.send_bytes(message)
                    metrics.BYTES_OUT.inc(len(message))
                if self._close is not None:
                    break
                self._wake_writer.clear()
                self._writer_idle = True
                await self._wake_writer.wait()
                self._writer_idle = False
            code, reason = self._close
            if self._websocket.application_state != WebSocketState.DISCONNECTED:
                await self._websocket.close(code, reason)
        except Exception:
            self._lost()


async def _finish(coroutine: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Run to its end a coroutine that was started by hand and suspended on `waiting_on` (an
    asyncio future, or None for a bare yield), as a task would have: wake it when the future
    is done, pass cancellation in. (What Python 3.12's eager tasks do for every task.)"""
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # Taken over as `Task.__step` takes a yielded future; else the C future refuses
                # a second await ("await wasn't used with future").
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except BaseException as error:
            try:
                waiting_on = coroutine.throw(error)
            except StopIteration:
                return
            continue
        try:
            waiting_on = coroutine.send(None)
        except StopIteration:
            return

"""One client's WebSocket: messages pushed to its room, frames written at once or queued.

Incoming messages are handed to the room as they arrive (`deliver`): through the socket's
`DirectSocket` when `collab-server serve` runs it (`socket_protocol.py`: in the transport's
`data_received`, no queue, no task switch), else from ASGI's `receive`. Reading is paused, not
the room, while the client is rate limited or its room has too many updates waiting for commit.

A frame is written at once while nothing waits ahead of it: directly to the transport, or by
driving ASGI's `send` by hand (it only suspends while the socket's buffer is full), without a
task switch (a quarter of the server's CPU at human typing speed went to the event loop's task
switches). Behind a full buffer, frames wait in a queue that a writer task drains, started
then and ended once the queue is empty: the room never waits on a slow socket, and a client
that stops reading is closed (1013, it resyncs on reconnect) once `send_queue_max_bytes` are
queued, instead of growing memory or being silently skipped. The writer also sends the close
frame. An idle connection holds no writer task, and a thousand idle clients hold a thousand
fewer tasks for every full collection of the garbage collector to walk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from . import metrics
from .closecodes import CloseCode
from .logs import room_logger
from .protocol import AwarenessUpdate, ProtocolError, committed_message
from .ratelimit import TokenBucket
from .settings import Settings
from .socket_protocol import DIRECT_SOCKET, DirectSocket

logger = logging.getLogger(__name__)


class Connection:
    """A client connection to one room."""

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
        self._direct: DirectSocket | None = websocket.scope.get("extensions", {}).get(DIRECT_SOCKET)
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
        #: Frames behind a send that suspended, for the writer (a list the writer swaps out: an
        #: empty deque takes ~750 bytes, an empty list 56).
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        #: The task writing what could not be written at once, and the close frame; None while
        #: every frame is written at once.
        self._writer: asyncio.Task[None] | None = None
        #: A send that suspended (the socket's buffer was full), for the writer to finish.
        self._suspended: tuple[Coroutine[Any, Any, None], Any] | None = None
        self._close: tuple[int, str] | None = None
        #: Done once the writer has ended: the close frame is out, or the peer is gone. A future,
        #: not an event: `deliver` waits for it without a task of its own.
        self._written_out: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handle: Callable[[bytes], None] = _ignore
        self._reject: Callable[[ProtocolError], None] = _ignore
        #: Reasons reading is paused for (rate limit, room at capacity); read again at none.
        self._pauses = 0
        #: Set while reading is not paused: the ASGI path's reading waits for it (the direct
        #: path pauses its socket instead, and has none).
        self._readable: asyncio.Event | None = None
        if self._direct is None:
            self._readable = asyncio.Event()
            self._readable.set()
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

    async def deliver(
        self, handle: Callable[[bytes], None], reject: Callable[[ProtocolError], None]
    ) -> None:
        """Hand every message from the client to `handle` (a `ProtocolError` it raises goes to
        `reject`, as does a text frame) until the client leaves, or is closed and its close
        frame is out (a client that does not read gets it once it reads again)."""
        self._handle, self._reject = handle, reject
        if self._direct is None:
            await self._deliver_from_asgi()
            return
        # Ends at the disconnect or once written out, whichever comes first: one future and a
        # callback, where a task reading the disconnect through ASGI held ~2 KB a connection.
        ended = asyncio.get_running_loop().create_future()

        def end(_: object = None) -> None:
            if not ended.done():
                ended.set_result(None)

        self._written_out.add_done_callback(end)
        self._direct.attach(self._on_message, end)
        try:
            await ended
        finally:
            self._written_out.remove_done_callback(end)

    async def _deliver_from_asgi(self) -> None:
        assert self._readable is not None
        while self._close is None:
            try:
                message = await self._websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            self._on_message(message["text"] if data is None else bytes(data))
            while self._pauses:
                await self._readable.wait()

    def _on_message(self, message: bytes | str) -> None:
        if self._close is not None:
            return
        try:
            if isinstance(message, str):
                raise ProtocolError("text frames are not part of the protocol")
            metrics.BYTES_IN.inc(len(message))
            delay = max(self._messages.take(), self._bytes.take(len(message)))
            if delay:
                self.pause_reading()
                asyncio.get_running_loop().call_later(delay, self.resume_reading)
            self._handle(message)
        except ProtocolError as error:
            self._reject(error)
        except Exception:
            # Raised into the transport's `data_received`, it would drop the socket unexplained.
            room_logger(logger, self._room_id).exception("error while serving a client")
            self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def pause_reading(self) -> None:
        """Stop reading from the client until as many `resume_reading` calls."""
        self._pauses += 1
        if self._pauses == 1:
            if self._readable is not None:
                self._readable.clear()
            if self._direct is not None:
                self._direct.pause_reading()

    def resume_reading(self) -> None:
        self._pauses -= 1
        if self._pauses == 0:
            if self._readable is not None:
                self._readable.set()
            if self._direct is not None:
                self._direct.resume_reading()

    async def send(self, message: bytes) -> None:
        self.send_nowait(message)

    def send_nowait(self, message: bytes) -> None:
        """Send a frame: at once while no writer runs, else queued behind what waits for the
        writer; close the client if it has stopped reading."""
        if self._close is not None:
            return
        if self._writer is None:
            self._send_now(message)
            return
        # The bound is on the backlog behind this frame: one frame larger than the bound (the
        # sync reply of a large document) still goes out to a client that reads.
        backlog = self._queued_bytes
        self._queue.append(message)
        self._queued_bytes += len(message)
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
            self._start_writer()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve the connection for the duration of the block; at the end, close the socket
        once what waits is written (at most 5 s)."""
        try:
            yield
        finally:
            if self._close is None:
                self.close(1000, "")
            writer = self._writer
            assert writer is not None  # a close starts the writer
            with suppress(Exception):
                await asyncio.wait_for(asyncio.shield(writer), timeout=5)
            writer.cancel()
            with suppress(BaseException):
                await writer

    def _send_now(self, message: bytes) -> None:
        """Write `message` without a task switch; if the send suspends, the writer finishes it
        and every frame after it queues behind it."""
        metrics.BYTES_OUT.inc(len(message))
        if self._direct is not None and self._direct.write(message):
            return
        send = self._websocket.send_bytes(message)
        try:
            waiting_on = send.send(None)
        except StopIteration:
            return
        except Exception:
            self._lost()
            return
        self._suspended = (send, waiting_on)
        self._start_writer()

    def _lost(self) -> None:
        """The peer went away: the reader side sees the disconnect and ends the session."""
        self._close = self._close or (1006, "")
        self._start_writer()

    def _start_writer(self) -> None:
        """Start the writer, unless one runs (or has sent the close frame)."""
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write(), name=f"writer:{self._room_id}"
            )

    async def _write(self) -> None:
        """Write what waits; then, if the connection is closing, the close frame. Otherwise end
        with nothing waiting: frames are written at once again."""
        try:
            await self._write_waiting()
            if self._close is None:
                return
            code, reason = self._close
            if self._websocket.application_state != WebSocketState.DISCONNECTED:
                await self._websocket.close(code, reason)
        except Exception:
            self._lost()
        finally:
            if self._close is None:
                self._writer = None
            else:
                self._written_out.set_result(None)

    async def _write_waiting(self) -> None:
        """Finish the suspended send, then send the queue, and what queued meanwhile, in order;
        a slow client's backlog is dropped instead (it resyncs on reconnect)."""
        while True:
            if self._suspended is not None:
                await _finish(*self._suspended)
                self._suspended = None
            if not self._queue:
                return
            queue, self._queue = self._queue, []
            for message in queue:
                self._queued_bytes -= len(message)
                if self._close is not None and self._close[0] == CloseCode.TRY_AGAIN_LATER:
                    return
                await self._websocket.send_bytes(message)
                metrics.BYTES_OUT.inc(len(message))


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


def _ignore(_: object) -> None:
    """What a connection does with messages before its room takes them."""

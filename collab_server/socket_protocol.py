"""uvicorn's WebSocket protocol with a direct path for the rooms' data frames.

Through ASGI, every frame a client sends is parsed by `websockets` (~5 µs of pure Python for a
keystroke's 25 bytes), queued, read back by the app's task, and reading is paused and resumed
around each one (two epoll changes per frame); every frame sent to a client is a message dict
through Starlette and uvicorn, serialized again for each recipient. At human typing speed
these were ~40% of the server's CPU per keystroke.

`DirectWebSocketProtocol` (what `collab-server serve` runs) keeps uvicorn's handshake, pings,
closing handshake and error handling, and offers each accepted socket to the app in the
scope's extensions (`DIRECT_SOCKET`) as a `DirectSocket`:

* incoming: it splits the stream into whole frames itself; a complete, masked, unfragmented
  binary frame (every message of the y-websocket protocol) is unmasked and handed to the
  app's sink at once, in `data_received`. Every other frame (text, fragments, control frames,
  anything invalid) is fed whole to `websockets`, which stays at a frame boundary and judges it
  as before; messages it assembles reach the same sink, in order.
* outgoing: `write` puts a binary frame on the transport at once (the frame built once for all
  the recipients of a relay), or declines while the socket's buffer is full or closing, and
  the app falls back to ASGI's `send`.

A socket that negotiated permessage-deflate is not offered: its frames go through ASGI.

Every accepted socket also offers `hand_over` (`HAND_OVER` in the scope's extensions): the app
names what serves the rest of the connection and returns from its ASGI call, and uvicorn's task
for the socket runs it from there. The call's chain (uvicorn's, FastAPI's and Starlette's
middleware and routing: ~53 objects the garbage collector tracks, ~9 KB) is released instead
of being held for the connection's life. A full collection walks them all while every room
waits: with a thousand idle clients, ~247,000 objects with the calls held, ~193,000 without.
For the same reason the protocol keeps no more than it reads: not the handshake's request and
response once the 101 response is out, not the exit stacks the app's call left in the scope, not
an `asyncio.Queue` for ASGI's `receive` (a `ReceiveQueue` instead) nor an `asyncio.Event` for
`writable` (a `WritableFlag`), and the app waits for the disconnect without a task reading it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol, State
from websockets.speedups import apply_mask

#: The key of the scope's extensions under which an accepted socket offers its direct path.
DIRECT_SOCKET = "collab.direct_socket"
#: The key of the scope's extensions under which an accepted socket offers `hand_over`.
HAND_OVER = "collab.hand_over"
#: A message from the client: bytes of a binary message, str of a text message.
Sink = Callable[[bytes | str], None]
#: What serves the rest of a connection after the app's ASGI call has returned.
Serve = Callable[[], Awaitable[None]]

_FIN_BINARY = 0x82
_MASKED = 0x80
_LENGTH_16 = 126
_LENGTH_64 = 127


class DirectSocket:
    """What the app sees of an accepted socket's direct path."""

    def __init__(self, protocol: DirectWebSocketProtocol) -> None:
        self._protocol = protocol

    def attach(self, sink: Sink, disconnected: Callable[[], None]) -> None:
        """Deliver every message from now on to `sink`, in `data_received`, starting with the
        messages that wait in uvicorn's queue; call `disconnected` once the client is gone (at
        once if it is already), in place of ASGI's `receive` reporting it."""
        self._protocol.attach(sink, disconnected)

    def pause_reading(self) -> None:
        """Deliver nothing more, not even what was read already, until `resume_reading`."""
        self._protocol.pause_delivery()

    def resume_reading(self) -> None:
        self._protocol.resume_delivery()

    def write(self, message: bytes) -> bool:
        """Send `message` as one binary frame now; False (nothing sent) while the socket's
        buffer is full, or once it closes: ASGI's `send` waits, or reports the disconnect."""
        protocol = self._protocol
        transport = protocol.transport
        if protocol.close_sent or not protocol.writable.is_set() or transport.is_closing():
            return False
        transport.write(server_frame(message))
        return True


class ReceiveQueue:
    """What uvicorn's protocol asks of its queue of events for ASGI's `receive` (`put_nowait`,
    `get`, `get_nowait`, `empty`), for the one reader it has. An `asyncio.Queue` holds three
    deques and an event (~3 KB) for the connection's life, where after the hand-over the queue
    carries only the disconnect; `on_disconnect` hears of that without a reader waiting."""

    __slots__ = ("_events", "_waiter", "on_disconnect")

    def __init__(self) -> None:
        self._events: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None
        #: Called as each disconnect event is queued (uvicorn may queue more than one).
        self.on_disconnect: Callable[[], None] | None = None

    def put_nowait(self, event: Any) -> None:
        self._events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self.on_disconnect is not None and event["type"] == "websocket.disconnect":
            self.on_disconnect()

    def empty(self) -> bool:
        return not self._events

    def get_nowait(self) -> Any:
        if not self._events:
            raise asyncio.QueueEmpty
        return self._events.pop(0)

    async def get(self) -> Any:
        while not self._events:
            if self._waiter is not None:
                raise RuntimeError("the queue has one reader at a time")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.pop(0)


class WritableFlag:
    """What uvicorn's protocol asks of its `writable` event (`set`, `clear`, `is_set`, `wait`),
    with a list of waiters made only while some wait: an `asyncio.Event` holds an empty deque
    (~600 bytes) for the connection's life, where a socket's buffer is seldom full."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class DirectWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with `DirectSocket` offered to the app."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receive_queue = ReceiveQueue()
        self.queue = self._receive_queue  # type: ignore[assignment]
        self.writable = WritableFlag()  # type: ignore[assignment]
        self._sink: Sink | None = None
        self._paused = False
        self._peer_gone = False
        #: Messages taken from uvicorn's queue at `attach`, not yet delivered (delivery paused);
        #: None once none wait (an empty deque takes ~750 bytes a connection).
        self._waiting: deque[bytes | str] | None = None
        #: Whether incoming bytes are split into frames here (from the 101 response on).
        self._framing = False
        #: Bytes read but not yet split: the start of a frame not yet complete (whose size in all
        #: is `_buffered_frame_size`, 0 while unknown), or all that came while delivery paused.
        self._buffer = bytearray()
        self._buffered_frame_size = 0
        self._handed_over: Serve | None = None
        # uvicorn's `run_asgi` calls `self.app` and ends the socket when it returns.
        self._asgi_app = self.app
        self.app = self._call_app

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is None:
            return
        scope["extensions"][HAND_OVER] = self.hand_over
        if not self.response.headers.get("Sec-WebSocket-Extensions"):
            scope["extensions"][DIRECT_SOCKET] = DirectSocket(self)

    def hand_over(self, serve: Serve) -> None:
        """Serve the rest of the connection with `serve` once the app's ASGI call returns."""
        self._handed_over = serve

    async def _call_app(self, scope: Any, receive: Any, send: Any) -> None:
        """The app's ASGI call, then what it handed over, in uvicorn's task for the socket: a
        graceful shutdown waits for it, and its errors are logged and end the socket as the
        app's do."""
        await self._asgi_app(scope, receive, send)
        serve, self._handed_over = self._handed_over, None
        if serve is not None:
            # The scope outlives the call; the exit stacks FastAPI left in it (~2.6 KB a
            # connection) were closed as the call returned.
            for key in [key for key, value in scope.items() if isinstance(value, AsyncExitStack)]:
                del scope[key]
            await serve()

    async def send(self, message: Any) -> None:
        accepting = not self.handshake_complete and message["type"] == "websocket.accept"
        await super().send(message)
        if not (accepting and self.handshake_complete):
            return
        # uvicorn keeps the handshake's request and response (their headers: ~4 KB) for the
        # connection's life, and reads them only until the 101 response is sent.
        del self.request, self.response
        # Clients send frames only after the 101 response: from here the stream is frames
        # (unless a client sent some before it, which `websockets` holds and keeps parsing).
        if not self.conn.reader.buffer:
            self._framing = True
            # websockets' parser, a generator, holds the handshake's request (~2 KB) in its
            # frame for the connection's life. Between frames (nothing buffered) a fresh frame
            # parser stands where it stood; websockets swaps parsers so itself (`discard`).
            self.conn.parser = Protocol.parse(self.conn)
            next(self.conn.parser)

    def attach(self, sink: Sink, disconnected: Callable[[], None]) -> None:
        self._sink = sink
        waiting: deque[bytes | str] = deque()
        gone = False
        while not self.queue.empty():
            event = self.queue.get_nowait()
            if event["type"] != "websocket.receive":
                self.queue.put_nowait(event)  # a disconnect, the last event: left queued
                gone = True
                break
            data, text = event.get("bytes"), event.get("text")
            waiting.append(data if data is not None else text or "")
        self._waiting = waiting or None
        self._receive_queue.on_disconnect = disconnected
        if gone:
            disconnected()
        self.read_paused = False  # uvicorn's pause, for its queue: delivery pauses from now on
        self._release()

    def pause_delivery(self) -> None:
        if self._peer_gone:
            return
        self._paused = True
        self.transport.pause_reading()

    def resume_delivery(self) -> None:
        self._paused = False
        # In a turn of its own: not inside the caller (a room finishing its commit).
        self.loop.call_soon(self._release)

    def _release(self) -> None:
        """Deliver what waits, then read again, unless delivery pauses meanwhile."""
        sink, waiting = self._sink, self._waiting
        while waiting and not self._paused and sink is not None:
            sink(waiting.popleft())
        if self._paused:
            return
        self._waiting = None
        if self._buffer and len(self._buffer) >= self._buffered_frame_size:
            data = bytes(self._buffer)
            self._buffer.clear()
            self._split(data)
        if not self._paused:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        # What the client sent before it left reaches the room before its disconnect does,
        # paused or not: it is all there will be.
        self._peer_gone = True
        self._paused = False
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._framing or self.conn.state is not State.OPEN:
            super().data_received(data)
            return
        if self._buffer or self._paused:
            self._buffer += data
            if self._paused or len(self._buffer) < self._buffered_frame_size:
                return
            data = bytes(self._buffer)
            self._buffer.clear()
        self._split(data)

    def _split(self, data: bytes) -> None:
        """Deliver the frames `data` holds; keep the rest (a frame's start, or all that
        follows a pause)."""
        max_size = self.config.ws_max_size
        end = len(data)
        start = 0
        while start < end:
            if self._paused:
                self._buffer += data[start:]
                self._buffered_frame_size = 0
                return
            header_end, length, masked = _frame_header(data, start, end)
            if length > max_size:
                # `websockets` refuses it from its header (1009) and stops reading.
                super().data_received(data[start:])
                return
            frame_end = header_end + length
            if header_end < 0 or frame_end > end:
                self._buffer += data[start:]
                self._buffered_frame_size = frame_end - start if header_end >= 0 else 0
                return
            sink = self._sink
            if (
                sink is not None
                and masked
                and data[start] == _FIN_BINARY
                and not self.frames
                and not self.close_sent
            ):
                sink(apply_mask(data[header_end:frame_end], data[header_end - 4 : header_end]))
            else:
                super().data_received(data[start:frame_end])
                if self.conn.state is not State.OPEN:
                    return
            start = frame_end

    def send_receive_event_to_app(self) -> None:
        sink = self._sink
        if sink is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type == "text":
            try:
                sink(bytes(data).decode())
            except UnicodeDecodeError:
                self.conn.send_close(1007)
                self.handle_parser_exception()
        else:
            sink(bytes(data))


def _frame_header(data: bytes, start: int, end: int) -> tuple[int, int, bool]:
    """Of the frame starting at `start`: where its header ends (-1 while `data` ends before
    it does), its payload's length and whether it is masked."""
    if end - start < 2:
        return -1, 0, False
    second = data[start + 1]
    masked = bool(second & _MASKED)
    length = second & 0x7F
    header_end = start + 2
    if length == _LENGTH_16:
        header_end += 2
        if header_end > end:
            return -1, 0, masked
        (length,) = struct.unpack_from("!H", data, start + 2)
    elif length == _LENGTH_64:
        header_end += 8
        if header_end > end:
            return -1, 0, masked
        (length,) = struct.unpack_from("!Q", data, start + 2)
    if masked:
        header_end += 4
    if header_end > end:
        return -1, length, masked
    return header_end, length, masked


_last_message: bytes = b""
_last_frame: bytes = b"\x82\x00"


def server_frame(message: bytes) -> bytes:
    """`message` as an unmasked binary frame. A relay writes one frame to every recipient in
    turn, so the last frame built is kept for the next call with the same bytes object."""
    global _last_message, _last_frame
    if message is _last_message:
        return _last_frame
    length = len(message)
    if length < _LENGTH_16:
        header = bytes((_FIN_BINARY, length))
    elif length < 1 << 16:
        header = struct.pack("!BBH", _FIN_BINARY, _LENGTH_16, length)
    else:
        header = struct.pack("!BBQ", _FIN_BINARY, _LENGTH_64, length)
    _last_message, _last_frame = message, header + message
    return _last_frame

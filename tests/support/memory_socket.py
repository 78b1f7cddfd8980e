"""An in-memory stand-in for Starlette's WebSocket, to drive rooms without a network.

Frames queued with `feed` are returned by `receive` without yielding to the event loop, the
way a socket with a full receive buffer behaves: this is what exposes a room that does not
apply backpressure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from starlette.websockets import WebSocketState

from collab_server.connection import Connection
from collab_server.settings import Settings


class MemoryWebSocket:
    def __init__(self) -> None:
        self.application_state = WebSocketState.CONNECTED
        self.scope: dict[str, Any] = {"extensions": {}}
        self.sent: list[bytes] = []
        self.close_code: int | None = None
        self._inbox: deque[dict[str, Any]] = deque()
        self._arrived = asyncio.Event()

    def feed(self, *frames: bytes) -> None:
        self._inbox.extend({"type": "websocket.receive", "bytes": f} for f in frames)
        self._arrived.set()

    def hang_up(self) -> None:
        self._inbox.append({"type": "websocket.disconnect", "code": 1000})
        self._arrived.set()

    async def receive(self) -> dict[str, Any]:
        while not self._inbox:
            self._arrived.clear()
            await self._arrived.wait()
        return self._inbox.popleft()

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.close_code = code
        self.application_state = WebSocketState.DISCONNECTED
        self.hang_up()


def memory_connection(room_id: str) -> tuple[Connection, MemoryWebSocket]:
    socket = MemoryWebSocket()
    connection = Connection(socket, room_id, settings=Settings())  # type: ignore[arg-type]
    return connection, socket

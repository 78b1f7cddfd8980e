"""A minimal y-websocket client: join a room and time connect -> synced, as an editor sees it.

A y-websocket provider is "synced" when the server's SyncStep2 answers its SyncStep1; with an
empty state vector that reply is the whole document, so the time covers the handshake, the
server loading the room (if it was not loaded) and encoding and sending the document.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx
from pycrdt import Doc
from websockets.asyncio.client import ClientConnection, connect

from collab_server.protocol import read_var_bytes
from crdt_store import text_of

#: [messageSync, syncStep1, length 1, state vector with 0 clients]: "send me everything".
SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"
_SYNC_STEP2 = b"\x00\x01"
#: Seconds: generous, a cold join of a big uncompacted room takes seconds on a small machine.
JOIN_TIMEOUT = 120.0
SETTLE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Join:
    seconds: float
    #: The document update the server sent (the SyncStep2 payload).
    update: bytes

    def text(self) -> str:
        doc: Doc[Any] = Doc()
        doc.apply_update(self.update)
        return text_of(doc)


def _connect(ws_url: str, room_id: str) -> connect:
    # No proxy from the environment, no compression (the server has it off by default), no
    # size limit (a large document is one frame), no pings (a stalled server is what we time).
    return connect(
        f"{ws_url}/{room_id}",
        proxy=None,
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=60,
    )


async def _synced(socket: ClientConnection) -> bytes:
    """Ask for the whole document; return it once the SyncStep2 reply arrives."""
    await socket.send(SYNC_STEP1_EMPTY)
    async for message in socket:
        if isinstance(message, bytes) and message.startswith(_SYNC_STEP2):
            update, _ = read_var_bytes(message, len(_SYNC_STEP2))
            return update
    raise ConnectionError("the server closed the connection before syncing")


async def join(ws_url: str, room_id: str) -> Join:
    """Connect a fresh client, wait until synced, disconnect."""
    started = time.perf_counter()
    async with asyncio.timeout(JOIN_TIMEOUT), _connect(ws_url, room_id) as socket:
        update = await _synced(socket)
        seconds = time.perf_counter() - started
    return Join(seconds, update)


class Keeper:
    """A synced client that stays connected, so its room stays loaded (warm joins)."""

    def __init__(self, ws_url: str, room_id: str) -> None:
        self._context = _connect(ws_url, room_id)

    async def __aenter__(self) -> Keeper:
        socket = await self._context.__aenter__()
        await _synced(socket)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._context.__aexit__(None, None, None)


async def rooms_loaded(http_url: str) -> int:
    """The server's `collab_rooms_loaded` gauge."""
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.get(f"{http_url}/metrics", timeout=10)
    for line in response.text.splitlines():
        if line.startswith("collab_rooms_loaded "):
            return int(float(line.split()[1]))
    raise RuntimeError("no collab_rooms_loaded in /metrics")


async def wait_until_loaded(http_url: str, count: int) -> None:
    """Wait until exactly `count` rooms are loaded: a join after `count == 0` is cold."""
    # Polling: the server is another process, there is no event to await.
    async with asyncio.timeout(SETTLE_TIMEOUT):
        while await rooms_loaded(http_url) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

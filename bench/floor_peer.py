"""The least a Python server does per keystroke while committing every update to PostgreSQL
before relaying it: a peer of the suite's fan-out, showing where the floor of this design lies.

What it keeps of ours: the y-websocket sync protocol on pycrdt documents; every update applied
to its room's document (the validator) and committed to the log through our `Store`, with our
statement, one commit in flight and every room's updates of an event loop turn in it, without a
task (`Store.try_append`); only then relayed to the room's other clients, as the update it
integrated. What it leaves out is everything else: authentication, limits, metrics, awareness
checks, acknowledgements, backpressure, errors (a bad frame or a failed commit stops it), the
sync replies' wait for the commit, compaction, the REST API, several processes. Rooms are
created on their first join and live in memory from then on.

    HOST=127.0.0.1 PORT=1234 COLLAB_DATABASE_URL=postgresql://... python -m bench.floor_peer

The database must be migrated (`collab-server migrate`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from typing import Any

import uvloop
from pycrdt import Doc, TransactionEvent, create_sync_message, create_update_message
from websockets.speedups import apply_mask

from collab_server.protocol import DocumentUpdate, SyncStep1, parse_frame, sync_step2_message
from collab_server.socket_protocol import server_frame
from crdt_store import Store

_ACCEPT_KEY = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OPCODE_BINARY, _OPCODE_CLOSE = 0x2, 0x8


class Room:
    def __init__(self, room_id: str, store: Store) -> None:
        self.id = room_id
        self.doc: Doc[Any] = Doc()
        self.clients: list[Client] = []
        self.pending: list[tuple[bytes, Client]] = []
        self.created = False
        self._integrated: list[bytes] = []
        self.doc.observe(self._on_transaction)
        self._creating = asyncio.ensure_future(self._create(store))

    async def _create(self, store: Store) -> None:
        await store.create_room(name=self.id, language="plaintext", room_id=self.id)
        self.created = True

    def _on_transaction(self, event: TransactionEvent) -> None:
        self._integrated.append(event.update)

    def apply_pending(self) -> list[tuple[bytes, Client]]:
        """Apply what is pending, one transaction an update; what each integrated, to relay."""
        batch, self.pending = self.pending, []
        integrated = []
        for update, origin in batch:
            with self.doc.transaction():
                self.doc.apply_update(update)
            integrated += [(change, origin) for change in self._integrated]
            self._integrated.clear()
        return integrated


class Committer:
    """One commit in flight; the rooms that received updates in a loop turn join the next."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._ready: list[Room] = []
        self._batch: list[tuple[Room, list[tuple[bytes, Client]], list[bytes]]] = []
        self._in_flight: list[tuple[Room, list[tuple[bytes, Client]]]] | None = None
        self._scheduled = False
        #: The awaited append of a commit `try_append` could not send (the first one).
        self._appending: asyncio.Future[None] | None = None

    def received(self, room: Room) -> None:
        if room not in self._ready:
            self._ready.append(room)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._gather)

    def _gather(self) -> None:
        self._scheduled = False
        ready, self._ready = self._ready, []
        for room in ready:
            if not room.created:
                self._ready.append(room)  # the next turn looks again
                continue
            updates = [update for update, _ in room.pending]
            self._batch.append((room, room.apply_pending(), updates))
        if self._ready and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._gather)
        self._send()

    def _send(self) -> None:
        if self._in_flight is not None or not self._batch:
            return
        batch, self._batch = self._batch, []
        logs: dict[str, list[bytes]] = {}
        for room, _, updates in batch:
            logs.setdefault(room.id, []).extend(updates)
        self._in_flight = [(room, integrated) for room, integrated, _ in batch]
        if not self._store.try_append(logs, self._committed):
            self._appending = asyncio.ensure_future(self._append(logs))

    async def _append(self, logs: dict[str, list[bytes]]) -> None:
        self._committed((await self._store.append_batches(logs)).heads)

    def _committed(self, heads: object) -> None:
        if not isinstance(heads, dict):
            raise SystemExit(f"a commit failed: {heads}")
        committed, self._in_flight = self._in_flight or [], None
        for room, integrated in committed:
            for update, origin in integrated:
                frame = server_frame(create_update_message(update))
                for client in room.clients:
                    if client is not origin:
                        client.transport.write(frame)
        self._send()


class Client(asyncio.Protocol):
    def __init__(self, rooms: dict[str, Room], store: Store, committer: Committer) -> None:
        self._rooms = rooms
        self._store = store
        self._committer = committer
        self._buffer = b""
        self._room: Room | None = None
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._room is not None:
            self._room.clients.remove(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._room is None and not self._handshake():
            return
        self._read_frames()

    def _handshake(self) -> bool:
        head, found, rest = self._buffer.partition(b"\r\n\r\n")
        if not found:
            return False
        request, *headers = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in headers)}
        digest = hashlib.sha1(fields["sec-websocket-key"].encode() + _ACCEPT_KEY).digest()
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + base64.b64encode(digest) + b"\r\n\r\n"
        )
        room_id = request.split()[1].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        room = self._rooms.get(room_id) or self._rooms.setdefault(
            room_id, Room(room_id, self._store)
        )
        room.clients.append(self)
        self._room = room
        self.transport.write(server_frame(create_sync_message(room.doc)))
        self._buffer = rest
        return True

    def _read_frames(self) -> None:
        data, start = self._buffer, 0
        while len(data) - start >= 2:
            length = data[start + 1] & 0x7F
            header = start + 2
            if length == 126:
                (length,) = struct.unpack_from("!H", data, header)
                header += 2
            elif length == 127:
                (length,) = struct.unpack_from("!Q", data, header)
                header += 8
            end = header + 4 + length
            if end > len(data):
                break
            opcode = data[start] & 0x0F
            if opcode == _OPCODE_BINARY:
                self._message(apply_mask(data[header + 4 : end], data[header : header + 4]))
            elif opcode == _OPCODE_CLOSE:
                self.transport.close()
                return
            start = end
        self._buffer = data[start:]

    def _message(self, message: bytes) -> None:
        assert self._room is not None
        room = self._room
        frame = parse_frame(message, max_awareness_bytes=1 << 20)
        if isinstance(frame, DocumentUpdate):
            if frame.update != b"\x00\x00":
                room.pending.append((frame.update, self))
                self._committer.received(room)
        elif isinstance(frame, SyncStep1):
            update = room.doc.get_update(frame.state_vector)
            self.transport.write(server_frame(sync_step2_message(update)))
        else:
            relayed = server_frame(message)
            for client in room.clients:
                if client is not self:
                    client.transport.write(relayed)


async def serve(host: str, port: int, database_url: str) -> None:
    store = Store.connect(database_url)
    committer = Committer(store)
    rooms: dict[str, Room] = {}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(rooms, store, committer), host, port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(
        serve(
            os.environ.get("HOST", "127.0.0.1"),
            int(os.environ["PORT"]),
            os.environ["COLLAB_DATABASE_URL"],
        )
    )

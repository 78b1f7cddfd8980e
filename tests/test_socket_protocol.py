"""The WebSocket layer's direct path (`collab_server/socket_protocol.py`) against a real server,
driven by a raw client that writes frames exactly as each test says: split anywhere, several
in one segment, fragmented around a ping, unmasked, oversized, compressed; and its hand-over,
in a server run in the test's own process."""

from __future__ import annotations

import asyncio
import gc
import socket
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import CoroutineType
from typing import TypeVar

import anyio
import httpx
import pytest
import uvicorn
from pycrdt import Doc, Text, TransactionEvent, create_update_message
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from collab_server.app import create_app
from collab_server.closecodes import CloseCode
from collab_server.settings import Settings
from collab_server.socket_protocol import (
    DirectWebSocketProtocol,
    ReceiveQueue,
    WritableFlag,
    server_frame,
)
from collab_server.ws import room_socket
from tests.conftest import ServerFactory
from tests.support.server import ServerProcess, free_port
from tests.test_fuzz import SYNC_REPLY_PREFIX, SYNC_REQUEST
from tests.test_sync import create_room, rest_content, wait_rest_content
from tests.test_upstream_defects import typed_update_messages

pytestmark = pytest.mark.anyio

#: What the WebSocket layer closes a connection with when a frame breaks RFC 6455.
PROTOCOL_ERROR = 1002

T = TypeVar("T")


def update_frames(*texts: str) -> list[bytes]:
    """y-websocket update messages, each appending one of `texts` to the room's text."""
    doc: Doc[Text] = Doc()
    text = doc.get("code", type=Text)
    updates: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        updates.append(event.update)

    doc.observe(keep)
    for piece in texts:
        text.insert(len(text), piece)
    return [create_update_message(update) for update in updates]


def client_frame(opcode: Opcode, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=mask, extensions=[])


class RawClient:
    """A WebSocket client that writes raw bytes and reads the server's frames with `websockets`'
    sans-I/O parser. Once `wait_synced` returns, the room reads the socket: what follows goes
    through the direct path."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.protocol: ClientProtocol
        self.events: deque[object] = deque()

    @classmethod
    @asynccontextmanager
    async def connect(cls, server: ServerProcess, room_id: str) -> AsyncIterator[RawClient]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(reader, writer)
        client.protocol = ClientProtocol(parse_uri(f"{server.ws_url}/{room_id}"))
        client.protocol.send_request(client.protocol.connect())
        await client.write(b"".join(client.protocol.data_to_send()))
        await client.next_event()  # the 101 response
        try:
            yield client
        finally:
            writer.close()

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def write_byte_by_byte(self, data: bytes) -> None:
        """Each byte in a segment of its own: the server reads every frame in pieces."""
        for at in range(len(data)):
            await self.write(data[at : at + 1])
            await asyncio.sleep(0.002)

    async def next_event(self) -> object:
        with anyio.fail_after(10):
            while not self.events:
                data = await self.reader.read(65536)
                if not data:
                    self.protocol.receive_eof()
                else:
                    self.protocol.receive_data(data)
                self.events.extend(self.protocol.events_received())
            return self.events.popleft()

    async def next_frame(self, opcode: Opcode) -> Frame:
        while True:
            event = await self.next_event()
            if isinstance(event, Frame) and event.opcode in (opcode, Opcode.CLOSE):
                return event

    async def close_code(self) -> int:
        """The code of the server's close frame (every frame before it skipped)."""
        frame = await self.next_frame(Opcode.CLOSE)
        return Close.parse(frame.data).code

    async def wait_synced(self) -> None:
        """Ask for the document; return once the answer came (every frame before it was read)."""
        await self.write(client_frame(Opcode.BINARY, SYNC_REQUEST))
        while not (await self.next_frame(Opcode.BINARY)).data.startswith(SYNC_REPLY_PREFIX):
            pass


@pytest.fixture
def sqlite_server(sqlite_url: str, start_server: ServerFactory) -> ServerProcess:
    return start_server(sqlite_url)


async def test_frames_arriving_a_byte_at_a_time_are_received_whole(
    sqlite_server: ServerProcess,
) -> None:
    room_id = create_room(sqlite_server)
    frames = update_frames("split ", "apart")
    async with RawClient.connect(sqlite_server, room_id) as client:
        await client.wait_synced()
        await client.write_byte_by_byte(b"".join(client_frame(Opcode.BINARY, f) for f in frames))
        await client.wait_synced()
    await wait_rest_content(sqlite_server, room_id, "split apart")


async def test_many_frames_in_one_segment_are_all_received(sqlite_server: ServerProcess) -> None:
    room_id = create_room(sqlite_server)
    pieces = [f"{n}," for n in range(200)]
    async with RawClient.connect(sqlite_server, room_id) as client:
        await client.wait_synced()
        await client.write(b"".join(client_frame(Opcode.BINARY, f) for f in update_frames(*pieces)))
        await client.wait_synced()
    await wait_rest_content(sqlite_server, room_id, "".join(pieces))


async def test_a_fragmented_message_with_a_ping_between_fragments_is_received_whole(
    sqlite_server: ServerProcess,
) -> None:
    room_id = create_room(sqlite_server)
    (message,) = update_frames("in three fragments")
    first, second, third = message[:5], message[5:9], message[9:]
    async with RawClient.connect(sqlite_server, room_id) as client:
        await client.wait_synced()
        await client.write(
            client_frame(Opcode.BINARY, first, fin=False)
            + client_frame(Opcode.PING, b"still there?")
            + client_frame(Opcode.CONT, second, fin=False)
        )
        assert (await client.next_frame(Opcode.PONG)).data == b"still there?"
        await client.write(client_frame(Opcode.CONT, third))
        await client.wait_synced()
    await wait_rest_content(sqlite_server, room_id, "in three fragments")


async def test_a_message_inside_a_fragmented_one_closes_its_sender_with_1002(
    sqlite_server: ServerProcess,
) -> None:
    room_id = create_room(sqlite_server, content="kept")
    (message,) = update_frames("interleaved")
    async with RawClient.connect(sqlite_server, room_id) as client:
        await client.wait_synced()
        await client.write(
            client_frame(Opcode.BINARY, message[:5], fin=False)
            + client_frame(Opcode.BINARY, message)
        )
        assert await client.close_code() == PROTOCOL_ERROR
    assert rest_content(sqlite_server, room_id) == "kept"


async def test_an_unmasked_frame_closes_its_sender_with_1002_and_is_not_applied(
    sqlite_server: ServerProcess,
) -> None:
    room_id = create_room(sqlite_server, content="kept")
    async with RawClient.connect(sqlite_server, room_id) as client:
        (update,) = update_frames("unmasked")
        await client.wait_synced()
        await client.write(client_frame(Opcode.BINARY, update, mask=False))
        assert await client.close_code() == PROTOCOL_ERROR
    assert rest_content(sqlite_server, room_id) == "kept"


async def test_a_frame_over_the_size_limit_is_refused_from_its_header_with_1009(
    sqlite_server: ServerProcess,
) -> None:
    """Only the header is sent: the server must not wait for the 2 MiB it announces."""
    room_id = create_room(sqlite_server)
    header = bytes([0x82, 0x80 | 127]) + (2 * 1024 * 1024).to_bytes(8, "big") + b"mask"
    async with RawClient.connect(sqlite_server, room_id) as client:
        await client.wait_synced()
        await client.write(header)
        assert await client.close_code() == CloseCode.MESSAGE_TOO_BIG


async def test_a_client_past_its_rate_limit_is_read_at_that_rate_and_loses_nothing(
    sqlite_url: str, start_server: ServerFactory
) -> None:
    rate, burst_seconds, sent = 20, 1.0, 100
    server = start_server(
        sqlite_url,
        COLLAB_CLIENT_UPDATES_PER_SECOND=str(rate),
        COLLAB_CLIENT_BURST_SECONDS=str(burst_seconds),
    )
    room_id = create_room(server)
    async with RawClient.connect(server, room_id) as client:
        await client.wait_synced()  # one message of the burst
        started = anyio.current_time()
        await client.write(
            b"".join(client_frame(Opcode.BINARY, f) for f in typed_update_messages(sent))
        )
        with anyio.fail_after(30):
            while True:
                read = len(rest_content(server, room_id))
                allowed = rate * burst_seconds + rate * (anyio.current_time() - started)
                assert read <= allowed, f"{read} updates read where {allowed:.0f} were allowed"
                if read == sent:
                    break
                await anyio.sleep(0.2)


async def test_what_a_throttled_client_sent_before_a_graceful_shutdown_is_committed(
    sqlite_url: str, start_server: ServerFactory
) -> None:
    """Read by the server but held back by the rate limit when the server is stopped."""
    server = start_server(
        sqlite_url, COLLAB_CLIENT_UPDATES_PER_SECOND="1", COLLAB_CLIENT_BURST_SECONDS="1"
    )
    room_id = create_room(server)
    async with RawClient.connect(server, room_id) as client:
        await client.wait_synced()
        await client.write(
            b"".join(client_frame(Opcode.BINARY, f) for f in typed_update_messages(50))
        )
        await anyio.sleep(0.5)
        await anyio.to_thread.run_sync(server.terminate)
    server.start()
    assert rest_content(server, room_id) == "x" * 50


async def test_with_permessage_deflate_messages_take_the_asgi_path_and_still_relay(
    sqlite_url: str, start_server: ServerFactory
) -> None:
    """The writer compresses; the observer does not, and reads through the direct path."""
    server = start_server(sqlite_url, COLLAB_WS_PER_MESSAGE_DEFLATE="true")
    room_id = create_room(server)
    (update,) = update_frames("compressed")
    url = f"{server.ws_url}/{room_id}"
    async with (
        connect(url, compression="deflate") as writer,
        connect(url, compression=None) as observer,
    ):
        assert writer.protocol.extensions, "permessage-deflate was not negotiated"
        await observer.send(SYNC_REQUEST)
        await writer.send(update)
        with anyio.fail_after(10):
            while await observer.recv() != update:
                pass
    await wait_rest_content(server, room_id, "compressed")


@asynccontextmanager
async def in_process_server(settings: Settings) -> AsyncIterator[str]:
    """The app served by uvicorn with our WebSocket protocol in this process (for what only
    the process itself shows); yields its base URL, once it is ready."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        port=port,
        ws=DirectWebSocketProtocol,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        log_config=None,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            with anyio.fail_after(30):
                while not server.started or (await http.get("/readyz")).status_code != 200:
                    await anyio.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        await serving


@asynccontextmanager
async def synced_pair(
    sqlite_url: str, tmp_path: Path
) -> AsyncIterator[tuple[ClientConnection, ClientConnection]]:
    """A writer on the direct path and an observer on the ASGI one (compressed), both synced,
    in a room of a server in this process."""
    settings = Settings(
        database_url=sqlite_url,
        web_dist=tmp_path / "no-web-client",
        ws_per_message_deflate=True,
    )
    async with in_process_server(settings) as base_url:
        async with httpx.AsyncClient(base_url=base_url) as http:
            room_id = (await http.post("/api/v1/rooms", json={})).raise_for_status().json()["id"]
        url = f"{base_url.replace('http', 'ws')}/ws/{room_id}"
        async with (
            connect(url, compression=None) as writer,
            connect(url, compression="deflate") as observer,
        ):
            assert observer.protocol.extensions, "permessage-deflate was not negotiated"
            for client in (writer, observer):
                await client.send(SYNC_REQUEST)
                with anyio.fail_after(10):
                    while not (await client.recv()).startswith(SYNC_REPLY_PREFIX):
                        pass
            yield writer, observer


async def relayed(writer: ClientConnection, observer: ClientConnection, text: str) -> None:
    """Return once `text`, typed by `writer`, has reached `observer`."""
    (update,) = update_frames(text)
    await writer.send(update)
    with anyio.fail_after(10):
        while await observer.recv() != update:
            pass


def live(kind: type[T]) -> list[T]:
    """Every object of exactly `kind` alive: collected first, as earlier tests may have left
    garbage in cycles; `type()`, not `isinstance()`, as the heap holds weak proxies, some to
    dead objects, which `isinstance()` dereferences."""
    gc.collect()
    return [o for o in gc.get_objects() if type(o) is kind]


def pair_protocols() -> list[DirectWebSocketProtocol]:
    """The protocols of `synced_pair`'s two sockets."""
    protocols = live(DirectWebSocketProtocol)
    assert len(protocols) == 2
    return protocols


async def test_a_served_client_holds_no_asgi_call_of_its_own(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The endpoint hands an accepted client over to the socket's protocol and returns: the
    call chain above it (middleware, routing) is not held for the connection's life."""
    async with synced_pair(sqlite_url, tmp_path) as (writer, observer):
        endpoint_calls = [o for o in live(CoroutineType) if o.cr_code is room_socket.__code__]
        assert endpoint_calls == []
        await relayed(writer, observer, "still served")


async def test_a_served_client_keeps_neither_its_handshake_nor_the_calls_exit_stacks(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with synced_pair(sqlite_url, tmp_path) as (writer, observer):
        for protocol in pair_protocols():
            assert not hasattr(protocol, "request")
            assert not hasattr(protocol, "response")
            assert "request" not in protocol.conn.parser.gi_frame.f_locals  # websockets' parser
            assert not [v for v in protocol.scope.values() if isinstance(v, AsyncExitStack)]
        await relayed(writer, observer, "still served")


async def test_a_served_clients_events_for_asgi_receive_wait_in_no_asyncio_queue(
    sqlite_url: str, tmp_path: Path
) -> None:
    """An `asyncio.Queue` would hold three deques and an event for the connection's life."""
    async with synced_pair(sqlite_url, tmp_path) as (writer, observer):
        queues = [p.queue for p in pair_protocols()]
        assert [q for q in queues if isinstance(q, asyncio.Queue)] == []
        await relayed(writer, observer, "still served")


async def test_the_receive_queue_hands_events_in_order_to_its_one_reader() -> None:
    queue = ReceiveQueue()
    reading = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="one reader"):
        await queue.get()
    queue.put_nowait("first")
    queue.put_nowait("second")
    assert await reading == "first"
    assert queue.get_nowait() == "second"
    assert queue.empty()


async def test_a_served_client_waits_for_its_disconnect_in_no_task(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A task reading the disconnect through ASGI's `receive` held ~2 KB a connection."""
    async with synced_pair(sqlite_url, tmp_path) as (writer, observer):
        coroutines = [task.get_coro() for task in asyncio.all_tasks()]
        assert [
            c for c in coroutines if getattr(c, "__qualname__", "") == "WebSocket.receive"
        ] == []
        await relayed(writer, observer, "still served")


async def test_a_served_clients_writable_flag_is_no_asyncio_event(
    sqlite_url: str, tmp_path: Path
) -> None:
    """An `asyncio.Event` holds an empty deque for the connection's life."""
    async with synced_pair(sqlite_url, tmp_path) as (writer, observer):
        assert [type(p.writable) for p in pair_protocols()] == [WritableFlag, WritableFlag]
        await relayed(writer, observer, "still served")


async def test_a_room_lets_go_of_a_direct_client_as_it_disconnects(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=sqlite_url, web_dist=tmp_path / "no-web-client")
    async with (
        in_process_server(settings) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
    ):
        room_id = (await http.post("/api/v1/rooms", json={})).raise_for_status().json()["id"]

        async def clients() -> int:
            detail = (await http.get(f"/api/v1/rooms/{room_id}")).raise_for_status().json()
            return int(detail["clients"])

        url = f"{base_url.replace('http', 'ws')}/ws/{room_id}"
        async with connect(url, compression=None) as client:
            await client.send(SYNC_REQUEST)
            await client.recv()
            assert await clients() == 1
            client.transport.abort()  # gone without a closing handshake
        with anyio.fail_after(10):
            while await clients():
                await asyncio.sleep(0.02)


async def test_the_writable_flag_wakes_every_sender_waiting_when_set() -> None:
    flag = WritableFlag()
    assert flag.is_set()
    flag.clear()
    waiting = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiting)
    flag.set()
    assert await asyncio.gather(*waiting) == [True, True]
    assert await flag.wait()


async def test_a_client_with_nothing_to_write_has_no_writer_task(
    sqlite_url: str, tmp_path: Path
) -> None:
    async with synced_pair(sqlite_url, tmp_path) as (writer, observer):
        await relayed(writer, observer, "relayed at once")
        writers = [t for t in asyncio.all_tasks() if t.get_name().startswith("writer:")]
        assert writers == []


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536, 70000])
def test_server_frames_carry_every_payload_length_encoding(length: int) -> None:
    message = bytes(range(256)) * (length // 256) + bytes(length % 256)
    reader = StreamReader()
    reader.feed_data(server_frame(message))
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    frame: Frame = parsed.value.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.BINARY, True, message)

"""Faults: the server killed mid-edit, the database taken away, a client that stops reading.

Real processes throughout: the server as a subprocess, Node yjs + y-websocket clients, and
PostgreSQL behind a TCP proxy that a test cuts (the shared database server is never stopped).
`docs/reliability.md` describes each scenario and the figures of a run (`pytest -s` prints them).

Strict xfails, when there are any, are defects found by these tests: each reason names the
defect, and the xfail turns into a failure once it is fixed (then drop the marker).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from pycrdt import (
    Doc,
    Text,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
    get_state,
    read_message,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from collab_server.protocol import COMMITTED
from crdt_store.encoding import decode_state_vector, read_var_uint
from tests.support.node_client import NodeYClient
from tests.support.server import ServerProcess
from tests.support.tcp_proxy import TcpProxy
from tests.test_sync import create_room, rest_content, synced_client, wait_rest_content

pytestmark = [pytest.mark.anyio, pytest.mark.node]

SYNC_STEP2 = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])


@contextmanager
def running_server(database_url: str, tmp_path: Path, **env: str) -> Iterator[ServerProcess]:
    server = ServerProcess(database_url=database_url, log_path=tmp_path / "server.log", env=env)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def sqlite_server(sqlite_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with running_server(sqlite_url, tmp_path) as server:
        yield server


def clocks(state_vector: bytes) -> dict[int, int]:
    return decode_state_vector(state_vector)


def missing_from(held: dict[int, int], room: dict[int, int]) -> int:
    """How many of the items a client holds (its state vector) the room lacks (its own)."""
    return sum(max(0, clock - room.get(client, 0)) for client, clock in held.items())


def is_subsequence(short: str, long: str) -> bool:
    """Every character of `short` is in `long`, in the same order. Texts only ever inserted
    into keep this relation between any two states of the same document."""
    rest = iter(long)
    return all(char in rest for char in short)


def text_of(doc: Doc[Text]) -> str:
    return str(doc.get("code", type=Text))


async def apply_sync_step2(ws: ClientConnection, doc: Doc[Text]) -> None:
    """Wait for the sync step 2 that answers a sync step 1 and apply it to `doc`."""
    with anyio.fail_after(10):
        while True:
            message = await ws.recv()
            assert isinstance(message, bytes)
            if message[:2] == SYNC_STEP2:
                doc.apply_update(read_message(message[2:]))
                return


async def fetch_room_doc(server: ServerProcess, room_id: str) -> Doc[Text]:
    """The room's document as the server holds it: a sync step 1 with an empty state vector
    is answered with everything."""
    doc: Doc[Text] = Doc()
    async with connect(f"{server.ws_url}/{room_id}", max_size=None) as ws:
        await ws.send(create_sync_message(doc))
        await apply_sync_step2(ws, doc)
    return doc


def closes(client: NodeYClient) -> list[dict[str, object]]:
    """The connection closes a Node client has seen."""
    return [event for event in client.events if event["event"] == "close"]


# -- the server is killed while clients type ------------------------------------------------

CRASH_ROUNDS = 6
WRITERS = 2
CHARS_PER_ROUND = 150
TYPING_INTERVAL_MS = 3
#: Each round kills the server at a moment drawn from this window after typing starts (typing
#: lasts about 0.6 s), with a fixed seed: every run kills at the same moments.
KILL_WINDOW_SECONDS = (0.05, 0.5)


async def test_a_killed_server_keeps_every_edit_it_relayed_and_reconnects_duplicate_nothing(
    live_server: ServerProcess,
) -> None:
    """SIGKILL at random moments while two writers type, CRASH_ROUNDS times.

    The observer never types, so it holds only what the server relayed, which the server
    commits before relaying: after the restart the room holds all of it, and all that each
    writer had received from the other. Everyone is offline until that is checked, so nothing
    is resent first. Then they reconnect, the writers resend what was never committed, and the
    room converges with every typed character exactly once.
    """
    kill_moments = random.Random(1913)
    room_id = create_room(live_server)
    # Per round, in characters: held by the observer at the kill, committed but not relayed to
    # it, lacking from the room at the restart (in flight or typed since; resent on reconnect).
    figures: list[tuple[int, int, int]] = []
    async with AsyncExitStack() as stack:
        writers = [await synced_client(live_server, room_id) for _ in range(WRITERS)]
        observer = await synced_client(live_server, room_id)
        everyone = (*writers, observer)
        for client in everyone:
            stack.push_async_callback(client.aclose)
        writer_ids = [await writer.client_id() for writer in writers]

        for round_number in range(1, CRASH_ROUNDS + 1):
            async with anyio.create_task_group() as typing:
                for index, writer in enumerate(writers):
                    seed = 100 * round_number + index
                    typing.start_soon(writer.type_random, CHARS_PER_ROUND, seed, TYPING_INTERVAL_MS)
                await anyio.sleep(kill_moments.uniform(*KILL_WINDOW_SECONDS))  # the kill moment
                live_server.kill()
                for client in everyone:
                    await client.disconnect()
                observed = clocks(await observer.state_vector())
                held = [clocks(await writer.state_vector()) for writer in writers]

                await anyio.to_thread.run_sync(live_server.start)
                doc = await fetch_room_doc(live_server, room_id)
                in_room = clocks(get_state(doc.get_update()))
                lost = missing_from(observed, in_room)
                assert lost == 0, f"round {round_number}: {lost} relayed edits lost"
                for writer_id, writer_held in zip(writer_ids, held, strict=True):
                    received = {c: n for c, n in writer_held.items() if c != writer_id}
                    lost = missing_from(received, in_room)
                    assert lost == 0, f"round {round_number}: {lost} received edits lost"
                assert is_subsequence(await observer.text(), text_of(doc))
                observed_count = sum(observed.values())
                not_relayed = sum(in_room.values()) - observed_count
                resent = sum(missing_from(h, in_room) for h in held)
                figures.append((observed_count, not_relayed, resent))

                for client in everyone:
                    await client.reconnect()
            # Typing went on offline; everything typed so far is in the room, exactly once.
            typed = CHARS_PER_ROUND * round_number
            for writer_id, writer in zip(writer_ids, writers, strict=True):
                assert clocks(await writer.state_vector())[writer_id] == typed
            for client in everyone:
                await client.wait_length(WRITERS * typed, timeout=20)
            texts = {await client.text() for client in everyone}
            assert len(texts) == 1, "the clients did not converge"
            await wait_rest_content(live_server, room_id, texts.pop())
    print(
        f"\nkilled server: {CRASH_ROUNDS} kills, {WRITERS} writers + 1 observer, "
        f"{WRITERS * CHARS_PER_ROUND * CRASH_ROUNDS} updates typed; per round, characters "
        f"(held by the observer, committed but not relayed, resent on reconnect): {figures}; "
        f"lost 0, duplicated 0"
    )


# -- the database goes away -------------------------------------------------------------------


@pytest.fixture
def database_proxy(postgres_url: str) -> Iterator[TcpProxy]:
    with TcpProxy.in_front_of(postgres_url) as proxy:
        yield proxy


@pytest.fixture
def proxied_server(
    postgres_url: str, database_proxy: TcpProxy, tmp_path: Path
) -> Iterator[ServerProcess]:
    """A server on a fresh PostgreSQL database that it reaches only through `database_proxy`."""
    with running_server(database_proxy.url_for(postgres_url), tmp_path) as server:
        yield server


def http_status(server: ServerProcess, path: str) -> int:
    return httpx.get(f"{server.http_url}{path}", timeout=5).status_code


async def wait_http_status(
    server: ServerProcess, path: str, expected: int, timeout: float = 10
) -> None:
    with anyio.fail_after(timeout):
        while http_status(server, path) != expected:
            await anyio.sleep(0.05)


async def wait_logged(server: ServerProcess, text: str, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while text not in server.log():
            await anyio.sleep(0.05)


@pytest.mark.postgres
async def test_a_database_outage_turns_readyz_503_and_back_while_the_server_stays_up(
    proxied_server: ServerProcess, database_proxy: TcpProxy
) -> None:
    server = proxied_server
    room_id = create_room(server)
    async with NodeYClient.spawn(server.ws_url, room_id) as client:
        await client.wait_synced()
        database_proxy.cut()
        await wait_http_status(server, "/readyz", 503)
        assert http_status(server, "/healthz") == 200
        database_proxy.restore()
        await wait_http_status(server, "/readyz", 200, timeout=15)
        assert closes(client) == [], "connected clients stay connected through the outage"


@pytest.mark.postgres
async def test_edits_made_during_a_database_outage_are_relayed_once_committed_after_it(
    proxied_server: ServerProcess, database_proxy: TcpProxy
) -> None:
    server = proxied_server
    room_id = create_room(server, content="before:")
    async with (
        NodeYClient.spawn(server.ws_url, room_id) as writer,
        NodeYClient.spawn(server.ws_url, room_id) as observer,
    ):
        await writer.wait_synced()
        await observer.wait_text("before:")
        database_proxy.cut()
        await writer.type_random(200, seed=11)
        typed = await writer.text()
        # The server holds the edits and cannot commit them: nothing of them leaves it.
        await wait_logged(server, f"room {room_id}: commit failed")
        assert await observer.text() == "before:"
        assert http_status(server, f"/api/v1/rooms/{room_id}/content") == 503
        async with NodeYClient.spawn(server.ws_url, room_id) as joiner:
            # The room's document holds the uncommitted edits: the joiner's sync waits for
            # their commit rather than being answered from a state the log might lose.
            await joiner.wait_event("status", match=lambda e: e["status"] == "connected")
            await anyio.sleep(1)
            assert (await joiner.status())["synced"] is False
            assert await joiner.text() == ""
            database_proxy.restore()
            await joiner.wait_synced(timeout=20)
            for client in (observer, joiner):
                await client.wait_text(typed, timeout=20)
        await wait_rest_content(server, room_id, typed)
        assert len(typed) == len("before:") + 200
        assert closes(writer) == closes(observer) == []


@pytest.mark.postgres
async def test_a_database_restart_goes_unnoticed_by_connected_clients(
    proxied_server: ServerProcess, database_proxy: TcpProxy
) -> None:
    """The restart kills every pooled connection; the next commit replaces them."""
    server = proxied_server
    room_id = create_room(server)
    async with (
        NodeYClient.spawn(server.ws_url, room_id) as writer,
        NodeYClient.spawn(server.ws_url, room_id) as observer,
    ):
        await writer.wait_synced()
        await observer.wait_synced()
        await writer.type_random(100, seed=12, interval_ms=1)
        await observer.wait_length(100)
        database_proxy.cut()
        database_proxy.restore()
        await writer.type_random(100, seed=13, interval_ms=1)
        typed = await writer.text()
        await observer.wait_text(typed, timeout=20)
        await wait_rest_content(server, room_id, typed)
        assert database_proxy.resets > 0
        assert closes(writer) == closes(observer) == []


@pytest.mark.postgres
async def test_a_join_during_a_database_outage_closes_with_1013_and_succeeds_after_it(
    proxied_server: ServerProcess, database_proxy: TcpProxy
) -> None:
    server = proxied_server
    room_id = create_room(server, content="kept")
    database_proxy.cut()
    async with NodeYClient.spawn(server.ws_url, room_id) as client:
        assert await client.wait_closed() == (1013, "database unavailable")
        database_proxy.restore()
        await client.wait_text("kept", timeout=20)  # y-websocket retries 1013 on its own


#: How long the readyz partition test keeps probing once `/readyz` has turned 503: every probe
#: meanwhile must be answered in time too, not only the first (later ones connect anew).
PROBING_SECONDS = 3.0


def timed_status(server: ServerProcess, path: str) -> tuple[int, float]:
    """The status of GET `path` and how long it took to answer, in seconds (at most 2 s: an
    orchestrator's probe gives up after about 1 s, so a slower answer fails the test)."""
    started = time.perf_counter()
    status = httpx.get(f"{server.http_url}{path}", timeout=2).status_code
    return status, time.perf_counter() - started


@pytest.mark.postgres
async def test_readyz_answers_503_promptly_while_the_database_does_not_answer(
    proxied_server: ServerProcess, database_proxy: TcpProxy
) -> None:
    """A network partition drops packets and closes nothing: probes must still be answered
    in time (orchestrators count a probe that times out, often after 1 s, as a failure), and
    say 200 again once the network is back."""
    server = proxied_server
    database_proxy.partition()
    partitioned_at = time.perf_counter()
    answers: list[tuple[int, float]] = []
    with anyio.fail_after(10):
        while not answers or answers[-1][0] != 503:
            answers.append(timed_status(server, "/readyz"))
            await anyio.sleep(0.05)
    turned_503_after = time.perf_counter() - partitioned_at
    probing_until = time.perf_counter() + PROBING_SECONDS
    while time.perf_counter() < probing_until:
        answers.append(timed_status(server, "/readyz"))
        assert answers[-1][0] == 503
        await anyio.sleep(0.2)
    assert http_status(server, "/healthz") == 200
    database_proxy.restore()
    restored_at = time.perf_counter()
    await wait_http_status(server, "/readyz", 200, timeout=15)
    print(
        f"\npartition: /readyz 503 after {turned_503_after:.2f} s, {len(answers)} probes "
        f"answered in at most {max(seconds for _, seconds in answers):.2f} s, 200 again "
        f"{time.perf_counter() - restored_at:.2f} s after the network came back"
    )


@pytest.mark.postgres
async def test_editing_resumes_after_a_network_partition_heals(
    proxied_server: ServerProcess, database_proxy: TcpProxy
) -> None:
    """The commit in flight when the network fails waits on a connection that will never
    answer: it must give up, and its retry commit once the network is back, with nothing of
    it relayed before."""
    server = proxied_server
    room_id = create_room(server, content="before:")
    async with (
        NodeYClient.spawn(server.ws_url, room_id) as writer,
        NodeYClient.spawn(server.ws_url, room_id) as observer,
    ):
        await writer.wait_synced()
        await observer.wait_text("before:")
        database_proxy.partition()
        await writer.insert(len("before:"), " during the partition")
        await anyio.sleep(1)  # how long the partition lasts
        assert await observer.text() == "before:", "relayed before it was committed"
        database_proxy.restore()
        restored_at = time.perf_counter()
        await observer.wait_text("before: during the partition", timeout=20)
        resumed_after = time.perf_counter() - restored_at
        await wait_rest_content(server, room_id, "before: during the partition")
        await writer.insert(0, "after:")
        await observer.wait_text("after:before: during the partition", timeout=5)
        assert closes(writer) == closes(observer) == []
    print(
        f"\npartition: 1 s long, the edit made during it relayed {resumed_after:.2f} s after "
        f"the network came back"
    )


# -- a client that stops reading ----------------------------------------------------------------

SEND_QUEUE_MAX_BYTES = 1024 * 1024
PASTE_CHARS = 512 * 1024
PASTES = 400
#: What the server may grow by while it relays PASTES * PASTE_CHARS bytes (200 MiB) to a client
#: that reads nothing: without the bound its send queue alone would hold all of them.
MEMORY_GROWTH_BOUND = 64 * 1024 * 1024


@pytest.fixture
def bounded_queue_server(sqlite_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    env = {"COLLAB_SEND_QUEUE_MAX_BYTES": str(SEND_QUEUE_MAX_BYTES)}
    with running_server(sqlite_url, tmp_path, **env) as server:
        yield server


def memory_kib(server: ServerProcess) -> dict[str, int]:
    """The server's resident set size now (VmRSS) and its peak so far (VmHWM), in KiB."""
    assert server.process is not None
    with open(f"/proc/{server.process.pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


async def connect_without_reading(server: ServerProcess, room_id: str) -> ClientConnection:
    """A client that reads nothing: a 4 KiB kernel receive buffer, one frame of buffering."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    return await connect(
        f"{server.ws_url}/{room_id}", sock=sock, max_queue=1, max_size=None, ping_interval=None
    )


class PastingWriter:
    """A pycrdt client (`?ack=1`) that pastes a chunk in place of the last one and waits for
    its commit before the next: each paste is relayed whole, never merged with the next in a
    batch, and the document stays one chunk long, so only the relays can take memory."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.doc: Doc[Text] = Doc()
        self.text = self.doc.get("code", type=Text)
        self.pasted = 0

    async def paste(self, chunk: str) -> None:
        updates: list[bytes] = []
        subscription = self.doc.observe(lambda event: updates.append(event.update))
        with self.doc.transaction():
            previous = len(self.text)
            self.text.insert(0, chunk)
            del self.text[len(chunk) : len(chunk) + previous]
        self.doc.unobserve(subscription)
        await self.ws.send(create_update_message(updates[0]))
        self.pasted += 1
        with anyio.fail_after(10):
            while True:
                message = await self.ws.recv()
                assert isinstance(message, bytes)
                if message[0] == COMMITTED and read_var_uint(message, 1)[0] == self.pasted:
                    return


async def read_until_closed(ws: ClientConnection, doc: Doc[Text]) -> int:
    """Apply every update the socket still delivers; the close code it ends with."""
    with anyio.fail_after(30):
        try:
            while True:
                message = await ws.recv()
                assert isinstance(message, bytes)
                if message[0] == YMessageType.SYNC and message[1] != YSyncMessageType.SYNC_STEP1:
                    doc.apply_update(read_message(message[2:]))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code


async def test_a_client_that_stops_reading_is_closed_with_1013_and_memory_stays_bounded(
    bounded_queue_server: ServerProcess,
) -> None:
    server = bounded_queue_server
    room_id = create_room(server)
    async with (
        NodeYClient.spawn(server.ws_url, room_id) as observer,
        connect(f"{server.ws_url}/{room_id}?ack=1", max_size=None) as writer_socket,
    ):
        await observer.wait_synced()
        slow = await connect_without_reading(server, room_id)
        writer = PastingWriter(writer_socket)
        before = memory_kib(server)
        for number in range(PASTES):
            await writer.paste(f"{number:08d}".ljust(PASTE_CHARS, "x"))
        after = memory_kib(server)
        pasted = str(writer.text)
        await observer.wait_text(pasted, timeout=30)
        assert rest_content(server, room_id) == pasted
        # The slow client sees its close once it reads again: what was sent before it, then 1013.
        slow_doc: Doc[Text] = Doc()
        assert await read_until_closed(slow, slow_doc) == 1013
        # It resyncs on reconnect from what it holds, as y-websocket does.
        async with connect(f"{server.ws_url}/{room_id}", max_size=None) as again:
            await again.send(create_sync_message(slow_doc))
            await apply_sync_step2(again, slow_doc)
        assert text_of(slow_doc) == pasted
    assert server.log().count("closing a client that does not read") == 1
    growth = (after["VmHWM"] - before["VmRSS"]) * 1024
    print(
        f"\nslow client: {PASTES} pastes of {PASTE_CHARS} bytes relayed to each client, "
        f"server RSS {before['VmRSS'] // 1024} MiB before, peak {after['VmHWM'] // 1024} MiB"
    )
    assert growth < MEMORY_GROWTH_BOUND


async def read_until_text(ws: ClientConnection, doc: Doc[Text], expected: str) -> None:
    """Apply every update the socket delivers until `doc` holds `expected`."""
    with anyio.fail_after(30):
        while text_of(doc) != expected:
            message = await ws.recv()
            assert isinstance(message, bytes)
            if message[0] == YMessageType.SYNC and message[1] != YSyncMessageType.SYNC_STEP1:
                doc.apply_update(read_message(message[2:]))


async def test_a_client_that_stops_reading_for_a_while_gets_every_update_in_order_then_later_ones(
    sqlite_server: ServerProcess,
) -> None:
    """Behind a full socket buffer its frames queue for the connection's writer, which sends
    them, and those queued meanwhile, in order, then ends; what is relayed after that is written
    at once again (a writer that ended early, or never, would strand frames)."""
    server = sqlite_server
    room_id = create_room(server)
    pastes = [f"{number:08d}".ljust(256 * 1024, "x") for number in range(60)]
    async with connect(f"{server.ws_url}/{room_id}?ack=1", max_size=None) as writer_socket:
        slow = await connect_without_reading(server, room_id)
        writer = PastingWriter(writer_socket)
        for paste in pastes[:40]:  # 10 MiB: more than the kernel's buffers on both sides hold
            await writer.paste(paste)
        slow_doc: Doc[Text] = Doc()
        async with anyio.create_task_group() as tg:  # it reads while the pastes go on
            tg.start_soon(read_until_text, slow, slow_doc, pastes[-1])
            for paste in pastes[40:]:
                await writer.paste(paste)
        await writer.paste("after the backlog")
        await read_until_text(slow, slow_doc, "after the backlog")
        await slow.close()


async def test_a_client_that_reads_can_join_a_document_larger_than_the_send_queue_bound(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The bound is on what waits behind a client that does not read; one frame larger than it
    (here the sync step 2 that carries the whole document) must still go out."""
    bound = 256 * 1024
    with running_server(sqlite_url, tmp_path, COLLAB_SEND_QUEUE_MAX_BYTES=str(bound)) as server:
        content = "x" * (bound + 1024)
        room_id = create_room(server, content=content)
        async with NodeYClient.spawn(server.ws_url, room_id) as client:
            await client.wait_text(content, timeout=5)
            assert closes(client) == []


# -- a client closed the moment it joins ----------------------------------------------------------


async def test_a_client_closed_as_its_room_loads_leaves_every_other_room_serving(
    sqlite_server: ServerProcess,
) -> None:
    """A client whose first frame is malformed is closed (4400) at once, so its room unloads
    while it is still starting. The other rooms, and later joins, must not notice."""
    server = sqlite_server
    busy_room = create_room(server)
    async with (
        NodeYClient.spawn(server.ws_url, busy_room) as writer,
        NodeYClient.spawn(server.ws_url, busy_room) as observer,
    ):
        await writer.wait_synced()
        await observer.wait_synced()
        for _ in range(10):
            async with connect(f"{server.ws_url}/{create_room(server)}") as attacker:
                await attacker.send(create_update_message(b"\x05garbage-update"))
                with anyio.fail_after(5), pytest.raises(ConnectionClosed):
                    while True:
                        await attacker.recv()
        await writer.insert(0, "still served")
        await observer.wait_text("still served", timeout=5)
    late_room = create_room(server, content="late")
    async with NodeYClient.spawn(server.ws_url, late_room) as joiner:
        await joiner.wait_text("late", timeout=5)

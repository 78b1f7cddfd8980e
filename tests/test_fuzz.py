"""Fuzzing: the frame parser, rooms fed fuzzed frames, the store, every kind of malformed frame
against a real server, and the REST API against its OpenAPI schema.

The promise under test: bad input gets a clear error and loses nothing. A malformed frame closes
only its sender (4400, or 1009 when too big), the other clients of the room keep editing, nothing
of the frame is stored, and the server stays up. `bench/fuzz_frames.py` runs the frame parser
under atheris for longer, coverage-guided campaigns.

Strict xfails below are defects found by these tests: each reason names the defect, and the
xfail turns into a failure once it is fixed (then drop the marker).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pycrdt import (
    Awareness,
    Doc,
    Text,
    TransactionEvent,
    YMessageType,
    YSyncMessageType,
    create_update_message,
    merge_updates,
    write_message,
    write_var_uint,
)
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from collab_server import Settings, create_app
from collab_server.closecodes import CloseCode
from collab_server.protocol import (
    AwarenessEntry,
    AwarenessUpdate,
    DocumentUpdate,
    Frame,
    ProtocolError,
    QueryAwareness,
    SyncStep1,
    parse_frame,
    sync_step2_message,
)
from collab_server.room import CollabRoom
from crdt_store import (
    CompactionError,
    RoomNotFound,
    Store,
    apply_updates,
    compact_room,
    text_of,
    text_update,
    upgrade_database,
)
from crdt_store.encoding import MAX_VARINT_BYTES, decode_state_vector
from tests.support.memory_socket import memory_connection
from tests.support.node_client import NodeYClient
from tests.support.server import ServerProcess
from tests.test_store import loaded_text
from tests.test_sync import create_room, rest_content, wait_rest_content
from tests.test_upstream_defects import received_text, running_manager, serving

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024
MAX_AWARENESS_BYTES: int = Settings.model_fields["max_awareness_bytes"].default
SYNC_REPLY_PREFIX = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])
#: Every message type the parser knows, so arbitrary bodies reach every branch.
KNOWN_PREFIXES = [b"\x00\x00", b"\x00\x01", b"\x00\x02", b"\x01", b"\x03"]

# -- building frames --------------------------------------------------------------------------


def sync_step1(state_vector: bytes) -> bytes:
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP1]) + write_message(state_vector)


#: A sync request for the whole document: the room answers it with SyncStep2, so a reply means
#: every frame sent before it was accepted.
SYNC_REQUEST = sync_step1(b"\x00")


def awareness_payload(*entries: tuple[int, int, bytes]) -> bytes:
    """(client id, clock, raw JSON state) entries, the raw state sent exactly as given."""
    payload = write_var_uint(len(entries))
    for client_id, clock, state in entries:
        payload += write_var_uint(client_id) + write_var_uint(clock) + write_message(state)
    return payload


def awareness_frame(*entries: tuple[int, int, bytes]) -> bytes:
    return bytes([YMessageType.AWARENESS]) + write_message(awareness_payload(*entries))


def item_update(
    client: int,
    clock: int,
    *,
    parent: str | tuple[int, int] = "code",
    origin: tuple[int, int] | None = None,
    content: str = "",
) -> bytes:
    """One string item in Yjs' update encoding (v1), encoded by hand so fields can be wrong.

    The parent is a root type's name or an item's id; with an origin it is implied (omitted).
    """
    struct = bytes([0x04 | (0x80 if origin is not None else 0)])  # string content
    if origin is not None:
        struct += write_var_uint(origin[0]) + write_var_uint(origin[1])
    elif isinstance(parent, str):
        struct += write_var_uint(1) + write_message(parent.encode())
    else:
        struct += write_var_uint(0) + write_var_uint(parent[0]) + write_var_uint(parent[1])
    struct += write_message(content.encode())
    header = write_var_uint(1) + write_var_uint(1) + write_var_uint(client) + write_var_uint(clock)
    return header + struct + write_var_uint(0)  # no deletions


Edit = tuple[bool, int, str]


def record_edits(doc: Doc[Any], edits: list[Edit]) -> list[bytes]:
    """Apply (delete?, position, characters) edits to `doc`'s text; the update of each."""
    text = doc.get("code", type=Text)
    updates: list[bytes] = []

    def record(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = doc.observe(record)
    for delete, position, characters in edits:
        if delete and len(text):
            start = position % len(text)
            del text[start : min(len(text), start + len(characters))]
        else:
            text.insert(position % (len(text) + 1), characters)
    doc.unobserve(subscription)
    return updates


#: Documents that strategies derive data from get fixed client ids: a random id changes the
#: length of the encoding, and so what Hypothesis can draw from it.
WRITER_CLIENT = 3
#: The room's text before any fuzzing, written by a client whose id the forged items target.
SEED_CLIENT = 1
SEED_TEXT = "seed"


def seed_update() -> bytes:
    doc: Doc[Any] = Doc(client_id=SEED_CLIENT)
    doc.get("code", type=Text).insert(0, SEED_TEXT)
    return doc.get_update()


#: Decodes (`get_state`) and applies to an empty document, where it is pending; pyo3-panics in
#: yrs 0.28 when applied to a document holding structs of `SEED_CLIENT`: a zero-length string
#: item continuing that client's clock.
ZERO_LENGTH_ITEM = item_update(SEED_CLIENT, len(SEED_TEXT))
#: Decodes and applies to an empty document (pending there); raises "block parent must be
#: deleted or shared ref type" against the seeded text: an item whose parent is a string item.
CHILD_OF_A_STRING_ITEM = item_update(2, 0, parent=(SEED_CLIENT, 0), content="x")


def insertion_after_seed(characters: str) -> bytes:
    doc: Doc[Any] = Doc(client_id=WRITER_CLIENT)
    doc.apply_update(seed_update())
    state = doc.get_state()
    doc.get("code", type=Text).insert(0, characters)
    return doc.get_update(state)


#: A valid insertion and CHILD_OF_A_STRING_ITEM in one update: yrs integrates the insertion into
#: the room's document, then raises; the room must keep nothing of it.
HALF_FORGED = merge_updates(insertion_after_seed("A"), CHILD_OF_A_STRING_ITEM)

# -- strategies -------------------------------------------------------------------------------

edit_lists = st.lists(
    st.tuples(st.booleans(), st.integers(0, 1000), st.text(alphabet="abxyz \n", min_size=1)),
    min_size=1,
    max_size=6,
)
finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)
varint_values = st.integers(0, 2**53 - 1)


@st.composite
def valid_frames(draw: st.DrawFn) -> tuple[bytes, Frame]:
    """A well-formed frame of any kind, with the frame it must parse to."""
    kind = draw(st.sampled_from(["step1", "step2", "update", "awareness", "query"]))
    if kind == "query":
        return b"\x03", QueryAwareness()
    if kind == "awareness":
        entries = draw(st.lists(st.tuples(varint_values, varint_values, finite_json), max_size=3))
        raw = [(client, clock, json.dumps(state).encode()) for client, clock, state in entries]
        expected = tuple(AwarenessEntry(client, clock, state) for client, clock, state in entries)
        return awareness_frame(*raw), AwarenessUpdate(awareness_payload(*raw), expected)
    doc: Doc[Any] = Doc(client_id=draw(varint_values))
    updates = record_edits(doc, draw(edit_lists))
    if kind == "step1":
        return sync_step1(doc.get_state()), SyncStep1(doc.get_state())
    update = draw(st.sampled_from([*updates, doc.get_update()]))
    message = sync_step2_message(update) if kind == "step2" else create_update_message(update)
    return message, DocumentUpdate(update)


@st.composite
def mutated(draw: st.DrawFn, originals: st.SearchStrategy[bytes]) -> bytes:
    """`originals` with one to three bytes flipped, ranges cut or bytes added."""
    data = bytearray(draw(originals))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[at % len(data)] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 4))]
    return bytes(data)


@st.composite
def edits_of_the_seeded_room(draw: st.DrawFn) -> bytes:
    """An update of a client that joined the seeded room and edited its text."""
    doc: Doc[Any] = Doc(client_id=draw(st.sampled_from([SEED_CLIENT, 2]) | varint_values))
    doc.apply_update(seed_update())
    return draw(st.sampled_from(record_edits(doc, draw(edit_lists))))


forged_items = st.builds(
    item_update,
    client=st.sampled_from([SEED_CLIENT, 2]) | varint_values,
    clock=st.integers(0, 8),
    parent=st.sampled_from(["code", "other"]) | st.tuples(st.just(SEED_CLIENT), st.integers(0, 4)),
    origin=st.none() | st.tuples(st.sampled_from([SEED_CLIENT, 2]), st.integers(0, 8)),
    content=st.text(alphabet="ab", max_size=2),
)
room_updates = edits_of_the_seeded_room() | forged_items
fuzzed_update_frames = st.tuples(
    st.sampled_from([create_update_message, sync_step2_message]),
    room_updates | mutated(room_updates),
).map(lambda pair: pair[0](pair[1]))


def state_vector_after(edits: list[Edit]) -> bytes:
    doc: Doc[Any] = Doc(client_id=WRITER_CLIENT)
    record_edits(doc, edits)
    return doc.get_state()


# -- the frame parser -------------------------------------------------------------------------


def parse(data: bytes) -> Frame:
    return parse_frame(data, max_awareness_bytes=MAX_AWARENESS_BYTES)


def parsed_or_rejected(data: bytes) -> Frame | ProtocolError:
    """The frame, or the ProtocolError that rejects it: any other exception fails the test."""
    try:
        return parse(data)
    except ProtocolError as error:
        return error


@settings(max_examples=500)
@given(
    st.binary(max_size=256) | st.tuples(st.sampled_from(KNOWN_PREFIXES), st.binary()).map(b"".join)
)
@example(b"")
@example(b"\x00\x02" + b"\xff" * 64)
def test_arbitrary_bytes_parse_to_a_frame_or_a_protocol_error(data: bytes) -> None:
    parsed_or_rejected(data)


class ReadCountingBytes(bytes):
    """Bytes that remember the furthest index read, to bound a parser's work without a clock."""

    furthest_read = -1

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        read = range(len(self))[key]
        last = read if isinstance(read, int) else (read[-1] if read else -1)
        self.furthest_read = max(self.furthest_read, last)
        return super().__getitem__(key)


@settings(max_examples=30, deadline=None)
@given(
    prefix=st.sampled_from([b"", *KNOWN_PREFIXES]),
    filler=st.integers(0x80, 0xFF),
    length=st.integers(9, 256 * 1024),
)
@example(prefix=b"\x00\x02", filler=0xFF, length=256 * 1024)
def test_long_varint_runs_are_rejected_after_reading_one_varints_worth(
    prefix: bytes, filler: int, length: int
) -> None:
    # pycrdt's own decoder took seconds over 256 KiB of 0xFF: quadratic in the varint's length.
    data = ReadCountingBytes(prefix + bytes([filler]) * length)
    with pytest.raises(ProtocolError):
        parse(data)
    assert data.furthest_read < len(prefix) + MAX_VARINT_BYTES


@settings(max_examples=200)
@given(valid_frames())
def test_valid_frames_parse_to_what_they_encode(frame: tuple[bytes, Frame]) -> None:
    data, expected = frame
    assert parse(data) == expected


@settings(max_examples=500)
@given(mutated(valid_frames().map(lambda frame: frame[0])))
def test_mutated_frames_parse_to_a_frame_or_a_protocol_error(data: bytes) -> None:
    parsed_or_rejected(data)


@settings(max_examples=50, deadline=None)
@given(depth=st.integers(1, 20_000))
@example(depth=10_000)
def test_deeply_nested_awareness_states_parse_or_raise_a_protocol_error(depth: int) -> None:
    parsed_or_rejected(awareness_frame((7, 1, b"[" * depth + b"]" * depth)))


@settings(max_examples=100)
@given(
    state=st.tuples(
        finite_json, st.sampled_from(["utf-8", "utf-16-le", "utf-16-be", "utf-32-le"])
    ).map(lambda pair: json.dumps(pair[0]).encode(pair[1]))
)
@example(state='{"user":"ann"}'.encode("utf-16-le"))
def test_awareness_states_the_parser_accepts_apply_to_the_rooms_awareness(state: bytes) -> None:
    frame = parsed_or_rejected(awareness_frame((7, 1, state)))
    if isinstance(frame, AwarenessUpdate):
        # What `CollabRoom._relay_awareness` does with it once the frame was accepted.
        Awareness(Doc()).apply_awareness_update(frame.payload, "fuzz")


@settings(max_examples=100)
@given(state=any_json.map(lambda value: json.dumps(value).encode()))
@example(state=b'{"cursor":NaN}')
@example(state=b'{"cursor":1e999}')
def test_awareness_states_the_parser_accepts_are_json_every_client_reads(state: bytes) -> None:
    frame = parsed_or_rejected(awareness_frame((7, 1, state)))
    if isinstance(frame, AwarenessUpdate):
        for entry in frame.entries:
            # JavaScript's JSON.parse has no NaN or Infinity; the room re-encodes states for
            # joiners with json.dumps, which writes both.
            json.dumps(entry.state, allow_nan=False)


# -- rooms fed fuzzed frames ------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedRoom:
    room: CollabRoom
    store: Store


def is_pyo3_panic(error: BaseException) -> bool:
    return type(error).__module__ == "pyo3_runtime"


@contextmanager
def panics_fail_the_test() -> Iterator[None]:
    """A pyo3 panic is a BaseException: left alone it ends anyio's test runner and breaks the
    tests after this one. Fail only this test with it."""
    try:
        yield
    except BaseException as error:
        if is_pyo3_panic(error) or (
            isinstance(error, BaseExceptionGroup) and error.subgroup(is_pyo3_panic) is not None
        ):
            pytest.fail(f"pyo3 panic: {error!r}")
        raise


@asynccontextmanager
async def seeded_room(database_url: str) -> AsyncIterator[LoadedRoom]:
    """A loaded room (real store, group commit, compactor) holding SEED_TEXT. One per example:
    a room that crashed must not be handed to the next."""
    with panics_fail_the_test():
        async with running_manager(Settings(database_url=database_url)) as (manager, store):
            record = await store.create_room(name="fuzz", language="plaintext")
            await store.append_updates(record.id, [seed_update()])
            yield LoadedRoom(await manager.get_room(record.id), store)


async def verdict(room: CollabRoom, frames: list[bytes]) -> int | None:
    """Feed `frames` from a new client, then a sync request: the client's close code, or None
    if the room answered the sync request (it accepted every frame)."""
    connection, socket = memory_connection(room.room_id)
    async with serving(room, connection):
        socket.feed(*frames, SYNC_REQUEST)
        with anyio.fail_after(5):
            while socket.close_code is None:
                if any(m.startswith(SYNC_REPLY_PREFIX) for m in socket.sent):
                    return None
                await anyio.sleep(0.005)
        return socket.close_code


async def assert_room_still_serves(loaded: LoadedRoom) -> None:
    """A well-behaved client's edit reaches another client, and the store holds exactly the
    room's document: every committed row applies."""
    room = loaded.room
    marker = f"<{secrets.token_hex(4)}>"
    writer, writer_socket = memory_connection(room.room_id)
    observer, observer_socket = memory_connection(room.room_id)
    async with serving(room, observer), serving(room, writer):
        writer_socket.feed(create_update_message(text_update(marker)))
        with anyio.fail_after(5):
            while marker not in received_text(observer_socket):
                await anyio.sleep(0.01)
    await room.drain()
    state = await loaded.store.load_room_state(room.room_id)
    stored: Doc[Any] = Doc()
    rows = [state.snapshot] if state.snapshot is not None else []
    assert apply_updates(stored, [*rows, *state.updates], room_id=room.room_id) == 0
    assert text_of(stored) == text_of(room.ydoc)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=st.lists(fuzzed_update_frames, min_size=1, max_size=3))
@example(frames=[create_update_message(CHILD_OF_A_STRING_ITEM)])
@example(frames=[create_update_message(ZERO_LENGTH_ITEM)])
@example(frames=[create_update_message(HALF_FORGED)])
async def test_fuzzed_updates_are_committed_whole_or_close_their_sender_with_4400(
    sqlite_url: str, frames: list[bytes]
) -> None:
    async with seeded_room(sqlite_url) as loaded:
        with anyio.fail_after(15):
            assert await verdict(loaded.room, frames) in (None, CloseCode.BAD_FRAME)
            await assert_room_still_serves(loaded)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(state_vector=mutated(edit_lists.map(state_vector_after)) | st.binary())
@example(state_vector=b"\x05\x01")
async def test_fuzzed_sync_requests_are_answered_or_close_their_sender_with_4400(
    sqlite_url: str, state_vector: bytes
) -> None:
    async with seeded_room(sqlite_url) as loaded:
        with anyio.fail_after(15):
            code = await verdict(loaded.room, [sync_step1(state_vector)])
            assert code in (None, CloseCode.BAD_FRAME)
            await assert_room_still_serves(loaded)


# -- the store --------------------------------------------------------------------------------

Slot = int
StoreOp = tuple[str, Slot, list[Edit]]

store_ops = st.lists(
    st.tuples(st.just("edit"), st.integers(0, 1), edit_lists)
    | st.tuples(st.sampled_from(["compact", "recreate"]), st.integers(0, 1), st.just([])),
    max_size=8,
)


@dataclass
class ReferenceRoom:
    """A room in the store and the document of everything appended to it."""

    room_id: str
    doc: Doc[Any]

    @classmethod
    async def create(cls, store: Store) -> ReferenceRoom:
        record = await store.create_room(name="fuzz", language="plaintext")
        return cls(record.id, Doc(client_id=WRITER_CLIENT))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=store_ops)
async def test_histories_of_appends_compactions_and_deletions_load_as_the_reference_text(
    store: Store, ops: list[StoreOp]
) -> None:
    rooms = [await ReferenceRoom.create(store), await ReferenceRoom.create(store)]
    for op, slot, edits in ops:
        room = rooms[slot]
        if op == "edit":
            await store.append_updates(room.room_id, record_edits(room.doc, edits))
        elif op == "compact":
            await compact_room(store, room.room_id)
        else:
            await store.delete_room(room.room_id)
            with pytest.raises(RoomNotFound):
                await store.load_room_state(room.room_id)
            rooms[slot] = await ReferenceRoom.create(store)
        for each in rooms:
            assert await loaded_text(store, each.room_id) == text_of(each.doc)


#: Garbage rows: random bytes, or (which row of the batch, where) to cut a row of the batch
#: short. A prefix of an update never holds anything the update did not (cut rows never made
#: yrs raise or panic in probing). Drawn up front: an interactive `st.data()` draw can raise
#: Hypothesis' StopTest, a BaseException that ends anyio's test runner.
garbage_rows = st.lists(
    st.binary(max_size=64) | st.tuples(varint_values, varint_values), max_size=2
)


def garbage_of(updates: list[bytes], spec: bytes | tuple[int, int]) -> bytes:
    if isinstance(spec, bytes):
        return spec
    row = updates[spec[0] % len(updates)]
    return row[: spec[1] % len(row)]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.tuples(edit_lists, garbage_rows, st.booleans()), min_size=1, max_size=5))
async def test_garbage_rows_are_skipped_when_a_room_loads_or_compacts(
    store: Store, batches: list[tuple[list[Edit], list[bytes | tuple[int, int]], bool]]
) -> None:
    room = await ReferenceRoom.create(store)
    for edits, garbage, compact in batches:
        updates = record_edits(room.doc, edits)
        rows = [*updates, *(garbage_of(updates, spec) for spec in garbage)]
        await store.append_updates(room.room_id, rows)
        if compact:
            # Refusing is allowed (random bytes may decode as an update still waiting for its
            # dependencies); raising anything else, or changing the text, is not.
            with suppress(CompactionError):
                await compact_room(store, room.room_id)
        assert await loaded_text(store, room.room_id) == text_of(room.doc)


async def test_a_stored_row_that_panics_yrs_is_skipped_when_a_room_loads(store: Store) -> None:
    record = await store.create_room(name="fuzz", language="plaintext")
    await store.append_updates(record.id, [seed_update(), ZERO_LENGTH_ITEM])
    with panics_fail_the_test():
        assert await loaded_text(store, record.id) == SEED_TEXT


async def test_compacting_a_log_with_a_garbage_row_keeps_the_text(
    store: Store,
) -> None:
    record = await store.create_room(name="fuzz", language="plaintext")
    await store.append_updates(record.id, [seed_update(), b"\x05garbage-row"])
    with suppress(CompactionError):
        await compact_room(store, record.id)
    assert await loaded_text(store, record.id) == SEED_TEXT


# -- malformed frames against a real server ---------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server on SQLite for the whole module: each test uses its own room, and every
    test after the first also shows that the server survived the frames before it."""
    directory = tmp_path_factory.mktemp("fuzz-server")
    url = f"sqlite:///{directory / 'collab.sqlite3'}"
    upgrade_database(url)
    server = ServerProcess(database_url=url, log_path=directory / "server.log")
    server.start()
    yield server
    server.kill()


@dataclass(frozen=True)
class TextAuthor:
    """The client that wrote a room's text and its next clock: what any client learns from the
    sync, and all an attacker needs to forge items against that text."""

    client_id: int
    next_clock: int


async def text_author(client: NodeYClient) -> TextAuthor:
    ((client_id, clock),) = decode_state_vector(await client.state_vector()).items()
    return TextAuthor(client_id, clock)


#: What a WebSocket client reports when the connection ends without a close frame.
ABNORMAL_CLOSURE = 1006


async def server_verdict(socket: ClientConnection, frame: bytes | str) -> int | None:
    """Send `frame`, then a sync request: the server's close code (1006 if the connection ended
    without one), or None if it answered the sync request instead (it accepted the frame)."""
    with suppress(ConnectionClosed):
        await socket.send(frame)
        await socket.send(SYNC_REQUEST)
    with anyio.fail_after(10):
        try:
            while True:
                message = await socket.recv()
                if isinstance(message, bytes) and message.startswith(SYNC_REPLY_PREFIX):
                    return None
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else ABNORMAL_CLOSURE


def node_errors(*clients: NodeYClient) -> list[str]:
    return [e["message"] for c in clients for e in c.events if e["event"] == "error"]


async def join_room(client: NodeYClient, server: ServerProcess, room_id: str) -> None:
    await client.start()
    await client.connect(server.ws_url, room_id)
    await client.wait_synced()


@asynccontextmanager
async def two_clients(
    server: ServerProcess, room_id: str
) -> AsyncIterator[tuple[NodeYClient, NodeYClient]]:
    """Two Node clients synced to the room, started side by side (each takes ~1 s to start)."""
    clients = (NodeYClient(), NodeYClient())
    try:
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(join_room, client, server, room_id)
        yield clients
    finally:
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(client.aclose)


async def assert_only_the_sender_is_closed(
    server: ServerProcess, build: Callable[[TextAuthor], bytes | str], close_codes: set[int]
) -> None:
    room_id = create_room(server, content="kept")
    async with two_clients(server, room_id) as (editor, observer):
        frame = build(await text_author(editor))
        async with connect(f"{server.ws_url}/{room_id}", max_size=None) as attacker:
            assert await server_verdict(attacker, frame) in close_codes
        assert rest_content(server, room_id) == "kept"
        await editor.insert(0, "still ")
        await observer.wait_text("still kept")
        await wait_rest_content(server, room_id, "still kept")
        assert node_errors(editor, observer) == []
    assert httpx.get(f"{server.http_url}/readyz").status_code == 200


def bad(
    build: Callable[[TextAuthor], bytes | str], codes: int | set[int], id: str, bug: str = ""
) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(build, {codes} if isinstance(codes, int) else codes, id=id, marks=marks)


#: Every kind of malformed frame, with the close code its sender must get (docs/protocol.md).
MALFORMED_FRAMES = [
    bad(lambda _: b"", 4400, "empty-frame"),
    bad(lambda _: "hello", 4400, "text-frame"),
    bad(lambda _: b"\x09", 4400, "unknown-message-type"),
    bad(lambda _: b"\x00\x07\x00", 4400, "unknown-sync-message-type"),
    bad(lambda _: b"\x00\x02\x80", 4400, "truncated-varint"),
    bad(lambda _: b"\x00\x02" + b"\xff" * 262_144, 4400, "overlong-varint-256KiB"),
    bad(lambda _: b"\x00\x02\x05ab", 4400, "length-past-the-end"),
    bad(lambda _: create_update_message(b"\x05garbage-update"), 4400, "garbage-update"),
    bad(lambda _: sync_step1(b"\x05\x01"), 4400, "garbage-state-vector"),
    bad(lambda _: awareness_frame((7, 1, b"{")), 4400, "garbage-awareness"),
    bad(lambda _: b"\x01\x05\x02\x07\x01\x02{}", 4400, "truncated-awareness"),
    bad(
        lambda _: create_update_message(text_update("INJECTED")) + b"junk",
        4400,
        "valid-update-plus-trailing-bytes",
    ),
    bad(lambda _: b"\x03\x00", 4400, "query-awareness-plus-trailing-bytes"),
    # The WebSocket layer rejects the frame from its header and closes with 1009 while the
    # client is still sending: the unread rest makes the server's kernel reset the connection,
    # and the reset can overtake the close frame (1006 then). Either way: closed, not read.
    bad(
        lambda _: create_update_message(text_update("x" * MIB)),
        {CloseCode.MESSAGE_TOO_BIG, ABNORMAL_CLOSURE},
        "frame-over-1MiB",
    ),
    bad(
        lambda _: awareness_frame((7, 1, json.dumps("x" * MAX_AWARENESS_BYTES).encode())),
        CloseCode.MESSAGE_TOO_BIG,
        "awareness-over-64KiB",
    ),
    bad(
        lambda author: create_update_message(
            item_update(2, 0, parent=(author.client_id, 0), content="INJECTED")
        ),
        4400,
        "update-that-decodes-but-never-applies",
    ),
    bad(lambda _: awareness_frame((7, 1, b'{"x":NaN}')), 4400, "awareness-nan"),
    bad(
        lambda _: awareness_frame((7, 1, b'{"x":1e999}')),
        4400,
        "awareness-number-overflowing-to-infinity",
    ),
    bad(
        lambda _: awareness_frame((7, 1, '{"x":1}'.encode("utf-16-le"))),
        4400,
        "awareness-utf16",
    ),
    bad(
        lambda _: awareness_frame((7, 1, b"[" * 5000 + b"]" * 5000)),
        4400,
        "awareness-nested-5000-deep",
    ),
]


@pytest.mark.node
@pytest.mark.parametrize(("build", "close_codes"), MALFORMED_FRAMES)
async def test_a_malformed_frame_closes_only_its_sender(
    sqlite_server: ServerProcess,
    build: Callable[[TextAuthor], bytes | str],
    close_codes: set[int],
) -> None:
    await assert_only_the_sender_is_closed(sqlite_server, build, close_codes)


@pytest.fixture
def own_server(sqlite_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of its own, for a frame that may take the whole process down."""
    server = ServerProcess(database_url=sqlite_url, log_path=tmp_path / "server.log")
    server.start()
    yield server
    server.kill()


@pytest.mark.node
async def test_a_zero_length_item_closes_only_its_sender(own_server: ServerProcess) -> None:
    await assert_only_the_sender_is_closed(
        own_server,
        lambda author: create_update_message(item_update(author.client_id, author.next_clock)),
        {CloseCode.BAD_FRAME},
    )


# -- the REST API against its OpenAPI schema --------------------------------------------------


def openapi_schema() -> dict[str, Any]:
    """The schema the app serves at /openapi.json (building the app touches no database)."""
    settings = Settings(database_url="sqlite:///unopened.sqlite3", web_dist=Path("no-web-client"))
    app = create_app(settings)
    return app.openapi()


API = schemathesis.openapi.from_dict(openapi_schema())
VALID_REQUESTS = schemathesis.openapi.from_dict(openapi_schema())
VALID_REQUESTS.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE])


@API.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error_or_a_response_off_its_schema(
    case: schemathesis.Case, sqlite_server: ServerProcess
) -> None:
    case.call_and_validate(
        base_url=sqlite_server.http_url,
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )


@VALID_REQUESTS.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_valid_requests_get_documented_status_codes(
    case: schemathesis.Case, sqlite_server: ServerProcess
) -> None:
    case.call_and_validate(base_url=sqlite_server.http_url, checks=[status_code_conformance])


def test_a_body_that_is_not_utf8_gets_a_documented_status(sqlite_server: ServerProcess) -> None:
    documented = openapi_schema()["paths"]["/api/v1/rooms"]["post"]["responses"]
    response = httpx.post(
        f"{sqlite_server.http_url}/api/v1/rooms",
        content=b"\xff",
        headers={"content-type": "application/json"},
    )
    assert str(response.status_code) in documented

"""Compaction folds the log into a snapshot and loses nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Text

from crdt_store import (
    CompactionError,
    EncodedDocument,
    Store,
    apply_updates,
    compact_room,
    doc_from_state,
    text_of,
)
from crdt_store.store import append_in_transaction
from tests.support.traces import load_trace, replay_updates
from tests.test_store import loaded_text, typed_updates

pytestmark = pytest.mark.anyio


async def room_with(store: Store, updates: list[bytes]) -> str:
    room = await store.create_room(name="r", language="plaintext")
    if updates:
        await store.append_updates(room.id, updates)
    return room.id


async def test_compaction_folds_the_log_into_a_snapshot_with_the_same_text(
    store: Store,
) -> None:
    room_id = await room_with(store, typed_updates("héllo, 世界 😀"))
    result = await compact_room(store, room_id)
    assert result.compacted and result.log_rows == len("héllo, 世界 😀")
    state = await store.load_room_state(room_id)
    assert (state.updates, state.snapshot_seq) == ([], result.upto_seq)
    assert text_of(doc_from_state(state)) == "héllo, 世界 😀"
    record = await store.get_room(room_id)
    assert (record.log_updates, record.log_bytes) == (0, 0)
    assert record.snapshot_bytes == result.snapshot_bytes > 0


async def test_a_second_compaction_folds_new_rows_onto_the_snapshot(store: Store) -> None:
    doc: Doc[Any] = Doc()
    text = doc.get("code", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text.insert(0, "first ")
    room_id = await room_with(store, updates)
    await compact_room(store, room_id)
    updates.clear()
    text.insert(6, "second")
    await store.append_updates(room_id, updates)
    result = await compact_room(store, room_id)
    assert result.compacted and result.log_rows == 1
    assert await loaded_text(store, room_id) == "first second"


async def test_rows_committed_during_compaction_stay_in_the_log(store: Store) -> None:
    """A writer holds its transaction open (seq handed out, not committed) while compaction
    reads, encodes and writes; the writer's rows must survive and load after the snapshot."""
    doc: Doc[Any] = Doc()
    text = doc.get("code", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text.insert(0, "before ")
    room_id = await room_with(store, list(updates))
    updates.clear()
    text.insert(7, "during")
    async with anyio.create_task_group() as tg, store.engine.connect() as conn, conn.begin():
        await append_in_transaction(conn, {room_id: list(updates)})
        tg.start_soon(compact_room, store, room_id)
        await anyio.sleep(0.5)  # compaction reads (PostgreSQL) or waits (SQLite) meanwhile
    assert await loaded_text(store, room_id) == "before during"
    await compact_room(store, room_id)
    assert await loaded_text(store, room_id) == "before during"
    assert (await store.load_room_state(room_id)).updates == []


async def test_concurrent_compactions_neither_lose_nor_duplicate(store: Store) -> None:
    room_id = await room_with(store, typed_updates("x" * 300))
    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(compact_room, store, room_id)
        tg.start_soon(store.append_updates, room_id, typed_updates("y"))
    assert sorted(await loaded_text(store, room_id)) == sorted("x" * 300 + "y")
    await compact_room(store, room_id)
    assert len(await loaded_text(store, room_id)) == 301


async def test_a_stale_read_cannot_overwrite_a_newer_snapshot(store: Store) -> None:
    room_id = await room_with(store, typed_updates("abc"))
    stale = await store.load_room_state(room_id)
    await compact_room(store, room_id)
    assert not await store.replace_log_with_snapshot(stale, b"\x00\x00")
    assert await loaded_text(store, room_id) == "abc"


async def test_fewer_rows_than_min_updates_are_left_alone(store: Store) -> None:
    room_id = await room_with(store, typed_updates("ab"))
    result = await compact_room(store, room_id, min_updates=3)
    assert not result.compacted and "2 log rows" in result.skipped
    assert len((await store.load_room_state(room_id)).updates) == 2


async def test_dry_run_reports_sizes_and_writes_nothing(store: Store) -> None:
    room_id = await room_with(store, typed_updates("abc"))
    result = await compact_room(store, room_id, dry_run=True)
    assert not result.compacted and result.skipped == "dry run"
    assert result.log_rows == 3 and result.snapshot_bytes > 0
    assert len((await store.load_room_state(room_id)).updates) == 3


async def test_an_update_waiting_for_missing_dependencies_is_not_folded(store: Store) -> None:
    doc: Doc[Any] = Doc()
    text = doc.get("code", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    text.insert(0, "a")
    text.insert(1, "b")
    room_id = await room_with(store, [updates[1]])  # "b" without the "a" it follows
    with pytest.raises(CompactionError, match="missing dependencies"):
        await compact_room(store, room_id)
    await store.append_updates(room_id, [updates[0]])
    assert (await compact_room(store, room_id)).compacted
    assert await loaded_text(store, room_id) == "ab"


async def test_replayed_editing_session_compacts_to_its_end_content(store: Store) -> None:
    """friendsforever_flat (Joseph Gentle, CC BY 4.0): 26,078 real edits of two users."""
    trace = load_trace("friendsforever_flat")
    room_id = await room_with(store, [])
    updates = replay_updates(trace)
    for start in range(0, len(updates), 5000):
        await store.append_updates(room_id, updates[start : start + 5000])
    result = await compact_room(store, room_id)
    assert result.compacted and result.log_rows == 26_078
    state = await store.load_room_state(room_id)
    assert len(state.updates) == 0 and state.snapshot is not None
    assert text_of(doc_from_state(state)) == trace.end_content


def current_document(updates: list[bytes], head: int) -> Any:
    """A loaded room's document (`compact_room(current=...)`) holding `updates`, said to be
    the log as of row `head`."""
    doc: Doc[Any] = Doc()
    apply_updates(doc, updates, room_id="r")

    async def current() -> EncodedDocument:
        return EncodedDocument.of(doc, head)

    return current


async def test_a_compaction_from_the_rooms_document_folds_the_rows_up_to_its_head(
    store: Store,
) -> None:
    """Rows committed after the document was encoded stay in the log, after the snapshot."""
    updates = typed_updates("abcde")
    room_id = await room_with(store, updates)
    result = await compact_room(store, room_id, current=current_document(updates[:3], 3))
    assert result.compacted and (result.log_rows, result.upto_seq) == (3, 3)
    state = await store.load_room_state(room_id)
    assert (state.snapshot_seq, len(state.updates)) == (3, 2)
    assert text_of(doc_from_state(state)) == "abcde"


async def test_a_rooms_document_that_lacks_a_row_is_not_trusted(store: Store) -> None:
    """Said to hold rows up to 3 but holding 2 of them: the log is folded instead."""
    updates = typed_updates("abcde")
    room_id = await room_with(store, updates)
    result = await compact_room(store, room_id, current=current_document(updates[:2], 3))
    assert result.compacted and result.upto_seq == 3
    assert await loaded_text(store, room_id) == "abcde"


async def test_a_rooms_document_older_than_the_snapshot_compacts_nothing(store: Store) -> None:
    updates = typed_updates("abc")
    room_id = await room_with(store, updates)
    await compact_room(store, room_id)
    result = await compact_room(store, room_id, current=current_document(updates[:2], 2))
    assert not result.compacted and "0 log rows" in result.skipped
    assert await loaded_text(store, room_id) == "abc"


class Writer:
    """One editor: its own document, whose updates go to the store and the reference."""

    def __init__(self, reference: Doc[Any]) -> None:
        self.doc: Doc[Any] = Doc()
        self.text = self.doc.get("code", type=Text)
        self.reference = reference
        self.outbox: list[bytes] = []
        self.doc.observe(lambda event: self.outbox.append(event.update))

    def edit(self, position: int, insert: str, delete: int) -> list[bytes]:
        # Edit from the reference state, as a client that has received everything so far.
        self.doc.apply_update(self.reference.get_update(self.doc.get_state()))
        self.outbox.clear()
        # pycrdt's Text indexes UTF-8 bytes: pick positions in code points, then convert.
        current = str(self.text)
        at = position % (len(current) + 1)
        start = len(current[:at].encode())
        end = len(current[: at + delete].encode())
        with self.doc.transaction():
            if end > start:
                del self.text[start:end]
            self.text.insert(start, insert)
        for update in self.outbox:
            self.reference.apply_update(update)
        return list(self.outbox)


steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("edit"),
            st.integers(0, 2),
            st.integers(0, 50),
            st.text(alphabet="ab é世😀", min_size=1, max_size=3),
            st.integers(0, 3),
        ),
        st.tuples(st.just("compact")),
        st.tuples(st.just("compact_while_appending"), st.integers(0, 2)),
        st.tuples(st.just("reload")),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=steps)
def test_any_interleaving_of_appends_compactions_and_reloads_keeps_the_text(
    database_url: str, steps: list[tuple[Any, ...]]
) -> None:
    async def run() -> None:
        store = Store.connect(database_url)
        try:
            room_id = await room_with(store, [])
            reference: Doc[Any] = Doc()
            writers = [Writer(reference) for _ in range(3)]
            for step in steps:
                if step[0] == "edit":
                    _, who, position, insert, delete = step
                    await store.append_updates(room_id, writers[who].edit(position, insert, delete))
                elif step[0] == "compact":
                    await compact_room(store, room_id)
                elif step[0] == "compact_while_appending":
                    update = writers[step[1]].edit(0, "z", 0)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(compact_room, store, room_id)
                        tg.start_soon(store.append_updates, room_id, update)
                else:
                    assert await loaded_text(store, room_id) == text_of(reference)
            assert await loaded_text(store, room_id) == text_of(reference)
        finally:
            await store.close()

    anyio.run(run)

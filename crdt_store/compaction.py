"""Compaction: fold a room's log into its snapshot, deleting exactly the rows that went in.

    read, from one consistent snapshot: snapshot S covering seq <= a, log rows (a, h], head h
    build a Doc from S + rows (or take a loaded room's document as of row h, already that
        fold), encode it, VERIFY the encoding (decode it again: same text, same state vector,
        and no struct of any row missing from it)
    write, in one transaction: the new snapshot covering seq <= h, only if S is still the
        room's snapshot (else another compaction won: give up), and delete the rows (a, h],
        checking that exactly the rows read were deleted

The range (a, h] is provably complete: sequence numbers are handed out under the room row's
lock and so equal commit order, and the read saw head h, so every row <= h was committed and
visible to it. Rows appended during the compaction have seq > h and stay in the log.

Never `pycrdt.merge_updates` here: it is quadratic in the number of updates (260 s for a
260k-update trace) and keeps deleted content; applying to a Doc and encoding is linear.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from pycrdt import Doc, get_update

from .documents import doc_from_state, is_update_error, text_of
from .encoding import decode_state_vector, read_var_uint
from .errors import StoreError
from .store import RoomState, Store


class CompactionError(StoreError):
    """The new snapshot failed verification; nothing was written."""


@dataclass(frozen=True)
class CompactionResult:
    room_id: str
    compacted: bool
    #: Why the log was left as it is, when `compacted` is False.
    skipped: str
    log_rows: int
    log_bytes: int
    snapshot_bytes_before: int
    #: The new snapshot's size (with `dry_run`, the size it would have).
    snapshot_bytes: int
    upto_seq: int
    seconds: float


@dataclass(frozen=True)
class EncodedDocument:
    """A document encoded as one update, with what its decoding must show again."""

    update: bytes
    text: str
    state_vector: bytes
    #: The log row up to which it holds every row (and nothing after it).
    head: int = 0

    @classmethod
    def of(cls, doc: Doc[Any], head: int = 0) -> EncodedDocument:
        return cls(doc.get_update(), text_of(doc), doc.get_state(), head)


#: A loaded room's document, encoded at a moment it holds exactly the log rows up to its head
#: (None when it holds more: edits not yet committed, or rows above a gap in what it received).
CurrentDocument = Callable[[], Awaitable[EncodedDocument | None]]


def encode_verified(state: RoomState, current: EncodedDocument | None = None) -> bytes:
    """The room's whole state as one update, checked by decoding it again (CPU-bound).

    With `current` (the loaded room's document as of `state.head`), the fold of the log is
    skipped: the room's document is that fold already. Should it fail verification, the log is
    folded after all, and that fold decides.
    """
    if current is not None:
        try:
            return _verified(state, current)
        except CompactionError:
            pass
    return _verified(state, EncodedDocument.of(doc_from_state(state)))


def _verified(state: RoomState, document: EncodedDocument) -> bytes:
    encoded = document.update
    check: Doc[Any] = Doc()
    check.apply_update(encoded)
    if text_of(check) != document.text:
        raise CompactionError(f"room {state.room_id}: the snapshot does not hold the same text")
    vector = check.get_state()
    if decode_state_vector(vector) != decode_state_vector(document.state_vector):
        raise CompactionError(f"room {state.room_id}: the snapshot's state vector differs")
    # Every struct of every source must be in the snapshot. yrs leaves out of its encoding the
    # structs still waiting for a missing dependency, and `get_state(update)` cannot tell
    # (like Yjs, it only counts clients whose structs start at clock 0): so diff each source
    # against the snapshot's state vector and require that no struct is left.
    sources = [state.snapshot, *state.updates] if state.snapshot is not None else state.updates
    for source in sources:
        try:
            missing = get_update(source, vector)
        except BaseException as error:
            if not is_update_error(error):
                raise
            continue  # a row that never decoded never applied either: it is folded away
        if read_var_uint(missing, 0)[0] != 0:
            raise CompactionError(
                f"room {state.room_id}: an update waits for missing dependencies; "
                "the log is kept until they arrive"
            )
    return encoded


async def compact_room(
    store: Store,
    room_id: str,
    *,
    min_updates: int = 1,
    dry_run: bool = False,
    current: CurrentDocument | None = None,
) -> CompactionResult:
    """Fold the room's log into its snapshot (see the module docstring).

    Safe beside a live server and beside other compactions. The CPU-heavy part runs in a
    worker thread. With `current` (a server compacting a room it holds), the rows up to the
    room's head are folded into the room's document instead of a new fold of the log.
    Raises `RoomNotFound`, `StoreUnavailable`, `CompactionError`.
    """
    started = time.perf_counter()
    # Encoded before the log is read: a compaction elsewhere in between folds rows up to the
    # document's head or past it, and what is left to fold is read below either way.
    document = await current() if current is not None else None
    async with store.compaction_lock(room_id) as taken:
        if not taken:
            state = RoomState(room_id, None, 0, [], 0)
            return _result(state, started, b"", skipped="another compaction is running")
        upto = document.head if document is not None else None
        state = await store.load_room_state(room_id, upto=upto)
        if not state.updates or len(state.updates) < min_updates:
            return _result(
                state, started, b"", skipped=f"{len(state.updates)} log rows (< {min_updates})"
            )
        encoded = await anyio.to_thread.run_sync(encode_verified, state, document)
        if dry_run:
            return _result(state, started, encoded, skipped="dry run")
        if not await store.replace_log_with_snapshot(state, encoded):
            return _result(state, started, encoded, skipped="another compaction finished first")
    return _result(state, started, encoded, skipped="")


def _result(state: RoomState, started: float, encoded: bytes, *, skipped: str) -> CompactionResult:
    return CompactionResult(
        room_id=state.room_id,
        compacted=not skipped,
        skipped=skipped,
        log_rows=len(state.updates),
        log_bytes=sum(map(len, state.updates)),
        snapshot_bytes_before=len(state.snapshot or b""),
        snapshot_bytes=len(encoded),
        upto_seq=state.head,
        seconds=time.perf_counter() - started,
    )

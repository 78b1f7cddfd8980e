"""Rebuilding a pycrdt document from what the store holds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pycrdt import Doc, Text

from .store import RoomState

logger = logging.getLogger(__name__)


def is_update_error(error: BaseException) -> bool:
    """Whether `error` is what pycrdt raises for a malformed update: an Exception, or a pyo3
    PanicException (which derives from BaseException, so `except Exception` misses it)."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


#: The name of the shared `Y.Text` that editors bind to (`ydoc.getText("code")` in Yjs).
TEXT_NAME = "code"
#: Updates applied per transaction when rebuilding a document. One transaction for a whole log
#: ends in one native commit that holds the GIL for seconds (260k updates: 3.9 s, stalling the
#: event loop even from a worker thread) and is 5x slower; 1,000 keeps each commit short.
UPDATES_PER_TRANSACTION = 1000


def apply_updates(doc: Doc[Any], updates: Sequence[bytes], *, room_id: str) -> int:
    """Apply `updates` in order, `UPDATES_PER_TRANSACTION` per transaction; returns how many
    failed.

    A row that cannot be applied is logged and skipped rather than raised: one bad row must not
    make a room impossible to open. (Rows are validated before they are appended, so this is a
    last line of defence, not a code path we expect.)
    """
    failed = 0
    for start in range(0, len(updates), UPDATES_PER_TRANSACTION):
        with doc.transaction():
            for update in updates[start : start + UPDATES_PER_TRANSACTION]:
                try:
                    doc.apply_update(update)
                except BaseException as error:
                    if not is_update_error(error):
                        raise
                    failed += 1
                    logger.exception(
                        "room %s: skipping a stored update that does not apply", room_id
                    )
    return failed


def doc_from_state(state: RoomState) -> Doc[Any]:
    """The room's document: its snapshot, then the log rows after it (CPU-bound: run off-loop)."""
    doc: Doc[Any] = Doc()
    head = [state.snapshot] if state.snapshot is not None else []
    apply_updates(doc, [*head, *state.updates], room_id=state.room_id)
    return doc


def text_of(doc: Doc[Any]) -> str:
    return str(doc.get(TEXT_NAME, type=Text))


def text_update(content: str) -> bytes:
    """A standalone update that inserts `content` into an empty document's `code` text."""
    doc: Doc[Any] = Doc()
    doc.get(TEXT_NAME, type=Text).insert(0, content)
    return doc.get_update()

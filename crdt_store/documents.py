"""Rebuilding a pycrdt document from what the store holds."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from pycrdt import Doc, Text

from .store import RoomState

logger = logging.getLogger(__name__)

#: The name of the shared `Y.Text` that editors bind to (`ydoc.getText("code")` in Yjs).
TEXT_NAME = "code"


def apply_updates(doc: Doc[Any], updates: Iterable[bytes], *, room_id: str) -> int:
    """Apply `updates` in order in one transaction; returns how many failed.

    A row that cannot be applied is logged and skipped rather than raised: one bad row must not
    make a room impossible to open. (Rows are validated before they are appended, so this is a
    last line of defence, not a code path we expect.)
    """
    failed = 0
    with doc.transaction():
        for update in updates:
            try:
                doc.apply_update(update)
            except Exception:
                failed += 1
                logger.exception("room %s: skipping a stored update that does not apply", room_id)
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

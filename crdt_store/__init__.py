"""Storage of Yjs rooms: an append-only update log and snapshots, on PostgreSQL or SQLite.

Knows rooms, updates, snapshots and databases; nothing of HTTP or WebSockets.
"""

from __future__ import annotations

from .compaction import (
    CompactionError,
    CompactionResult,
    CurrentDocument,
    EncodedDocument,
    compact_room,
)
from .documents import (
    TEXT_NAME,
    UPDATES_PER_TRANSACTION,
    apply_updates,
    doc_from_state,
    is_update_error,
    text_of,
    text_update,
)
from .errors import LogChanged, RoomNotFound, StoreError, StoreUnavailable
from .group_commit import GroupCommitter, Rows
from .migrate import upgrade_database
from .schema import ROOM_ID_PATTERN
from .store import AppendResult, RoomPage, RoomRecord, RoomState, Store, new_room_id

__all__ = [
    "ROOM_ID_PATTERN",
    "TEXT_NAME",
    "UPDATES_PER_TRANSACTION",
    "AppendResult",
    "CompactionError",
    "CompactionResult",
    "CurrentDocument",
    "EncodedDocument",
    "GroupCommitter",
    "LogChanged",
    "RoomNotFound",
    "RoomPage",
    "RoomRecord",
    "RoomState",
    "Rows",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "apply_updates",
    "compact_room",
    "doc_from_state",
    "is_update_error",
    "new_room_id",
    "text_of",
    "text_update",
    "upgrade_database",
]

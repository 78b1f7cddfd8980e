"""The errors the store raises: callers map them to HTTP statuses or close codes."""

from __future__ import annotations


class StoreError(Exception):
    """Base class for every error raised by `crdt_store`."""


class RoomNotFound(StoreError):
    """The room does not exist (never created, or deleted)."""

    def __init__(self, room_id: str) -> None:
        super().__init__(f"room {room_id!r} not found")
        self.room_id = room_id


class StoreUnavailable(StoreError):
    """The database could not be reached or refused the operation; retrying may succeed."""


class LogChanged(StoreError):
    """The log rows a compaction was about to delete are not the ones it read (a bug or a
    manual edit of the database): the transaction is rolled back and nothing is lost."""

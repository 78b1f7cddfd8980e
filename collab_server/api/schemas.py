"""Request and response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from crdt_store import RoomRecord

from ..auth import Permission

Language = Annotated[
    str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9+#._-]+$", examples=["python"])
]
RoomName = Annotated[str, Field(min_length=1, max_length=200, examples=["Pairing session"])]
#: A room's seed text: bounded like one WebSocket update.
MAX_CONTENT_CHARS = 1_000_000


class RoomCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: RoomName = "Untitled"
    language: Language = "plaintext"
    content: str = Field("", max_length=MAX_CONTENT_CHARS, description="Seeds the `code` text.")


class RoomPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: RoomName | None = None
    language: Language | None = None


class Room(BaseModel):
    id: str
    name: str
    language: str
    created_at: datetime

    @classmethod
    def of(cls, record: RoomRecord) -> Room:
        return cls(
            id=record.id, name=record.name, language=record.language, created_at=record.created_at
        )


class RoomDetail(Room):
    clients: int = Field(description="Clients connected to this process now.")
    log_updates: int = Field(description="Log rows not yet folded into the snapshot.")
    log_bytes: int = Field(description="Bytes of those log rows.")
    snapshot_bytes: int = Field(description="Size of the latest snapshot (0: none yet).")

    @classmethod
    def of_stats(cls, record: RoomRecord, *, clients: int) -> RoomDetail:
        return cls(
            **Room.of(record).model_dump(),
            clients=clients,
            log_updates=record.log_updates,
            log_bytes=record.log_bytes,
            snapshot_bytes=record.snapshot_bytes,
        )


class RoomList(BaseModel):
    items: list[Room]
    total: int
    limit: int
    offset: int


class RoomContent(BaseModel):
    id: str
    language: str
    content: str


class CursorLocation(BaseModel):
    """Monaco's `IPosition`: 1-based line and column (column in UTF-16 units)."""

    lineNumber: int
    column: int


Cursor = Annotated[
    int | CursorLocation,
    Field(description="UTF-16 offset (`model.getOffsetAt`) or a Monaco position."),
]


class AutocompleteRequest(BaseModel):
    code: str = ""
    cursorPosition: Cursor = 0
    language: str = Field("plaintext", max_length=64)


class RoomAutocompleteRequest(BaseModel):
    cursorPosition: Cursor = 0
    language: str | None = Field(None, max_length=64, description="Default: the room's.")


class SuggestionOut(BaseModel):
    text: str = Field(description="What to insert at the cursor.")
    label: str = Field(description="What a completion menu shows.")
    confidence: float = Field(ge=0, le=1)


class AutocompleteResponse(BaseModel):
    suggestions: list[SuggestionOut]


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    permission: Permission = Permission.EDIT
    ttl_seconds: int = Field(3600, ge=1, description="Lifetime of the token.")


class TokenOut(BaseModel):
    token: str
    room_id: str
    permission: Permission
    expires_at: datetime

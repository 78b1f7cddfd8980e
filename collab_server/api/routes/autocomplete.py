"""Code completion: the mock engine behind `CompletionEngine`, for free text or a room's text."""

from __future__ import annotations

from fastapi import APIRouter

from ...autocomplete import Suggestion, utf16_offset_to_index
from ..deps import AnyToken, ReadyServicesDep, RoomIdPath, RoomRead, ServicesDep
from ..schemas import (
    AutocompleteRequest,
    AutocompleteResponse,
    CursorLocation,
    RoomAutocompleteRequest,
    SuggestionOut,
)

router = APIRouter(tags=["autocomplete"])


def cursor_index(code: str, cursor: int | CursorLocation) -> int:
    """A Python index into `code` from a UTF-16 offset or a 1-based Monaco line/column."""
    if isinstance(cursor, int):
        return utf16_offset_to_index(code, cursor)
    lines = code.split("\n")
    line = min(max(cursor.lineNumber, 1), len(lines)) - 1
    start = sum(len(text) + 1 for text in lines[:line])
    return start + utf16_offset_to_index(lines[line], cursor.column - 1)


def _response(suggestions: list[Suggestion]) -> AutocompleteResponse:
    return AutocompleteResponse(
        suggestions=[
            SuggestionOut(text=s.text, label=s.label, confidence=s.confidence) for s in suggestions
        ]
    )


@router.post("/autocomplete", response_model=AutocompleteResponse, dependencies=[AnyToken])
async def autocomplete(body: AutocompleteRequest, services: ServicesDep) -> AutocompleteResponse:
    """Suggestions for the code at the cursor (deterministic, rule-based mock)."""
    index = cursor_index(body.code, body.cursorPosition)
    return _response(services.completion.complete(body.code, index, body.language))


@router.post(
    "/rooms/{room_id}/autocomplete",
    response_model=AutocompleteResponse,
    responses={404: {"description": "No such room"}},
    dependencies=[RoomRead],
)
async def room_autocomplete(
    room_id: RoomIdPath, body: RoomAutocompleteRequest, services: ReadyServicesDep
) -> AutocompleteResponse:
    """Suggestions against the room's live text."""
    record = await services.store.get_room(room_id)
    code = await services.room_text(room_id)
    index = cursor_index(code, body.cursorPosition)
    return _response(services.completion.complete(code, index, body.language or record.language))

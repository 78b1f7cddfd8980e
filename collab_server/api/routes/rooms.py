"""Rooms: create, list, inspect, rename, delete, read their text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status

from crdt_store import text_update

from ...auth import RoomGrant, mint_token
from ..deps import Admin, ReadyServicesDep, RoomEdit, RoomIdPath, RoomRead
from ..schemas import (
    Room,
    RoomContent,
    RoomCreate,
    RoomDetail,
    RoomList,
    RoomPatch,
    TokenOut,
    TokenRequest,
)

router = APIRouter(prefix="/rooms", tags=["rooms"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such room"}}


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=RoomDetail, dependencies=[Admin]
)
async def create_room(body: RoomCreate, services: ReadyServicesDep) -> RoomDetail:
    """Create a room; `content` seeds its text through the log, like any other update."""
    record = await services.store.create_room(name=body.name, language=body.language)
    if body.content:
        await services.store.append_updates(record.id, [text_update(body.content)])
        record = await services.store.get_room(record.id)
    return RoomDetail.of_stats(record, clients=0)


@router.get("", response_model=RoomList, dependencies=[Admin])
async def list_rooms(
    services: ReadyServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> RoomList:
    page = await services.store.list_rooms(limit=limit, offset=offset)
    return RoomList(
        items=[Room.of(r) for r in page.rooms], total=page.total, limit=limit, offset=offset
    )


@router.get("/{room_id}", response_model=RoomDetail, responses=_NOT_FOUND, dependencies=[RoomRead])
async def get_room(room_id: RoomIdPath, services: ReadyServicesDep) -> RoomDetail:
    record = await services.store.get_room(room_id)
    room = services.rooms.loaded(room_id)
    return RoomDetail.of_stats(record, clients=len(room.clients) if room else 0)


@router.patch(
    "/{room_id}", response_model=RoomDetail, responses=_NOT_FOUND, dependencies=[RoomEdit]
)
async def update_room(
    room_id: RoomIdPath, body: RoomPatch, services: ReadyServicesDep
) -> RoomDetail:
    record = await services.store.update_room(room_id, name=body.name, language=body.language)
    room = services.rooms.loaded(room_id)
    return RoomDetail.of_stats(record, clients=len(room.clients) if room else 0)


@router.delete(
    "/{room_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_NOT_FOUND,
    dependencies=[Admin],
)
async def delete_room(room_id: RoomIdPath, services: ReadyServicesDep) -> Response:
    """Disconnect the room's clients (close code 4404) and remove all its data."""
    await services.rooms.delete(room_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{room_id}/content", response_model=RoomContent, responses=_NOT_FOUND, dependencies=[RoomRead]
)
async def room_content(room_id: RoomIdPath, services: ReadyServicesDep) -> RoomContent:
    """The room's current committed text, live when loaded, else from the store."""
    record = await services.store.get_room(room_id)
    return RoomContent(
        id=record.id, language=record.language, content=await services.room_text(room_id)
    )


@router.post(
    "/{room_id}/tokens",
    status_code=status.HTTP_201_CREATED,
    response_model=TokenOut,
    responses={**_NOT_FOUND, 409: {"description": "Tokens are disabled"}},
    dependencies=[Admin],
)
async def mint_room_token(
    room_id: RoomIdPath, body: TokenRequest, services: ReadyServicesDep
) -> TokenOut:
    """A token for the room: `ws://HOST/ws/{room_id}?token=...` (edit or read-only)."""
    secret = services.settings.token_secret_bytes
    if secret is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, "room tokens are disabled: set COLLAB_TOKEN_SECRET"
        )
    if body.ttl_seconds > services.settings.token_max_ttl_seconds:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"ttl_seconds may be at most {services.settings.token_max_ttl_seconds}",
        )
    await services.store.get_room(room_id)
    grant = RoomGrant(room_id, body.permission, int(services.clock()) + body.ttl_seconds)
    return TokenOut(
        token=mint_token(secret, grant),
        room_id=room_id,
        permission=grant.permission,
        expires_at=datetime.fromtimestamp(grant.expires_at, UTC),
    )

"""The WebSocket endpoint: `ws://HOST/ws/{room_id}`, the standard y-websocket protocol."""

from __future__ import annotations

import logging
import re
from functools import partial

from fastapi import APIRouter, WebSocket

from crdt_store import ROOM_ID_PATTERN, RoomNotFound, StoreUnavailable

from . import metrics
from .auth import AccessDenied, Permission, socket_permission
from .closecodes import CloseCode
from .connection import Connection
from .logs import room_logger
from .services import Services
from .socket_protocol import HAND_OVER

logger = logging.getLogger(__name__)
router = APIRouter()
_ROOM_ID = re.compile(ROOM_ID_PATTERN)


@router.websocket("/ws/{room_id}")
async def room_socket(websocket: WebSocket, room_id: str) -> None:
    """Join a room. `?token=` when tokens are on; `?ack=1` opts into "committed" messages.

    Refusals are sent as close codes after accepting, because browsers hide the HTTP status
    of a refused upgrade; y-websocket stops retrying on 44xx. An accepted client is handed
    over to the socket's protocol where it offers that (`collab-server serve` does), so that
    this call returns and the call chain above it is not held for the connection's life.
    """
    services: Services = websocket.app.state.services
    await websocket.accept()
    if not _ROOM_ID.match(room_id):
        metrics.FRAMES_REJECTED.labels("invalid room id").inc()
        await websocket.close(CloseCode.BAD_FRAME, "invalid room id")
        return
    try:
        permission = socket_permission(
            services.settings.token_secret_bytes,
            websocket.query_params.get("token"),
            room_id,
            now=services.clock(),
        )
    except AccessDenied as denied:
        metrics.FRAMES_REJECTED.labels("access denied").inc()
        await websocket.close(denied.close_code, str(denied))
        return
    if not services.migrated.is_set():
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "database not ready")
        return
    connection = Connection(
        websocket,
        room_id,
        settings=services.settings,
        wants_acks=websocket.query_params.get("ack") == "1",
        read_only=permission is Permission.READ,
    )
    serve = partial(_serve, services, connection)
    hand_over = websocket.scope["extensions"].get(HAND_OVER)
    if hand_over is None:
        await serve()
    else:
        hand_over(serve)


async def _serve(services: Services, connection: Connection) -> None:
    room_id = connection.path
    metrics.CONNECTIONS.inc()
    try:
        async with connection.running():
            try:
                await services.rooms.serve(connection)
            except RoomNotFound:
                connection.close(CloseCode.ROOM_NOT_FOUND, "room not found")
            except StoreUnavailable:
                room_logger(logger, room_id).warning("cannot load: database unavailable")
                connection.close(CloseCode.TRY_AGAIN_LATER, "database unavailable")
    finally:
        metrics.CONNECTIONS.dec()

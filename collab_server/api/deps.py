"""FastAPI dependencies: the process's services, taken from the app state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status

from crdt_store import ROOM_ID_PATTERN

from ..auth import AccessDenied, Permission, is_api_key, verify_token
from ..services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_ready_services(request: Request) -> Services:
    """The services, or 503 while the database is not migrated yet."""
    services = get_services(request)
    if not services.migrated.is_set():
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "database not ready")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
ReadyServicesDep = Annotated[Services, Depends(get_ready_services)]
RoomIdPath = Annotated[
    str,
    Path(pattern=ROOM_ID_PATTERN, description="Room id: letters, digits, '_' and '-'."),
]


def _bearer(request: Request) -> str | None:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


def _deny(status_code: int, detail: str) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return HTTPException(status_code, detail, headers=headers)


def _authorize(request: Request, *, room_id: str | None, need: Permission | None) -> None:
    """Open without an API key configured. With one: the key grants everything; a room token
    grants what it says (`need=None`: admin only, the key is required)."""
    settings = get_services(request).settings
    if settings.api_key is None:
        return
    credential = _bearer(request)
    if is_api_key(settings.api_key.get_secret_value(), credential):
        return
    secret = settings.token_secret_bytes
    if need is None or credential is None or secret is None:
        raise _deny(401, "API key required (Authorization: Bearer <key>)")
    try:
        grant = verify_token(secret, credential, now=get_services(request).clock())
    except AccessDenied as denied:
        raise _deny(401, str(denied)) from None
    if room_id is not None and grant.room_id != room_id:
        raise _deny(403, "token is for another room")
    if need is Permission.EDIT and grant.permission is not Permission.EDIT:
        raise _deny(403, "read-only token")


def require_admin(request: Request) -> None:
    _authorize(request, room_id=None, need=None)


def require_any_token(request: Request) -> None:
    _authorize(request, room_id=None, need=Permission.READ)


def require_room_read(request: Request, room_id: RoomIdPath) -> None:
    _authorize(request, room_id=room_id, need=Permission.READ)


def require_room_edit(request: Request, room_id: RoomIdPath) -> None:
    _authorize(request, room_id=room_id, need=Permission.EDIT)


Admin = Depends(require_admin)
AnyToken = Depends(require_any_token)
RoomRead = Depends(require_room_read)
RoomEdit = Depends(require_room_edit)

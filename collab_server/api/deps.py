"""FastAPI dependencies: the process's services, taken from the app state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request, status

from crdt_store import ROOM_ID_PATTERN

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

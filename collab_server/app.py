"""The ASGI application, built from one `Settings` object so tests can make their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from crdt_store import RoomNotFound, StoreUnavailable

from .api import api_router, probes_router
from .services import running_services
from .settings import Settings
from .web import mount_web_client
from .ws import router as ws_router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_services(settings) as services:
            app.state.services = services
            yield

    app = FastAPI(
        title="collab-server",
        summary="Yjs rooms with a durable update log: REST API and y-websocket endpoint.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(api_router)
    app.include_router(probes_router)
    app.include_router(ws_router)
    mount_web_client(app, settings.web_dist)

    @app.exception_handler(RoomNotFound)
    async def room_not_found(_request: Request, error: RoomNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(_request: Request, error: StoreUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": "database unavailable, retry later"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    return app

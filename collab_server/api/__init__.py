"""The REST API (`/api/v1`) and the probes (`/healthz`, `/readyz`)."""

from __future__ import annotations

from fastapi import APIRouter

from .routes import autocomplete, health, rooms

api_router = APIRouter(
    prefix="/api/v1",
    responses={400: {"description": "The body could not be read (not UTF-8 JSON)"}},
)
api_router.include_router(rooms.router)
api_router.include_router(autocomplete.router)

probes_router = health.router

__all__ = ["api_router", "probes_router"]

"""Probes for orchestrators: liveness never touches the database, readiness does."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import ServicesDep

router = APIRouter(tags=["probes"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    """Prometheus metrics (see collab_server/metrics.py)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz", responses={503: {"description": "Database not reachable or not migrated"}})
async def readyz(services: ServicesDep, response: Response) -> dict[str, str]:
    """The store is migrated and reachable now."""
    if await services.ready():
        return {"status": "ready"}
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "unavailable"}

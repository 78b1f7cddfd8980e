"""The collaboration server: y-websocket rooms, REST API, CLI. Never writes SQL itself."""

from __future__ import annotations

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]

"""One logging setup for the process: readable lines by default, JSON on `COLLAB_LOG_FORMAT`.

Lines about a room carry its id (`room_logger`): as a "room <id>:" prefix in text, as a
`room_id` field in JSON. Update payloads are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RoomLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        room_id = self.extra["room_id"] if self.extra else "?"
        kwargs["extra"] = {**kwargs.get("extra", {}), "room_id": room_id}
        return f"room {room_id}: {msg}", kwargs


def room_logger(logger: logging.Logger, room_id: str) -> RoomLogger:
    return RoomLogger(logger, {"room_id": room_id})


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())

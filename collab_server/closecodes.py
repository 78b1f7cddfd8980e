"""WebSocket close codes, in one place (4000 + the matching HTTP status, as Hocuspocus does).

y-websocket stops reconnecting on 4400-4499 and retries on everything else.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013  # slow consumer or store unavailable: reconnect and resync
    BAD_FRAME = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    ROOM_NOT_FOUND = 4404
    RATE_LIMITED = 4429

"""Room access tokens and the API key.

A token grants one room, a permission (edit or read) and an expiry, signed with HMAC-SHA256:
`v1.<payload>.<signature>`, both base64url. The server keeps no token state: anyone holding
`COLLAB_TOKEN_SECRET` can mint them (the API does, for holders of the API key). Signatures and
keys are compared in constant time. Time is passed in, so expiry is tested without clocks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum

from .closecodes import CloseCode

_VERSION = "v1"


class Permission(StrEnum):
    EDIT = "edit"
    READ = "read"


@dataclass(frozen=True)
class RoomGrant:
    room_id: str
    permission: Permission
    expires_at: int  # Unix seconds


class AccessDenied(Exception):
    """The credential does not grant access; `close_code` is the WebSocket answer."""

    close_code = CloseCode.UNAUTHORIZED
    http_status = 401


class WrongRoom(AccessDenied):
    close_code = CloseCode.FORBIDDEN
    http_status = 403


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())


def mint_token(secret: bytes, grant: RoomGrant) -> str:
    body = {"room": grant.room_id, "perm": grant.permission.value, "exp": grant.expires_at}
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{_VERSION}.{payload}.{_signature(secret, payload)}"


def verify_token(secret: bytes, token: str, *, now: float) -> RoomGrant:
    """The grant `token` carries; raises AccessDenied if it is malformed, forged or expired."""
    try:
        version, payload, signature = token.split(".")
    except ValueError:
        raise AccessDenied("malformed token") from None
    if version != _VERSION or not hmac.compare_digest(signature, _signature(secret, payload)):
        raise AccessDenied("invalid token")
    try:
        body = json.loads(_unb64(payload))
        grant = RoomGrant(str(body["room"]), Permission(body["perm"]), int(body["exp"]))
    except (ValueError, KeyError, TypeError):
        raise AccessDenied("malformed token") from None
    if grant.expires_at <= now:
        raise AccessDenied("token expired")
    return grant


def grant_for_room(secret: bytes, token: str | None, room_id: str, *, now: float) -> RoomGrant:
    """The grant of a token that must be for `room_id` (WrongRoom otherwise)."""
    if not token:
        raise AccessDenied("token required")
    grant = verify_token(secret, token, now=now)
    if grant.room_id != room_id:
        raise WrongRoom("token is for another room")
    return grant


def is_api_key(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def socket_permission(
    token_secret: bytes | None, token: str | None, room_id: str, *, now: float
) -> Permission:
    """What a WebSocket may do in the room: everything in open mode (no secret configured)."""
    if token_secret is None:
        return Permission.EDIT
    return grant_for_room(token_secret, token, room_id, now=now).permission

"""Strict parsing of incoming y-websocket frames, before anything touches the document.

pycrdt's own `Decoder.read_var_uint` is quadratic in the length of a varint (a 256 KiB run of
0xFF bytes blocked the event loop for seconds) and trusts lengths, so every frame is checked
here first: varints are at most 8 bytes, lengths must fit, nothing may trail the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pycrdt import YMessageType, YSyncMessageType, write_message, write_var_uint

from crdt_store import encoding

from .closecodes import CloseCode

#: y-protocols' awareness "query" message: the client asks for every awareness state.
QUERY_AWARENESS = 3
#: Our opt-in message (`?ack=1`): [100, varUint(n)] tells a client that its first n document
#: update messages on this connection are committed (the web client's "saved" state).
COMMITTED = 100
#: An awareness state is a small JSON object; bound the entries one message may carry.
_MAX_AWARENESS_ENTRIES = 64
EMPTY_UPDATE = b"\x00\x00"


class ProtocolError(Exception):
    """The frame is not a well-formed y-websocket message; the reason goes into the close.

    `reason` is one of a fixed set of short phrases (a metrics label); `detail` may vary.
    """

    close_code = CloseCode.BAD_FRAME

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason} {detail}".strip())
        self.reason = reason


class MessageTooBig(ProtocolError):
    close_code = CloseCode.MESSAGE_TOO_BIG


class RateLimited(ProtocolError):
    close_code = CloseCode.RATE_LIMITED


@dataclass(frozen=True, slots=True)
class SyncStep1:
    state_vector: bytes


@dataclass(frozen=True, slots=True)
class DocumentUpdate:
    """A SyncStep2 or Update message: both carry a document update."""

    update: bytes


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    client_id: int
    clock: int
    state: object  # None means "this client is gone"


@dataclass(frozen=True, slots=True)
class AwarenessUpdate:
    payload: bytes
    entries: tuple[AwarenessEntry, ...]


@dataclass(frozen=True, slots=True)
class QueryAwareness:
    pass


Frame = SyncStep1 | DocumentUpdate | AwarenessUpdate | QueryAwareness


def read_var_uint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    try:
        return encoding.read_var_uint(data, pos)
    except ValueError as error:
        raise ProtocolError(str(error)) from None


def read_var_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_var_uint(data, pos)
    end = pos + length
    if end > len(data):
        raise ProtocolError("length runs past the end of the frame")
    return data[pos:end], end


def _expect_end(data: bytes, pos: int) -> None:
    if pos != len(data):
        raise ProtocolError("trailing bytes after the message")


#: The first two bytes of a sync update message (each a one-byte varint).
_UPDATE_PREFIX = bytes([YMessageType.SYNC, YSyncMessageType.SYNC_UPDATE])


def parse_frame(data: bytes, *, max_awareness_bytes: int) -> Frame:
    """Parse one binary WebSocket frame; raise `ProtocolError` for anything malformed."""
    if not data:
        raise ProtocolError("empty frame")
    if data.startswith(_UPDATE_PREFIX) and len(data) > 2 and data[2] == len(data) - 3 < 0x80:
        # A keystroke's update, under 128 bytes, as most frames are: read as the general path
        # below reads it, without its three varint reads (they were ~8% of the replay's CPU).
        return DocumentUpdate(data[3:])
    message_type, pos = read_var_uint(data, 0)
    if message_type == YMessageType.SYNC:
        sync_type, pos = read_var_uint(data, pos)
        payload, pos = read_var_bytes(data, pos)
        _expect_end(data, pos)
        if sync_type == YSyncMessageType.SYNC_STEP1:
            return SyncStep1(payload)
        if sync_type in (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE):
            return DocumentUpdate(payload)
        raise ProtocolError("unknown sync message type", str(sync_type))
    if message_type == YMessageType.AWARENESS:
        if len(data) > max_awareness_bytes:
            raise MessageTooBig("awareness message too large")
        payload, pos = read_var_bytes(data, pos)
        _expect_end(data, pos)
        return AwarenessUpdate(payload, _parse_awareness(payload))
    if message_type == QUERY_AWARENESS:
        _expect_end(data, pos)
        return QueryAwareness()
    raise ProtocolError("unknown message type", str(message_type))


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("number out of range")
    return value


def _strict_json(raw: bytes) -> object:
    """JSON as the clients' `JSON.parse` reads it: UTF-8, no NaN/Infinity, finite numbers.

    Python's `json.loads` is laxer (it takes UTF-16/32 bytes, NaN, 1e999 as infinity), and what
    it lets through is relayed to browsers that would reject it.
    """
    try:
        return json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("awareness state is not JSON") from None


def _parse_awareness(payload: bytes) -> tuple[AwarenessEntry, ...]:
    count, pos = read_var_uint(payload, 0)
    if count > _MAX_AWARENESS_ENTRIES:
        raise ProtocolError("too many awareness entries")
    entries = []
    for _ in range(count):
        client_id, pos = read_var_uint(payload, pos)
        clock, pos = read_var_uint(payload, pos)
        raw_state, pos = read_var_bytes(payload, pos)
        state = _strict_json(raw_state)
        entries.append(AwarenessEntry(client_id, clock, state))
    _expect_end(payload, pos)
    return tuple(entries)


def sync_step2_message(update: bytes) -> bytes:
    return bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2]) + write_message(update)


def committed_message(count: int) -> bytes:
    return bytes([COMMITTED]) + write_var_uint(count)

"""What processes serving the same rooms tell each other, and its compact encoding.

A `Committed` names a run of a room's log rows by their sequence numbers (`first..last`, equal
to commit order) and usually carries the rows themselves, so a receiver applies them without a
database read; `updates is None` means "too large to carry: read these rows from the log".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..encoding import read_var_uint


@dataclass(frozen=True)
class Committed:
    """Rows `first..last` of a room's log were committed by another process."""

    room_id: str
    first: int
    last: int
    updates: tuple[bytes, ...] | None


@dataclass(frozen=True)
class AwarenessChanged:
    """A y-protocols awareness update (cursors, names) from a client of another process."""

    room_id: str
    payload: bytes


@dataclass(frozen=True)
class Resubscribed:
    """The subscription was (re)established: whatever was published while it was down is lost,
    so every loaded room must read the log it may have missed."""


Event = Committed | AwarenessChanged | Resubscribed


def _var_uint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def pack_updates(updates: Sequence[bytes]) -> bytes:
    """Length-prefixed updates, one after the other."""
    return b"".join(_var_uint(len(update)) + update for update in updates)


def unpack_updates(data: bytes) -> tuple[bytes, ...]:
    """The inverse of `pack_updates`; ValueError if `data` is not such a packing."""
    updates = []
    pos = 0
    while pos < len(data):
        size, pos = read_var_uint(data, pos)
        if pos + size > len(data):
            raise ValueError("truncated update")
        updates.append(data[pos : pos + size])
        pos += size
    return tuple(updates)


def committed_chunks(
    room_id: str, first: int, updates: Sequence[bytes], max_bytes: int
) -> Iterator[Committed]:
    """`Committed` messages for rows `first..` whose packed updates fit `max_bytes` each; an
    update too large alone for one message is announced without its data."""
    chunk: list[bytes] = []
    size = 0
    start = first
    for seq, update in enumerate(updates, start=first):
        cost = len(update) + len(_var_uint(len(update)))
        if chunk and size + cost > max_bytes:
            yield Committed(room_id, start, seq - 1, tuple(chunk))
            chunk, size = [], 0
        if not chunk:
            start = seq
        if cost > max_bytes:
            yield Committed(room_id, seq, seq, None)
            continue
        chunk.append(update)
        size += cost
    if chunk:
        yield Committed(room_id, start, start + len(chunk) - 1, tuple(chunk))

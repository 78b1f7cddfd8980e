"""Strict parsing of client frames: every malformed shape is a ProtocolError, never a hang."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text, create_update_message

from collab_server.protocol import (
    AwarenessUpdate,
    DocumentUpdate,
    ProtocolError,
    QueryAwareness,
    SyncStep1,
    parse_frame,
    read_var_uint,
)


def parse(data: bytes) -> object:
    return parse_frame(data, max_awareness_bytes=1024)


def an_update(text: str = "hi") -> bytes:
    doc = Doc()
    doc.get("code", type=Text).insert(0, text)
    return doc.get_update()


def test_sync_step1_carries_the_state_vector() -> None:
    assert parse(b"\x00\x00\x01\x00") == SyncStep1(b"\x00")


def test_update_message_carries_the_update() -> None:
    update = an_update()
    assert parse(create_update_message(update)) == DocumentUpdate(update)


def test_an_update_message_past_127_bytes_carries_the_update() -> None:
    """Its length takes two varint bytes: short updates are read on a path of their own."""
    update = an_update("x" * 200)
    assert len(update) >= 128
    assert parse(create_update_message(update)) == DocumentUpdate(update)


def test_awareness_entries_are_decoded() -> None:
    state = b'{"user":{"name":"Ann"}}'
    payload = b"\x01" + b"\x07" + b"\x02" + bytes([len(state)]) + state
    frame = parse(b"\x01" + bytes([len(payload)]) + payload)
    assert isinstance(frame, AwarenessUpdate)
    assert [(e.client_id, e.clock, e.state) for e in frame.entries] == [
        (7, 2, {"user": {"name": "Ann"}})
    ]


def test_query_awareness_is_understood() -> None:
    assert parse(b"\x03") == QueryAwareness()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "empty frame"),
        (b"\x09", "unknown message type"),
        (b"\x00\x07\x00", "unknown sync message type"),
        (b"\x00\x02\x05ab", "length runs past the end"),
        (b"\x00\x02\x80", "truncated varint"),
        (b"\x00\x02" + b"\xff" * 262_144, "varint too long"),
        (create_update_message(b"\x00\x00") + b"junk", "trailing bytes"),
        (b"\x01\x05\x01\x01\x01\x01{", "not JSON"),
        (b"\x01\x01\x50", "too many awareness entries"),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse(frame)


def test_oversized_awareness_is_rejected() -> None:
    with pytest.raises(ProtocolError, match="awareness message too large"):
        parse_frame(b"\x01" + b"\x00" * 100, max_awareness_bytes=50)


def test_var_uint_reads_multi_byte_values() -> None:
    assert read_var_uint(b"\xac\x02", 0) == (300, 2)

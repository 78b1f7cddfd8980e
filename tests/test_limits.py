"""Abuse limits: awareness ownership and coalescing, sync-request floods, throttling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
import pytest
from pycrdt import write_var_uint

from collab_server.protocol import AwarenessUpdate, parse_frame
from collab_server.ratelimit import TokenBucket
from collab_server.room import CollabRoom
from collab_server.settings import Settings
from tests.support.memory_socket import MemoryWebSocket, memory_connection
from tests.test_upstream_defects import patched_room, serving

pytestmark = pytest.mark.anyio

SYNC_STEP1_EMPTY = b"\x00\x00\x01\x00"


def awareness_message(client_id: int, clock: int, state: object) -> bytes:
    raw = json.dumps(state).encode()
    payload = b"\x01" + write_var_uint(client_id) + write_var_uint(clock)
    payload += write_var_uint(len(raw)) + raw
    return b"\x01" + write_var_uint(len(payload)) + payload


def awareness_states(socket: MemoryWebSocket) -> list[dict[int, object]]:
    states = []
    for message in socket.sent:
        frame = parse_frame(message, max_awareness_bytes=1 << 20)
        if isinstance(frame, AwarenessUpdate):
            states.append({e.client_id: e.state for e in frame.entries})
    return states


@pytest.fixture
async def room(sqlite_url: str) -> AsyncIterator[CollabRoom]:
    async with patched_room(Settings(database_url=sqlite_url)) as room:
        yield room  # type: ignore[misc]


async def test_an_awareness_flood_is_coalesced_to_its_latest_state(room: CollabRoom) -> None:
    flooder, flooder_socket = memory_connection(room.room_id)
    observer, observer_socket = memory_connection(room.room_id)
    async with serving(room, observer), serving(room, flooder):
        flooder_socket.feed(*(awareness_message(7, clock, {"n": clock}) for clock in range(1000)))
        with anyio.fail_after(5):
            while {7: {"n": 999}} not in awareness_states(observer_socket):
                await anyio.sleep(0.01)
    assert len(awareness_states(observer_socket)) < 20


async def test_a_client_cannot_set_another_clients_awareness(room: CollabRoom) -> None:
    owner, owner_socket = memory_connection(room.room_id)
    spoofer, spoofer_socket = memory_connection(room.room_id)
    async with serving(room, owner), serving(room, spoofer):
        owner_socket.feed(awareness_message(7, 1, {"user": "owner"}))
        with anyio.fail_after(5):
            while room.awareness.states.get(7) != {"user": "owner"}:
                await anyio.sleep(0.01)
        spoofer_socket.feed(awareness_message(7, 2, {"user": "spoofed"}))
        spoofer_socket.feed(awareness_message(7, 3, None))
        await anyio.sleep(0.2)
    assert all(7 not in states for states in awareness_states(owner_socket)[1:])


async def test_a_client_flooding_sync_requests_is_closed_with_4429(room: CollabRoom) -> None:
    flooder, flooder_socket = memory_connection(room.room_id)
    async with serving(room, flooder):
        flooder_socket.feed(*[SYNC_STEP1_EMPTY] * 100)
        with anyio.fail_after(5):
            while flooder_socket.close_code is None:
                await anyio.sleep(0.01)
    assert flooder_socket.close_code == 4429


def test_a_token_bucket_throttles_past_its_burst_and_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=20, clock=lambda: now[0])
    assert [bucket.take() for _ in range(20)] == [0.0] * 20
    assert bucket.take() == pytest.approx(0.1)
    now[0] += 1.0
    assert bucket.take() == 0.0
    assert not bucket.try_take(20)

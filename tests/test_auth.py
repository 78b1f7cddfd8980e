"""Access control: HMAC room tokens, the API key, read-only connections."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from collab_server import Settings, create_app
from collab_server.auth import (
    AccessDenied,
    Permission,
    RoomGrant,
    WrongRoom,
    grant_for_room,
    mint_token,
    verify_token,
)
from tests.conftest import ServerFactory
from tests.support.node_client import NodeYClient
from tests.support.server import ServerProcess

SECRET = "a-test-secret-that-is-long-enough-to-sign"
API_KEY = "test-api-key"
NOW = 1_800_000_000.0


def token(room_id: str, permission: Permission = Permission.EDIT, ttl: float = 3600) -> str:
    return mint_token(SECRET.encode(), RoomGrant(room_id, permission, int(NOW + ttl)))


def test_a_minted_token_verifies_to_its_grant() -> None:
    grant = verify_token(SECRET.encode(), token("room", Permission.READ), now=NOW)
    assert grant == RoomGrant("room", Permission.READ, int(NOW + 3600))


def test_an_expired_token_is_refused() -> None:
    with pytest.raises(AccessDenied, match="expired"):
        verify_token(SECRET.encode(), token("room", ttl=10), now=NOW + 11)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    grant = RoomGrant("room", Permission.EDIT, int(NOW + 60))
    forged = mint_token(b"another secret entirely, also long enough", grant)
    with pytest.raises(AccessDenied, match="invalid token"):
        verify_token(SECRET.encode(), forged, now=NOW)


def test_a_token_with_an_edited_payload_is_refused() -> None:
    version, _, signature = token("room", Permission.READ).split(".")
    other_payload = token("room", Permission.EDIT).split(".")[1]
    with pytest.raises(AccessDenied, match="invalid token"):
        verify_token(SECRET.encode(), f"{version}.{other_payload}.{signature}", now=NOW)


@pytest.mark.parametrize("garbage", ["", "v1", "v1.a.b.c", "v2.x.y", "v1.!!.??"])
def test_malformed_tokens_are_refused(garbage: str) -> None:
    with pytest.raises(AccessDenied):
        verify_token(SECRET.encode(), garbage, now=NOW)


def test_a_token_for_another_room_is_wrong_room() -> None:
    with pytest.raises(WrongRoom):
        grant_for_room(SECRET.encode(), token("room-a"), "room-b", now=NOW)


# -- REST ------------------------------------------------------------------------------------


@pytest.fixture
async def secured_api(sqlite_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        database_url=sqlite_url,
        web_dist=tmp_path,
        api_key=API_KEY,  # type: ignore[arg-type]
        token_secret=SECRET,  # type: ignore[arg-type]
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        app.state.services.clock = lambda: NOW
        await app.state.services.migrated.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def admin_room(api: httpx.AsyncClient) -> str:
    response = await api.post("/api/v1/rooms", json={"content": "x"}, headers=bearer(API_KEY))
    assert response.status_code == 201
    room_id: str = response.json()["id"]
    return room_id


async def minted(api: httpx.AsyncClient, room_id: str, permission: str = "edit") -> str:
    response = await api.post(
        f"/api/v1/rooms/{room_id}/tokens",
        json={"permission": permission, "ttl_seconds": 60},
        headers=bearer(API_KEY),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["permission"] == permission and body["room_id"] == room_id
    value: str = body["token"]
    return value


@pytest.mark.anyio
async def test_admin_operations_need_the_api_key(secured_api: httpx.AsyncClient) -> None:
    assert (await secured_api.post("/api/v1/rooms", json={})).status_code == 401
    wrong = await secured_api.get("/api/v1/rooms", headers=bearer("not-the-key"))
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert (await secured_api.get("/api/v1/rooms", headers=bearer(API_KEY))).status_code == 200


@pytest.mark.anyio
async def test_a_room_token_reads_its_room_only(secured_api: httpx.AsyncClient) -> None:
    room_id, other_id = await admin_room(secured_api), await admin_room(secured_api)
    read = await minted(secured_api, room_id, "read")
    own = await secured_api.get(f"/api/v1/rooms/{room_id}/content", headers=bearer(read))
    assert own.status_code == 200 and own.json()["content"] == "x"
    other = await secured_api.get(f"/api/v1/rooms/{other_id}/content", headers=bearer(read))
    assert other.status_code == 403


@pytest.mark.anyio
async def test_a_room_token_cannot_do_admin_operations(secured_api: httpx.AsyncClient) -> None:
    room_id = await admin_room(secured_api)
    edit = await minted(secured_api, room_id)
    response = await secured_api.delete(f"/api/v1/rooms/{room_id}", headers=bearer(edit))
    assert response.status_code == 401


@pytest.mark.anyio
async def test_changing_a_room_needs_an_edit_token(secured_api: httpx.AsyncClient) -> None:
    room_id = await admin_room(secured_api)
    body = {"language": "python"}
    read, edit = await minted(secured_api, room_id, "read"), await minted(secured_api, room_id)
    path = f"/api/v1/rooms/{room_id}"
    assert (await secured_api.patch(path, json=body, headers=bearer(read))).status_code == 403
    assert (await secured_api.patch(path, json=body, headers=bearer(edit))).status_code == 200


@pytest.mark.anyio
async def test_tokens_are_refused_when_no_secret_is_configured(api: httpx.AsyncClient) -> None:
    room_id = (await api.post("/api/v1/rooms", json={})).json()["id"]
    response = await api.post(f"/api/v1/rooms/{room_id}/tokens", json={})
    assert response.status_code == 409 and "COLLAB_TOKEN_SECRET" in response.json()["detail"]


# -- WebSocket -------------------------------------------------------------------------------


@pytest.fixture
def secured_server(sqlite_url: str, start_server: ServerFactory) -> ServerProcess:
    return start_server(sqlite_url, COLLAB_TOKEN_SECRET=SECRET, COLLAB_API_KEY=API_KEY)


def live_room(server: ServerProcess, content: str = "") -> str:
    response = httpx.post(
        f"{server.http_url}/api/v1/rooms", json={"content": content}, headers=bearer(API_KEY)
    )
    response.raise_for_status()
    room_id: str = response.json()["id"]
    return room_id


def live_token(room_id: str, permission: Permission = Permission.EDIT, ttl: float = 3600) -> str:
    grant = RoomGrant(room_id, permission, int(time.time() + ttl))
    return mint_token(SECRET.encode(), grant)


def rest_content_with_key(server: ServerProcess, room_id: str) -> str:
    response = httpx.get(
        f"{server.http_url}/api/v1/rooms/{room_id}/content", headers=bearer(API_KEY)
    )
    response.raise_for_status()
    content: str = response.json()["content"]
    return content


@pytest.mark.anyio
@pytest.mark.node
@pytest.mark.parametrize(
    ("credential", "code"),
    [
        pytest.param(None, 4401, id="missing"),
        pytest.param("v1.forged.token", 4401, id="invalid"),
        pytest.param("expired", 4401, id="expired"),
        pytest.param("other-room", 4403, id="wrong-room"),
    ],
)
async def test_sockets_without_a_valid_token_for_the_room_are_refused(
    secured_server: ServerProcess, credential: str | None, code: int
) -> None:
    room_id = live_room(secured_server)
    if credential == "expired":
        credential = live_token(room_id, ttl=-1)
    elif credential == "other-room":
        credential = live_token("some-other-room")
    params = {"token": credential} if credential else None
    async with NodeYClient.spawn(secured_server.ws_url, room_id, params=params) as client:
        assert (await client.wait_closed())[0] == code


@pytest.mark.anyio
@pytest.mark.node
async def test_read_only_sockets_receive_edits_but_theirs_are_never_stored_or_relayed(
    secured_server: ServerProcess,
) -> None:
    room_id = live_room(secured_server, content="shared")
    edit = {"token": live_token(room_id)}
    read = {"token": live_token(room_id, Permission.READ)}
    async with (
        NodeYClient.spawn(secured_server.ws_url, room_id, params=edit) as editor,
        NodeYClient.spawn(secured_server.ws_url, room_id, params=read) as reader,
    ):
        await editor.wait_synced()
        await reader.wait_synced()
        await reader.insert(0, "forbidden ")
        await editor.insert(6, " text")
        await reader.wait_text("forbidden shared text")  # its own local edit stays local
        await editor.wait_text("shared text")
        with pytest.raises(TimeoutError):
            await editor.wait_text("forbidden shared text", timeout=1)
    assert rest_content_with_key(secured_server, room_id) == "shared text"

"""The REST contract, in-process, against SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def create(api: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await api.post("/api/v1/rooms", json=body)
    assert response.status_code == 201, response.text
    room: dict[str, object] = response.json()
    return room


async def test_create_room_returns_201_with_id_name_language_created_at(
    api: httpx.AsyncClient,
) -> None:
    room = await create(api, name="Pairing", language="python")
    assert room["name"] == "Pairing" and room["language"] == "python"
    assert isinstance(room["id"], str) and room["created_at"]


async def test_create_room_defaults_name_and_language(api: httpx.AsyncClient) -> None:
    room = await create(api)
    assert (room["name"], room["language"]) == ("Untitled", "plaintext")


async def test_content_seeds_the_code_text(api: httpx.AsyncClient) -> None:
    room = await create(api, content="print('héllo 😀')\n")
    response = await api.get(f"/api/v1/rooms/{room['id']}/content")
    assert response.json() == {
        "id": room["id"],
        "language": "plaintext",
        "content": "print('héllo 😀')\n",
    }


async def test_room_detail_reports_log_stats(api: httpx.AsyncClient) -> None:
    room = await create(api, content="abc")
    detail = (await api.get(f"/api/v1/rooms/{room['id']}")).json()
    assert detail["clients"] == 0
    assert detail["log_updates"] == 1 and detail["log_bytes"] > 0
    assert detail["snapshot_bytes"] == 0


async def test_list_rooms_paginates(api: httpx.AsyncClient) -> None:
    ids = [(await create(api, name=f"r{i}"))["id"] for i in range(3)]
    page = (await api.get("/api/v1/rooms", params={"limit": 2})).json()
    assert page["total"] == 3 and page["limit"] == 2
    assert [r["id"] for r in page["items"]] == ids[::-1][:2]


async def test_patch_changes_language(api: httpx.AsyncClient) -> None:
    room = await create(api)
    response = await api.patch(f"/api/v1/rooms/{room['id']}", json={"language": "typescript"})
    assert response.status_code == 200 and response.json()["language"] == "typescript"


async def test_delete_room_removes_it(api: httpx.AsyncClient) -> None:
    room = await create(api, content="x")
    assert (await api.delete(f"/api/v1/rooms/{room['id']}")).status_code == 204
    assert (await api.get(f"/api/v1/rooms/{room['id']}")).status_code == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/rooms/nope"),
        ("GET", "/api/v1/rooms/nope/content"),
        ("DELETE", "/api/v1/rooms/nope"),
        ("PATCH", "/api/v1/rooms/nope"),
        ("POST", "/api/v1/rooms/nope/autocomplete"),
    ],
)
async def test_unknown_room_is_404_with_a_message(
    api: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await api.request(method, path, json={})
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [{"name": ""}, {"language": "py thon"}, {"unexpected": 1}, {"content": 5}],
)
async def test_invalid_create_body_is_422(api: httpx.AsyncClient, body: dict[str, object]) -> None:
    response = await api.post("/api/v1/rooms", json=body)
    assert response.status_code == 422
    assert response.json()["detail"]


async def test_malformed_json_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/rooms", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_invalid_room_id_is_rejected_before_lookup(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/v1/rooms/" + "x" * 65)
    assert response.status_code == 422


async def test_autocomplete_suggests_from_the_code_around_the_cursor(
    api: httpx.AsyncClient,
) -> None:
    code = "pri"
    response = await api.post(
        "/api/v1/autocomplete", json={"code": code, "cursorPosition": 3, "language": "python"}
    )
    assert response.status_code == 200
    labels = [s["label"] for s in response.json()["suggestions"]]
    assert "print" in labels


async def test_autocomplete_cursor_counts_utf16_units(api: httpx.AsyncClient) -> None:
    code = "😀 = 1\nresult_value = 2\nres"
    offset = len(code.encode("utf-16-le")) // 2
    response = await api.post(
        "/api/v1/autocomplete",
        json={"code": code, "cursorPosition": offset, "language": "python"},
    )
    assert "result_value" in [s["label"] for s in response.json()["suggestions"]]


async def test_autocomplete_accepts_a_monaco_position(api: httpx.AsyncClient) -> None:
    code = "const total = 1;\nconsole."
    response = await api.post(
        "/api/v1/autocomplete",
        json={"code": code, "cursorPosition": {"lineNumber": 2, "column": 9}, "language": "js"},
    )
    assert "log" in [s["label"] for s in response.json()["suggestions"]]


async def test_autocomplete_never_errors_on_odd_input(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/autocomplete",
        json={"code": "\x00\ud7ff", "cursorPosition": -40, "language": "klingon"},
    )
    assert response.status_code == 200


async def test_room_autocomplete_completes_against_the_room_text(api: httpx.AsyncClient) -> None:
    room = await create(api, language="python", content="counter_total = 0\ncou")
    response = await api.post(
        f"/api/v1/rooms/{room['id']}/autocomplete", json={"cursorPosition": 21}
    )
    assert "counter_total" in [s["label"] for s in response.json()["suggestions"]]


async def test_healthz_and_readyz_answer_when_ready(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).status_code == 200


async def test_openapi_documents_the_room_routes(api: httpx.AsyncClient) -> None:
    paths = (await api.get("/openapi.json")).json()["paths"]
    assert {"/api/v1/rooms", "/api/v1/rooms/{room_id}", "/api/v1/autocomplete"} <= set(paths)

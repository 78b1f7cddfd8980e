"""How `mount_web_client` serves the built client (no browser needed)."""

from __future__ import annotations

import gzip
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from collab_server.web import mount_web_client

pytestmark = pytest.mark.anyio

INDEX = "<!doctype html><title>client</title>"
BUNDLE = "console.log('client')"


async def get(dist: Path, path: str, *, accept_encoding: str = "gzip") -> httpx.Response:
    """GET `path` from an app with an API route and the web client mounted from `dist`."""
    app = FastAPI()

    @app.get("/api/v1/rooms/{room_id}")
    async def room(room_id: str) -> dict[str, str]:
        return {"id": room_id}

    mount_web_client(app, dist)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, headers={"Accept-Encoding": accept_encoding})


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(INDEX)
    (tmp_path / "assets" / "index-abc123.js").write_text(BUNDLE)
    (tmp_path / "assets" / "index-abc123.js.gz").write_bytes(gzip.compress(BUNDLE.encode()))
    (tmp_path / "secret.txt").write_text("not an asset")
    return tmp_path


@pytest.mark.parametrize("path", ["/", "/rooms/abc123"])
async def test_pages_serve_index_html_revalidated_on_each_load(dist: Path, path: str) -> None:
    response = await get(dist, path)
    assert response.status_code == 200
    assert response.text == INDEX
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"


async def test_assets_are_cached_forever(dist: Path) -> None:
    response = await get(dist, "/assets/index-abc123.js", accept_encoding="identity")
    assert response.status_code == 200
    assert response.text == BUNDLE
    assert "javascript" in response.headers["content-type"]
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-encoding" not in response.headers


async def test_gzip_capable_browsers_get_the_precompressed_asset(dist: Path) -> None:
    response = await get(dist, "/assets/index-abc123.js", accept_encoding="gzip, br")
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert "javascript" in response.headers["content-type"]
    assert response.headers["vary"] == "Accept-Encoding"
    assert response.text == BUNDLE  # httpx decodes gzip


@pytest.mark.parametrize(
    "path", ["/assets/missing.js", "/assets/../secret.txt", "/assets/%2e%2e/secret.txt"]
)
async def test_missing_assets_and_paths_outside_assets_are_404(dist: Path, path: str) -> None:
    assert (await get(dist, path)).status_code == 404


async def test_api_routes_are_not_shadowed(dist: Path) -> None:
    assert (await get(dist, "/api/v1/rooms/abc123")).json() == {"id": "abc123"}


async def test_unbuilt_client_explains_how_to_build_it(tmp_path: Path) -> None:
    response = await get(tmp_path / "not-built", "/")
    assert response.status_code == 503
    assert "make web" in response.text
    assert (await get(tmp_path / "not-built", "/assets/index.js")).status_code == 404

"""Serve the bundled web client (built from ``web/`` into ``collab_server/web_dist``).

The client is a single-page app: ``/`` and ``/rooms/{room_id}`` both return
``index.html`` and the page decides what to render. Hashed bundles live under
``/assets/`` and are cached forever; ``index.html`` is revalidated on every load
so a redeploy is picked up at once. The build writes a gzipped copy beside each
bundle (``name.js.gz``), sent to browsers that accept gzip.

Everything is resolved per request, so building the client while the server
runs is enough; no restart needed.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"
PAGE_CACHE_CONTROL = "no-cache"

NOT_BUILT_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Web client not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto;">
<h1>The web client is not built</h1>
<p>The server is running, but the browser client's files are missing from
<code>collab_server/web_dist/</code>.</p>
<p>Build it from the repository root with <code>make web</code>
(or <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>), then reload this page.</p>
<p>The REST API (<a href="/docs">/docs</a>) and the WebSocket endpoint work without it.</p>
</body>
</html>
"""


def mount_web_client(app: FastAPI, dist_dir: Path) -> None:
    """Register the web client's routes on ``app``.

    Only ``/``, ``/rooms/{room_id}`` and ``/assets/{path}`` are claimed, so the API,
    WebSocket, health, metrics and docs routes are never shadowed.
    """
    index_file = dist_dir / "index.html"
    assets_dir = (dist_dir / "assets").resolve()

    def page() -> Response:
        if not index_file.is_file():
            return HTMLResponse(NOT_BUILT_PAGE, status_code=503)
        return FileResponse(
            index_file,
            media_type="text/html",
            headers={"Cache-Control": PAGE_CACHE_CONTROL},
        )

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def home() -> Response:
        return page()

    @app.api_route("/rooms/{room_id}", methods=["GET", "HEAD"], include_in_schema=False)
    async def room(room_id: str) -> Response:
        # The page itself asks the API whether the room exists and renders
        # "Room not found" when it does not.
        return page()

    @app.api_route("/assets/{asset_path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def asset(asset_path: str, request: Request) -> FileResponse:
        file = (assets_dir / asset_path).resolve()
        if not file.is_relative_to(assets_dir) or not file.is_file():
            raise HTTPException(status_code=404, detail="Asset not found")
        headers = {"Cache-Control": ASSET_CACHE_CONTROL, "Vary": "Accept-Encoding"}
        gzipped = file.with_name(file.name + ".gz")
        if accepts_gzip(request.headers.get("accept-encoding", "")) and gzipped.is_file():
            media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            headers["Content-Encoding"] = "gzip"
            return FileResponse(gzipped, media_type=media_type, headers=headers)
        return FileResponse(file, headers=headers)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header lists gzip (with a q-value above 0)."""
    for entry in accept_encoding.split(","):
        coding, _, params = entry.partition(";")
        if coding.strip().lower() == "gzip":
            quality = params.strip().lower().removeprefix("q=")
            try:
                return float(quality or 1) > 0
            except ValueError:
                return True
    return False

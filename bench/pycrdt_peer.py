"""The plain pycrdt-websocket server, as its documentation sets it up: `WebsocketServer`
behind `ASGIServer` on uvicorn, rooms in memory, no compression. A peer of the suite.

    HOST=127.0.0.1 PORT=1234 .venv/bin/python -m bench.pycrdt_peer
"""

from __future__ import annotations

import asyncio
import os

import uvicorn
from pycrdt.websocket import ASGIServer, WebsocketServer


async def serve(host: str, port: int) -> None:
    websocket_server = WebsocketServer()
    config = uvicorn.Config(
        ASGIServer(websocket_server),
        host=host,
        port=port,
        ws_per_message_deflate=False,
        log_level="warning",
    )
    async with websocket_server:
        await uvicorn.Server(config).serve()


if __name__ == "__main__":
    asyncio.run(serve(os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])))

"""`collab-server`: run the server, migrate the database, (later) compact snapshots."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
import uvicorn

from crdt_store import upgrade_database
from crdt_store.urls import redact

from .app import create_app
from .settings import Settings

cli = typer.Typer(
    help="A Yjs collaboration server with a durable update log.", no_args_is_help=True
)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (COLLAB_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (COLLAB_PORT).")] = None,
) -> None:
    """Run the server (applies migrations first, retrying until the database is up)."""
    settings = Settings()
    _configure_logging(settings)
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        ws_max_size=settings.max_update_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    settings = Settings()
    _configure_logging(settings)
    upgrade_database(settings.database_url)
    typer.echo(f"database {redact(settings.database_url)} is up to date")


def main() -> None:
    cli()

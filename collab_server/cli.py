"""`collab-server`: run the server, migrate the database, compact snapshots."""

from __future__ import annotations

import gc
from functools import partial
from typing import Annotated

import anyio
import typer
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from crdt_store import StoreUnavailable, upgrade_database
from crdt_store.urls import is_postgresql, redact

from .admin import compact_rooms, render, unreachable_message
from .app import create_app
from .logs import configure_logging
from .settings import Settings
from .socket_protocol import DirectWebSocketProtocol

cli = typer.Typer(
    help="A Yjs collaboration server with a durable update log.", no_args_is_help=True
)


def app_from_environment() -> FastAPI:
    """The app as every `serve` process builds it: settings and logging read from the environment.

    uvicorn imports this in each worker, a freshly spawned interpreter: nothing the supervisor set
    up (its logging included) carries over, so each worker configures itself.

    What is imported and built by now lives as long as the process, so it is frozen out of the
    garbage collector: every full collection walked it again (~130,000 objects, 85 ms on the
    benchmark machine), stalling every room of the process meanwhile.
    """
    settings = Settings()
    configure_logging(settings)
    app = create_app(settings)
    gc.freeze()
    return app


def settings_or_exit() -> Settings:
    """The settings from the environment; a bad one exits with status 2, each error on a line
    naming its variable (pydantic's report of a settings model names fields, not variables)."""
    try:
        return Settings()
    except ValidationError as invalid:
        console = Console(stderr=True)
        for error in invalid.errors(include_url=False):
            variable = "COLLAB_" + "_".join(map(str, error["loc"])).upper()
            reason = error["msg"].removeprefix("Value error, ")
            console.print(f"[red]error:[/red] {variable}: {escape(reason)}", soft_wrap=True)
        raise typer.Exit(2) from None


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (COLLAB_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (COLLAB_PORT).")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes sharing the port. Every worker reads the same COLLAB_* "
            "settings; more than one needs PostgreSQL.",
        ),
    ] = 1,
) -> None:
    """Run the server (applies migrations first, retrying until the database is up)."""
    settings = settings_or_exit()
    configure_logging(settings)
    if workers > 1 and not is_postgresql(settings.database_url):
        # Processes share rooms through PostgreSQL. Beside a SQLite file's one process, a second
        # would serve its own copy of each room, never relayed.
        Console(stderr=True).print(
            f"[red]error:[/red] --workers {workers} needs PostgreSQL (worker processes share "
            f"rooms through it); COLLAB_DATABASE_URL is {escape(redact(settings.database_url))}"
        )
        raise typer.Exit(2)
    # An import string, even for one worker: uvicorn needs one to start several, and one way of
    # starting keeps one set of options.
    uvicorn.run(
        f"{__name__}:{app_from_environment.__name__}",
        factory=True,
        workers=workers,
        host=host or settings.host,
        port=port or settings.port,
        ws=f"{DirectWebSocketProtocol.__module__}:{DirectWebSocketProtocol.__name__}",
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
    settings = settings_or_exit()
    configure_logging(settings)
    upgrade_database(settings.database_url)
    typer.echo(f"database {redact(settings.database_url)} is up to date")


@cli.command()
def compact(
    room_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[ROOM_ID]...", help="Rooms to compact.")
    ] = None,
    all_rooms: Annotated[bool, typer.Option("--all", help="Compact every room.")] = False,
    min_updates: Annotated[
        int, typer.Option("--min-updates", min=1, help="Skip rooms with fewer log rows.")
    ] = 1,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be done; write nothing.")
    ] = False,
) -> None:
    """Fold rooms' update logs into snapshots (safe beside a running server)."""
    settings = settings_or_exit()
    console = Console()
    if bool(room_ids) == all_rooms:
        console.print("[red]error:[/red] name rooms to compact, or pass --all (not both)")
        raise typer.Exit(2)
    try:
        report = anyio.run(
            partial(
                compact_rooms,
                settings.database_url,
                room_ids or [],
                all_rooms=all_rooms,
                min_updates=min_updates,
                dry_run=dry_run,
                console=console,
            )
        )
    except StoreUnavailable as error:
        console.print(f"[red]error:[/red] {unreachable_message(settings.database_url, error)}")
        raise typer.Exit(1) from None
    render(report, console, dry_run=dry_run)
    if not report.ok:
        raise typer.Exit(1)


def main() -> None:
    cli()

"""`collab-server compact`: compact rooms from the command line, beside a live server or not.

Safe against a running server's database: compaction takes the room's lock on PostgreSQL,
never overwrites a newer snapshot, and deletes exactly the log rows it folded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from crdt_store import (
    CompactionError,
    CompactionResult,
    LogChanged,
    RoomNotFound,
    Store,
    StoreUnavailable,
    compact_room,
)
from crdt_store.urls import redact

_PAGE = 500


@dataclass
class CompactionReport:
    results: list[CompactionResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.failed


async def _all_room_ids(store: Store) -> AsyncIterator[str]:
    offset = 0
    while True:
        page = await store.list_rooms(limit=_PAGE, offset=offset)
        for room in page.rooms:
            yield room.id
        offset += _PAGE
        if offset >= page.total:
            return


async def compact_rooms(
    database_url: str,
    room_ids: list[str],
    *,
    all_rooms: bool,
    min_updates: int,
    dry_run: bool,
    console: Console,
) -> CompactionReport:
    """Compact the rooms named (or all); raises StoreUnavailable if the database is down."""
    report = CompactionReport()
    store = Store.connect(database_url)
    try:
        await store.ping()
        if all_rooms:
            room_ids = [room_id async for room_id in _all_room_ids(store)]
        with Progress(console=console, transient=True, disable=not all_rooms) as progress:
            task = progress.add_task("compacting", total=len(room_ids))
            for room_id in room_ids:
                try:
                    result = await compact_room(
                        store, room_id, min_updates=min_updates, dry_run=dry_run
                    )
                    report.results.append(result)
                except RoomNotFound:
                    report.missing.append(room_id)
                except (CompactionError, LogChanged) as error:
                    report.failed.append((room_id, str(error)))
                progress.advance(task)
    finally:
        await store.close()
    return report


def render(report: CompactionReport, console: Console, *, dry_run: bool) -> None:
    if report.results:
        console.print(_table(report, dry_run=dry_run))
    for room_id in report.missing:
        console.print(f"[red]error:[/red] room {room_id!r} not found")
    for room_id, reason in report.failed:
        console.print(f"[red]error:[/red] room {room_id!r} not compacted: {reason}")


def _table(report: CompactionReport, *, dry_run: bool) -> Table:
    table = Table(title="compaction (dry run: nothing written)" if dry_run else "compaction")
    for column in ("room", "log rows", "log bytes", "snapshot before", "snapshot after", "time"):
        table.add_column(column, justify="left" if column == "room" else "right")
    table.add_column("result")
    for r in report.results:
        table.add_row(
            r.room_id,
            f"{r.log_rows:,}",
            f"{r.log_bytes:,}",
            f"{r.snapshot_bytes_before:,}",
            f"{r.snapshot_bytes:,}" if r.snapshot_bytes else "-",
            f"{r.seconds:.3f} s",
            "compacted" if r.compacted else f"skipped: {r.skipped}",
        )
    return table


def unreachable_message(database_url: str, error: StoreUnavailable) -> str:
    return f"cannot reach the database {redact(database_url)}: {error}"

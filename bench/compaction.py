"""Compaction benchmark: a real editing session replayed into one room, then compacted.

    .venv/bin/python -m bench.compaction [--trace automerge-paper] [--database-url URL]
    .venv/bin/python -m bench.compaction --smoke       # seconds, SQLite, writes no docs

Reports, for one room on a scratch database: the log before and after (rows, bytes, on-disk
size with and without VACUUM), the snapshot against the encoded document, the compaction's
time and the event-loop lag while it runs, and how long a fresh client takes to join (connect
to synced) before and after. Peers measured in the same run, so the ratios mean something on
any machine: the bare fold (a fresh Doc, one transaction per update, `get_update()`: what
pycrdt-store's SQLiteYStore squash does, without a store or a check) and `pycrdt.merge_updates`
(the ecosystem's usual squash; in chunks, since it is quadratic in the number of updates).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psycopg
from pycrdt import Doc, merge_updates

from bench.client import Keeper, join, wait_until_loaded
from bench.common import (
    DEFAULT_POSTGRES_URL,
    LagProbe,
    environment,
    median,
    ratio,
    scratch_database,
    update_docs_section,
)
from crdt_store import (
    CompactionResult,
    RoomState,
    Store,
    compact_room,
    doc_from_state,
    text_of,
    text_update,
)
from crdt_store.compaction import encode_verified
from tests.support.server import ServerProcess
from tests.support.traces import Trace, load_trace, replay_updates

CREDITS = {
    "automerge-paper": "Martin Kleppmann & Alastair R. Beresford (via automerge/automerge-perf)",
    "seph-blog1": "Joseph Gentle",
    "friendsforever_flat": "Joseph Gentle",
}
LICENCE = "https://creativecommons.org/licenses/by/4.0/"
#: Updates per `Store.append_updates` call while loading the trace (one transaction each).
INGEST_BATCH = 1000
#: `merge_updates` is quadratic in its argument count: merge chunks, then the chunks' results.
MERGE_CHUNK = 1000
#: A server that never compacts by itself: the benchmark decides when the log is folded.
SERVER_ENV = {
    "COLLAB_COMPACT_ON_UNLOAD": "false",
    "COLLAB_COMPACT_AFTER_UPDATES": str(10**12),
    "COLLAB_COMPACT_AFTER_BYTES": str(10**15),
    "COLLAB_LOG_LEVEL": "WARNING",
}
#: Lag above this in a phase that runs on a worker thread means the thread held the GIL.
STALL_MS = 100.0


# -- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    trace: str
    updates: list[bytes]
    #: The text after the updates, from a plain list-splice replay of the trace's patches.
    text: str
    replay_seconds: float


def spliced_text(transactions: Sequence[list[tuple[int, int, str]]]) -> str:
    """The trace's text by list splicing (code points), independent of any CRDT."""
    chars: list[str] = []
    for patches in transactions:
        for position, deleted, inserted in patches:
            chars[position : position + deleted] = inserted
    return "".join(chars)


def load_workload(trace_name: str, limit: int | None) -> Workload:
    """The updates an editor produces replaying the trace (its first `limit` transactions)."""
    trace = load_trace(trace_name)
    if limit is not None and limit < len(trace.transactions):
        transactions = trace.transactions[:limit]
        trace = Trace(end_content=spliced_text(transactions), transactions=transactions)
    started = time.perf_counter()
    updates = replay_updates(trace)
    return Workload(trace_name, updates, trace.end_content, time.perf_counter() - started)


# -- measurements ---------------------------------------------------------------------------


@dataclass
class Checks:
    """Every document a client or a store hands back must hold the trace's text."""

    expected: str
    failed: list[str] = field(default_factory=list)
    passed: int = 0

    def text(self, what: str, text: str) -> None:
        if text == self.expected:
            self.passed += 1
        else:
            self.failed.append(f"{what}: {len(text)} chars, expected {len(self.expected)}")

    def doc(self, what: str, doc: Doc[Any]) -> None:
        self.text(what, text_of(doc))


@dataclass(frozen=True)
class Timed:
    seconds: float
    lag_max_ms: float
    lag_p99_ms: float
    #: The longest garbage collection meanwhile: a pause of every thread, counted in the lag.
    gc_max_ms: float

    @classmethod
    def of(cls, seconds: float, probe: LagProbe) -> Timed:
        return cls(seconds, probe.max_ms, probe.p99_ms, probe.gc_max_ms)


@dataclass(frozen=True)
class Sizes:
    log_rows: int
    log_bytes: int
    snapshot_bytes: int
    #: PostgreSQL: the log table with its indexes and TOAST (`pg_total_relation_size`).
    log_on_disk: int | None
    snapshot_on_disk: int | None


@dataclass(frozen=True)
class Joins:
    cold: list[float]
    warm: list[float]
    #: Joins of another, small, loaded room while the big room loads cold: all, and idle.
    other_during_load: list[float]
    other_idle: list[float]
    update_bytes: int


async def ingest(store: Store, room_id: str, updates: Sequence[bytes]) -> float:
    started = time.perf_counter()
    for start in range(0, len(updates), INGEST_BATCH):
        await store.append_updates(room_id, updates[start : start + INGEST_BATCH])
    return time.perf_counter() - started


async def timed_in_thread(function: Any, *args: Any) -> tuple[Any, Timed]:
    """Run CPU work on a worker thread, as the server does, and probe the loop meanwhile."""
    async with LagProbe() as probe:
        started = time.perf_counter()
        value = await anyio.to_thread.run_sync(function, *args)
        seconds = time.perf_counter() - started
    return value, Timed.of(seconds, probe)


async def timed_load(store: Store, room_id: str) -> tuple[RoomState, Timed]:
    """Read the room's snapshot and log rows, on the event loop (streamed in partitions)."""
    async with LagProbe() as probe:
        started = time.perf_counter()
        state = await store.load_room_state(room_id)
        seconds = time.perf_counter() - started
    return state, Timed.of(seconds, probe)


def bare_fold(updates: Sequence[bytes]) -> Doc[Any]:
    """The peer: each update applied in its own transaction (`Doc.apply_update`'s default)."""
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def chunked_merge(updates: Sequence[bytes]) -> bytes:
    """The ecosystem's squash, in chunks: one call on 260k updates takes minutes."""
    chunks = [
        merge_updates(*updates[start : start + MERGE_CHUNK])
        for start in range(0, len(updates), MERGE_CHUNK)
    ]
    return merge_updates(*chunks) if len(chunks) > 1 else chunks[0]


def doc_of(update: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return doc


def _scalar(database_url: str, query: str) -> int:
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def table_bytes(database_url: str, table: str) -> int | None:
    """On-disk bytes of a table with its indexes and TOAST; None on SQLite (one file)."""
    if database_url.startswith("sqlite"):
        return None
    return _scalar(database_url, f"SELECT pg_total_relation_size('{table}')")


def vacuum(database_url: str, *, full: bool) -> None:
    """Plain VACUUM frees dead rows for reuse and truncates empty trailing pages; FULL
    rewrites the table and its indexes (an exclusive lock: an operator's choice, not ours)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"VACUUM {'FULL ' if full else ''}room_updates")


async def sizes(store: Store, database_url: str, room_id: str) -> Sizes:
    record = await store.get_room(room_id)
    return Sizes(
        log_rows=record.log_updates,
        log_bytes=record.log_bytes,
        snapshot_bytes=record.snapshot_bytes,
        log_on_disk=table_bytes(database_url, "room_updates"),
        snapshot_on_disk=table_bytes(database_url, "room_snapshots"),
    )


async def compact(store: Store, room_id: str) -> tuple[CompactionResult, Timed]:
    """`compact_room` on this event loop, exactly as the server calls it, with a lag probe."""
    async with LagProbe() as probe:
        result = await compact_room(store, room_id)
    if not result.compacted:
        raise RuntimeError(f"the room was not compacted: {result.skipped}")
    return result, Timed.of(result.seconds, probe)


async def joins(
    server: ServerProcess, big: str, small: str, checks: Checks, *, repeats: int, phase: str
) -> Joins:
    """Cold joins (room not loaded), warm joins (another client keeps it loaded), and joins
    of a small loaded room while the big one loads: what its users wait meanwhile."""
    ws, http = server.ws_url, server.http_url
    await wait_until_loaded(http, 0)
    cold = []
    for _ in range(repeats):
        joined = await join(ws, big)
        checks.text(f"cold join {phase}", joined.text())
        cold.append(joined.seconds)
        await wait_until_loaded(http, 0)
    async with Keeper(ws, big):
        warm = [(await join(ws, big)).seconds for _ in range(repeats)]
    await wait_until_loaded(http, 0)
    async with Keeper(ws, small):
        idle = [(await join(ws, small)).seconds for _ in range(repeats)]
        loading = asyncio.create_task(join(ws, big))
        during = [(await join(ws, small)).seconds]
        while not loading.done():
            during.append((await join(ws, small)).seconds)
            await asyncio.sleep(0.005)
        joined = await loading
        checks.text(f"cold join {phase}, beside another room", joined.text())
    await wait_until_loaded(http, 0)
    return Joins(cold, warm, during, idle, len(joined.update))


@contextmanager
def running_server(database_url: str) -> Iterator[ServerProcess]:
    with tempfile.TemporaryDirectory(prefix="collab-bench-server-") as directory:
        server = ServerProcess(
            database_url=database_url, log_path=Path(directory) / "server.log", env=SERVER_ENV
        )
        server.start(timeout=60)
        try:
            yield server
        except BaseException:
            print(f"server log (tail):\n{server.log()[-4000:]}", file=sys.stderr)
            raise
        finally:
            # uvicorn re-raises SIGTERM once it has shut down cleanly.
            if server.terminate() not in (0, -signal.SIGTERM):
                print(f"server exit (tail):\n{server.log()[-4000:]}", file=sys.stderr)


# -- the run --------------------------------------------------------------------------------


@dataclass
class Results:
    workload: Workload
    environment: dict[str, str]
    repeats: int
    ingest_seconds: float = 0.0
    before: Sizes | None = None
    after_delete: Sizes | None = None
    after_vacuum: Sizes | None = None
    after_vacuum_full: Sizes | None = None
    load_before: Timed | None = None
    fold_ours: Timed | None = None
    fold_peer: Timed | None = None
    encode_ours: Timed | None = None
    merge_peer: Timed | None = None
    load_merged: Timed | None = None
    load_after: Timed | None = None
    compaction: Timed | None = None
    #: The document encoded (`get_update()` of the bare fold: the trace's final state).
    encoded: bytes = b""
    snapshot_bytes: int = 0
    snapshot_identical: bool = False
    merged_bytes: int = 0
    joins_before: Joins | None = None
    joins_after: Joins | None = None


async def measure_folds(
    store: Store, room_id: str, workload: Workload, results: Results, checks: Checks
) -> None:
    """Before compaction: the store's load and fold (the server's cold load, and the CPU part
    of compaction) against the bare fold and the chunked merge of the same updates."""
    state, results.load_before = await timed_load(store, room_id)
    doc, results.fold_ours = await timed_in_thread(doc_from_state, state)
    checks.doc("doc_from_state of the log", doc)
    encoded, results.encode_ours = await timed_in_thread(encode_verified, state)
    checks.doc("encode_verified of the log", doc_of(encoded))
    peer, results.fold_peer = await timed_in_thread(bare_fold, workload.updates)
    checks.doc("bare fold", peer)
    results.encoded = peer.get_update()
    merged, results.merge_peer = await timed_in_thread(chunked_merge, workload.updates)
    results.merged_bytes = len(merged)
    merged_doc, results.load_merged = await timed_in_thread(doc_of, merged)
    checks.doc("merge_updates result", merged_doc)


async def measure_after(
    store: Store, database_url: str, room_id: str, results: Results, checks: Checks
) -> None:
    results.after_delete = await sizes(store, database_url, room_id)
    if not database_url.startswith("sqlite"):
        vacuum(database_url, full=False)
        results.after_vacuum = await sizes(store, database_url, room_id)
        vacuum(database_url, full=True)
        results.after_vacuum_full = await sizes(store, database_url, room_id)
    state, load = await timed_load(store, room_id)
    doc, fold = await timed_in_thread(doc_from_state, state)
    results.load_after = Timed(
        load.seconds + fold.seconds,
        max(load.lag_max_ms, fold.lag_max_ms),
        max(load.lag_p99_ms, fold.lag_p99_ms),
        max(load.gc_max_ms, fold.gc_max_ms),
    )
    checks.doc("snapshot", doc)
    results.snapshot_identical = state.snapshot == results.encoded


async def run(options: argparse.Namespace) -> tuple[Results, Checks]:
    workload = load_workload(options.trace, options.updates)
    checks = Checks(workload.text)
    with scratch_database(options.database_url) as database_url:
        results = Results(workload, environment(database_url), options.repeats)
        store = Store.connect(database_url)
        try:
            big = (await store.create_room(name="big", language="plaintext")).id
            small = (await store.create_room(name="small", language="plaintext")).id
            await store.append_updates(small, [text_update("a small room\n")])
            results.ingest_seconds = await ingest(store, big, workload.updates)
            results.before = await sizes(store, database_url, big)
            await measure_folds(store, big, workload, results, checks)
            with running_server(database_url) as server:
                results.joins_before = await joins(
                    server, big, small, checks, repeats=options.repeats, phase="before"
                )
                result, results.compaction = await compact(store, big)
                results.snapshot_bytes = result.snapshot_bytes
                await measure_after(store, database_url, big, results, checks)
                results.joins_after = await joins(
                    server, big, small, checks, repeats=options.repeats, phase="after"
                )
        finally:
            await store.close()
    return results, checks


# -- the report -----------------------------------------------------------------------------


def size(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,} B"


def duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def lag(value: float) -> str:
    return f"{value:.1f} ms"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _ratio_or_na(after: int | None, before: int | None) -> str:
    return "n/a" if after is None or before is None else ratio(after, before)


def sizes_table(r: Results) -> list[str]:
    assert r.before and r.after_delete
    b, a = r.before, r.after_delete
    rows = [
        ["log rows", f"{b.log_rows:,}", f"{a.log_rows:,}", ratio(a.log_rows, b.log_rows)],
        ["log bytes (the updates)", size(b.log_bytes), size(a.log_bytes), "-"],
        [
            "`room_updates` on disk, right after compaction",
            size(b.log_on_disk),
            size(a.log_on_disk),
            _ratio_or_na(a.log_on_disk, b.log_on_disk),
        ],
    ]
    for label, sizes_after in (
        ("… after `VACUUM room_updates`", r.after_vacuum),
        ("… after `VACUUM FULL room_updates`", r.after_vacuum_full),
    ):
        if sizes_after is not None:
            rows.append(
                [
                    label,
                    size(b.log_on_disk),
                    size(sizes_after.log_on_disk),
                    _ratio_or_na(sizes_after.log_on_disk, b.log_on_disk),
                ]
            )
    rows.append(
        ["`room_snapshots` on disk", size(b.snapshot_on_disk), size(a.snapshot_on_disk), "-"]
    )
    return _table(["", "before", "after", "after/before"], rows)


def snapshot_table(r: Results) -> list[str]:
    assert r.before
    encoded = len(r.encoded)
    identical = "identical bytes" if r.snapshot_identical else "different bytes"
    rows = [
        ["encoded document (`Doc.get_update()`)", size(encoded), "1x"],
        [
            f"snapshot written by compaction ({identical})",
            size(r.snapshot_bytes),
            ratio(r.snapshot_bytes, encoded),
        ],
        [
            f"peer: `merge_updates`, chunks of {MERGE_CHUNK} then their results",
            size(r.merged_bytes),
            ratio(r.merged_bytes, encoded),
        ],
        ["the log it replaces", size(r.before.log_bytes), ratio(r.before.log_bytes, encoded)],
    ]
    return _table(["", "bytes", "vs encoded document"], rows)


def _time_row(label: str, timed: Timed, versus: str) -> list[str]:
    return [
        label,
        duration(timed.seconds),
        lag(timed.lag_max_ms),
        lag(timed.lag_p99_ms),
        lag(timed.gc_max_ms),
        versus,
    ]


def time_table(r: Results) -> list[str]:
    assert r.fold_peer and r.compaction and r.load_before and r.fold_ours
    assert r.encode_ours and r.merge_peer and r.load_merged and r.load_after
    peer = r.fold_peer.seconds

    def row(label: str, timed: Timed) -> list[str]:
        return _time_row(label, timed, ratio(timed.seconds, peer))

    rows = [
        row("peer: bare fold, a transaction per update (worker thread)", r.fold_peer),
        row("`compact_room`: read, fold, verify, write (what the server runs)", r.compaction),
        row("… read: `load_room_state` of the log (event loop)", r.load_before),
        row("… fold: `doc_from_state` (worker thread)", r.fold_ours),
        row("… fold + encode + verify: `encode_verified` (worker thread)", r.encode_ours),
        row(f"peer: `merge_updates` in chunks of {MERGE_CHUNK:,} (worker thread)", r.merge_peer),
        row("peer: loading the `merge_updates` result into a Doc", r.load_merged),
        row("loading the room after compaction (read + `doc_from_state`)", r.load_after),
    ]
    header = ["", "time", "loop lag max", "loop lag p99", "longest GC", "vs bare fold"]
    return _table(header, rows)


def load_table(r: Results) -> list[str]:
    """The server's cold load, before and after: the part of a cold join that compaction cuts."""
    assert r.load_before and r.fold_ours and r.load_after
    before = r.load_before.seconds + r.fold_ours.seconds
    after = r.load_after.seconds
    rows = [["read + `doc_from_state`", duration(before), duration(after), ratio(after, before)]]
    return _table(["loading the room", "before compaction", "after", "after/before"], rows)


def joins_table(r: Results) -> list[str]:
    assert r.joins_before and r.joins_after
    b, a = r.joins_before, r.joins_after

    def row(label: str, before: float, after: float) -> list[str]:
        return [label, duration(before), duration(after), ratio(after, before)]

    n = r.repeats
    rows = [
        row(f"cold join, connect → synced (median of {n})", median(b.cold), median(a.cold)),
        row(f"cold join, worst of {n}", max(b.cold), max(a.cold)),
        row(f"warm join, room already loaded (median of {n})", median(b.warm), median(a.warm)),
        row(
            "join of another, loaded room while this one loads cold: worst "
            f"({len(b.other_during_load)} and {len(a.other_during_load)} joins)",
            max(b.other_during_load),
            max(a.other_during_load),
        ),
        row(
            f"… the same join on an idle server (median of {n})",
            median(b.other_idle),
            median(a.other_idle),
        ),
        [
            "SyncStep2 sent to the client",
            size(b.update_bytes),
            size(a.update_bytes),
            ratio(a.update_bytes, b.update_bytes),
        ],
    ]
    return _table(["", "before compaction", "after", "after/before"], rows)


def findings(r: Results) -> list[str]:
    """Data-driven notes: each appears only while the measurement supports it."""
    assert r.compaction and r.fold_ours and r.fold_peer and r.joins_before and r.load_merged
    assert r.load_after
    notes = []
    if r.compaction.lag_max_ms > STALL_MS:
        gc_part = r.compaction.gc_max_ms >= r.compaction.lag_max_ms / 2
        notes.append(
            f"- **Compaction stalls the event loop**: for up to {lag(r.compaction.lag_max_ms)} "
            f"(p99 {lag(r.compaction.lag_p99_ms)}), although its fold runs on a worker thread."
            + (
                f" Most of it is one garbage collection ({lag(r.compaction.gc_max_ms)}), which "
                "pauses every thread: allocating the log's rows triggers full collections."
                if gc_part
                else ""
            )
        )
    if r.fold_ours.lag_max_ms > STALL_MS and r.fold_peer.lag_max_ms < STALL_MS:
        notes.append(
            f"- `doc_from_state` held the loop {lag(r.fold_ours.lag_max_ms)}, the bare fold at "
            f"most {lag(r.fold_peer.lag_max_ms)}: one native pycrdt call on the worker thread "
            "held the GIL that long (a transaction's commit over many updates does). The "
            "server's cold load runs the same function: while the big room loaded, a join of "
            f"another room waited up to {duration(max(r.joins_before.other_during_load))}."
        )
    if r.load_merged.lag_max_ms > STALL_MS:
        notes.append(
            "- The `merge_updates` squash is no substitute for a snapshot: loading its result "
            f"is one `apply_update` call that held the loop {lag(r.load_merged.lag_max_ms)} "
            f"({duration(r.load_merged.seconds)}), against {duration(r.load_after.seconds)} "
            "to read and load the snapshot."
        )
    return [*notes, ""] if notes else []


def render(r: Results, command: str) -> str:
    w, env = r.workload, r.environment
    credit = CREDITS[w.trace]
    lines = [
        f"Measured {env['date']} with `{command}` at {env['revision']}, on {env['machine']}; "
        f"Python {env['python']}, pycrdt {env['pycrdt']}, {env['database']}. One run: compare "
        "ratios, not seconds.",
        "",
        f"Workload: the `{w.trace}` editing trace, {len(w.updates):,} updates (one per "
        f"transaction, from `Doc.observe`), final text {len(w.text):,} characters; replayed "
        f"in {duration(w.replay_seconds)}, appended to one room with `Store.append_updates` in "
        f"batches of {INGEST_BATCH:,} in {duration(r.ingest_seconds)}. The `{w.trace}` trace "
        f"is by {credit}, from [josephg/editing-traces]"
        f"(https://github.com/josephg/editing-traces), licensed [CC BY 4.0]({LICENCE}).",
        "",
        "### Log and snapshot sizes",
        "",
        *sizes_table(r),
        *snapshot_table(r),
        "### Compaction time and event-loop lag",
        "",
        *time_table(r),
        *load_table(r),
        f"### Joining the room ({r.repeats} joins each)",
        "",
        *joins_table(r),
        *findings(r),
    ]
    return "\n".join(lines)


READING = """\
How to read these:

- *after/before*: the same room on the same server process in the same run, before and after
  `compact_room`. The server ran with `COLLAB_COMPACT_ON_UNLOAD=false` and huge
  `COLLAB_COMPACT_AFTER_UPDATES` / `COLLAB_COMPACT_AFTER_BYTES`, so only the benchmark
  compacted. A cold join is a fresh y-websocket client (`bench/client.py`) connecting to a
  room that is not loaded: the server reads and folds the room, then answers the client's
  SyncStep1 with the whole document; the time stops when that SyncStep2 arrives. Every
  document handed back is checked against the trace's final text.
- *bare fold*: every update applied to a fresh `Doc`, one transaction each, then
  `get_update()`: the least work any squash must do, with no store and no checks. It is what
  pycrdt-store's `SQLiteYStore` does when it squashes a document's history. `compact_room`
  against it is the price of reading the log from the database, verifying the snapshot and
  writing it in one transaction.
- *merge_updates*: `pycrdt.merge_updates` (`Y.mergeUpdates` in Yjs), the ecosystem's usual
  squash. It is quadratic in the number of updates (minutes for a whole session in one
  call), so it runs on chunks and then on their results; its output keeps every deleted
  character's structure, so it is bigger and slower to load than an encoded document.
- *loop lag*: how late a 1 ms `asyncio.sleep` wakes up on the event loop that awaits the
  work: the time every other room of that server would wait. CPU work on a worker thread
  still stalls the loop while a native call holds the GIL.
- On-disk sizes: `pg_total_relation_size` (table, indexes, TOAST). Deleting the log leaves
  its pages allocated until VACUUM: a plain VACUUM (autovacuum's) truncates the empty table
  but keeps the index's pages, `VACUUM FULL` rewrites both.
"""


# -- the command ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.compaction", description=__doc__)
    parser.add_argument("--trace", choices=sorted(CREDITS), help="default: automerge-paper")
    parser.add_argument("--updates", type=int, help="replay only the first N transactions")
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server to create a scratch database on (default: "
        f"{DEFAULT_POSTGRES_URL}), or `sqlite` for a temporary file",
    )
    parser.add_argument("--repeats", type=int, help="joins per measurement (default: 5)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long run (2,000 updates of friendsforever_flat on SQLite); no docs",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    options = parser.parse_args(argv)
    smoke = options.smoke
    options.trace = options.trace or ("friendsforever_flat" if smoke else "automerge-paper")
    options.updates = options.updates or (2000 if smoke else None)
    options.database_url = options.database_url or ("sqlite" if smoke else DEFAULT_POSTGRES_URL)
    options.repeats = options.repeats or (2 if smoke else 5)
    options.write_docs = not (smoke or options.no_docs)
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    args = " ".join(sys.argv[1:] if argv is None else argv)
    command = f"python -m bench.compaction {args}".strip()
    results, checks = asyncio.run(run(options))
    body = render(results, command)
    print(body)
    if checks.failed:
        print(f"text MISMATCH in {len(checks.failed)} of {checks.passed + len(checks.failed)}:")
        print("\n".join(f"  {failure}" for failure in checks.failed))
        return 1
    print(f"text matched: {checks.passed} documents hold the trace's final text")
    if options.write_docs:
        update_docs_section("Compaction", body + "\n" + READING)
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every benchmark needs: a scratch database, an event-loop lag probe, machine facts,
and a way to put its results into `docs/benchmarks.md` without touching the other sections."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

from crdt_store import upgrade_database

#: The PostgreSQL server to create scratch databases on (the tests' variable, same default).
DEFAULT_POSTGRES_URL = os.environ.get(
    "COLLAB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def _database_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + name


@contextmanager
def scratch_database(url: str) -> Iterator[str]:
    """A migrated, empty database of its own, removed at exit.

    `url` names a PostgreSQL server (any database on it: a `collab_bench_<random>` database is
    created beside it and dropped at the end, like the tests do) or `sqlite` (a file in a
    temporary directory).
    """
    if url == "sqlite" or url.startswith("sqlite:"):
        with tempfile.TemporaryDirectory(prefix="collab-bench-") as directory:
            sqlite_url = f"sqlite:///{Path(directory) / 'bench.sqlite3'}"
            upgrade_database(sqlite_url)
            yield sqlite_url
        return
    name = f"collab_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            database_url = _database_url(url, name)
            upgrade_database(database_url)
            yield database_url
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class LagProbe:
    """How late a 1 ms sleep wakes up while something else runs in the same event loop.

    That lateness is what every other room of the server waits when one room's work holds the
    loop (or, from a worker thread, the GIL). Use as `async with LagProbe() as probe: ...`.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lags: list[float] = []
        #: Garbage collections meanwhile (any thread): they pause the whole process.
        self.gc_pauses: list[float] = []
        self._gc_started = 0.0
        self._running = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LagProbe:
        self._running = True
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._running = False
        assert self._task is not None
        await self._task
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    async def _tick(self) -> None:
        while self._running:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(time.perf_counter() - started - self.interval)

    @property
    def max_ms(self) -> float:
        return max(self.lags, default=0.0) * 1000

    @property
    def gc_max_ms(self) -> float:
        return max(self.gc_pauses, default=0.0) * 1000

    @property
    def p99_ms(self) -> float:
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(value: float, reference: float) -> str:
    """`value / reference` as `0.12x`; ratios are what compares across machines."""
    if reference == 0 or value != value or reference != reference:
        return "n/a"
    return f"{value / reference:.3g}x"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def server_version(database_url: str) -> str:
    """`PostgreSQL 15.18` or `SQLite 3.x` (the library's version: SQLite has no server)."""
    if database_url.startswith("sqlite"):
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    with psycopg.connect(database_url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def revision() -> str:
    """The commit measured, and whether the code under test differed from it."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "collab_server", "crdt_store")
    return f"{commit} with uncommitted changes" if changed else commit


def environment(database_url: str) -> dict[str, str]:
    """The facts a reader needs to weigh absolute numbers (ratios travel, seconds do not)."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": revision(),
        "machine": f"{os.cpu_count()} CPUs ({cpu_model()}), {platform.system()}, load average "
        f"{os.getloadavg()[0]:.1f} at the start",
        "python": platform.python_version(),
        "pycrdt": version("pycrdt"),
        "database": server_version(database_url),
    }


def update_docs_section(heading: str, body: str, path: Path = DOCS) -> None:
    """Replace the `## heading` section of `path` (or append it): each benchmark owns one."""
    title = "# Benchmarks\n\nLatest results of the benchmarks in `bench/` (`bench/README.md`).\n"
    text = path.read_text() if path.exists() else title
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def failed_runs(failures: Sequence[str]) -> list[str]:
    """The lines listing failed runs in a results section (none if none failed)."""
    return ["Failed runs:", "", *(f"- {failure}" for failure in failures), ""] if failures else []


def publish(heading: str, body: str, reading: str, failures: Sequence[str], *, docs: bool) -> int:
    """Print a benchmark's results, write them as the `heading` section of the docs when asked
    (failed runs are listed in the body: they are findings too); the exit status."""
    print(body)
    if docs:
        update_docs_section(heading, body + "\n" + reading)
        print("updated docs/benchmarks.md")
    if failures:
        print(f"{len(failures)} run(s) FAILED")
        return 1
    return 0

"""The servers the suite compares, each started on loopback in its own process, and what they
cost: CPU seconds and memory from `/proc/<pid>`, plus the PostgreSQL backends serving ours.

    with start("reference") as server:      # a name from SERVERS
        room = await server.room("replay")  # the id clients join
        before = server.usage()
        ...
        spent = server.usage() - before
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench.common import scratch_database
from tests.support.server import ServerProcess, free_port

PEERS = Path(__file__).resolve().parent / "peers"
_TICKS = os.sysconf("SC_CLK_TCK")
#: Our server as in production, quieter: only the log level differs from the defaults.
OUR_ENV = {"COLLAB_LOG_LEVEL": "WARNING"}


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    #: "y-websocket" (the stock protocol) or "hocuspocus" (its own, with its own provider).
    protocol: str
    #: For ours: `postgres` or `sqlite`; None for the in-memory peers.
    database: str | None = None


SERVERS = {
    spec.name: spec
    for spec in (
        ServerSpec("ours", "collab-server (PostgreSQL)", "y-websocket", "postgres"),
        ServerSpec("ours-sqlite", "collab-server (SQLite)", "y-websocket", "sqlite"),
        ServerSpec("reference", "@y/websocket-server (reference)", "y-websocket"),
        ServerSpec("pycrdt", "pycrdt-websocket", "y-websocket"),
        ServerSpec("hocuspocus", "Hocuspocus", "hocuspocus"),
    )
}
REFERENCE = "reference"
NODE_PACKAGES = (
    "@y/websocket-server",
    "@hocuspocus/server",
    "@hocuspocus/provider",
    "y-websocket",
    "yjs",
)


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system, waited-for children included) and memory in bytes."""

    cpu: float
    #: The PostgreSQL backends serving the server's database (0 for the others).
    database_cpu: float
    rss: int
    #: Peak resident memory since the last `reset_peak()` (VmHWM).
    peak: int

    def __sub__(self, before: Usage) -> Usage:
        return Usage(
            self.cpu - before.cpu, self.database_cpu - before.database_cpu, self.rss, self.peak
        )


def process_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of `/proc/<pid>/stat`, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    return sum(int(value) for value in fields[11:15]) / _TICKS


def process_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(value.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak(pid: int) -> None:
    """Start VmHWM afresh from the current RSS (`clear_refs` 5; we run as root)."""
    # Not permitted (not root): the peak then covers the process's whole life.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


class DatabaseCpu:
    """CPU of the PostgreSQL backends connected to one database, sampled in a thread.

    Backends come and go (the pool opens extra connections under load), so pids are polled
    from `pg_stat_activity` every `interval` seconds and each one's CPU counted from its
    first sighting (from zero when it appeared after the start). CPU of a backend that
    closes between two polls is missed since its last poll; the WAL writer, checkpointer and
    other shared processes are not counted at all.
    """

    def __init__(self, database_url: str, interval: float = 0.1) -> None:
        self._url = database_url
        self._name = database_url.rsplit("/", 1)[1]
        self._interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DatabaseCpu:
        self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        self._poll(initial=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _poll(self, *, initial: bool = False) -> None:
        rows = self._conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (self._name,),
        ).fetchall()
        with self._lock:
            for (pid,) in rows:
                try:
                    cpu = process_cpu(pid)
                except OSError:
                    continue
                self._first.setdefault(pid, cpu if initial else 0.0)
                self._last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def seconds(self) -> float:
        self._poll()
        with self._lock:
            return sum(self._last[pid] - self._first[pid] for pid in self._last)


class BenchServer:
    """A started server: where clients connect, how rooms are made, what it has used."""

    def __init__(
        self,
        spec: ServerSpec,
        pid: int,
        url: str,
        *,
        http_url: str | None = None,
        database_url: str | None = None,
        database: DatabaseCpu | None = None,
    ) -> None:
        self.spec = spec
        self.pid = pid
        #: What the client passes its provider: y-websocket's base URL, Hocuspocus's URL.
        self.url = url
        #: Ours only: its REST API and its (scratch) database.
        self.http_url = http_url
        self.database_url = database_url
        self._database = database

    async def room(self, name: str) -> str:
        """The id a client joins: ours creates rooms over REST, the peers on first join."""
        if self.http_url is None:
            return name
        async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
            response = await client.post(
                f"{self.http_url}/api/v1/rooms", json={"name": name, "language": "plaintext"}
            )
            response.raise_for_status()
            room_id: str = response.json()["id"]
            return room_id

    def usage(self) -> Usage:
        rss, peak = process_memory(self.pid)
        database = self._database.seconds() if self._database else 0.0
        return Usage(process_cpu(self.pid), database, rss, peak)

    def reset_peak(self) -> None:
        reset_peak(self.pid)


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"server not listening after 30 s:\n{log.read_text(errors='replace')}")


@contextmanager
def _peer(command: list[str], env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """A peer server process on a free port: yields (pid, port), terminates it at exit."""
    port = free_port()
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)},
            cwd=PEERS,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_listening(port, process, log)
        yield process.pid, port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def start(
    name: str, *, postgres_url: str, env: dict[str, str] | None = None
) -> Iterator[BenchServer]:
    """Start the server `name` (a key of SERVERS) fresh; stop it at exit.

    Ours gets a scratch database of its own (`postgres_url`'s server, or a SQLite file) and
    `env` on top of OUR_ENV.
    """
    spec = SERVERS[name]
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-srv-")))
        log = directory / "server.log"
        if spec.database is not None:
            url = stack.enter_context(
                scratch_database("sqlite" if spec.database == "sqlite" else postgres_url)
            )
            server = ServerProcess(database_url=url, log_path=log, env={**OUR_ENV, **(env or {})})
            server.start(timeout=60)
            stack.callback(server.terminate)
            assert server.process is not None
            database = None
            if spec.database == "postgres":
                database = stack.enter_context(DatabaseCpu(url))
            yield BenchServer(
                spec,
                server.process.pid,
                server.ws_url,
                http_url=server.http_url,
                database_url=url,
                database=database,
            )
            return
        if name == "reference":
            command = ["node", "node_modules/@y/websocket-server/src/server.js"]
        elif name == "hocuspocus":
            command = ["node", "hocuspocus-server.mjs"]
        else:
            command = [sys.executable, "-m", "bench.pycrdt_peer"]
        pythonpath = {"PYTHONPATH": str(PEERS.parents[1])}
        pid, port = stack.enter_context(_peer(command, pythonpath, log))
        yield BenchServer(spec, pid, f"ws://127.0.0.1:{port}")


def node_versions() -> dict[str, str]:
    """The versions of Node and of the packages the suite runs (installed in bench/peers)."""
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    found = {"node": node.stdout.strip().lstrip("v")}
    for package in NODE_PACKAGES:
        manifest = PEERS / "node_modules" / package / "package.json"
        found[package] = json.loads(manifest.read_text())["version"]
    return found

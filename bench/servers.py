"""The servers the suite compares, each started on loopback in its own process (ours also as
several processes on one database), and what they cost: CPU seconds and memory from
`/proc/<pid>`, plus the PostgreSQL backends (and Redis) serving ours.

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
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
    #: Where it stores: `postgres` or `sqlite`; None for the in-memory peers.
    database: str | None = None
    #: The scenarios it runs (None: all of them).
    scenarios: frozenset[str] | None = None


SERVERS = {
    spec.name: spec
    for spec in (
        ServerSpec("ours", "collab-server (PostgreSQL)", "y-websocket", "postgres"),
        ServerSpec("ours-sqlite", "collab-server (SQLite)", "y-websocket", "sqlite"),
        ServerSpec("reference", "@y/websocket-server (reference)", "y-websocket"),
        ServerSpec("pycrdt", "pycrdt-websocket", "y-websocket"),
        ServerSpec("hocuspocus", "Hocuspocus", "hocuspocus"),
        # Not a server users would pick: the floor of committing before relaying in Python.
        ServerSpec(
            "floor",
            "minimal Python commit-then-relay (floor)",
            "y-websocket",
            "postgres",
            scenarios=frozenset({"fanout"}),
        ),
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
    """CPU seconds (user + system, waited-for children included) and memory in bytes, summed
    over the server's processes."""

    cpu: float
    #: The part of `cpu` spent in the kernel (system time): sockets, wake-ups. What a server
    #: cannot save by being faster itself.
    system: float
    #: The services ours stores in and relays through: the PostgreSQL backends serving its
    #: database, and Redis when its processes relay through it (0 for the others).
    services_cpu: float
    rss: int
    #: Peak resident memory since the last `reset_peak()` (VmHWM; of several processes, the
    #: sum of their peaks).
    peak: int

    def __sub__(self, before: Usage) -> Usage:
        return Usage(
            self.cpu - before.cpu,
            self.system - before.system,
            self.services_cpu - before.services_cpu,
            self.rss,
            self.peak,
        )


def process_times(pid: int) -> tuple[float, float]:
    """(user, system) seconds of `/proc/<pid>/stat`, waited-for children included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + cutime) / _TICKS, (stime + cstime) / _TICKS


def process_cpu(pid: int) -> float:
    """User + system seconds of `/proc/<pid>/stat`, waited-for children included."""
    return sum(process_times(pid))


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


class RedisCpu:
    """CPU of the Redis server (`INFO cpu`: user + system of the whole server, so also of any
    other client it serves meanwhile)."""

    def __init__(self, redis_url: str) -> None:
        import redis  # like the Redis fan-out, an optional dependency: only its runs need it

        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=5)

    def __enter__(self) -> RedisCpu:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def seconds(self) -> float:
        info = self._client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


#: Resident memory past which a server under test is killed: every server here stays under
#: 300 MB, and one that runs away (pycrdt-websocket's grew past 16 GB with 500 idle clients in
#: one suite run) would otherwise have the kernel's OOM killer pick a victim, PostgreSQL maybe.
MEMORY_LIMIT = 4 * 1024**3


class MemoryGuard:
    """Kills (SIGKILL) any of `pids` whose resident memory passes `limit`, polled in a thread;
    `killed` then says which and why, for the run's failures."""

    def __init__(self, pids: Sequence[int], label: str, limit: int = MEMORY_LIMIT) -> None:
        self._pids = tuple(pids)
        self._label = label
        self._limit = limit
        self.killed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-guard", daemon=True)

    def __enter__(self) -> MemoryGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for pid in self._pids:
                with contextlib.suppress(OSError, KeyError):  # gone: nothing to guard
                    rss, _ = process_memory(pid)
                    if rss > self._limit:
                        os.kill(pid, signal.SIGKILL)
                        self.killed = (
                            f"{self._label} killed: resident memory {rss / 1024**3:.1f} GiB, "
                            f"past the bench's limit of {self._limit / 1024**3:.1f} GiB"
                        )
                        print(self.killed, file=sys.stderr)
                        return


class CpuMeter(Protocol):
    """A service's CPU (`DatabaseCpu`, `RedisCpu`): `BenchServer` sums them into
    `Usage.services_cpu`."""

    def seconds(self) -> float:
        """CPU seconds spent so far."""
        ...


class BenchServer:
    """A started server, one process or several serving one database: where clients connect,
    how rooms are made, what it has used (summed over its processes)."""

    def __init__(
        self,
        spec: ServerSpec,
        pids: Sequence[int],
        urls: Sequence[str],
        *,
        http_urls: Sequence[str] = (),
        database_url: str | None = None,
        services: Sequence[CpuMeter] = (),
        guard: MemoryGuard | None = None,
    ) -> None:
        self.spec = spec
        self.pids = tuple(pids)
        #: What the client passes its provider, one a process: y-websocket's base URL,
        #: Hocuspocus's URL.
        self.urls = tuple(urls)
        #: Ours only: each process's REST API (and /metrics), and its (scratch) database.
        self.http_urls = tuple(http_urls)
        self.database_url = database_url
        self._services = tuple(services)
        self._guard = guard

    @property
    def killed(self) -> str | None:
        """Why the memory guard killed the server, if it did."""
        return self._guard.killed if self._guard else None

    @property
    def url(self) -> str:
        """The first process's URL (the only one of a single process)."""
        return self.urls[0]

    @property
    def http_url(self) -> str | None:
        """Ours: the first process's REST API (where rooms are made)."""
        return self.http_urls[0] if self.http_urls else None

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
        memory = [process_memory(pid) for pid in self.pids]
        times = [process_times(pid) for pid in self.pids]
        return Usage(
            sum(user + system for user, system in times),
            sum(system for _, system in times),
            sum(meter.seconds() for meter in self._services),
            sum(rss for rss, _ in memory),
            sum(peak for _, peak in memory),
        )

    def reset_peak(self) -> None:
        for pid in self.pids:
            reset_peak(pid)


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
    name: str, *, postgres_url: str, env: dict[str, str] | None = None, processes: int = 1
) -> Iterator[BenchServer]:
    """Start the server `name` (a key of SERVERS) fresh; stop it at exit.

    Ours gets a scratch database of its own (`postgres_url`'s server, or a SQLite file) and
    `env` on top of OUR_ENV; on PostgreSQL it may run as several `processes` sharing that
    database (each relays the others' commits: PostgreSQL NOTIFY, or Redis Streams when `env`
    holds COLLAB_REDIS_URL).
    """
    spec = SERVERS[name]
    if processes > 1 and name != "ours":
        raise ValueError(f"{name} runs as one process only")
    with ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-srv-")))
        if name == "floor":
            url = stack.enter_context(scratch_database(postgres_url))
            pid, port = stack.enter_context(
                _peer(
                    [sys.executable, "-m", "bench.floor_peer"],
                    {"PYTHONPATH": str(PEERS.parents[1]), "COLLAB_DATABASE_URL": url},
                    directory / "server.log",
                )
            )
            yield BenchServer(
                spec,
                [pid],
                [f"ws://127.0.0.1:{port}"],
                database_url=url,
                services=[stack.enter_context(DatabaseCpu(url))],
                guard=stack.enter_context(MemoryGuard([pid], spec.label)),
            )
            return
        if spec.database is not None:
            url = stack.enter_context(
                scratch_database("sqlite" if spec.database == "sqlite" else postgres_url)
            )
            our_env = {**OUR_ENV, **(env or {})}
            servers = [
                ServerProcess(database_url=url, log_path=directory / f"server-{i}.log", env=our_env)
                for i in range(processes)
            ]
            for server in servers:  # all starting at once, then each waited for
                server.start(wait_ready=False)
                stack.callback(server.terminate)
            pids = []
            for server in servers:
                server.wait_ready(timeout=60)
                assert server.process is not None
                pids.append(server.process.pid)
            services: list[CpuMeter] = []
            if spec.database == "postgres":
                services.append(stack.enter_context(DatabaseCpu(url)))
            if redis_url := our_env.get("COLLAB_REDIS_URL"):
                services.append(stack.enter_context(RedisCpu(redis_url)))
            yield BenchServer(
                spec,
                pids,
                [server.ws_url for server in servers],
                http_urls=[server.http_url for server in servers],
                database_url=url,
                services=services,
                guard=stack.enter_context(MemoryGuard(pids, spec.label)),
            )
            return
        if name == "reference":
            command = ["node", "node_modules/@y/websocket-server/src/server.js"]
        elif name == "hocuspocus":
            command = ["node", "hocuspocus-server.mjs"]
        else:
            command = [sys.executable, "-m", "bench.pycrdt_peer"]
        pythonpath = {"PYTHONPATH": str(PEERS.parents[1])}
        pid, port = stack.enter_context(_peer(command, pythonpath, directory / "server.log"))
        guard = stack.enter_context(MemoryGuard([pid], spec.label))
        yield BenchServer(spec, [pid], [f"ws://127.0.0.1:{port}"], guard=guard)


def node_versions() -> dict[str, str]:
    """The versions of Node and of the packages the suite runs (installed in bench/peers)."""
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    found = {"node": node.stdout.strip().lstrip("v")}
    for package in NODE_PACKAGES:
        manifest = PEERS / "node_modules" / package / "package.json"
        found[package] = json.loads(manifest.read_text())["version"]
    return found

"""Run one role of `bench/peers/clients.mjs` (a Node process of Yjs clients) from asyncio.

    async with Role.spawn({"role": "observer", "server": ..., "room": ...}) as observer:
        await observer.event("ready")
        ...
        done = await observer.event("done")

`progress` events go to `on_progress` as they arrive (the writer's throttle needs them at
once); the other events queue for `event()`. An `error` event, or the process exiting,
fails the `event()` that waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import PEERS, BenchServer

SCRIPT = PEERS / "clients.mjs"


class RoleFailed(RuntimeError):
    pass


class Role:
    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.name = name
        self.on_progress: Callable[[dict[str, Any]], None] = lambda _event: None
        self._process = process
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._stderr: list[str] = []
        self._tasks = [
            asyncio.create_task(self._read_events()),
            asyncio.create_task(self._read_stderr()),
        ]

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(cls, config: dict[str, Any]) -> AsyncIterator[Role]:
        if not (PEERS / "node_modules").is_dir():
            raise RuntimeError("Node packages missing: run `make bench-deps`")
        process = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            json.dumps(config),
            cwd=PEERS,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,  # a `done` line carries every latency sample
        )
        role = cls(process, config["role"])
        try:
            yield role
        finally:
            await role.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    def command(self, cmd: str, **fields: Any) -> None:
        assert self._process.stdin is not None
        if not self._process.stdin.is_closing():
            self._process.stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())

    async def event(self, name: str, within: float) -> dict[str, Any]:
        """The next queued event, which must be `name`, within `within` seconds."""
        try:
            event = await asyncio.wait_for(self._events.get(), within)
        except TimeoutError:
            raise RoleFailed(f"{self.name}: no {name!r} within {within} s{self._tail()}") from None
        if event["event"] == "error":
            raise RoleFailed(f"{self.name}: {event['message']}{self._tail()}")
        if event["event"] != name:
            raise RoleFailed(f"{self.name}: expected {name!r}, got {event}{self._tail()}")
        return event

    async def close(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ConnectionError):
                self.command("stop")
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        for task in self._tasks:
            await task

    def _tail(self) -> str:
        return ("\n" + "".join(self._stderr[-20:])) if self._stderr else ""

    async def _read_events(self) -> None:
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a library's stray print
                self._stderr.append(line.decode(errors="replace"))
                continue
            if event.get("event") == "progress":
                self.on_progress(event)
            else:
                self._events.put_nowait(event)
        await self._process.wait()
        self._events.put_nowait(
            {"event": "error", "message": f"exited with {self._process.returncode}"}
        )

    async def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        async for line in self._process.stderr:
            self._stderr.append(line.decode(errors="replace"))


def client_config(server: BenchServer, role: str, **fields: Any) -> dict[str, Any]:
    """A role's configuration for `clients.mjs`: which server (all its processes' URLs: a room's
    clients are spread over them), which protocol, what to do."""
    urls = list(server.urls)
    return {"role": role, "server": {"kind": server.spec.protocol, "urls": urls}, **fields}


@dataclass(frozen=True)
class Workload:
    """A run's slice of the trace, prepared once by `clients.mjs build`."""

    #: The slice as plain JSON (what the Node roles read) and its number of edits.
    trace: Path
    edits: int
    #: The text after every edit of the slice.
    text: str
    #: The final document as one update (a compacted room) and the session's updates.
    document: Path
    updates: Path


async def build_workload(trace: Path, limit: int | None, directory: Path) -> Workload:
    paths = {name: directory / name for name in ("trace.json", "text.txt", "doc.bin", "log.bin")}
    config = {
        "role": "build",
        "trace": str(trace),
        "limit": limit,
        "traceOut": str(paths["trace.json"]),
        "textOut": str(paths["text.txt"]),
        "documentOut": str(paths["doc.bin"]),
        "updatesOut": str(paths["log.bin"]),
    }
    async with Role.spawn(config) as builder:
        done = await builder.event("done", 120)
    text = paths["text.txt"].read_text(encoding="utf-8")
    return Workload(paths["trace.json"], done["edits"], text, paths["doc.bin"], paths["log.bin"])


def read_updates(path: Path) -> list[bytes]:
    """The updates `build_document` wrote: each a 4-byte big-endian length, then the bytes."""
    data = path.read_bytes()
    updates, offset = [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        updates.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return updates

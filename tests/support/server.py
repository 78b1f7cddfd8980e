"""A real `collab-server serve` subprocess for tests: start, wait ready, SIGTERM, SIGKILL.

With `serve --workers N` the process is uvicorn's supervisor and the serving is done by its
children; `child_pids` and `ServerProcess.serving_pid` observe them through Linux's /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _parent_if_running(pid: int) -> int | None:
    """The parent of `pid`, or None once it has exited (a zombie, not yet reaped, has exited)."""
    try:
        # After "pid (comm)", comm possibly holding spaces and parentheses: state, parent, ...
        state, parent = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:2]
    except OSError:
        return None
    return None if state == "Z" else int(parent)


def is_running(pid: int) -> bool:
    return _parent_if_running(pid) is not None


def child_pids(pid: int) -> set[int]:
    """The running processes whose parent is `pid`, found as `pgrep -P` finds them.

    /proc/<pid>/task/*/children would be simpler, but not every kernel has it.
    """
    return {
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _parent_if_running(int(entry.name)) == pid
    }


def _server_socket_inode(connection: socket.socket) -> str:
    """The inode of the server end of `connection`, a TCP connection over 127.0.0.1."""
    client_port = connection.getsockname()[1]
    server_port = connection.getpeername()[1]
    # A row: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote = (int(address.rpartition(":")[2], 16) for address in fields[1:3])
        if (local, remote) == (server_port, client_port):
            return fields[9]
    raise LookupError(f"no server end for the connection from port {client_port}")


class ServerProcess:
    """One server process; `start()` again after `kill()` restarts it on the same port.

    `args` are passed to `serve` after `--port` (such as `("--workers", "2")`).
    """

    def __init__(
        self,
        *,
        database_url: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        self.database_url = database_url
        self.log_path = log_path
        self.env = env or {}
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """The base URL y-websocket wants: `new WebsocketProvider(ws_url, roomId, doc)`."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, *, timeout: float = 30.0, wait_ready: bool = True) -> None:
        env = {
            **os.environ,
            "COLLAB_DATABASE_URL": self.database_url,
            "COLLAB_LOG_LEVEL": "INFO",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "collab_server",
                    "serve",
                    "--port",
                    str(self.port),
                    *self.args,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.http_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()}")

    def serving_pid(self, connection: socket.socket) -> int:
        """The process holding the server end of `connection`: this one, or one of its workers."""
        assert self.process is not None
        candidates = {self.process.pid, *child_pids(self.process.pid)}
        target = f"socket:[{_server_socket_inode(connection)}]"
        for pid in candidates:
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) == target for fd in Path(f"/proc/{pid}/fd").iterdir()):
                    return pid
        raise LookupError(f"no process of the server holds {target}")

    def kill(self) -> None:
        """SIGKILL to the server and its workers: no shutdown code runs, exactly like a crash."""
        workers = child_pids(self.process.pid) if self.process else set()
        self._signal(signal.SIGKILL)  # first, so that the supervisor starts no replacement
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def terminate(self, *, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the graceful shutdown path. Returns the exit code."""
        return self._signal(signal.SIGTERM, timeout=timeout)

    def _signal(self, signum: int, *, timeout: float = 20.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signum)
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

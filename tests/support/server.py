"""A real `collab-server serve` subprocess for tests: start, wait ready, SIGTERM, SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """One server process; `start()` again after `kill()` restarts it on the same port."""

    def __init__(
        self, *, database_url: str, log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.database_url = database_url
        self.log_path = log_path
        self.env = env or {}
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
                [sys.executable, "-m", "collab_server", "serve", "--port", str(self.port)],
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

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        self._signal(signal.SIGKILL)

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

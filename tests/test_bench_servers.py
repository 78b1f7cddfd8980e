"""The bench's memory guard: a server under test that runs away is killed before the machine's
OOM killer picks a victim of its own (PostgreSQL, say)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from bench.servers import MemoryGuard

LIMIT = 100 * 1024**2


@pytest.fixture
def process_holding() -> Iterator[Callable[[int], subprocess.Popen[bytes]]]:
    """Start a process that holds this many MB resident (killed at the end)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(megabytes: int) -> subprocess.Popen[bytes]:
        code = f"import sys, time; held = b'x' * ({megabytes} * 1024**2); print(); time.sleep(60)"
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert process.stdout is not None
        process.stdout.readline()  # the memory is held
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def test_a_server_past_the_memory_limit_is_killed_and_the_reason_kept(
    process_holding: Callable[[int], subprocess.Popen[bytes]],
) -> None:
    hog = process_holding(300)
    with MemoryGuard([hog.pid], "hog", limit=LIMIT) as guard:
        assert hog.wait(timeout=5) == -signal.SIGKILL
    assert guard.killed is not None
    assert guard.killed.startswith("hog killed: resident memory")


def test_a_server_under_the_memory_limit_is_left_running(
    process_holding: Callable[[int], subprocess.Popen[bytes]],
) -> None:
    sleeper = process_holding(1)
    with MemoryGuard([sleeper.pid], "sleeper", limit=LIMIT) as guard:
        time.sleep(1.5)  # three polls
        assert sleeper.poll() is None
    assert guard.killed is None

"""The interface every fan-out backend offers the server, and the one for a lone process.

The database stays the only source of truth: a fan-out only says sooner what the log already
holds. A backend may lose messages (a dropped connection, a restart); receivers notice by the
sequence numbers and read the log, and after a reconnect it delivers `Resubscribed`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Generic, TypeVar

from .events import Event

logger = logging.getLogger(__name__)

Handler = Callable[[Event], None]
Item = TypeVar("Item")

#: What a backend keeps to send while its server is unreachable; older items are dropped
#: (receivers read the log when they notice the gap).
MAX_QUEUED = 10_000
#: How long `stop` tries to send what is queued.
STOP_FLUSH_SECONDS = 1.0


class Fanout(ABC):
    """Publishes this process's commits and awareness; delivers other processes' to `handler`.

    Usage::

        async with backend.running(handler):
            await backend.watch(room_id)      # before loading the room: subscribe first
            backend.publish_committed({room_id: (first, updates)})
    """

    def __init__(self) -> None:
        #: Tells this process's own messages apart: they are never delivered back to it.
        self.origin = uuid.uuid4().hex[:16]
        self._handler: Handler = _ignore

    @asynccontextmanager
    async def running(self, handler: Handler) -> AsyncIterator[Fanout]:
        self._handler = handler
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    def _deliver(self, event: Event) -> None:
        """Hand `event` to the handler; a failure there must not stop the listener."""
        try:
            self._handler(event)
        except Exception:
            logger.exception("fan-out: handling %s failed", type(event).__name__)

    @abstractmethod
    async def start(self) -> None:
        """Start publishing and listening (returns at once; connecting is retried)."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop, after a short attempt at sending what is queued."""

    @abstractmethod
    def publish_committed(self, commits: Mapping[str, tuple[int, Sequence[bytes]]]) -> None:
        """Announce rows just committed: room id -> (seq of the first row, the rows' updates).
        Never blocks; called after the commit, never inside its transaction."""

    @abstractmethod
    def publish_awareness(self, room_id: str, payload: bytes) -> None:
        """Relay an awareness update to the other processes (at most once, never blocks)."""

    @abstractmethod
    async def watch(self, room_id: str) -> None:
        """Deliver the room's messages from now on (before its log is read)."""

    @abstractmethod
    def unwatch(self, room_id: str) -> None:
        """Stop delivering the room's messages (it was unloaded)."""


class QueuedFanout(Fanout, Generic[Item]):
    """A backend whose publishing only queues, for one task that sends and another that
    listens: the commit path never waits on the fan-out's network."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: deque[Item] = deque(maxlen=MAX_QUEUED)
        self._queued = asyncio.Event()
        #: Set while nothing waits to be sent.
        self._sent = asyncio.Event()
        self._sent.set()
        self._tasks: list[asyncio.Task[None]] = []

    def _enqueue(self, item: Item) -> None:
        self._queue.append(item)
        self._sent.clear()
        self._queued.set()

    async def start(self) -> None:
        name = type(self).__name__
        self._tasks = [
            asyncio.create_task(self._send_forever(), name=f"{name}.send"),
            asyncio.create_task(self._listen_forever(), name=f"{name}.listen"),
        ]

    async def stop(self) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(STOP_FLUSH_SECONDS):
                await self._sent.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close()

    @abstractmethod
    async def _send_forever(self) -> None:
        """Send what is queued, in order; setting `_sent` once the queue is empty."""

    @abstractmethod
    async def _listen_forever(self) -> None:
        """Deliver the other processes' messages, reconnecting as needed."""

    @abstractmethod
    async def _close(self) -> None:
        """Close what the tasks leave open."""


def _ignore(event: Event) -> None:
    """The handler until `running` sets one."""


class SingleProcess(Fanout):
    """No other process to tell (SQLite: one process owns the file)."""

    async def start(self) -> None:
        """Nothing to connect to."""

    async def stop(self) -> None:
        """Nothing to close."""

    def publish_committed(self, commits: Mapping[str, tuple[int, Sequence[bytes]]]) -> None:
        """Nobody listens."""

    def publish_awareness(self, room_id: str, payload: bytes) -> None:
        """Nobody listens."""

    async def watch(self, room_id: str) -> None:
        """Nothing to subscribe to."""

    def unwatch(self, room_id: str) -> None:
        """Nothing to unsubscribe from."""

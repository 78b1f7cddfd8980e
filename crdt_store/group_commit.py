"""Group commit: every append that arrives while a commit is in flight joins the next one.

Durability costs one transaction (one fsync) per batch instead of one per keystroke, whatever
the number of rooms and writers; on PostgreSQL the batch for all rooms is one statement.

A commit starts at least `min_interval` after the previous one ended (PostgreSQL's
`commit_delay`, in spirit): an append arriving after a quiet moment is committed at once, while a
steady stream of appends (many rooms at human typing speed: each commit would otherwise carry
one keystroke) is gathered for that long. The fixed cost of a commit, a round trip and a wake-up
of the server, is then paid once for several keystrokes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import NamedTuple

from .errors import RoomNotFound
from .store import Store

logger = logging.getLogger(__name__)

#: Called once a batch is committed: room id -> (seq of its first row, the rows' updates).
OnCommitted = Callable[[Mapping[str, tuple[int, Sequence[bytes]]]], None]


class Rows(NamedTuple):
    """The sequence numbers one `append` call's updates got: `first..last`."""

    first: int
    last: int


class GroupCommitter:
    """Batches `append` calls from any number of tasks into single transactions.

    Usage::

        async with GroupCommitter(store) as committer:
            rows = await committer.append(room_id, [update])   # returns once committed

    `on_committed` hears of every batch right after its commit (the fan-out to other processes).
    """

    def __init__(
        self,
        store: Store,
        on_committed: OnCommitted | None = None,
        *,
        min_interval: float = 0.0,
    ) -> None:
        self._store = store
        self._on_committed = on_committed
        self._min_interval = min_interval
        self._last_commit_ended = -math.inf
        self._pending: dict[str, list[bytes]] = {}
        #: Per room: each caller's future and how many of the room's pending updates precede
        #: its own, to tell it which seqs its rows got.
        self._waiters: dict[str, list[tuple[asyncio.Future[Rows], int, int]]] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GroupCommitter:
        self._task = asyncio.create_task(self._run(), name="group-commit")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Finish the commit in flight and everything queued behind it: leaving means durable.
        assert self._task is not None
        self._closing = True
        self._wake.set()
        await self._task

    async def append(self, room_id: str, updates: Sequence[bytes]) -> Rows:
        """Append `updates` to the room's log; returns their seqs once committed.

        Raises `RoomNotFound` if the room is gone, `StoreUnavailable` if the commit failed
        (nothing of this batch was committed; appending again is safe, and Yjs updates are
        idempotent should the failure have hidden a successful commit).
        """
        future: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        pending = self._pending.setdefault(room_id, [])
        self._waiters.setdefault(room_id, []).append((future, len(pending), len(updates)))
        pending.extend(updates)
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                gather = self._last_commit_ended + self._min_interval - time.monotonic()
                if gather > 0 and not self._closing:
                    await asyncio.sleep(gather)
                await self._commit_pending()
                self._last_commit_ended = time.monotonic()

    async def _commit_pending(self) -> None:
        batches, waiters = self._pending, self._waiters
        self._pending, self._waiters = {}, {}
        try:
            result = await self._store.append_batches(batches)
        except Exception as error:
            for room_waiters in waiters.values():
                for future, _, _ in room_waiters:
                    if not future.done():
                        future.set_exception(error)
            return
        firsts = {
            room_id: head - len(batches[room_id]) + 1 for room_id, head in result.heads.items()
        }
        if self._on_committed is not None and firsts:
            try:
                self._on_committed({r: (first, batches[r]) for r, first in firsts.items()})
            except Exception:
                # The rows are committed: their writers must hear so. Other processes read
                # what they were not told from the log.
                logger.exception("announcing a commit failed")
        for room_id, room_waiters in waiters.items():
            for future, offset, count in room_waiters:
                if future.done():
                    continue
                if room_id in result.missing:
                    future.set_exception(RoomNotFound(room_id))
                else:
                    first = firsts[room_id] + offset
                    future.set_result(Rows(first, first + count - 1))

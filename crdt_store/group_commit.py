"""Group commit: every append that arrives while a commit is in flight joins the next one.

Durability costs one transaction (one fsync) per batch instead of one per keystroke, whatever
the number of rooms and writers; on PostgreSQL the batch for all rooms is one statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType

from .errors import RoomNotFound
from .store import Store


class GroupCommitter:
    """Batches `append` calls from any number of tasks into single transactions.

    Usage::

        async with GroupCommitter(store) as committer:
            head = await committer.append(room_id, [update])   # returns once committed
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, list[bytes]] = {}
        self._waiters: dict[str, list[asyncio.Future[int]]] = {}
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

    async def append(self, room_id: str, updates: Sequence[bytes]) -> int:
        """Append `updates` to the room's log; returns the room's head seq once committed.

        Raises `RoomNotFound` if the room is gone, `StoreUnavailable` if the commit failed
        (nothing of this batch was committed; appending again is safe, and Yjs updates are
        idempotent should the failure have hidden a successful commit).
        """
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(room_id, []).extend(updates)
        self._waiters.setdefault(room_id, []).append(future)
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while not (self._closing and not self._pending):
            await self._wake.wait()
            self._wake.clear()
            if self._pending:
                await self._commit_pending()

    async def _commit_pending(self) -> None:
        batches, waiters = self._pending, self._waiters
        self._pending, self._waiters = {}, {}
        try:
            result = await self._store.append_batches(batches)
        except Exception as error:
            for futures in waiters.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
            return
        for room_id, futures in waiters.items():
            for future in futures:
                if future.done():
                    continue
                if room_id in result.missing:
                    future.set_exception(RoomNotFound(room_id))
                else:
                    future.set_result(result.heads[room_id])

"""Group commit: every append that arrives while a commit is in flight joins the next one.

Durability costs one transaction (one fsync) per batch instead of one per keystroke, whatever
the number of rooms and writers; on PostgreSQL the batch for all rooms is one statement.

A commit starts `min_interval` after the previous one ended (PostgreSQL's `commit_delay`, in
spirit), to the event loop's timer resolution (uvloop's is a millisecond): an append arriving
after a quiet moment is committed at once, while a steady stream of appends (many rooms at human
typing speed: each commit would otherwise carry one keystroke) is gathered for that long. The
fixed cost of a commit, a round trip and a wake-up of the server, is then paid once for several
keystrokes.

The path of a commit runs in callbacks, not tasks: rooms ask to be flushed at the end of the
event loop's turn (`gather`), hand their updates over (`submit`), and the statement is sent
right after, in the same turn; its answer is read by the log connection's reader, which hears
each room's result at once and sends the next batch, with what the rooms flush as they hear
theirs (on SQLite, the appender's thread hands the result back to the loop). At human typing
speed each keystroke is a commit, and the wake-ups of the tasks that awaited it (the room's,
the group commit's, the append's) cost more CPU than the statement's round trip. Where the
store cannot send without awaiting (PostgreSQL with no log connection open yet), a task
appends instead.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any, NamedTuple

from .errors import RoomNotFound
from .futures import settle
from .store import Store

logger = logging.getLogger(__name__)

#: Called once a batch is committed: room id -> (seq of its first row, the rows' updates).
OnCommitted = Callable[[Mapping[str, tuple[int, Sequence[bytes]]]], None]


class Rows(NamedTuple):
    """The sequence numbers one `submit` call's updates got: `first..last`."""

    first: int
    last: int


#: Hears how a `submit` ended: its rows, `RoomNotFound` if the room is gone, `StoreUnavailable`
#: if the commit failed (nothing of it was committed; appending again is safe, and Yjs updates
#: are idempotent should the failure have hidden a successful commit), or another error.
Done = Callable[[Rows | BaseException], None]
#: Per room: each caller's `Done` and how many of the room's pending updates precede its own.
_Waiters = dict[str, list[tuple[Done, int, int]]]


class GroupCommitter:
    """Batches appends from any number of rooms into single transactions.

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
        self._waiters: _Waiters = {}
        #: Called at the end of this loop turn, before the pending appends are sent.
        self._flushes: list[Callable[[], None]] = []
        self._gather_scheduled = False
        self._in_flight = False
        #: A later start is scheduled (the commit interval has not passed since the last one).
        self._start_scheduled = False
        self._closing = False
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> GroupCommitter:
        self._loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Finish the commit in flight and everything queued behind it: leaving means durable.
        self._closing = True
        self._start()
        await self._quiet.wait()

    def gather(self, flush: Callable[[], None]) -> None:
        """Call `flush` at the end of this turn of the event loop, before the appends pending
        then are sent: every room that received updates in the turn joins one commit."""
        self._flushes.append(flush)
        self._schedule_gather()

    def submit(self, room_id: str, updates: Sequence[bytes], done: Done) -> None:
        """Append `updates` to the room's log with the next commit; `done` hears the outcome
        (see `Done`), from the event loop."""
        pending = self._pending.setdefault(room_id, [])
        self._waiters.setdefault(room_id, []).append((done, len(pending), len(updates)))
        pending.extend(updates)
        self._quiet.clear()
        self._schedule_gather()

    async def append(self, room_id: str, updates: Sequence[bytes]) -> Rows:
        """`submit`, awaited: the updates' seqs once committed; raises what `Done` would hear."""
        assert self._loop is not None, "use the committer inside `async with`"
        committed: asyncio.Future[Rows] = self._loop.create_future()
        self.submit(room_id, updates, partial(settle, committed))
        return await committed

    def _schedule_gather(self) -> None:
        if not self._gather_scheduled:
            assert self._loop is not None, "use the committer inside `async with`"
            self._gather_scheduled = True
            self._loop.call_soon(self._gather)

    def _gather(self) -> None:
        self._gather_scheduled = False
        self._flush_and_start()

    def _flush_and_start(self) -> None:
        """Run the flushes asked for, then start a commit with what they submitted."""
        flushes, self._flushes = self._flushes, []
        # Marked scheduled while the rooms flush: what they submit joins the commit started
        # below, without another turn of the loop.
        scheduled, self._gather_scheduled = self._gather_scheduled, True
        for flush in flushes:
            try:
                flush()
            except Exception:
                logger.exception("flushing a room's updates failed")
        self._gather_scheduled = scheduled
        if self._flushes:  # asked for during the flushes
            self._schedule_gather()
        self._start()

    def _start(self, *, waited: bool = False) -> None:
        """Send what is pending, unless a commit is in flight or the interval says wait
        (`waited`: its timer has fired)."""
        if self._in_flight or self._start_scheduled:
            return
        if not self._pending:
            if not self._flushes and not self._gather_scheduled:
                self._quiet.set()
            return
        assert self._loop is not None
        wait = self._last_commit_ended + self._min_interval - self._loop.time()
        if wait > 0 and not self._closing and not waited:
            self._start_scheduled = True
            self._loop.call_later(wait, self._start_after_interval)
            return
        batches, waiters = self._pending, self._waiters
        self._pending, self._waiters = {}, {}
        self._in_flight = True
        if not self._store.try_append(batches, partial(self._answered, batches, waiters)):
            self._run(self._append_awaiting(batches, waiters))

    def _start_after_interval(self) -> None:
        # Not measured again: uvloop fires a timer of less than half a millisecond at once,
        # while its clock, read once a millisecond, stands still; waiting out the rest of the
        # interval timer after timer spun the loop until the clock moved.
        self._start_scheduled = False
        self._start(waited=True)

    def _answered(
        self,
        batches: Mapping[str, Sequence[bytes]],
        waiters: _Waiters,
        outcome: dict[str, int] | Exception,
    ) -> None:
        if isinstance(outcome, Exception):
            # What the error means (a lost connection?) is settled by awaiting the store.
            self._run(self._fail(batches, waiters, outcome))
        else:
            self._settle(batches, waiters, outcome)

    async def _fail(
        self, batches: Mapping[str, Sequence[bytes]], waiters: _Waiters, error: Exception
    ) -> None:
        await self._settle_awaited(batches, waiters, self._store.append_failure(error))

    async def _append_awaiting(
        self, batches: Mapping[str, Sequence[bytes]], waiters: _Waiters
    ) -> None:
        await self._settle_awaited(batches, waiters, self._heads_after(batches))

    async def _heads_after(self, batches: Mapping[str, Sequence[bytes]]) -> dict[str, int]:
        return (await self._store.append_batches(batches)).heads

    async def _settle_awaited(
        self,
        batches: Mapping[str, Sequence[bytes]],
        waiters: _Waiters,
        outcome: Awaitable[dict[str, int] | Exception],
    ) -> None:
        try:
            result = await outcome
        except Exception as error:
            result = error
        except BaseException as error:
            self._settle(batches, waiters, error)
            raise
        self._settle(batches, waiters, result)

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _settle(
        self,
        batches: Mapping[str, Sequence[bytes]],
        waiters: _Waiters,
        outcome: dict[str, int] | BaseException,
    ) -> None:
        """Tell every waiter of the commit how it ended (`outcome`: the rooms' heads after it,
        rooms gone absent, or why it failed); then start the next one, with what the waiters
        flush as they hear it: a room holds what it receives while its batch commits, and
        flushed in a later turn it would miss the next commit and wait for the one after."""
        assert self._loop is not None
        self._in_flight = False
        # The flushes the waiters ask for run below, not in a turn scheduled for them.
        scheduled, self._gather_scheduled = self._gather_scheduled, True
        self._last_commit_ended = self._loop.time()
        if not isinstance(outcome, BaseException):
            self._announce(batches, outcome)
        for room_id, room_waiters in waiters.items():
            head = None if isinstance(outcome, BaseException) else outcome.get(room_id)
            for done, offset, count in room_waiters:
                heard: Rows | BaseException
                if isinstance(outcome, BaseException):
                    heard = outcome
                elif head is None:
                    heard = RoomNotFound(room_id)
                else:
                    first = head - len(batches[room_id]) + 1 + offset
                    heard = Rows(first, first + count - 1)
                try:
                    done(heard)
                except Exception:
                    logger.exception("a committed batch's listener failed")
        self._gather_scheduled = scheduled
        self._flush_and_start()

    def _announce(self, batches: Mapping[str, Sequence[bytes]], heads: dict[str, int]) -> None:
        if self._on_committed is None or not heads:
            return
        try:
            self._on_committed(
                {r: (head - len(batches[r]) + 1, batches[r]) for r, head in heads.items()}
            )
        except Exception:
            # The rows are committed: their writers must hear so. Other processes read what
            # they were not told from the log.
            logger.exception("announcing a commit failed")

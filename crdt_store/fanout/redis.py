"""Fan-out through Redis: a stream per room for commits, pub/sub for awareness.

For many processes or high write rates (issue "Scale out"): every NOTIFY goes to every process
through one PostgreSQL channel, while a room's stream is read only by the processes serving the
room, and a cursor move costs no database transaction.

Commits are appended to `collab:{namespace}:room:{room_id}` (`XADD MAXLEN ~`), one entry per
chunk of rows with the fields `origin`, `first`, `last` and `data` (`pack_updates`; absent when
the rows are too large to carry: read the log). Redis is never the only copy of a row, so streams
are trimmed by length and expire when idle. Awareness is published on `collab:{namespace}:awareness`
as `origin|room_id|payload`: pub/sub is at most once, enough for cursors and never for updates.

One reader connection blocks in XREAD on the streams of the rooms this process watches, each from
the last id read, and on a wake stream of the process's own, to which `watch` adds an entry so
that a new room is read at once. Connections are named `collab:{namespace}:{origin}:{role}`, so
CLIENT LIST tells them apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError
from redis.typing import KeyT, StreamIdT

from .base import QueuedFanout
from .events import (
    AwarenessChanged,
    Committed,
    Resubscribed,
    committed_chunks,
    pack_updates,
    unpack_updates,
)

logger = logging.getLogger(__name__)

#: Packed updates per stream entry; a larger single update is announced without its data. Small
#: enough to stay far from Redis's 512 MiB limit on a value and not to stall the reader.
_MAX_PACKED_BYTES = 1 << 20
#: Entries a room's stream keeps (approximately: `MAXLEN ~` trims whole nodes): readers follow
#: within milliseconds, and one left further behind reads the log after its reconnect.
_STREAM_LENGTH = 10_000
#: A stream nobody appended to for this long is deleted, so rooms edited once do not stay in
#: Redis's memory; a later commit starts it anew, with ids above any read before.
_STREAM_IDLE_SECONDS = 600
#: Commands sent in one pipeline (one round trip).
_MAX_PER_PIPELINE = 500
#: Redis answers in well under a millisecond: one silent this long is gone (reconnect), and a
#: room load waits no longer for its `watch`.
_ANSWER_SECONDS = 2.0
#: How long XREAD blocks and the awareness subscriber waits before it checks its connection.
_BLOCK_SECONDS = 2.0
#: Entries read from one stream at a time, so a room far behind does not starve the others.
_READ_COUNT = 100
_RETRY_SECONDS = 0.05
_MAX_RETRY_SECONDS = 5.0

Command = tuple[str | bytes | int, ...]


class RedisFanout(QueuedFanout[Command]):
    """Fan-out through the Redis at `redis_url`, among the processes given one `namespace`
    (`fanout.database_namespace`: those serving one database)."""

    def __init__(self, redis_url: str, *, namespace: str) -> None:
        super().__init__()
        self._url = redis_url
        self._prefix = f"collab:{namespace}:"
        self._room_prefix = f"{self._prefix}room:"
        self._channel = f"{self._prefix}awareness"
        self._wake_key = f"{self._prefix}wake:{self.origin}"
        self._wake_id = b"0-0"
        self._commands = self._client("commands", read_seconds=0.0)
        # XREAD answers within its block time, so the reader waits that much longer for answers.
        self._reader = self._client("reader", read_seconds=_BLOCK_SECONDS)
        self._listener = self._client("awareness", read_seconds=_BLOCK_SECONDS)
        #: Watched rooms' stream keys -> id of the last entry read; None: not known yet, because
        #: Redis was unreachable during `watch`.
        self._last_ids: dict[str, bytes | None] = {}
        #: The pipeline being sent, resent as a whole after a reconnect: some of it may arrive
        #: twice, which receivers tell by the seq numbers.
        self._sending: list[Command] = []

    def _client(self, role: str, *, read_seconds: float) -> Redis:
        # redis-py's own retries would reconnect unseen: the loops here retry, so that each
        # reconnect is logged and followed by `Resubscribed`.
        client: Redis = Redis.from_url(
            self._url,
            client_name=f"{self._prefix}{self.origin}:{role}",
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=_ANSWER_SECONDS,
            socket_timeout=_ANSWER_SECONDS + read_seconds,
            protocol=2,
        )
        pool = client.connection_pool
        pool.connection_class = _keeping_cancels(pool.connection_class)
        return client

    async def _close(self) -> None:
        for client in (self._commands, self._reader, self._listener):
            await client.aclose()

    def publish_committed(self, commits: Mapping[str, tuple[int, Sequence[bytes]]]) -> None:
        for room_id, (first, updates) in commits.items():
            key = self._room_prefix + room_id
            for chunk in committed_chunks(room_id, first, updates, _MAX_PACKED_BYTES):
                fields: Command = ("origin", self.origin, "first", chunk.first, "last", chunk.last)
                if chunk.updates is not None:
                    fields += ("data", pack_updates(chunk.updates))
                self._enqueue(("XADD", key, "MAXLEN", "~", _STREAM_LENGTH, "*", *fields))
            self._enqueue(("EXPIRE", key, _STREAM_IDLE_SECONDS))

    def publish_awareness(self, room_id: str, payload: bytes) -> None:
        if len(payload) <= _MAX_PACKED_BYTES:
            message = b"|".join((self.origin.encode(), room_id.encode(), payload))
            self._enqueue(("PUBLISH", self._channel, message))

    async def watch(self, room_id: str) -> None:
        key = self._room_prefix + room_id
        if key in self._last_ids:
            return
        try:
            last_id: bytes | None = _last_id(await self._commands.xrevrange(key, count=1))
        except (RedisError, OSError) as error:
            # Redis is optional to serving a room: the reader finds the id when it can, and
            # delivers `Resubscribed` then for what it may have missed.
            logger.warning("fan-out: could not watch room %s in Redis (%s)", room_id, error)
            last_id = None
        self._last_ids.setdefault(key, last_id)
        self._enqueue(("XADD", self._wake_key, "MAXLEN", 1, "*", "watched", room_id))
        self._enqueue(("EXPIRE", self._wake_key, _STREAM_IDLE_SECONDS))

    def unwatch(self, room_id: str) -> None:
        self._last_ids.pop(self._room_prefix + room_id, None)

    async def _send_forever(self) -> None:
        delay = _RETRY_SECONDS
        while True:
            try:
                while True:
                    if not self._sending:
                        await self._queued.wait()
                        count = min(len(self._queue), _MAX_PER_PIPELINE)
                        self._sending = [self._queue.popleft() for _ in range(count)]
                        if not self._queue:
                            self._queued.clear()
                    await self._send(self._sending)
                    self._sending = []
                    if not self._queue:
                        self._sent.set()
                    delay = _RETRY_SECONDS
            except (RedisError, OSError) as error:
                logger.warning(
                    "fan-out: sending to Redis failed (%s); retrying in %.2f s", error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_SECONDS)

    async def _send(self, commands: list[Command]) -> None:
        """Send `commands` in one round trip; raises only if the connection failed."""
        async with self._commands.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            results = await pipe.execute(raise_on_error=False)
        # A command Redis refuses (out of memory, a key of another type) is not retried: the
        # receivers read the log for whatever it carried.
        refused = [result for result in results if isinstance(result, RedisError)]
        if refused:
            logger.error(
                "fan-out: Redis refused %d of %d commands: %s",
                len(refused),
                len(commands),
                refused[0],
            )

    async def _listen_forever(self) -> None:
        """Read the watched rooms' streams and the awareness channel; when either connection
        fails, reconnect both and deliver `Resubscribed`, as for PostgreSQL's one LISTEN."""
        delay = _RETRY_SECONDS
        while True:
            try:
                async with self._listener.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    if await pubsub.get_message(timeout=_ANSWER_SECONDS) is None:
                        raise ConnectionError("Redis did not confirm SUBSCRIBE")
                    await self._reader.ping()
                    delay = _RETRY_SECONDS
                    await self._find_unknown_last_ids()
                    self._deliver(Resubscribed())
                    await self._read_until_one_fails(pubsub)
            except (RedisError, OSError) as error:
                logger.warning(
                    "fan-out: Redis connection lost (%s); reconnecting in %.2f s", error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RETRY_SECONDS)

    async def _read_until_one_fails(self, pubsub: PubSub) -> None:
        """Read the streams and the awareness channel until one fails; raise its failure.

        Not a task group: when a reader fails as the listener is cancelled, a task group raises
        the failure in place of the cancel, and the listener, taking it for a lost connection,
        would have reconnected forever.
        """
        readers = [
            asyncio.create_task(self._read_streams()),
            asyncio.create_task(self._hear_awareness(pubsub)),
        ]
        try:
            done, _ = await asyncio.wait(readers, return_when=asyncio.FIRST_EXCEPTION)
            next(iter(done)).result()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _find_unknown_last_ids(self) -> bool:
        """Find the ids `watch` could not; whether there were any."""
        keys = [key for key, last_id in self._last_ids.items() if last_id is None]
        if not keys:
            return False
        async with self._reader.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrevrange(key, count=1)
            found = await pipe.execute()
        for key, entries in zip(keys, found, strict=True):
            if key in self._last_ids and self._last_ids[key] is None:
                self._last_ids[key] = _last_id(entries)
        return True

    async def _read_streams(self) -> None:
        block_ms = int(_BLOCK_SECONDS * 1000)
        while True:
            requested: dict[KeyT, StreamIdT] = {self._wake_key: self._wake_id}
            requested.update((k, v) for k, v in self._last_ids.items() if v is not None)
            reply = await self._reader.xread(requested, count=_READ_COUNT, block=block_ms)
            assert isinstance(reply, list)  # RESP2 (`protocol=2`): [[key, [(id, fields)]]]
            for raw_key, entries in reply:
                key = raw_key.decode()
                if key == self._wake_key:
                    self._wake_id = entries[-1][0]
                # Unwatched (or watched anew) while XREAD waited: these entries are not wanted.
                elif self._last_ids.get(key) == requested[key]:
                    room_id = key.removeprefix(self._room_prefix)
                    for _, fields in entries:
                        self._receive_committed(room_id, fields)
                    self._last_ids[key] = entries[-1][0]
            if await self._find_unknown_last_ids():
                # Entries added between the failed `watch` and now were not read: the log has them.
                self._deliver(Resubscribed())

    def _receive_committed(self, room_id: str, fields: Mapping[bytes, bytes]) -> None:
        try:
            if fields[b"origin"].decode() == self.origin:
                return
            data = fields.get(b"data")
            updates = None if data is None else unpack_updates(data)
            self._deliver(Committed(room_id, int(fields[b"first"]), int(fields[b"last"]), updates))
        except (KeyError, ValueError):
            logger.error("fan-out: ignored a malformed entry of room %s: %r", room_id, fields)

    async def _hear_awareness(self, pubsub: PubSub) -> None:
        pinged = False
        while True:
            message = await pubsub.get_message(timeout=_BLOCK_SECONDS)
            if message is None:
                # A silent connection may be dead without a reset (a host gone): ask it.
                if pinged:
                    raise ConnectionError("Redis did not answer PING")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] == "message":
                self._receive_awareness(message["data"])

    def _receive_awareness(self, message: bytes) -> None:
        try:
            origin, room_id, payload = message.split(b"|", 2)
            if origin.decode() != self.origin:
                self._deliver(AwarenessChanged(room_id.decode(), payload))
        except ValueError:
            logger.error("fan-out: ignored a malformed awareness message %r", message[:100])


class _KeepsCancels(AbstractConnection):
    """Re-raises a cancel that redis-py's send dropped.

    `send_packed_command` awaits its write through `asyncio.wait_for`, which on Python 3.11
    returns the result and drops a cancel arriving in the loop iteration the write completes
    (CPython gh-86296, fixed in 3.12). The cancelled task went on to wait for the answer, up to
    the 2 s XREAD block, or looped on forever, so that `stop` never returned. The task's count
    of cancel requests still tells.
    """

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        task = asyncio.current_task()
        requested = 0 if task is None else task.cancelling()
        await super().send_packed_command(command, check_health)
        if task is not None and task.cancelling() > requested:
            # The answer will not be read: the connection cannot serve another command.
            await self.disconnect(nowait=True)
            raise asyncio.CancelledError


def _keeping_cancels(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """`base` (the class redis-py picks for the URL's scheme) with `_KeepsCancels`' send."""
    return type(f"CancelKeeping{base.__name__}", (_KeepsCancels, base), {})


def _last_id(entries: Sequence[tuple[Any, Any]] | None) -> bytes:
    """The id of the newest entry of an XREVRANGE ... COUNT 1 reply; "0-0" for an empty stream:
    every entry added later is read."""
    return bytes(entries[0][0]) if entries else b"0-0"

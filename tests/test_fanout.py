"""The fan-out contract every backend meets.

Two instances of one backend on one database (PostgreSQL) or namespace (Redis) stand for two
server processes. Receivers tolerate lost messages (they read the log on a gap or after
`Resubscribed`), so what is pinned here is what they rely on: what is delivered is complete and
in order per room, never one's own, and `Resubscribed` follows every (re)connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest
import redis
from redis.asyncio import Redis

from crdt_store.fanout import AwarenessChanged, Committed, Event, Fanout, Resubscribed
from crdt_store.fanout.postgres import CHANNEL, PostgresFanout
from crdt_store.fanout.redis import RedisFanout

pytestmark = pytest.mark.anyio

#: The largest message each backend carries: PostgreSQL's NOTIFY payload limit, and the limit
#: the Redis backend sets itself for a stream entry.
MESSAGE_BYTES = {"postgresql": 8_000, "redis": 1 << 20}
#: Generous for a local server, short enough that a broken backend fails fast.
DEADLINE_SECONDS = 5.0


class Process:
    """A fan-out as one server process uses it, keeping what it is told."""

    def __init__(self, fanout: Fanout) -> None:
        self.fanout = fanout
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    def handle(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    async def wait_until(
        self, condition: Callable[[], bool], seconds: float = DEADLINE_SECONDS
    ) -> None:
        async with asyncio.timeout(seconds):
            while not condition():
                self._arrived.clear()
                await self._arrived.wait()

    def committed(self, room_id: str) -> list[Committed]:
        return [e for e in self.events if isinstance(e, Committed) and e.room_id == room_id]

    def awareness(self) -> list[AwarenessChanged]:
        return [e for e in self.events if isinstance(e, AwarenessChanged)]

    async def wait_resubscribed(self, times: int) -> None:
        await self.wait_until(
            lambda: sum(isinstance(e, Resubscribed) for e in self.events) >= times
        )

    async def wait_to_hear_of_others(self) -> None:
        """Until a PostgreSQL fan-out has heard another process greet: before, it announces
        nothing (other backends announce regardless)."""
        if isinstance(self.fanout, PostgresFanout):
            async with asyncio.timeout(DEADLINE_SECONDS):
                while not self.fanout.peers:
                    await asyncio.sleep(0.01)

    async def wait_for_rows(self, room_id: str, last: int) -> list[Committed]:
        """The room's deliveries once one reaches row `last`."""
        await self.wait_until(lambda: any(c.last >= last for c in self.committed(room_id)))
        return self.committed(room_id)


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def redis_namespace(redis_url: str) -> Iterator[str]:
    """A namespace of this test's own, its keys deleted afterwards."""
    namespace = uuid.uuid4().hex[:12]
    yield namespace
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"collab:{namespace}:*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def new_fanout(backend: str, request: pytest.FixtureRequest) -> Callable[[], Fanout]:
    """Makes the fan-out of one more process sharing the test's database."""
    if backend == "postgresql":
        database_url: str = request.getfixturevalue("postgres_url")
        return lambda: PostgresFanout(database_url)
    redis_url: str = request.getfixturevalue("redis_url")
    namespace: str = request.getfixturevalue("redis_namespace")
    return lambda: RedisFanout(redis_url, namespace=namespace)


@pytest.fixture
async def start(
    new_fanout: Callable[[], Fanout],
) -> AsyncIterator[Callable[[], Awaitable[Process]]]:
    """Starts processes, stopped at the end of the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start_process() -> Process:
            process = Process(new_fanout())
            await stack.enter_async_context(process.fanout.running(process.handle))
            return process

        yield start_process


@pytest.fixture
async def pair(start: Callable[[], Awaitable[Process]]) -> tuple[Process, Process]:
    """Two processes, both listening, each knowing of the other."""
    one, other = await start(), await start()
    for process in (one, other):
        await process.wait_resubscribed(1)
        await process.wait_to_hear_of_others()
    return one, other


@pytest.fixture
def kill_listening_connections(
    backend: str, request: pytest.FixtureRequest
) -> Callable[[Process], Awaitable[None]]:
    """Kills the connections a process listens on, as a server restart or a network cut does
    (PostgreSQL: every LISTEN connection of the test's database, the other process's too)."""

    async def kill_postgres(process: Process) -> None:
        database_url: str = request.getfixturevalue("postgres_url")
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
                " datname = current_database() AND application_name LIKE 'collab-server:listen %'"
            )
            assert await cursor.fetchall(), "no LISTEN connection found"

    async def kill_redis(process: Process) -> None:
        namespace: str = request.getfixturevalue("redis_namespace")
        names = {f"collab:{namespace}:{process.fanout.origin}:{r}" for r in ("reader", "awareness")}
        async with Redis.from_url(request.getfixturevalue("redis_url")) as admin:
            clients = [c for c in await admin.client_list() if c["name"] in names]
            assert {c["name"] for c in clients} == names
            for client in clients:
                await admin.client_kill_filter(_id=client["id"])

    return kill_postgres if backend == "postgresql" else kill_redis


async def test_the_first_connect_delivers_resubscribed(
    start: Callable[[], Awaitable[Process]],
) -> None:
    process = await start()
    await process.wait_until(lambda: bool(process.events))
    assert process.events == [Resubscribed()]


async def test_commits_reach_the_other_process_with_their_rows_in_order_per_room(
    pair: tuple[Process, Process],
) -> None:
    writer, reader = pair
    await reader.fanout.watch("r1")
    await reader.fanout.watch("r2")
    writer.fanout.publish_committed({"r1": (1, [b"a"]), "r2": (1, [b"x"])})
    writer.fanout.publish_committed({"r1": (2, [b"b", b"c"])})
    writer.fanout.publish_committed({"r2": (2, [b"y"]), "r1": (4, [b"d"])})

    assert await reader.wait_for_rows("r1", 4) == [
        Committed("r1", 1, 1, (b"a",)),
        Committed("r1", 2, 3, (b"b", b"c")),
        Committed("r1", 4, 4, (b"d",)),
    ]
    assert await reader.wait_for_rows("r2", 2) == [
        Committed("r2", 1, 1, (b"x",)),
        Committed("r2", 2, 2, (b"y",)),
    ]


async def test_a_process_never_hears_its_own_messages(pair: tuple[Process, Process]) -> None:
    one, other = pair
    for process in pair:
        await process.fanout.watch("r")
    one.fanout.publish_committed({"r": (1, [b"one's"])})
    one.fanout.publish_awareness("r", b"one's cursor")
    await other.wait_for_rows("r", 1)
    await other.wait_until(lambda: bool(other.awareness()))
    # Published after `one`'s own arrived elsewhere, so each comes after them.
    other.fanout.publish_committed({"r": (2, [b"other's"])})
    other.fanout.publish_awareness("r", b"other's cursor")

    assert await one.wait_for_rows("r", 2) == [Committed("r", 2, 2, (b"other's",))]
    await one.wait_until(lambda: bool(one.awareness()))
    assert one.awareness() == [AwarenessChanged("r", b"other's cursor")]


async def test_rows_larger_than_one_message_arrive_in_consecutive_chunks(
    backend: str, pair: tuple[Process, Process]
) -> None:
    writer, reader = pair
    await reader.fanout.watch("r")
    updates = [bytes([i]) * (MESSAGE_BYTES[backend] * 2 // 5) for i in range(3)]
    writer.fanout.publish_committed({"r": (1, updates)})

    chunks = await reader.wait_for_rows("r", 3)
    assert len(chunks) > 1
    assert (chunks[0].first, chunks[-1].last) == (1, 3)
    assert all(later.first == earlier.last + 1 for earlier, later in itertools.pairwise(chunks))
    assert [update for chunk in chunks for update in chunk.updates or ()] == updates


async def test_an_update_too_large_for_a_message_is_announced_without_its_data(
    backend: str, pair: tuple[Process, Process]
) -> None:
    writer, reader = pair
    await reader.fanout.watch("r")
    huge = b"h" * (MESSAGE_BYTES[backend] * 2)
    writer.fanout.publish_committed({"r": (1, [b"before", huge, b"after"])})

    assert await reader.wait_for_rows("r", 3) == [
        Committed("r", 1, 1, (b"before",)),
        Committed("r", 2, 2, None),
        Committed("r", 3, 3, (b"after",)),
    ]


async def test_awareness_reaches_the_other_process(pair: tuple[Process, Process]) -> None:
    writer, reader = pair
    await reader.fanout.watch("r")
    writer.fanout.publish_awareness("r", b"\x01cursor|with|bars")

    await reader.wait_until(lambda: bool(reader.awareness()))
    assert reader.awareness() == [AwarenessChanged("r", b"\x01cursor|with|bars")]


async def test_a_killed_listening_connection_resubscribes_and_hears_again(
    pair: tuple[Process, Process],
    kill_listening_connections: Callable[[Process], Awaitable[None]],
) -> None:
    writer, reader = pair
    await reader.fanout.watch("r")
    await kill_listening_connections(reader)

    await reader.wait_resubscribed(2)
    writer.fanout.publish_committed({"r": (1, [b"after the reconnect"])})
    writer.fanout.publish_awareness("r", b"cursor after the reconnect")
    assert await reader.wait_for_rows("r", 1) == [Committed("r", 1, 1, (b"after the reconnect",))]
    await reader.wait_until(lambda: bool(reader.awareness()))


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_room_watched_after_rows_were_published_gets_only_later_ones(
    pair: tuple[Process, Process],
) -> None:
    # A stream keeps its history; `watch` starts after it. (PostgreSQL delivers every room's
    # messages, watched or not, for the server to drop.)
    writer, reader = pair
    await reader.fanout.watch("marker")
    writer.fanout.publish_committed({"r": (1, [b"before the watch"]), "marker": (1, [b"m"])})
    # Published in order: once the marker is here, row 1 of "r" was published.
    await reader.wait_for_rows("marker", 1)
    await reader.fanout.watch("r")
    writer.fanout.publish_committed({"r": (2, [b"after the watch"])})

    assert await reader.wait_for_rows("r", 2) == [Committed("r", 2, 2, (b"after the watch",))]


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_newly_watched_room_is_read_at_once(pair: tuple[Process, Process]) -> None:
    # Not after the reader's blocking XREAD of the rooms watched before times out (2 s).
    writer, reader = pair
    await reader.fanout.watch("r")
    writer.fanout.publish_committed({"r": (1, [b"row"])})

    await reader.wait_until(lambda: bool(reader.committed("r")), seconds=0.5)


@pytest.mark.parametrize("backend", ["redis"])
async def test_an_unwatched_room_is_no_longer_delivered(pair: tuple[Process, Process]) -> None:
    writer, reader = pair
    await reader.fanout.watch("r")
    await reader.fanout.watch("marker")
    writer.fanout.publish_committed({"r": (1, [b"watched"])})
    await reader.wait_for_rows("r", 1)
    reader.fanout.unwatch("r")
    writer.fanout.publish_committed({"r": (2, [b"unwatched"]), "marker": (1, [b"m"])})

    await reader.wait_for_rows("marker", 1)
    assert reader.committed("r") == [Committed("r", 1, 1, (b"watched",))]


async def test_an_unreachable_redis_blocks_neither_watch_nor_publishing() -> None:
    process = Process(RedisFanout("redis://127.0.0.1:1/0", namespace=uuid.uuid4().hex[:12]))
    # Stopping included: it gives up on what is queued after about a second.
    async with asyncio.timeout(DEADLINE_SECONDS), process.fanout.running(process.handle):
        async with asyncio.timeout(0.5):
            await process.fanout.watch("r")
        process.fanout.publish_committed({"r": (1, [b"queued"])})
        process.fanout.publish_awareness("r", b"cursor")
        assert process.events == []


async def test_stopping_waits_no_longer_than_sending_what_is_queued(
    new_fanout: Callable[[], Fanout], start: Callable[[], Awaitable[Process]]
) -> None:
    reader = await start()
    await reader.wait_resubscribed(1)
    await reader.fanout.watch("r")
    writer = Process(new_fanout())
    loop = asyncio.get_running_loop()
    async with writer.fanout.running(writer.handle):
        await writer.wait_to_hear_of_others()
        writer.fanout.publish_committed({"r": (1, [b"sent"])})
        await reader.wait_for_rows("r", 1)
        stopping = loop.time()
    assert loop.time() - stopping < 0.5


async def test_stopping_at_any_point_of_starting_takes_no_longer_than_stopping_a_running_one(
    new_fanout: Callable[[], Fanout],
) -> None:
    # Stopped after 0, 1, 2, ... turns of the event loop, each one lands a cancel at another
    # point of connecting and subscribing. redis-py's send used to drop a cancel arriving as a
    # write completed (`_KeepsCancels`): in one turn in five to ten, stopping took the 2 s XREAD
    # block or never ended.
    for turns in range(100):
        fanout = new_fanout()
        await fanout.start()
        for _ in range(turns):
            await asyncio.sleep(0)
        async with asyncio.timeout(0.5):
            await fanout.stop()


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
async def test_a_lone_process_announces_nothing_until_another_one_listens(
    start: Callable[[], Awaitable[Process]], postgres_url: str
) -> None:
    lone = await start()
    await lone.wait_resubscribed(1)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as spy:
        await spy.execute(f"LISTEN {CHANNEL}")
        lone.fanout.publish_committed({"r": (1, [b"nobody listens"])})
        lone.fanout.publish_awareness("r", b"nobody looks")
        heard = [notification.payload async for notification in spy.notifies(timeout=0.5)]
    assert [payload for payload in heard if payload[0] in "ua"] == []
    other = await start()
    await lone.wait_to_hear_of_others()
    lone.fanout.publish_committed({"r": (2, [b"heard"])})
    assert await other.wait_for_rows("r", 2) == [Committed("r", 2, 2, (b"heard",))]

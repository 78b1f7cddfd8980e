"""A TCP proxy to put between the server and PostgreSQL, to take the database away and back.

The shared PostgreSQL server must never be stopped (other tests use it), so an outage is
simulated on the path instead: the server is pointed at the proxy and the test cuts it.

    with TcpProxy.in_front_of(database_url) as proxy:
        url = proxy.url_for(database_url)   # the same database, reached through the proxy
        proxy.cut()       # like a database restart that does not come back
        proxy.restore()   # it is back

`TcpProxy.balancing(ports)` is a plain load balancer in front of several server processes: new
connections go round-robin to the next one that accepts, so a client whose server died lands on
another when it reconnects (no sticky routing).

`cut()` resets every open connection (RST, both ways: what a client sees when the database
restarts) and resets new ones as soon as they arrive, so failures are immediate.
`partition()` is the other kind of outage, a network that drops packets silently (a failed
switch, a failover to another host): open connections stop carrying anything without being
closed, and new ones are accepted and then never answered. `restore()` forwards new connections
again; connections cut or partitioned stay dead, as after a restart or a failover. The proxy
runs its own event loop in a thread: a test blocking on a synchronous call to the server must
not stall the server's database traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

from sqlalchemy.engine import make_url

T = TypeVar("T")

_BUFFER = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN: the peer's next read fails at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """Forwards 127.0.0.1:`port` to its targets (round-robin, skipping those refusing) until cut."""

    def __init__(self, *targets: tuple[str, int]) -> None:
        self.targets = list(targets)
        self._next_target = 0
        self.port = 0
        #: Connections forwarded so far and connections reset, for assertion messages.
        self.forwarded = 0
        self.resets = 0
        self._refusing: Literal["reset", "silence"] | None = None
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @classmethod
    def in_front_of(cls, database_url: str) -> TcpProxy:
        """A proxy to the server of `database_url` (a PostgreSQL URL)."""
        target = make_url(database_url)
        return cls((target.host or "127.0.0.1", target.port or 5432))

    @classmethod
    def balancing(cls, ports: list[int]) -> TcpProxy:
        """A load balancer in front of server processes on these local ports."""
        return cls(*(("127.0.0.1", port) for port in ports))

    @property
    def ws_url(self) -> str:
        """The y-websocket base URL through the proxy (in front of server processes)."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def url_for(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by the proxy's."""
        proxied = make_url(database_url).set(host="127.0.0.1", port=self.port)
        return proxied.render_as_string(hide_password=False)

    def start(self) -> None:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Reset every connection, stop listening and end the thread."""
        self.cut()
        if self._server is not None:
            self._server.close()
            self._call(self._server.wait_closed())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def cut(self) -> None:
        """Reset every open connection, and every new one until `restore()`."""
        self._call(self._cut_all())

    def partition(self) -> None:
        """Silence every open connection and every new one until `restore()`: nothing is
        closed, nothing arrives."""
        self._call(self._partition())

    def restore(self) -> None:
        """Forward new connections again."""
        self._call(self._restore())

    # -- the proxy's own thread -------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _cut_all(self) -> None:
        self._refusing = "reset"
        for link in list(self._links):
            link.reset()
            self.resets += 1
        self._links.clear()

    async def _partition(self) -> None:
        self._refusing = "silence"
        for link in self._links:
            link.silenced = True

    async def _restore(self) -> None:
        self._refusing = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing == "reset":
            _reset(writer)
            self.resets += 1
            return
        if self._refusing == "silence":
            link = _Link(writer, None, silenced=True)
            self._links.add(link)
            await link.pipe(reader, None)
            return
        upstream = await self._connect_upstream()
        if upstream is None:
            _reset(writer)
            return
        upstream_reader, upstream_writer = upstream
        link = _Link(writer, upstream_writer)
        self._links.add(link)
        self.forwarded += 1
        await asyncio.gather(link.pipe(reader, upstream_writer), link.pipe(upstream_reader, writer))
        self._links.discard(link)

    async def _connect_upstream(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in self.targets:
            host, port = self.targets[self._next_target % len(self.targets)]
            self._next_target += 1
            with contextlib.suppress(OSError):
                return await asyncio.open_connection(host, port)
        return None


class _Link:
    """One proxied connection: the client's side and the database's side."""

    def __init__(
        self,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter | None,
        *,
        silenced: bool = False,
    ) -> None:
        self.client = client
        self.upstream = upstream
        #: Read and drop everything from now on, closing nothing.
        self.silenced = silenced

    def reset(self) -> None:
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)

    async def pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
        try:
            while data := await reader.read(_BUFFER):
                if writer is not None and not self.silenced:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if writer is not None and not self.silenced:
                writer.close()

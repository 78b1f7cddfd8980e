"""Drive real Node Yjs clients from async Python tests.

Our server must interoperate with the clients people actually run: yjs plus the stock
y-websocket ``WebsocketProvider``. Reimplementing the client in Python would only test the
server against our own reading of the protocol, so each ``NodeYClient`` spawns
``node tests/node/yclient.mjs`` (one Y.Doc, one provider, editing the Y.Text named ``code``)
and remote-controls it with JSON lines over stdin/stdout. Install the Node side once with
``cd tests/node && npm ci``.

Works under pytest's anyio plugin with the asyncio backend::

    async with NodeYClient.spawn("ws://127.0.0.1:1234", "room") as c:
        await c.wait_synced()
        await c.insert(0, "héllo")

Indexes and lengths are UTF-16 code units, as in JavaScript (see ``utf16_len``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "yclient.mjs"
# slack on top of a Node-side timeout before we give up on the process itself
_REPLY_GRACE = 5.0


def utf16_len(text: str) -> int:
    """Length of ``text`` as Y.Text counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


class NodeYClient:
    """One Node process holding one Y.Doc synced through y-websocket's WebsocketProvider."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # unsolicited events, in arrival order
        self._stderr: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._events_changed = asyncio.Condition()

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(
        cls, url: str, room: str, params: dict[str, str] | None = None
    ) -> AsyncIterator[NodeYClient]:
        """Start a client and connect it to ``url``/``room`` (not yet synced); close on exit."""
        client = cls()
        await client.start()
        try:
            await client.connect(url, room, params)
            yield client
        finally:
            await client.aclose()

    async def start(self) -> None:
        if not (NODE_DIR / "node_modules").is_dir():
            raise RuntimeError(f"Node deps missing: run `cd {NODE_DIR} && npm ci`")
        self._proc = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,  # a `text` reply is one line
        )
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]

    async def aclose(self) -> None:
        """Destroy the provider (it sends its close frame) and end the process. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self._request("close", _timeout=5.0)
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            await task  # both end at EOF once the process is gone
        self._proc = None

    async def kill(self) -> None:
        """SIGKILL the Node process: its socket drops with no goodbye, like a crashed tab."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    @property
    def stderr(self) -> str:
        """Everything the Node process logged so far, for assertion messages."""
        return "".join(self._stderr)

    # --- commands -------------------------------------------------------------------------

    async def connect(self, url: str, room: str, params: dict[str, str] | None = None) -> None:
        await self._request("connect", url=url, room=room, params=params or {})

    async def wait_synced(self, timeout: float = 10.0) -> None:
        await self._request("waitSynced", timeoutMs=_ms(timeout), _timeout=timeout)

    async def insert(self, index: int, text: str) -> None:
        """Insert at ``index`` (UTF-16 code units) in one transaction."""
        await self._request("insert", index=index, text=text)

    async def delete(self, index: int, length: int) -> None:
        """Delete ``length`` UTF-16 code units from ``index`` in one transaction."""
        await self._request("delete", index=index, length=length)

    async def text(self) -> str:
        return str((await self._request("text"))["text"])

    async def wait_text(self, expected: str, timeout: float = 10.0) -> None:
        await self._request("waitText", text=expected, timeoutMs=_ms(timeout), _timeout=timeout)

    async def wait_length(self, length: int, timeout: float = 10.0) -> None:
        """Wait until the text is ``length`` UTF-16 code units long."""
        await self._request("waitLength", length=length, timeoutMs=_ms(timeout), _timeout=timeout)

    async def type_random(self, count: int, seed: int, interval_ms: int = 0) -> None:
        """Type ``count`` BMP characters at seeded random positions, one transaction each.

        Positions are drawn relative to the current length, so concurrent remote edits change
        where characters land but never how many. Returns when all are typed (not yet synced).
        """
        await self._request(
            "typeRandom",
            count=count,
            seed=seed,
            intervalMs=interval_ms,
            _timeout=count * (interval_ms + 5) / 1000 + 30.0,
        )

    async def set_awareness(self, state: dict[str, Any] | None) -> None:
        """Set the local awareness state; ``None`` marks this client as gone."""
        await self._request("setAwareness", state=state)

    async def awareness(self) -> dict[int, Any]:
        """Awareness states this client knows of, own included, keyed by client id."""
        states = (await self._request("awareness"))["states"]
        return {int(client): state for client, state in states.items()}

    async def state_vector(self) -> bytes:
        """``Y.encodeStateVector(doc)``."""
        return base64.b64decode((await self._request("stateVector"))["stateVector"])

    async def client_id(self) -> int:
        return int((await self._request("clientId"))["clientId"])

    async def status(self) -> dict[str, Any]:
        """``{status, synced, shouldConnect, textLength}``; shouldConnect is False after the
        provider gave up (close code 4400-4499) or after ``disconnect()``."""
        return await self._request("status")

    async def disconnect(self) -> None:
        """``provider.disconnect()``: announce awareness removal, close, stay offline."""
        await self._request("disconnect")

    async def reconnect(self) -> None:
        """``provider.connect()``: also resumes a provider that gave up after a 44xx close."""
        await self._request("reconnect")

    # --- events ---------------------------------------------------------------------------

    async def wait_event(
        self,
        name: str,
        timeout: float = 10.0,
        match: Callable[[dict[str, Any]], bool] = lambda _event: True,
    ) -> dict[str, Any]:
        """First event named ``name`` (already received or upcoming) that ``match``es."""

        def find() -> dict[str, Any] | None:
            return next((e for e in self.events if e["event"] == name and match(e)), None)

        try:
            async with self._events_changed:
                await asyncio.wait_for(self._events_changed.wait_for(find), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no {name!r} event within {timeout} s ({await self._describe()})"
            ) from None
        event = find()
        assert event is not None
        return event

    async def wait_closed(self, timeout: float = 10.0) -> tuple[int, str]:
        """(code, reason) of the first connection close that did not originate locally."""
        event = await self.wait_event("close", timeout, lambda e: not e["local"])
        return int(event["code"]), str(event["reason"])

    # --- plumbing -------------------------------------------------------------------------

    async def _request(self, cmd: str, _timeout: float = 0.0, **args: Any) -> dict[str, Any]:
        if self._proc is None or self._proc.stdin is None or self._proc.returncode is not None:
            raise RuntimeError(f"yclient process is not running\n{self._stderr_tail()}")
        request_id = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = reply
        line = json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n"
        self._proc.stdin.write(line.encode())
        try:
            await self._proc.stdin.drain()
            result = await asyncio.wait_for(reply, _timeout + _REPLY_GRACE)
        except TimeoutError:
            raise TimeoutError(f"yclient did not answer {cmd!r}\n{self._stderr_tail()}") from None
        finally:
            self._pending.pop(request_id, None)
        if result.get("timeout"):
            raise TimeoutError(f"{result['error']}\n{self._stderr_tail()}")
        if not result["ok"]:
            raise RuntimeError(f"yclient {cmd!r} failed: {result['error']}\n{self._stderr_tail()}")
        return {k: v for k, v in result.items() if k not in ("id", "ok")}

    async def _describe(self) -> str:
        try:
            s = await self._request("status")
        except (RuntimeError, TimeoutError) as exc:
            return f"status unavailable: {exc}"
        return f"textLength={s['textLength']} status={s['status']} synced={s['synced']}"

    def _stderr_tail(self, lines: int = 20) -> str:
        return "--- yclient stderr (tail) ---\n" + "".join(self._stderr[-lines:])

    async def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            try:
                message = json.loads(raw)
            except json.JSONDecodeError:  # a stray print from some library: keep it for the log
                self._stderr.append(f"[stdout] {raw.decode(errors='replace')}")
                continue
            if "event" in message:
                async with self._events_changed:
                    self.events.append(message)
                    self._events_changed.notify_all()
            elif (reply := self._pending.get(message.get("id"))) and not reply.done():
                reply.set_result(message)
        for reply in self._pending.values():  # EOF: the process is gone
            if not reply.done():
                reply.set_exception(RuntimeError(f"yclient exited\n{self._stderr_tail()}"))

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for raw in self._proc.stderr:
            self._stderr.append(raw.decode(errors="replace"))


def _ms(seconds: float) -> int:
    return int(seconds * 1000)

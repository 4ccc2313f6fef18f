"""An in-memory ASGI "server": calls an app directly with fake ``receive``/``send``.

Used where the library's own cost must be isolated from sockets and the kernel (fan-out,
heartbeat CPU, bytes per session). Each connection gets a task running ``app(scope, receive,
send)`` exactly as uvicorn would; ``receive`` returns ``websocket.connect`` and then blocks
until the driver pushes something; ``send`` does no I/O and only counts.

Client behaviour per ``mode``:
- ``plain``: counts every data frame.
- ``optin``: connects with ``?stabilizer=1``, consumes control frames and answers each
  ``ping`` with ``pong`` (same ``ts``, ``n`` = data frames received), as the wire protocol asks.
- ``seed``: answers the seed's JSON ping with the text ``"pong"``, as its README asks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message

from benchmarks._common import decode_control, pong_text

RS = "\x1e"
ACK_EVERY = 32
_PING_HEAD = RS + '{"t":"ping","ts":'
_PONG_HEAD = RS + '{"t":"pong","ts":'
_perf_counter = time.perf_counter
SEED_PING_PREFIX = '{"type":"ping"'


class Transport:
    """Counters shared by every connection of one in-memory server."""

    __slots__ = (
        "accept_target",
        "accepted",
        "answer_pings",
        "accepted_event",
        "client_seconds",
        "closed",
        "data_frames",
        "errors",
        "hellos",
        "pings",
        "reached",
        "reached_at",
        "target",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.accept_target = -1
        self.accepted_event = asyncio.Event()
        self.data_frames = 0
        self.target = -1
        self.reached = asyncio.Event()
        self.reached_at = 0.0
        self.pings = 0
        self.client_seconds = 0.0  # time spent playing the client (answering pings)
        self.answer_pings = True
        self.hellos = 0
        self.closed = 0
        self.errors: list[str] = []

    def expect_data(self, count: int) -> asyncio.Event:
        """Arm an event that fires when ``count`` more data frames have been sent."""
        self.reached = asyncio.Event()
        self.target = self.data_frames + count
        if count <= 0:
            self.reached_at = time.perf_counter()
            self.reached.set()
        return self.reached


class MemoryConnection:
    """One websocket connection with no socket behind it."""

    __slots__ = ("_inbox", "_waiter", "mode", "received", "scope", "transport")

    def __init__(self, transport: Transport, mode: str, scope: dict[str, Any]) -> None:
        self.transport = transport
        self.mode = mode
        self.scope = scope
        self.received = 0
        self._inbox: list[Message] = [{"type": "websocket.connect"}]
        self._waiter: asyncio.Future[Message] | None = None

    async def receive(self) -> Message:
        if self._inbox:
            return self._inbox.pop(0)
        waiter: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            return await waiter
        finally:
            self._waiter = None

    def push(self, message: Message) -> None:
        """Deliver a client->server message (wakes a pending ``receive``)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(message)
        else:
            self._inbox.append(message)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        transport = self.transport
        if kind == "websocket.send":
            text = message.get("text")
            if text is not None and self.mode != "plain":
                if self.mode == "optin" and text[:1] == RS and text[1:2] != RS:
                    t0 = _perf_counter()
                    self._control(text)
                    transport.client_seconds += _perf_counter() - t0
                    return
                if self.mode == "seed" and text.startswith(SEED_PING_PREFIX):
                    t0 = _perf_counter()
                    transport.pings += 1
                    self.push({"type": "websocket.receive", "text": "pong"})
                    transport.client_seconds += _perf_counter() - t0
                    return
            self.received += 1
            if self.mode == "optin" and self.received % ACK_EVERY == 0:
                # as stabilizer_asgi.client does: lets the server trim its replay buffer
                ack = f'{RS}{{"t":"ack","n":{self.received}}}'
                self.push({"type": "websocket.receive", "text": ack})
            transport.data_frames += 1
            if transport.data_frames == transport.target:
                transport.reached_at = time.perf_counter()
                transport.reached.set()
        elif kind == "websocket.accept":
            transport.accepted += 1
            if transport.accepted == transport.accept_target:
                transport.accepted_event.set()
        elif kind == "websocket.close":
            transport.closed += 1

    def _control(self, text: str) -> None:
        if not self.transport.answer_pings:
            self.transport.pings += text.startswith(_PING_HEAD)
            return
        if text.startswith(_PING_HEAD):
            # The common case, answered without a JSON round trip so that the client's share
            # (subtracted from heartbeat figures) stays small; same text a JSON client sends.
            ts = text[len(_PING_HEAD) :].partition(",")[0]
            self.transport.pings += 1
            pong = f'{_PONG_HEAD}{ts},"n":{self.received}}}'
            self.push({"type": "websocket.receive", "text": pong})
            return
        frame = decode_control(text)
        if frame is None:
            return
        kind = frame.get("t")
        if kind == "ping":
            self.transport.pings += 1
            self.push(
                {"type": "websocket.receive", "text": pong_text(frame.get("ts"), self.received)}
            )
        elif kind == "hello":
            self.transport.hellos += 1


class InMemoryServer:
    """Runs an ASGI app's lifespan and any number of in-memory websocket connections."""

    def __init__(self, app: ASGIApp, *, mode: str, path_for: Callable[[int], str]) -> None:
        self.app = app
        self.mode = mode
        self.path_for = path_for
        self.transport = Transport()
        self.connections: list[MemoryConnection] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.state: dict[str, Any] = {}
        self._lifespan_task: asyncio.Task[None] | None = None
        self._lifespan_inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan_events: asyncio.Queue[Message] = asyncio.Queue()

    async def __aenter__(self) -> InMemoryServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        scope["state"] = self.state

        async def run() -> None:
            try:
                await self.app(scope, self._lifespan_inbox.get, self._lifespan_send)
            except Exception as exc:  # an app without lifespan support, as uvicorn's "auto"
                await self._lifespan_events.put({"type": "lifespan.unsupported", "error": exc})

        self._lifespan_task = asyncio.create_task(run())
        await self._lifespan_inbox.put({"type": "lifespan.startup"})
        event = await asyncio.wait_for(self._lifespan_events.get(), 30)
        if event["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"lifespan startup failed: {event.get('message')}")

    async def _lifespan_send(self, message: Message) -> None:
        await self._lifespan_events.put(message)

    def _scope(self, index: int) -> dict[str, Any]:
        path, _, query = self.path_for(index).partition("?")
        return {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 10000 + index % 50000),
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(b"host", b"127.0.0.1:8000"), (b"upgrade", b"websocket")],
            "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
            # servers hand each connection a shallow copy of the lifespan state
            "state": dict(self.state),
        }

    async def _run(self, conn: MemoryConnection) -> None:
        try:
            await self.app(conn.scope, conn.receive, conn.send)
        except Exception as exc:
            if len(self.transport.errors) < 5:
                self.transport.errors.append(f"{type(exc).__name__}: {exc}")

    async def open(self, count: int, *, timeout: float = 120.0) -> list[MemoryConnection]:
        """Open ``count`` more connections and wait until the app has accepted them all."""
        transport = self.transport
        transport.accepted_event = asyncio.Event()
        transport.accept_target = transport.accepted + count
        start = len(self.connections)
        new: list[MemoryConnection] = []
        for i in range(start, start + count):
            conn = MemoryConnection(transport, self.mode, self._scope(i))
            new.append(conn)
            self.tasks.append(asyncio.create_task(self._run(conn)))
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let the batch get accepted before creating more
        self.connections.extend(new)
        if count:
            try:
                await asyncio.wait_for(transport.accepted_event.wait(), timeout)
            except asyncio.TimeoutError:
                raise RuntimeError(
                    f"only {transport.accepted - (transport.accept_target - count)}/{count} "
                    f"connections accepted; app errors: {transport.errors}"
                ) from None
        return new

    async def stop(self, *, timeout: float = 60.0) -> None:
        """Disconnect every client, wait for the app's tasks, then run lifespan shutdown."""
        for conn in self.connections:
            conn.push({"type": "websocket.disconnect", "code": 1000, "reason": ""})
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        self.connections.clear()
        self.tasks.clear()
        if self._lifespan_task is not None and not self._lifespan_task.done():
            await self._lifespan_inbox.put({"type": "lifespan.shutdown"})
            try:
                await asyncio.wait_for(self._lifespan_task, timeout)
            except asyncio.TimeoutError:
                self._lifespan_task.cancel()

"""Broadcast fan-out when transports push back, fail, or are not coroutines: broadcast never
waits, never reorders, counts what it could not deliver and never writes to a failed one again."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from stabilizer_asgi import BroadcastResult, Stabilizer, StabilizerMiddleware
from stabilizer_asgi.types import Message

pytestmark = pytest.mark.anyio

RS = "\x1e"


class Transports:
    """`n` in-memory connections through one middleware; each transport's `send` records the
    data frames it was given (control frames, e.g. an opted-in client's greeting, are skipped)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.got: list[list[str]] = [[] for _ in range(n)]
        self.both = [anyio.Event() for _ in range(n)]  # set once a connection has two frames
        self.gates = [anyio.Event() for _ in range(n)]  # a transport pushes back until set
        for gate in self.gates:
            gate.set()
        self.failing: set[int] = set()
        self.attempts = [0] * n
        self.opted_in: set[int] = set()
        self.as_awaitable = False  # sends return a non-coroutine awaitable
        self.manager: Stabilizer | None = None

    async def _record(self, i: int, message: Message) -> None:
        if message["type"] != "websocket.send" or message["text"][:1] == RS:
            return
        self.attempts[i] += 1
        if i in self.failing:
            raise OSError("connection reset")
        if not self.gates[i].is_set():
            await self.gates[i].wait()
        self.got[i].append(message["text"])
        if len(self.got[i]) == 2:
            self.both[i].set()

    def _send(self, i: int) -> Callable[[Message], Awaitable[None]]:
        def send(message: Message) -> Awaitable[None]:
            coro = self._record(i, message)
            return _NotACoroutine(coro) if self.as_awaitable else coro

        return send

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Stabilizer]:
        accepted = anyio.Event()
        count = [0]

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "websocket.accept"})
            self.manager = scope["state"]["stabilizer"]
            count[0] += 1
            if count[0] == self.n:
                accepted.set()
            while (await receive())["type"] != "websocket.disconnect":
                pass

        mw = StabilizerMiddleware(app, secret="test")
        senders = []

        async def connection(i: int) -> None:
            tx, rx = anyio.create_memory_object_stream[Message](10)
            senders.append(tx)
            await tx.send({"type": "websocket.connect"})
            scope = {
                "type": "websocket",
                "path": "/ws",
                "query_string": b"stabilizer=1" if i in self.opted_in else b"",
                "headers": [],
                "client": ("127.0.0.1", 1000 + i),
            }
            await mw(scope, rx.receive, self._send(i))

        async with anyio.create_task_group() as tg:
            for i in range(self.n):
                tg.start_soon(connection, i)
            with anyio.fail_after(5):
                await accepted.wait()
            assert self.manager is not None
            yield self.manager
            for tx in senders:
                await tx.send({"type": "websocket.disconnect", "code": 1000})

    async def wait_both(self, indexes: list[int]) -> None:
        with anyio.fail_after(5):
            for i in indexes:
                await self.both[i].wait()


class _NotACoroutine:
    """An awaitable that is not a Python coroutine (as a server written in Rust or C returns)."""

    def __init__(self, coro: Awaitable[None]) -> None:
        self._coro = coro

    def __await__(self) -> Generator[Any, Any, None]:
        return self._coro.__await__()


async def test_a_blocked_transport_delays_only_its_own_connection() -> None:
    """While one connection's send is stuck, broadcast returns, the others get every frame, and
    the stuck one gets them all, in order, once its transport drains."""
    t, stuck = Transports(6), 2
    t.gates[stuck] = anyio.Event()
    others = [i for i in range(t.n) if i != stuck]
    async with t.serving() as manager:
        first = await manager.broadcast("a")
        second = await manager.broadcast("b")
        await t.wait_both(others)
        assert first == second == BroadcastResult(t.n, t.n, 0, 0)
        assert [t.got[i] for i in others] == [["a", "b"]] * len(others)
        assert t.got[stuck] == []
        t.gates[stuck].set()
        await t.wait_both([stuck])
        assert t.got[stuck] == ["a", "b"]


async def test_a_failing_transport_counts_as_failed_and_stays_out(anyio_backend: str) -> None:
    """A transport whose send raises during a broadcast: that recipient is `failed` (an
    opted-in one is `delivered`, as its frames are held for replay), the others get the frame,
    and later broadcasts do not write to it again. On trio sends run in tasks, so the first
    failure is known only after the broadcast returned."""
    t, broken, opted = Transports(5), 1, 3
    t.failing = {broken, opted}
    t.opted_in = {opted}
    healthy = [i for i in range(t.n) if i not in t.failing]
    async with t.serving() as manager:
        first = await manager.broadcast("a")
        await anyio.sleep(0.05)  # trio: let the spawned writes run
        second = await manager.broadcast("b")
        known = 0 if anyio_backend == "trio" else 1
        assert first == BroadcastResult(t.n, t.n - known, 0, known)
        assert second == BroadcastResult(t.n, t.n - 1, 0, 1)
        await t.wait_both(healthy)
        assert [t.got[i] for i in healthy] == [["a", "b"]] * len(healthy)
        assert t.attempts[broken] == t.attempts[opted] == 1  # never written to after failing
        assert manager.stats()["counters"]["send_failures"] == 2


async def test_a_server_send_that_is_not_a_coroutine() -> None:
    """Servers may return any awaitable from `send`: broadcasts and manager sends still reach
    every connection in order, including one whose transport pushes back."""
    t, stuck = Transports(4), 0
    t.as_awaitable = True
    t.gates[stuck] = anyio.Event()
    async with t.serving() as manager:
        first = await manager.broadcast("a")
        sent = [await manager.send(session.id, "b") for session in manager.sessions()]
        await t.wait_both([i for i in range(t.n) if i != stuck])
        t.gates[stuck].set()
        await t.wait_both([stuck])
        assert first == BroadcastResult(t.n, t.n, 0, 0)
        assert sent == [True] * t.n
        assert t.got == [["a", "b"]] * t.n

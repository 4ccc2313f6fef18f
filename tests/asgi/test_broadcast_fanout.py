"""Broadcast fan-out when some transports push back: never waits, never reorders."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from stabilizer_asgi import BroadcastResult, Stabilizer, StabilizerMiddleware
from stabilizer_asgi.types import Message

pytestmark = pytest.mark.anyio


async def test_a_blocked_transport_delays_only_its_own_connection() -> None:
    """While one connection's send is stuck, broadcast returns, the others get every frame, and
    the stuck one gets them all, in order, once its transport drains."""
    n, stuck = 6, 2
    got: list[list[str]] = [[] for _ in range(n)]
    gates = [anyio.Event() for _ in range(n)]
    both = [anyio.Event() for _ in range(n)]
    accepted = anyio.Event()
    for i, gate in enumerate(gates):
        if i != stuck:
            gate.set()
    managers: list[Stabilizer] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        managers.append(scope["state"]["stabilizer"])
        if len(managers) == n:
            accepted.set()
        while (await receive())["type"] != "websocket.disconnect":
            pass

    mw = StabilizerMiddleware(app, secret="test")
    senders = []

    async def connection(i: int) -> None:
        tx, rx = anyio.create_memory_object_stream[Message](10)
        senders.append(tx)
        await tx.send({"type": "websocket.connect"})

        async def send(message: Message) -> None:
            if message["type"] == "websocket.send":
                if not gates[i].is_set():  # this transport pushes back until released
                    await gates[i].wait()
                got[i].append(message["text"])
                if len(got[i]) == 2:
                    both[i].set()

        scope = {
            "type": "websocket",
            "path": "/ws",
            "query_string": b"",
            "headers": [],
            "client": ("127.0.0.1", 1000 + i),
        }
        await mw(scope, rx.receive, send)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(connection, i)
        with anyio.fail_after(5):
            await accepted.wait()
            first = await managers[0].broadcast("a")
            second = await managers[0].broadcast("b")
            for i in range(n):
                if i != stuck:
                    await both[i].wait()
        assert first == second == BroadcastResult(n, n, 0, 0)
        assert [got[i] for i in range(n) if i != stuck] == [["a", "b"]] * (n - 1)
        assert got[stuck] == []
        gates[stuck].set()
        with anyio.fail_after(5):
            await both[stuck].wait()
        assert got[stuck] == ["a", "b"]
        for tx in senders:
            await tx.send({"type": "websocket.disconnect", "code": 1000})


async def test_a_failing_transport_counts_as_failed_and_stays_out(anyio_backend: str) -> None:
    """A transport whose send raises during a broadcast: that recipient is `failed` (an
    opted-in one is `delivered`, as its frames are held for replay), the others get the frame,
    and later broadcasts do not write to it again. On trio sends run in tasks, so the first
    failure is known only after the broadcast returned."""
    n, broken, opted = 5, 1, 3
    got: list[list[str]] = [[] for _ in range(n)]
    attempts = [0] * n
    both = [anyio.Event() for _ in range(n)]
    accepted = anyio.Event()
    managers: list[Stabilizer] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        managers.append(scope["state"]["stabilizer"])
        if len(managers) == n:
            accepted.set()
        while (await receive())["type"] != "websocket.disconnect":
            pass

    mw = StabilizerMiddleware(app, secret="test")
    senders = []

    async def connection(i: int) -> None:
        tx, rx = anyio.create_memory_object_stream[Message](10)
        senders.append(tx)
        await tx.send({"type": "websocket.connect"})

        async def send(message: Message) -> None:
            if message["type"] != "websocket.send" or message["text"][:1] == "\x1e":
                return  # the accept, and an opted-in client's greeting
            attempts[i] += 1
            if i in (broken, opted):
                raise OSError("connection reset")
            got[i].append(message["text"])
            if len(got[i]) == 2:
                both[i].set()

        query = b"stabilizer=1" if i == opted else b""
        scope = {
            "type": "websocket",
            "path": "/ws",
            "query_string": query,
            "headers": [],
            "client": ("127.0.0.1", 2000 + i),
        }
        await mw(scope, rx.receive, send)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(connection, i)
        with anyio.fail_after(5):
            await accepted.wait()
        manager = managers[0]
        first = await manager.broadcast("a")
        await anyio.sleep(0.05)  # trio: let the spawned writes run
        second = await manager.broadcast("b")
        known = 0 if anyio_backend == "trio" else 1
        assert first == BroadcastResult(n, n - known, 0, known)
        assert second == BroadcastResult(n, n - 1, 0, 1)
        healthy = [i for i in range(n) if i not in (broken, opted)]
        with anyio.fail_after(5):
            for i in healthy:
                await both[i].wait()
        assert [got[i] for i in healthy] == [["a", "b"]] * len(healthy)
        assert attempts[broken] == attempts[opted] == 1  # never written to after failing
        assert manager.stats()["counters"]["send_failures"] == 2
        for tx in senders:
            await tx.send({"type": "websocket.disconnect", "code": 1000})

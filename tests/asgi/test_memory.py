"""Memory accounting of `session.data`, the per-session limit and eviction under the total limit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.websockets import WebSocket

from stabilizer_asgi import MemoryLimitExceededError, Stabilizer, StabilizerMiddleware

from .support import WAIT, Recorder, on_loop, registered, wait_until

BLOB = 10_000


def data_app(rec: Recorder, gate: threading.Event) -> Starlette:
    """`/ws` answers `store:<key>:<n>`, `has:<key>`, `drop:<key>` and `touch`.

    `/gated` is the same endpoint, accepting only once `gate` is set.
    """

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        session = websocket.state.stabilizer_session
        await websocket.send_text(session.id)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                rec.add("disconnect", session.id, message["code"], message.get("reason"))
                return
            command, _, arg = message["text"].partition(":")
            if command == "store":
                key, _, size = arg.partition(":")
                try:
                    session.data[key] = "x" * int(size)
                except MemoryLimitExceededError as exc:
                    rec.add("refused", session.id, str(exc))
                    await websocket.send_text("refused")
                    continue
                await websocket.send_text(f"stored:{session.memory}")
            elif command == "has":
                await websocket.send_text("yes" if arg in session.data else "no")
            elif command == "drop":
                del session.data[arg]
                await websocket.send_text(f"dropped:{session.memory}")
            else:
                await websocket.send_text("touched")

    async def gated(websocket: WebSocket) -> None:
        rec.add("gated")  # the session exists (created at the handshake) but is not accepted
        await anyio.to_thread.run_sync(gate.wait, WAIT)
        await endpoint(websocket)

    return Starlette(routes=[WebSocketRoute("/ws", endpoint), WebSocketRoute("/gated", gated)])


class Memory:
    def __init__(
        self, client: TestClient, mw: StabilizerMiddleware, rec: Recorder, gate: threading.Event
    ) -> None:
        self.client, self.mw, self.rec, self.gate = client, mw, rec, gate
        self.manager: Stabilizer = mw.manager
        self.stack = ExitStack()

    def connect(self, path: str = "/ws") -> tuple[WebSocketTestSession, str]:
        ws = self.stack.enter_context(self.client.websocket_connect(path))
        return ws, ws.receive_text()

    def total(self) -> int:
        return int(on_loop(self.client, lambda: self.manager.memory))

    def closed(self) -> dict[str, tuple[int, str]]:
        return {e[1]: (e[2], e[3]) for e in self.rec.events if e[0] == "disconnect"}


@pytest.fixture
def memory_factory(client_factory: Callable[..., TestClient]) -> Iterator[Callable[..., Memory]]:
    with ExitStack() as stack:

        def make(**settings: Any) -> Memory:
            rec = Recorder()
            gate = threading.Event()
            mw = StabilizerMiddleware(data_app(rec, gate), **settings)
            client = stack.enter_context(client_factory(mw))
            m = Memory(client, mw, rec, gate)
            stack.callback(m.stack.close)
            return m

        yield make


def store(ws: WebSocketTestSession, key: str, size: int) -> str:
    ws.send_text(f"store:{key}:{size}")
    return ws.receive_text()


def test_session_data_is_charged_and_refunded(memory_factory: Callable[..., Memory]) -> None:
    """Storing user data charges the session and the process; deleting or ending refunds it."""
    m = memory_factory()
    ws, _ = m.connect()
    assert m.total() == 0
    charged = int(store(ws, "a", BLOB).split(":")[1])
    assert charged > BLOB
    assert m.total() == charged
    assert int(store(ws, "b", 100).split(":")[1]) > charged
    ws.send_text("drop:b")
    assert ws.receive_text() == f"dropped:{charged}"
    assert int(store(ws, "a", 10).split(":")[1]) < charged  # replacing re-measures
    stats = on_loop(m.client, m.manager.stats)
    assert stats["memory"]["total"] == m.total() > 0
    ws.close()
    wait_until(lambda: registered(m.client, m.manager) == 0)
    assert m.total() == 0


def test_per_session_limit_refuses_the_store(memory_factory: Callable[..., Memory]) -> None:
    """Over `max_memory_per_session` the store raises `MemoryLimitExceededError`; nothing kept."""
    m = memory_factory(max_memory_per_session=3 * BLOB)
    ws, sid = m.connect()
    first = store(ws, "a", BLOB)
    assert first.startswith("stored:")
    assert store(ws, "b", 3 * BLOB) == "refused"
    refused = [e for e in m.rec.events if e[0] == "refused"]
    assert refused and refused[0][1] == sid and "max_memory_per_session" in refused[0][2]
    assert m.total() == int(first.split(":")[1])  # the refused value was not charged
    ws.send_text("has:b")
    assert ws.receive_text() == "no"  # and it was not stored


def test_per_session_limit_is_per_session(memory_factory: Callable[..., Memory]) -> None:
    """Each session has its own budget under `max_memory_per_session`."""
    m = memory_factory(max_memory_per_session=2 * BLOB)
    a, _ = m.connect()
    b, _ = m.connect()
    assert store(a, "k", BLOB).startswith("stored:")
    assert store(b, "k", BLOB).startswith("stored:")
    assert store(a, "k2", BLOB) == "refused"


def fill(m: Memory, count: int) -> list[tuple[WebSocketTestSession, str]]:
    conns = [m.connect() for _ in range(count)]
    for ws, _ in conns:
        assert store(ws, "blob", BLOB).startswith("stored:")
    return conns


@pytest.mark.parametrize(("policy", "victim"), [("lru", 1), ("fifo", 0), ("oldest", 0)])
def test_total_limit_evicts_by_policy(
    memory_factory: Callable[..., Memory], policy: str, victim: int
) -> None:
    """Over `max_total_memory` a victim chosen by `eviction` is closed (1013), its data freed."""
    m = memory_factory(max_total_memory=int(3.5 * BLOB), eviction=policy)
    conns = fill(m, 3)
    ws0 = conns[0][0]
    ws0.send_text("touch")  # session 0 is now the most recently active
    assert ws0.receive_text() == "touched"
    newcomer, new_id = m.connect()
    assert store(newcomer, "blob", BLOB).startswith("stored:")  # made room, not refused
    victim_ws, victim_id = conns[victim]
    assert victim_ws.receive() == {
        "type": "websocket.close",
        "code": 1013,
        "reason": "memory limit",
    }
    wait_until(lambda: victim_id in m.closed())
    assert m.closed()[victim_id] == (1013, "memory limit")
    assert set(m.closed()) == {victim_id}
    assert m.total() <= 3.5 * BLOB
    survivors = {sid for _, sid in conns if sid != victim_id} | {new_id}
    wait_until(lambda: {s.id for s in on_loop(m.client, m.manager.sessions)} == survivors)
    assert on_loop(m.client, m.manager.stats)["counters"]["evictions"] == 1


@pytest.mark.parametrize("policy", ["fifo", "oldest"])
def test_fifo_and_oldest_differ(memory_factory: Callable[..., Memory], policy: str) -> None:
    """`fifo` evicts the first registered (accepted) session, `oldest` the first created."""
    m = memory_factory(max_total_memory=int(2.5 * BLOB), eviction=policy)
    early: list[tuple[WebSocketTestSession, str]] = []
    # created first, accepted last: it connects from a thread while its handshake waits
    opener = threading.Thread(target=lambda: early.append(m.connect("/gated")))
    opener.start()
    wait_until(lambda: "gated" in m.rec.events)
    accepted_first = m.connect()
    m.gate.set()
    opener.join(WAIT)
    created_first = early[0]
    assert store(created_first[0], "blob", BLOB).startswith("stored:")
    assert store(accepted_first[0], "blob", BLOB).startswith("stored:")
    third = m.connect()
    assert store(third[0], "blob", BLOB).startswith("stored:")
    wait_until(lambda: len(m.closed()) == 1)
    expected = accepted_first if policy == "fifo" else created_first
    assert list(m.closed()) == [expected[1]]


def test_total_limit_refuses_when_nothing_can_be_evicted(
    memory_factory: Callable[..., Memory],
) -> None:
    """If evicting others cannot make room, the store itself is refused and nobody is closed."""
    m = memory_factory(max_total_memory=2 * BLOB)
    a, _ = m.connect()
    b, _ = m.connect()
    assert store(a, "small", 100).startswith("stored:")
    assert store(b, "huge", 3 * BLOB) == "refused"
    refused = [e for e in m.rec.events if e[0] == "refused"]
    assert "max_total_memory" in refused[0][2]
    a.send_text("touch")
    assert a.receive_text() == "touched"  # still connected
    assert m.closed() == {}


def test_memory_limit_exceeded_is_a_stabilizer_error() -> None:
    """`MemoryLimitExceededError` is part of the public error tree."""
    from stabilizer_asgi import StabilizerError

    assert issubclass(MemoryLimitExceededError, StabilizerError)

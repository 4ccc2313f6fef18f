"""The manager API through real connections: queries, sends, broadcast, groups, close,
duplicate clients."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse, WebSocketTestSession
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import (
    BroadcastResult,
    SessionNotFoundError,
    SessionState,
    StabilizerError,
    StabilizerMiddleware,
)
from stabilizer_asgi.types import Scope

from .support import Recorder, make_chat_app, on_loop, registered, session_id, wait_until


class Harness:
    """A TestClient on the chat app with helpers to open connections and call the manager."""

    def __init__(self, client: TestClient, mw: StabilizerMiddleware, rec: Recorder) -> None:
        self.client = client
        self.mw = mw
        self.manager = mw.manager
        self.rec = rec
        self._stack = ExitStack()

    def connect(self, query: str = "") -> tuple[WebSocketTestSession, str]:
        ws = self._stack.enter_context(self.client.websocket_connect("/ws?" + query))
        return ws, session_id(ws)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return on_loop(self.client, lambda: fn(*args, **kwargs))

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return await fn(*args, **kwargs)

        return on_loop(self.client, call)

    def disconnects(self) -> dict[str, tuple[int, str]]:
        return {e[1]: (e[2], e[3]) for e in self.rec.events if e[0] == "disconnect"}


@pytest.fixture
def harness_factory(
    client_factory: Callable[..., TestClient],
) -> Iterator[Callable[..., Harness]]:
    with ExitStack() as stack:

        def make(**settings: Any) -> Harness:
            rec = Recorder()
            mw = StabilizerMiddleware(make_chat_app(rec), **settings)
            client = stack.enter_context(client_factory(mw))
            harness = Harness(client, mw, rec)
            stack.callback(harness._stack.close)
            return harness

        yield make


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory()


def test_queries(harness: Harness) -> None:
    """`get`, `sessions`, `count` and `by_client` reflect the live connections."""
    h = harness
    _, a = h.connect("client_id=alice")
    _, b = h.connect("client_id=alice")
    ws_c, c = h.connect()
    assert h.call(h.manager.count) == 3
    assert {s.id for s in h.call(h.manager.sessions)} == {a, b, c}
    session = h.call(h.manager.get, a)
    assert session.id == a and session.client_id == "alice"
    assert session.state is SessionState.CONNECTED and session.opted_in is False
    assert session.remote == ("testclient", 50000)
    assert h.call(h.manager.get, "no-such-session") is None
    assert {s.id for s in h.call(h.manager.by_client, "alice")} == {a, b}
    assert h.call(h.manager.by_client, "bob") == []
    assert h.call(h.manager.get, c).client_id is None
    ws_c.close()
    wait_until(lambda: registered(h.client, h.manager) == 2)
    assert h.call(h.manager.get, c) is None


def test_send_encodes_by_type(harness: Harness) -> None:
    """`send`: str → text, bytes → binary, dict/list → compact JSON text."""
    h = harness
    ws, sid = h.connect()
    assert h.run(h.manager.send, sid, "text") is True
    assert ws.receive() == {"type": "websocket.send", "text": "text"}
    assert h.run(h.manager.send, sid, b"\x00bin") is True
    assert ws.receive() == {"type": "websocket.send", "bytes": b"\x00bin"}
    assert h.run(h.manager.send, sid, {"a": [1, "é"]}) is True
    assert json.loads(ws.receive_text()) == {"a": [1, "é"]}
    assert h.run(h.manager.send, sid, [1, 2]) is True
    assert ws.receive_text() == "[1,2]"
    with pytest.raises(TypeError):
        h.run(h.manager.send, sid, 42)
    assert h.run(h.manager.send, "no-such-session", "x") is False
    session = h.call(h.manager.get, sid)
    assert session.frames_out >= 5  # the app's id frame plus the four sends


def test_send_to_a_closed_session_returns_false(harness: Harness) -> None:
    """A session that has ended is gone: `send` says False instead of raising."""
    h = harness
    ws, sid = h.connect()
    ws.close()
    wait_until(lambda: registered(h.client, h.manager) == 0)
    assert h.run(h.manager.send, sid, "late") is False


def test_broadcast_to_everyone_group_and_excluded(harness: Harness) -> None:
    """`broadcast` reaches all sessions, or one group, minus `exclude` (an id or a collection)."""
    h = harness
    conns = dict(h.connect() for _ in range(4))
    ids = list(conns.values())
    socket_of = {sid: ws for ws, sid in conns.items()}
    result = h.run(h.manager.broadcast, "all")
    assert result == BroadcastResult(total=4, delivered=4, dropped=0, failed=0)
    for ws in conns:
        assert ws.receive_text() == "all"

    h.run(h.manager.join, ids[0], "room")
    h.run(h.manager.join, ids[1], "room")
    h.run(h.manager.join, ids[2], "other")
    assert h.run(h.manager.broadcast, {"to": "room"}, group="room").delivered == 2
    for sid in ids[:2]:
        assert json.loads(socket_of[sid].receive_text()) == {"to": "room"}

    assert h.run(h.manager.broadcast, "not 0", exclude=ids[0]).total == 3
    for exclude in ([ids[0], ids[1]], {ids[0], ids[1]}, frozenset(ids[:2]), (ids[0], ids[1])):
        result = h.run(h.manager.broadcast, "not 0 or 1", exclude=exclude)
        assert result.total == 2 and result.delivered == 2
    assert h.run(h.manager.broadcast, b"room minus 1", group="room", exclude=ids[1]).total == 1
    assert h.run(h.manager.broadcast, "nobody", group="empty") == BroadcastResult(0, 0, 0, 0)

    # each socket's next frames are exactly what was addressed to it, in order
    expected: dict[str, list[Any]] = {
        ids[0]: [b"room minus 1"],
        ids[1]: ["not 0"],
        ids[2]: ["not 0"] + ["not 0 or 1"] * 4,
        ids[3]: ["not 0"] + ["not 0 or 1"] * 4,
    }
    for sid, frames in expected.items():
        ws = socket_of[sid]
        for frame in frames:
            if isinstance(frame, bytes):
                assert ws.receive_bytes() == frame
            else:
                assert ws.receive_text() == frame
        ws.send_text("marker")  # the app echoes: proves nothing else was queued before it
        assert ws.receive_text() == "marker"


def test_join_and_leave(harness: Harness) -> None:
    """Groups are created by `join`, counted by `groups()`, and vanish when empty."""
    h = harness
    _, a = h.connect()
    ws_b, b = h.connect()
    h.run(h.manager.join, a, "g1")
    h.run(h.manager.join, a, "g2")
    h.run(h.manager.join, b, "g1")
    h.run(h.manager.join, b, "g1")  # joining twice is harmless
    assert h.call(h.manager.groups) == {"g1": 2, "g2": 1}
    assert {s.id for s in h.call(h.manager.sessions, "g1")} == {a, b}
    assert h.call(h.manager.get, a).groups == frozenset({"g1", "g2"})
    h.run(h.manager.leave, a, "g2")
    assert h.call(h.manager.groups) == {"g1": 2}
    h.run(h.manager.leave, a, "never-joined")  # leaving a group one is not in is harmless
    ws_b.close()
    wait_until(lambda: registered(h.client, h.manager) == 1)
    assert h.call(h.manager.groups) == {"g1": 1}  # a closed session leaves its groups
    assert h.call(h.manager.sessions, "g2") == []


@pytest.mark.parametrize("group", ["", "x" * 257, None, 5])
def test_join_rejects_bad_group_names(harness: Harness, group: Any) -> None:
    """A group name must be a non-empty str of at most 256 characters."""
    h = harness
    _, sid = h.connect()
    with pytest.raises(ValueError):
        h.run(h.manager.join, sid, group)
    assert h.call(h.manager.groups) == {}


def test_unknown_sessions_answer_false_or_raise_session_not_found(harness: Harness) -> None:
    """`join`, `leave`, `send` and `close` on an id no node has answer False (the same
    answer in cluster mode); `issue_token` raises `SessionNotFoundError`."""
    h = harness
    _, sid = h.connect()
    assert h.run(h.manager.join, sid, "g") is True
    assert h.run(h.manager.leave, sid, "g") is True
    for fn, args in [
        (h.manager.join, ("ghost", "g")),
        (h.manager.leave, ("ghost", "g")),
        (h.manager.send, ("ghost", "x")),
        (h.manager.close, ("ghost",)),
    ]:
        assert h.run(fn, *args) is False
    with pytest.raises(SessionNotFoundError) as info:
        h.call(h.manager.issue_token, "ghost")
    assert "ghost" in str(info.value)
    assert isinstance(info.value, StabilizerError) and isinstance(info.value, KeyError)


def test_close_reaches_client_and_app(harness: Harness) -> None:
    """`close(id, code, reason)` closes the client and the app's `receive()` gets the disconnect."""
    h = harness
    ws, sid = h.connect()
    _, other = h.connect()
    assert h.run(h.manager.close, sid, 4321, "bye now") is True
    assert ws.receive() == {"type": "websocket.close", "code": 4321, "reason": "bye now"}
    wait_until(lambda: sid in h.disconnects())
    assert h.disconnects()[sid] == (4321, "bye now")
    wait_until(lambda: h.call(h.manager.get, sid) is None)
    assert h.run(h.manager.close, sid) is False  # already gone
    assert h.run(h.manager.close, "ghost") is False
    assert h.call(h.manager.get, other) is not None


def test_close_defaults_to_1000(harness: Harness) -> None:
    """`close(id)` closes with 1000 and an empty reason."""
    h = harness
    ws, sid = h.connect()
    assert h.run(h.manager.close, sid) is True
    assert ws.receive() == {"type": "websocket.close", "code": 1000, "reason": ""}
    wait_until(lambda: sid in h.disconnects())
    assert h.disconnects()[sid] == (1000, "")


def test_duplicate_client_allow(harness_factory: Callable[..., Harness]) -> None:
    """`duplicate_client="allow"` (default): the same client id may connect twice."""
    h = harness_factory()
    _, a = h.connect("client_id=dup")
    _, b = h.connect("client_id=dup")
    assert {s.id for s in h.call(h.manager.by_client, "dup")} == {a, b}


def test_duplicate_client_replace(harness_factory: Callable[..., Harness]) -> None:
    """`duplicate_client="replace"`: the old connection is closed with 1000 "replaced"."""
    h = harness_factory(duplicate_client="replace")
    old_ws, old = h.connect("client_id=dup")
    _, other = h.connect("client_id=someone-else")
    _, new = h.connect("client_id=dup")
    assert old_ws.receive() == {"type": "websocket.close", "code": 1000, "reason": "replaced"}
    wait_until(lambda: old in h.disconnects())
    assert h.disconnects()[old] == (1000, "replaced")
    wait_until(lambda: [s.id for s in h.call(h.manager.by_client, "dup")] == [new])
    assert h.call(h.manager.get, other) is not None


def test_duplicate_client_reject(harness_factory: Callable[..., Harness]) -> None:
    """`duplicate_client="reject"`: a second connection with a live client id is refused."""
    h = harness_factory(duplicate_client="reject")
    ws, first = h.connect("client_id=dup")
    with pytest.raises(WebSocketDenialResponse) as info:
        h.connect("client_id=dup")
    assert info.value.status_code == 409
    assert info.value.json() == {"error": "duplicate_client"}
    assert [s.id for s in h.call(h.manager.by_client, "dup")] == [first]
    assert h.call(h.manager.stats)["rejections"]["duplicate_client"] == 1
    h.connect()  # no client id: never a duplicate
    ws.close()
    wait_until(lambda: h.call(h.manager.by_client, "dup") == [])
    _, again = h.connect("client_id=dup")
    assert [s.id for s in h.call(h.manager.by_client, "dup")] == [again]


def _from_header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-user":
            return str(value.decode())
    return None


def test_client_id_callable(harness_factory: Callable[..., Harness]) -> None:
    """A `client_id` callable replaces the query parameter."""
    h = harness_factory(client_id=_from_header)
    ws = h._stack.enter_context(
        h.client.websocket_connect("/ws?client_id=ignored", headers={"x-user": "carol"})
    )
    sid = session_id(ws)
    assert h.call(h.manager.get, sid).client_id == "carol"
    assert h.call(h.manager.by_client, "ignored") == []


@pytest.mark.parametrize("result", ["raise", "empty", "not-a-str"])
def test_client_id_callable_failures_make_anonymous_clients(
    harness_factory: Callable[..., Harness], result: str
) -> None:
    """A `client_id` callable that fails or returns junk leaves the client anonymous."""

    def client_id(scope: Scope) -> Any:
        if result == "raise":
            raise RuntimeError("lookup failed")
        return "" if result == "empty" else 42

    h = harness_factory(client_id=client_id)
    _, sid = h.connect()
    assert h.call(h.manager.get, sid).client_id is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("client_id=bob", "bob"),
        ("a=1&client_id=%C3%A9l%C3%A8ve&b=2", "élève"),
        ("client_id=", None),
        ("my_client_id=x", None),
        ("client_id=" + "z" * 300, "z" * 256),
        ("client_id=first&client_id=second", "first"),
    ],
)
def test_client_id_query_parameter(harness: Harness, query: str, expected: str | None) -> None:
    """By default the client id is the `client_id` query parameter (at most 256 characters)."""
    _, sid = harness.connect(query)
    assert harness.call(harness.manager.get, sid).client_id == expected


def test_close_unblocks_a_push_only_endpoint(client_factory: Callable[..., TestClient]) -> None:
    """An endpoint that never reads learns of `close()` from its next send raising."""
    rec = Recorder()

    async def push(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(websocket.state.stabilizer_session.id)
        try:
            while True:
                await websocket.send_text("tick")
                await anyio.sleep(0.005)
        except WebSocketDisconnect as exc:
            rec.add("send raised", exc.code, exc.reason)
        finally:
            rec.done.set()

    mw = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/push", push)]))
    with client_factory(mw) as client, client.websocket_connect("/push") as ws:
        sid = ws.receive_text()
        assert on_loop(client, lambda: mw.manager.close(sid, 4001, "enough")) is True
        rec.wait_done()
        while (message := ws.receive())["type"] != "websocket.close":
            assert message["text"] == "tick"
        assert message == {"type": "websocket.close", "code": 4001, "reason": "enough"}
    assert rec.events == [("send raised", 4001, "enough")]


def test_manager_works_without_lifespan(client_factory: Callable[..., TestClient]) -> None:
    """Without a lifespan (no `with client:`) each connection runs in its own event loop and the
    manager still sends, broadcasts and closes from inside the app."""

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        stab = websocket.state.stabilizer
        me = websocket.state.stabilizer_session
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["text"] == "broadcast":
                result = await stab.broadcast("to all")
                await websocket.send_text(f"delivered {result.delivered}")
            elif message["text"] == "send":
                await stab.send(me.id, {"to": "me"})
            else:
                await stab.close(me.id, 4002, "closed by app")

    mw = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", endpoint)]))
    client = client_factory(mw)
    for _ in range(2):  # a second loop after the first one is gone
        with client.websocket_connect("/ws") as ws:
            ws.send_text("broadcast")
            assert ws.receive_text() == "to all"
            assert ws.receive_text() == "delivered 1"
            ws.send_text("send")
            assert ws.receive_json() == {"to": "me"}
            ws.send_text("close")
            assert ws.receive() == {
                "type": "websocket.close",
                "code": 4002,
                "reason": "closed by app",
            }
    assert mw.manager.count() == 0


def test_set_client_id_reindexes_and_drives_duplicate_client(
    harness_factory: Callable[..., Harness],
) -> None:
    """`set_client_id` moves a session to another client id: `by_client` finds it there and
    `duplicate_client="replace"` treats it as that client; bad values are refused."""
    h = harness_factory(duplicate_client="replace")
    _, sid = h.connect()
    h.call(h.manager.set_client_id, sid, "carol")
    assert [s.id for s in h.call(h.manager.by_client, "carol")] == [sid]
    h.call(h.manager.set_client_id, sid, None)
    assert h.call(h.manager.by_client, "carol") == []
    h.call(h.manager.set_client_id, sid, "carol")
    h.connect("client_id=carol")
    wait_until(lambda: h.disconnects().get(sid) == (1000, "replaced"))
    for bad in ("", "x" * 257, 5):
        with pytest.raises(ValueError):
            h.call(h.manager.set_client_id, sid, bad)
    with pytest.raises(SessionNotFoundError):
        h.call(h.manager.set_client_id, "no-such-session", "dave")

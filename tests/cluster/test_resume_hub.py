"""Resume anywhere on an in-memory hub cluster (asyncio and trio): hand-over between live nodes,
parking on drain with its mailbox, and the end of a parked session.

The same behaviour through real uvicorn nodes on a real redis-server is in
`test_resume_anywhere.py`; here the nodes share one event loop, so every step can be checked
from the managers' side too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from stabilizer_asgi import Session
from tests.asgi.support import hello, on_loop, session_id
from tests.cluster.test_hub import TwoNodes
from tests.helpers import wait_until

Ended = list[tuple[str, str]]


@pytest.fixture
def ended() -> Ended:
    return []


@pytest.fixture
def cluster(
    client_factory: Callable[..., TestClient], ended: Ended
) -> Iterator[tuple[TwoNodes, TestClient]]:
    async def on_disconnect(session: Session) -> None:
        ended.append((session.id, str(session.data.get("name"))))

    app = TwoNodes(on_disconnect=on_disconnect, resume_window=30.0, replay_buffer_messages=5)
    with client_factory(app) as client:
        wait_until(lambda: len(on_loop(client, app.a.manager.backend.presence.nodes)) == 2)
        yield app, client


def _closed(ws: Any) -> int:
    """Read up to the close (past a drain's `reconnect` hint): its code."""
    while True:
        message = ws.receive()
        if message["type"] == "websocket.close":
            return int(message["code"])


def _resume(token: str, ack: int) -> str:
    return f"?stabilizer=1&stabilizer_resume={token}&stabilizer_ack={ack}"


def _open_on_b(app: TwoNodes, client: TestClient) -> tuple[dict[str, Any], str]:
    """An opted-in session on node b with data and a group, dropped (1012): its hello, id."""
    with client.websocket_connect("/b/ws?stabilizer=1") as ws:
        greeting = hello(ws)
        sid = session_id(ws)
        session = app.b.manager.get(sid)
        assert session is not None
        session.data["name"] = "ada"
        assert on_loop(client, app.b.manager.join, sid, "room") is True
        on_loop(client, app.b.manager.close, sid, 1012, "restart")
        assert ws.receive()["code"] == 1012
    return greeting, sid


def test_a_session_detached_on_one_node_resumes_exactly_on_the_other(
    cluster: tuple[TwoNodes, TestClient], ended: Ended
) -> None:
    """Node a takes over a session detached on node b: the frames sent while it was away are
    replayed once, in order; its data, groups and counters come along; b forgets it."""
    app, client = cluster
    greeting, sid = _open_on_b(app, client)
    assert on_loop(client, app.b.manager.send, sid, "one") is True
    on_loop(client, lambda: app.a.manager.broadcast("two", group="room"))
    with client.websocket_connect("/a/ws" + _resume(greeting["token"], 1)) as ws:
        again = hello(ws)
        assert again["resumed"] is True and again["session"] == sid
        assert [ws.receive_text(), ws.receive_text()] == ["one", "two"]
        assert session_id(ws) == sid  # the app's own greeting on the new connection
        assert app.b.manager.get(sid) is None
        moved = app.a.manager.get(sid)
        assert moved is not None and moved.data["name"] == "ada" and moved.groups == {"room"}
        assert moved.frames_out == 4  # id, one, two, id again
        on_loop(client, lambda: app.b.manager.broadcast("three", group="room"))
        assert ws.receive_text() == "three"
        ws.send_text("echo me")
        assert ws.receive_text() == "echo me"
        assert moved.frames_in == 1
    counters = on_loop(client, app.a.manager.stats)["counters"]
    assert counters["adopted"] == 1
    assert on_loop(client, app.b.manager.stats)["counters"]["parked"] == 1
    assert ended == [(sid, "ada")]  # ended once, by the client's close on node a


def test_a_resume_elsewhere_closes_the_half_open_connection(
    cluster: tuple[TwoNodes, TestClient],
) -> None:
    """A client that resumes on node a while node b still holds its old connection: b closes
    that connection (1000) and a carries the session on."""
    app, client = cluster
    with client.websocket_connect("/b/ws?stabilizer=1") as old:
        greeting = hello(old)
        sid = session_id(old)
        with client.websocket_connect("/a/ws" + _resume(greeting["token"], 1)) as ws:
            again = hello(ws)
            assert again["resumed"] is True and again["session"] == sid
            closed = old.receive()
            assert closed["type"] == "websocket.close" and closed["code"] == 1000
            assert on_loop(client, app.b.manager.send, sid, "via b") is True
            assert session_id(ws) == sid
            assert ws.receive_text() == "via b"


def test_a_drained_node_parks_its_sessions_and_their_mail_waits(
    cluster: tuple[TwoNodes, TestClient], ended: Ended
) -> None:
    """Node b drains: its detached session is parked; sends and broadcasts from node a wait in
    the mailbox and are replayed once, in order, when the client resumes on a; nothing ends."""
    app, client = cluster
    with client.websocket_connect("/b/ws?stabilizer=1") as ws:
        greeting = hello(ws)
        sid = session_id(ws)
        app.b.manager.get(sid).data["name"] = "grace"
        on_loop(client, app.b.manager.drain, 0)
        assert _closed(ws) == 1012
    assert app.b.manager.get(sid) is None
    assert on_loop(client, app.a.manager.send, sid, "m1") is True
    on_loop(client, app.a.manager.broadcast, "m2")
    assert on_loop(client, app.a.manager.send, sid, b"m3") is True
    with client.websocket_connect("/a/ws" + _resume(greeting["token"], 1)) as ws:
        assert hello(ws)["resumed"] is True
        assert ws.receive_text() == "m1"
        assert ws.receive_text() == "m2"
        assert ws.receive_bytes() == b"m3"
        assert app.a.manager.get(sid).data["name"] == "grace"
        assert ended == []
    assert ended == [(sid, "grace")]


def test_a_parked_mailbox_that_overflows_answers_gap(
    cluster: tuple[TwoNodes, TestClient],
) -> None:
    """More frames for a parked session than the replay buffer holds: its resume answers
    resumed:false with reason "gap", never a partial replay."""
    app, client = cluster
    with client.websocket_connect("/b/ws?stabilizer=1") as ws:
        greeting = hello(ws)
        session_id(ws)
        on_loop(client, app.b.manager.drain, 0)
        _closed(ws)
    for n in range(6):  # replay_buffer_messages=5
        on_loop(client, app.a.manager.broadcast, f"m{n}")
    with client.websocket_connect("/a/ws" + _resume(greeting["token"], 1)) as ws:
        again = hello(ws)
        assert again["resumed"] is False and again["reason"] == "gap"


def test_a_parked_session_whose_window_passes_ends_once(
    client_factory: Callable[..., TestClient],
) -> None:
    """A parked session nobody resumes ends when its window passes: `on_disconnect` runs once
    (on a node still up), and its token then answers "expired"."""
    ended: Ended = []

    async def on_disconnect(session: Session) -> None:
        ended.append((session.id, str(session.data.get("name"))))

    app = TwoNodes(on_disconnect=on_disconnect, resume_window=0.6)
    with client_factory(app) as client:
        wait_until(lambda: len(on_loop(client, app.a.manager.backend.presence.nodes)) == 2)
        with client.websocket_connect("/b/ws?stabilizer=1") as ws:
            greeting = hello(ws)
            sid = session_id(ws)
            app.b.manager.get(sid).data["name"] = "lin"
            on_loop(client, app.b.manager.drain, 0)
            _closed(ws)
        wait_until(lambda: ended == [(sid, "lin")])
        with client.websocket_connect("/a/ws" + _resume(greeting["token"], 1)) as ws:
            again = hello(ws)
            assert again["resumed"] is False and again["reason"] == "expired"
        assert [e for e in ended if e[0] == sid] == [(sid, "lin")]


def test_a_session_whose_data_is_not_json_stays_and_is_logged(
    cluster: tuple[TwoNodes, TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A detached session whose data cannot travel (not JSON) is not parked: a WARNING names
    the session and the key, never the value, and the session stays on its node."""
    app, client = cluster
    with client.websocket_connect("/b/ws?stabilizer=1") as ws:
        hello(ws)
        sid = session_id(ws)
        app.b.manager.get(sid).data["secret-set"] = {"not", "json"}
        on_loop(client, app.b.manager.close, sid, 1012, "restart")
        ws.receive()
    parked = on_loop(client, app.b.manager._park_detached)
    assert parked == 0
    assert app.b.manager.get(sid) is not None
    warnings = [r for r in caplog.records if getattr(r, "event", None) == "not_movable"]
    assert len(warnings) == 1 and "secret-set" in warnings[0].getMessage()
    assert "json'" not in warnings[0].getMessage() and "'not'" not in warnings[0].getMessage()

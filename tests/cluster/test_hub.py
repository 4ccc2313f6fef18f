"""Two managers in one process form a cluster through a shared in-memory hub (asyncio and trio).

One ASGI app serves both nodes (`/a/...` is node a, `/b/...` node b) so `TestClient` drives
them on one event loop; the lifespan of both runs, which is what joins each to the hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.backends import MemoryBackend, MemoryHub
from tests.asgi.support import Recorder, hello, make_chat_app, on_loop, session_id
from tests.helpers import wait_until


class TwoNodes:
    """Node a and node b of one hub cluster behind one ASGI app."""

    def __init__(self, **settings: Any) -> None:
        hub = MemoryHub()
        self.rec = Recorder()
        self.a = StabilizerMiddleware(
            make_chat_app(self.rec), backend=MemoryBackend(hub), secret="k", **settings
        )
        self.b = StabilizerMiddleware(
            make_chat_app(self.rec), backend=MemoryBackend(hub), secret="k", **settings
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        path: str = scope["path"]
        node = self.a if path.startswith("/a/") else self.b
        await node(dict(scope, path=path[2:], raw_path=path[2:].encode()), receive, send)

    async def _lifespan(self, scope: Any, receive: Any, send: Any) -> None:
        """Both nodes' lifespans, in step: each event goes to both, one answer goes back."""
        apps = [self.a, self.b]
        inboxes = [anyio.create_memory_object_stream[Any](4) for _ in apps]
        answers_tx, answers_rx = anyio.create_memory_object_stream[Any](8)
        async with anyio.create_task_group() as tg:
            for app, (_tx, rx) in zip(apps, inboxes, strict=True):
                tg.start_soon(app, dict(scope, state={}), rx.receive, answers_tx.send)
            while True:
                message = await receive()
                for tx, _rx in inboxes:
                    await tx.send(message)
                replies = [await answers_rx.receive() for _ in apps]
                await send(replies[0])
                if message["type"] == "lifespan.shutdown":
                    return


@pytest.fixture
def nodes(client_factory: Callable[..., TestClient]) -> Iterator[tuple[TwoNodes, TestClient]]:
    app = TwoNodes()
    with client_factory(app) as client:
        wait_until(lambda: len(on_loop(client, app.a.manager.backend.presence.nodes)) == 2)
        yield app, client


def test_a_broadcast_on_one_node_reaches_the_sessions_of_both(
    nodes: tuple[TwoNodes, TestClient],
) -> None:
    """A broadcast made on node a reaches the clients of node b too; `BroadcastResult`
    counts node a's sessions."""
    app, client = nodes
    with client.websocket_connect("/a/ws") as on_a, client.websocket_connect("/b/ws") as on_b:
        session_id(on_a), session_id(on_b)
        result = on_loop(client, app.a.manager.broadcast, "hello all")
        assert result.total == 1
        assert on_a.receive_text() == "hello all"
        assert on_b.receive_text() == "hello all"


def test_send_join_close_reach_a_session_on_the_other_node(
    nodes: tuple[TwoNodes, TestClient],
) -> None:
    """`send`, `join` and `close` on node a act on node b's session (True); a group broadcast
    from node a after the join reaches it; unknown ids answer False."""
    app, client = nodes
    manager = app.a.manager
    with client.websocket_connect("/b/ws") as on_b:
        sid = session_id(on_b)
        assert on_loop(client, manager.send, sid, {"direct": 1}) is True
        assert on_b.receive_json() == {"direct": 1}
        assert on_loop(client, manager.join, sid, "room") is True
        on_loop(client, lambda: manager.broadcast("to room", group="room"))
        assert on_b.receive_text() == "to room"
        assert on_loop(client, manager.close, sid, 4002, "bye") is True
        assert on_b.receive() == {"type": "websocket.close", "code": 4002, "reason": "bye"}
    assert on_loop(client, manager.send, "ghost", "x") is False


def test_stats_list_both_nodes(nodes: tuple[TwoNodes, TestClient]) -> None:
    """Each node's stats show both nodes with their connections, sessions by state and
    groups, and the cluster totals."""
    app, client = nodes
    with client.websocket_connect("/a/ws") as w1, client.websocket_connect("/b/ws") as w2:
        session_id(w1), session_id(w2)
        with client.websocket_connect("/b/ws") as w3:
            session_id(w3)
            on_loop(client, app.b.manager.join, session_id_of(app, "b"), "room")
            cluster = on_loop(client, app.a.manager.stats)["cluster"]
            assert cluster["connections"] == 3 and cluster["healthy"] is True
            assert sorted(n["connections"] for n in cluster["nodes"]) == [1, 2]
            assert cluster["sessions"] == {"connected": 3, "detached": 0}
            by_node = {n["id"]: n for n in cluster["nodes"]}
            on_b = by_node[app.b.manager.cluster.node_id]
            assert on_b["sessions"] == {"connected": 2, "detached": 0} and on_b["groups"] == 1


def session_id_of(app: TwoNodes, node: str) -> str:
    """The id of one session of node `node`."""
    return next(iter(getattr(app, node).manager.sessions())).id


def test_lost_publications_close_opted_in_sessions_and_resume_answers_gap(
    nodes: tuple[TwoNodes, TestClient],
) -> None:
    """When the backend reports publications lost for everyone, node b closes its opted-in
    clients with 1012 and their resume answers resumed:false, reason "gap"."""
    app, client = nodes
    with client.websocket_connect("/b/ws?stabilizer=1") as ws:
        greeting = hello(ws)
        session_id(ws)
        on_loop(client, app.b.manager.cluster.lost, None)
        closed = ws.receive()
        assert closed["type"] == "websocket.close" and closed["code"] == 1012
    token = greeting["token"]
    with client.websocket_connect(
        f"/b/ws?stabilizer=1&stabilizer_resume={token}&stabilizer_ack=1"
    ) as ws:
        again = hello(ws)
        assert again["resumed"] is False and again["reason"] == "gap"


def test_a_used_token_is_invalid_on_the_other_node(nodes: tuple[TwoNodes, TestClient]) -> None:
    """A token spent on node b, once the client holds the next one (it sent a frame on the
    resumed connection), is refused as "invalid" on node a: single use cluster-wide."""
    app, client = nodes
    with client.websocket_connect("/b/ws?stabilizer=1") as ws:
        first = hello(ws)
        session_id(ws)
        on_loop(client, app.b.manager.close, first["session"], 1012, "restart")
        ws.receive()
    token = first["token"]
    resume = f"?stabilizer=1&stabilizer_resume={token}&stabilizer_ack=1"
    with client.websocket_connect("/b/ws" + resume) as ws:
        assert hello(ws)["resumed"] is True
        session_id(ws)
        ws.send_text("confirms the new token")
        assert ws.receive_text() == "confirms the new token"
        with client.websocket_connect("/a/ws" + resume) as other:
            assert hello(other)["reason"] == "invalid"

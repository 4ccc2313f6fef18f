"""The compat API behind `StabilizerMiddleware`: one registry, one heartbeat, mixed endpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.compat import WebSocketConfig, WebSocketConnectionManager
from tests.conftest import MS

from .support import Recorder, events, on_loop, seed_app, wait_until

Factory = Callable[..., TestClient]
FAST = {"heartbeat_interval": 40 * MS, "heartbeat_timeout": 250 * MS}


def test_connect_adopts_the_middleware_session(client_factory: Factory) -> None:
    """`connect()` registers the session the middleware made (same id, now with the seed's
    client id) instead of a second one."""
    mgr, rec = WebSocketConnectionManager(), Recorder()
    app = seed_app(mgr, rec, middleware=True)
    with client_factory(app) as client, client.websocket_connect("/ws/alice"):
        wait_until(lambda: events(rec, "connected") != [])
        [(_, _, session_id)] = events(rec, "connected")
        assert [s.id for s in mgr.stabilizer.sessions()] == [session_id]
        assert mgr.stabilizer.get(session_id).client_id == "alice"  # type: ignore[union-attr]
        assert mgr.get_active_connections() == ["alice"]


def test_one_heartbeat_answered_by_the_middleware(client_factory: Factory) -> None:
    """Behind the middleware the client gets exactly the pings the middleware counts (no
    second heartbeat from compat), and its "pong" never reaches the endpoint."""
    mgr, rec = WebSocketConnectionManager(WebSocketConfig(**FAST)), Recorder()
    app = seed_app(mgr, rec, middleware=True)
    with client_factory(app) as client, client.websocket_connect("/ws/a") as ws:
        for _ in range(3):
            assert json.loads(ws.receive_text()) == {"type": "ping"}
            ws.send_text("pong")
        received = 3
        on_loop(client, mgr.send_to_client, "a", "marker")
        while (text := ws.receive_text()) != "marker":
            assert json.loads(text) == {"type": "ping"}
            ws.send_text("pong")
            received += 1
        # One more ping may be on its way; a second heartbeat would double what arrives.
        assert received <= mgr.stabilizer.stats()["heartbeat"]["pings"] <= received + 1
        assert events(rec, "pong reached the endpoint") == []


def test_seed_and_native_endpoints_share_registry_and_broadcasts(client_factory: Factory) -> None:
    """A compat endpoint and a native one in one app: both sessions count, and a broadcast
    from either API reaches both clients."""
    mgr, rec = WebSocketConnectionManager(), Recorder()

    async def native(websocket: WebSocket) -> None:
        await websocket.accept()
        stab = websocket.state.stabilizer
        try:
            while True:
                await stab.broadcast(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    inner = seed_app(mgr, rec)
    inner.router.routes.append(WebSocketRoute("/native", native))
    app = StabilizerMiddleware(inner, manager=mgr.stabilizer)
    with client_factory(app) as client:
        with (
            client.websocket_connect("/ws/seed") as old,
            client.websocket_connect("/native") as new,
        ):
            wait_until(lambda: mgr.get_connection_count() == 2)
            assert mgr.get_active_connections() == ["seed"]
            result = on_loop(client, mgr.broadcast, "from compat")
            assert (result.total, result.succeeded) == (2, 2)
            assert old.receive_text() == new.receive_text() == "from compat"
            new.send_text("from native")
            assert old.receive_text() == new.receive_text() == "from native"
            assert on_loop(client, mgr.disconnect, "seed") is None
            assert old.receive()["code"] == 1000
        wait_until(lambda: mgr.get_connection_count() == 0)


def test_middleware_with_another_manager_is_refused(client_factory: Factory) -> None:
    """A middleware that serves a different manager is reported, not silently split."""
    mgr, rec = WebSocketConnectionManager(), Recorder()
    app = StabilizerMiddleware(seed_app(mgr, rec))
    with client_factory(app) as client, client.websocket_connect("/ws/a") as ws:
        assert ws.receive()["reason"] == "WebSocketStabilizerError"
    assert mgr.get_connection_count() == 0


def test_enable_metrics_serves_the_stats_route(client_factory: Factory) -> None:
    """`enable_metrics=True` serves the stats route; the seed default (False) does not."""
    for enabled, status in ((True, 200), (False, 404)):
        mgr = WebSocketConnectionManager(
            WebSocketConfig(enable_metrics=enabled), admin_token="t0ken"
        )
        app: Any = StabilizerMiddleware(Starlette(), manager=mgr.stabilizer)
        with client_factory(app) as client:
            response = client.get("/_stabilizer/stats", headers={"authorization": "Bearer t0ken"})
            assert response.status_code == status

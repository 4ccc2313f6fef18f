"""The cluster backend starts and stops with the app's lifespan, never lazily."""

from __future__ import annotations

import logging

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.logging import CLUSTER_NOT_STARTED
from tests.asgi.support import on_loop
from tests.redis_support import RedisServer


async def endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hi")


def app(redis_url: str, name: str) -> StabilizerMiddleware:
    return StabilizerMiddleware(
        Starlette(routes=[WebSocketRoute("/ws", endpoint)]),
        backend=redis_url,
        cluster_name=name,
        secret="k",
        probe_interval=0.2,
    )


def members(redis: RedisServer, name: str) -> bytes:
    return redis.command("ZRANGE", f"{name}:nodes", "0", "-1")


def test_the_node_joins_at_startup_and_leaves_at_shutdown(redis_server: RedisServer) -> None:
    """Lifespan startup joins the cluster (healthy, listed in Redis) before any connection;
    shutdown leaves it at once (no longer listed)."""
    wrapped = app(redis_server.url, "life1")
    node_id = wrapped.manager.backend.node_id
    with TestClient(wrapped, backend="asyncio") as client:
        assert wrapped.manager.cluster.running
        assert node_id.encode() in members(redis_server, "life1")
        status, reason = on_loop(client, wrapped.manager.health)
        assert (status, reason) == ("ok", None)
    assert not wrapped.manager.cluster.running
    assert node_id.encode() not in members(redis_server, "life1")


def test_without_lifespan_the_node_warns_and_reports_degraded(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that runs no lifespan never starts the backend: the first connection logs
    `cluster_not_started` (once) and health says degraded, instead of a silent lone node."""
    wrapped = app(redis_server.url, "life2")
    client = TestClient(wrapped, backend="asyncio")  # no `with`: no lifespan
    with caplog.at_level(logging.WARNING, logger="stabilizer_asgi"):
        for _ in range(2):
            with client.websocket_connect("/ws") as ws:
                assert ws.receive_text() == "hi"
    warned = [r for r in caplog.records if getattr(r, "event", None) == CLUSTER_NOT_STARTED]
    assert len(warned) == 1
    assert client.get("/_stabilizer/health").json()["status"] == "degraded"
    assert members(redis_server, "life2").startswith(b"*0")

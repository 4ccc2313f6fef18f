"""The compat API without the middleware (the seed's own set-up), on asyncio and trio."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from stabilizer_asgi import StabilizerError
from stabilizer_asgi.compat import (
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    InvalidTokenError,
    MemoryLimitExceededError,
    TokenExpiredError,
    WebSocketConfig,
    WebSocketConnectionManager,
    WebSocketStabilizerError,
)
from tests.conftest import MS

from .support import Recorder, events, on_loop, seed_app, wait_until

Factory = Callable[..., TestClient]
FAST = {"heartbeat_interval": 40 * MS, "heartbeat_timeout": 250 * MS}
DEADLY = {"heartbeat_interval": 40 * MS, "heartbeat_timeout": 60 * MS}


def manager(**config: Any) -> WebSocketConnectionManager:
    return WebSocketConnectionManager(WebSocketConfig(**config))


def test_chat_flow_registers_broadcasts_and_unwinds(client_factory: Factory) -> None:
    """README flow: both clients get each broadcast, the registry counts them (and the
    endpoint finds its session in `websocket.state`), and the endpoint's `disconnect()` after
    the client left returns quietly and frees the slot."""
    mgr, rec = manager(max_connections=5), Recorder()
    with client_factory(seed_app(mgr, rec)) as client:
        with client.websocket_connect("/ws/alice") as a, client.websocket_connect("/ws/bob") as b:
            wait_until(lambda: mgr.get_connection_count() == 2)
            a.send_text("hi")
            expected = {"user": "alice", "message": "hi"}
            assert json.loads(a.receive_text()) == expected
            assert json.loads(b.receive_text()) == expected
            assert sorted(mgr.get_active_connections()) == ["alice", "bob"]
            assert mgr.stabilizer.stats()["sessions"]["connected"] == 2
            sessions = {s.client_id: s.id for s in mgr.stabilizer.sessions()}
            assert sorted(sessions) == ["alice", "bob"]
            # As behind the middleware, the endpoint finds its session in websocket.state.
            assert {e[1]: e[2] for e in events(rec, "connected")} == sessions
        wait_until(lambda: len(events(rec, "unwound")) == 2)
        assert mgr.get_connection_count() == 0
        assert mgr.stabilizer.stats()["connections"] == 0


def test_seed_ping_text_and_pong_swallowed(client_factory: Factory) -> None:
    """An idle client gets the seed's `{"type":"ping"}` text; its "pong" keeps it alive and
    never reaches the endpoint (so `handle_pong` has nothing left to do)."""
    mgr, rec = manager(**FAST), Recorder()
    with client_factory(seed_app(mgr, rec)) as client, client.websocket_connect("/ws/a") as ws:
        for _ in range(3):
            assert json.loads(ws.receive_text()) == {"type": "ping"}
            ws.send_text("pong")
        assert mgr.get_active_connections() == ["a"]
        assert events(rec, "pong reached the endpoint") == []
        assert mgr.stabilizer.stats()["heartbeat"]["timeouts"] == 0


def test_silent_client_is_closed_with_1011(client_factory: Factory) -> None:
    """A client that does not answer pings is closed 1011; the endpoint unwinds."""
    mgr, rec = manager(**DEADLY), Recorder()
    with client_factory(seed_app(mgr, rec)) as client, client.websocket_connect("/ws/a") as ws:
        assert json.loads(ws.receive_text()) == {"type": "ping"}
        message = ws.receive()
        assert message["type"] == "websocket.close" and message["code"] == 1011
        wait_until(lambda: events(rec, "unwound") != [])
        assert events(rec, "disconnect") == [("disconnect", "a", 1011)]
        assert mgr.get_connection_count() == 0


def test_custom_heartbeat_type_sends_no_pings(client_factory: Factory) -> None:
    """`heartbeat_type="custom"`: the app runs its own heartbeat, compat pings no plain client."""
    mgr, rec = manager(heartbeat_type="custom", **DEADLY), Recorder()
    with client_factory(seed_app(mgr, rec)) as client, client.websocket_connect("/ws/a") as ws:
        wait_until(lambda: mgr.get_connection_count() == 1)
        on_loop(client, _sleep, 200 * MS)
        on_loop(client, mgr.send_to_client, "a", "first frame")
        assert ws.receive_text() == "first frame"
        assert mgr.stabilizer.stats()["heartbeat"]["pings"] == 0


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


def test_reconnect_replaces_and_old_endpoint_leaves_new_alone(client_factory: Factory) -> None:
    """A second connect under the same id closes the first (1000 "reconnected"); the first
    endpoint's `disconnect()` does not close the new connection (the seed's did)."""
    mgr, rec = manager(max_connections=1), Recorder()
    with client_factory(seed_app(mgr, rec)) as client, client.websocket_connect("/ws/a") as old:
        wait_until(lambda: mgr.get_connection_count() == 1)
        with client.websocket_connect("/ws/a") as new:
            message = old.receive()
            assert (message["code"], message["reason"]) == (1000, "reconnected")
            wait_until(lambda: events(rec, "unwound") != [])
            assert on_loop(client, mgr.send_to_client, "a", "still here") is True
            assert new.receive_text() == "still here"
            assert mgr.get_connection_count() == 1


def test_send_and_broadcast_with_exclusion(client_factory: Factory) -> None:
    """`send_to_client` writes str as text and dict as JSON; `broadcast(exclude_client=)`
    skips that client and counts it in `total`, as the seed did."""
    mgr, rec = manager(), Recorder()
    with ExitStack() as stack:
        client = stack.enter_context(client_factory(seed_app(mgr, rec)))
        a = stack.enter_context(client.websocket_connect("/ws/a"))
        b = stack.enter_context(client.websocket_connect("/ws/b"))
        wait_until(lambda: mgr.get_connection_count() == 2)
        assert on_loop(client, mgr.send_to_client, "a", {"k": 1}) is True
        assert json.loads(a.receive_text()) == {"k": 1}
        assert on_loop(client, mgr.send_to_client, "zz", "x") is False
        result = on_loop(client, _broadcast, mgr, "news", "a")
        assert (result.total, result.succeeded, result.failed) == (2, 1, 0)
        assert b.receive_text() == "news"
        on_loop(client, mgr.send_to_client, "a", "direct")
        assert a.receive_text() == "direct"


async def _broadcast(mgr: WebSocketConnectionManager, message: str, exclude: str) -> Any:
    return await mgr.broadcast(message, exclude_client=exclude)


def test_max_connections_refuses_with_the_seed_error(client_factory: Factory) -> None:
    """Over `max_connections`, `connect()` raises ConnectionLimitExceededError (a native
    ConnectionLimitExceededError too) and the refusal shows in stats."""
    mgr, rec = manager(max_connections=1), Recorder()
    with client_factory(seed_app(mgr, rec)) as client, client.websocket_connect("/ws/a"):
        wait_until(lambda: mgr.get_connection_count() == 1)
        with client.websocket_connect("/ws/b") as b:
            assert b.receive()["reason"] == "ConnectionLimitExceededError"
        assert mgr.stabilizer.stats()["rejections"]["capacity"] == 1
    assert issubclass(ConnectionLimitExceededError, StabilizerError)


def test_max_message_size_closes_1009(client_factory: Factory) -> None:
    """`max_message_size`, which the seed ignored, closes a client that sends more with 1009."""
    mgr, rec = manager(max_message_size=16), Recorder()
    with client_factory(seed_app(mgr, rec)) as client, client.websocket_connect("/ws/a") as ws:
        wait_until(lambda: mgr.get_connection_count() == 1)
        ws.send_text("x" * 17)
        message = ws.receive()
        assert message["type"] == "websocket.close" and message["code"] == 1009


def test_memory_limits_and_eviction(client_factory: Factory) -> None:
    """Metadata and user data are memory-accounted: over `max_memory_per_connection` they are
    refused; over `max_total_memory` the oldest connection is evicted (closed 1013)."""
    mgr = manager(
        max_memory_per_connection=2000, max_total_memory=3000, memory_eviction_policy="oldest"
    )
    rec = Recorder()
    with client_factory(seed_app(mgr, rec)) as client:
        with client.websocket_connect("/ws/big?meta=5000") as big:
            assert big.receive()["reason"] == "MemoryLimitExceededError"
        with client.websocket_connect("/ws/a?meta=900") as a:
            wait_until(lambda: mgr.get_connection_count() == 1)
            with pytest.raises(MemoryLimitExceededError):
                on_loop(client, mgr.set_user_data, "a", "k", "x" * 3000)
            assert on_loop(client, mgr.get_user_data, "a", "k") is None
            on_loop(client, mgr.set_user_data, "a", "name", "Alice")
            assert on_loop(client, mgr.get_user_data, "a", "name") == "Alice"
            with client.websocket_connect("/ws/b?meta=900"):
                wait_until(lambda: mgr.get_connection_count() == 2)
                with client.websocket_connect("/ws/c?meta=900"):
                    message = a.receive()
                    assert (message["code"], message["reason"]) == (1013, "memory limit")
                    wait_until(lambda: sorted(mgr.get_active_connections()) == ["b", "c"])
                    assert mgr.get_memory_usage()["total_memory"] <= 3000
                    assert mgr.stabilizer.stats()["counters"]["evictions"] == 1


def test_graceful_shutdown_closes_everyone_1012(client_factory: Factory) -> None:
    """The lifespan's `graceful_shutdown()` closes each connection with 1012 and reports it."""
    mgr, rec = manager(), Recorder()
    with client_factory(seed_app(mgr, rec)) as client:
        a = client.websocket_connect("/ws/a").__enter__()
        wait_until(lambda: mgr.get_connection_count() == 1)
        report = on_loop(client, mgr.graceful_shutdown)
        assert (report.closed_count, report.failed_count) == (1, 0)
        assert a.receive()["code"] == 1012
        a.__exit__(None, None, None)
        assert mgr.get_connection_count() == 0
        with client.websocket_connect("/ws/late") as late:
            assert late.receive()["reason"] == "ConnectionLimitExceededError"
        on_loop(client, mgr.start)
        with client.websocket_connect("/ws/again"):
            wait_until(lambda: mgr.get_connection_count() == 1)


def test_connect_checks(client_factory: Factory) -> None:
    """`connect()` refuses a websocket not yet accepted and an empty client id (the seed's
    ConnectionNotFoundError); a second `connect()` of one websocket renames its session."""
    mgr = manager()

    async def endpoint(websocket: Any) -> None:
        with pytest.raises(WebSocketStabilizerError, match="accept"):
            await mgr.connect("a", websocket)
        await websocket.accept()
        with pytest.raises(ConnectionNotFoundError):
            await mgr.connect("", websocket)
        await mgr.connect("a", websocket)
        await mgr.connect("b", websocket)  # the same websocket again: renamed, not doubled
        assert [s.client_id for s in mgr.stabilizer.sessions()] == ["b"]
        await websocket.send_text("checked")
        await websocket.close()

    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    with client_factory(app) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_text() == "checked"


@pytest.mark.anyio
async def test_reconnect_tokens() -> None:
    """Tokens name their client id, are single use, expire after `reconnect_token_ttl`, and
    fail as InvalidTokenError when tampered with; `enable_reconnect=False` refuses them."""
    mgr = manager(reconnect_token_ttl=timedelta(milliseconds=150))
    token = mgr.generate_reconnect_token("alice")
    assert await mgr.validate_reconnect_token(token) == "alice"
    with pytest.raises(InvalidTokenError):
        await mgr.validate_reconnect_token(token)
    for bad in ("", "a.b", "1.2.3.4", token[:-3] + "abc", None):
        with pytest.raises(InvalidTokenError):
            await mgr.validate_reconnect_token(bad)  # type: ignore[arg-type]
    late = mgr.generate_reconnect_token("bob")
    await _sleep(400 * MS)
    with pytest.raises(TokenExpiredError):
        await mgr.validate_reconnect_token(late)
    assert not issubclass(TokenExpiredError, InvalidTokenError)
    off = manager(enable_reconnect=False)
    with pytest.raises(WebSocketStabilizerError, match="enable_reconnect"):
        off.generate_reconnect_token("alice")


@pytest.mark.anyio
async def test_reconnect_token_store_is_bounded() -> None:
    """Past `max_reconnect_tokens` the oldest outstanding token is forgotten (then invalid)."""
    mgr = WebSocketConnectionManager(max_reconnect_tokens=2)
    first, second, third = (mgr.generate_reconnect_token(c) for c in ("a", "b", "c"))
    with pytest.raises(InvalidTokenError):
        await mgr.validate_reconnect_token(first)
    assert await mgr.validate_reconnect_token(second) == "b"
    assert await mgr.validate_reconnect_token(third) == "c"

"""A close that cannot be written (the transport stopped draining): the connection keeps its
slot until the close is written, and past `close_timeout` every send of ours is cancelled and
the ASGI call returns."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stabilizer_asgi import StabilizerMiddleware

from .support import Recorder, make_chat_app, on_loop, session_id, wait_until


def stalling_server(app: ASGIApp, stalled: threading.Event) -> ASGIApp:
    """A server stand-in whose transports for `?stall` connections stop draining while
    `stalled` is set: their `send` does not return until it is cleared (as a server's send on a
    full socket buffer)."""

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        async def stalling_send(message: Message) -> None:
            while stalled.is_set():  # noqa: ASYNC110 - set and cleared from the test thread
                await anyio.sleep(0.005)
            await send(message)

        stalls = scope["type"] == "websocket" and b"stall" in scope.get("query_string", b"")
        await app(scope, receive, stalling_send if stalls else send)

    return server


def stats(client: TestClient, mw: StabilizerMiddleware) -> dict[str, Any]:
    result: dict[str, Any] = on_loop(client, mw.manager.stats)
    return result


def overflow(client: TestClient, mw: StabilizerMiddleware) -> None:
    """Broadcast until the stalled connection's backlog is full and it is closed 1008."""
    for _ in range(10):
        on_loop(client, mw.manager.broadcast, "x" * 100)
        if stats(client, mw)["counters"].get("closed_1008"):
            return
    raise AssertionError("the stalled connection was never closed as a slow consumer")


def test_slot_is_held_until_the_close_is_written(
    client_factory: Callable[..., TestClient],
) -> None:
    """After a slow-consumer close, and after its app returned, the connection still holds its
    max_connections slot while the close waits for the transport; once written, it is freed."""
    rec = Recorder()
    stalled = threading.Event()
    mw = StabilizerMiddleware(
        make_chat_app(rec), max_connections=1, max_queue_messages=2, close_timeout=60
    )
    with client_factory(stalling_server(mw, stalled)) as client:
        with client.websocket_connect("/ws?stall") as ws:
            session_id(ws)
            stalled.set()
            try:
                overflow(client, mw)
                rec.wait_done()  # the app saw the close and returned
                with (
                    pytest.raises(WebSocketDenialResponse) as denied,
                    client.websocket_connect("/ws"),
                ):
                    pass  # pragma: no cover
                assert denied.value.status_code == 503
                assert stats(client, mw)["connections"] == 1
            finally:
                stalled.clear()
            wait_until(lambda: stats(client, mw)["connections"] == 0)
        assert stats(client, mw)["counters"].get("transport_aborts", 0) == 0
        with client.websocket_connect("/ws") as again:
            session_id(again)


def test_close_not_written_within_close_timeout_is_given_up(
    client_factory: Callable[..., TestClient],
) -> None:
    """A close the transport never takes: past close_timeout the stalled sends are cancelled,
    the ASGI call returns and the slot is free."""
    rec = Recorder()
    stalled = threading.Event()
    mw = StabilizerMiddleware(
        make_chat_app(rec), max_connections=1, max_queue_messages=2, close_timeout=0.2
    )
    with client_factory(stalling_server(mw, stalled)) as client:
        with client.websocket_connect("/ws?stall") as ws:
            session = weakref.ref(on_loop(client, mw.manager.get, session_id(ws)))
            stalled.set()
            overflow(client, mw)
            rec.wait_done()
            wait_until(lambda: stats(client, mw)["connections"] == 0)
            assert stats(client, mw)["counters"]["transport_aborts"] == 1
        # nothing of ours is left waiting on that transport, holding the session
        del ws
        gc.collect()
        assert session() is None
        stalled.clear()
        with client.websocket_connect("/ws") as again:
            session_id(again)

"""Hooks: async callables run with the session, never blocking or breaking a connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from stabilizer_asgi import Session, SessionState
from stabilizer_asgi import logging as slog

from .support import LOOPBACK, captured_logs, control, stabilized, wait_until

ClientFactory = Callable[..., TestClient]


class Calls:
    """(hook name, session, state at call time), appended from the event-loop thread."""

    def __init__(self) -> None:
        self.items: list[tuple[str, Session, SessionState]] = []
        self.lock = threading.Lock()

    def recorder(self, name: str) -> Callable[[Session], Any]:
        async def hook(session: Session) -> None:
            with self.lock:
                self.items.append((name, session, session.state))

        return hook

    def named(self, name: str) -> list[tuple[str, Session, SessionState]]:
        with self.lock:
            return [item for item in self.items if item[0] == name]


def test_connect_and_disconnect_hooks_get_the_session(client_factory: ClientFactory) -> None:
    """on_connect runs with the registered, connected session; on_disconnect with the same
    session once it has ended."""
    calls = Calls()
    app = stabilized(
        on_connect=calls.recorder("on_connect"), on_disconnect=calls.recorder("on_disconnect")
    )
    with client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?client_id=alice") as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "hi"
            wait_until(lambda: len(calls.named("on_connect")) == 1)
            _, session, state = calls.named("on_connect")[0]
            assert state is SessionState.CONNECTED
            assert session.client_id == "alice"
            assert app.manager.get(session.id) is session
            assert calls.named("on_disconnect") == []
        wait_until(lambda: len(calls.named("on_disconnect")) == 1)
        _, ended, state = calls.named("on_disconnect")[0]
        assert ended is session and state is SessionState.CLOSED


def test_timeout_hook_runs_on_heartbeat_timeout(client_factory: ClientFactory) -> None:
    """on_timeout runs with the session when a silent client is declared dead (1011)."""
    calls = Calls()
    app = stabilized(
        heartbeat_interval=0.05,
        heartbeat_timeout=0.05,
        resume_window=0,
        on_timeout=calls.recorder("on_timeout"),
        on_disconnect=calls.recorder("on_disconnect"),
    )
    with client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?stabilizer=1") as ws:
            hello = control(ws.receive_text())
            assert hello is not None
            with pytest.raises(WebSocketDisconnect) as closed:
                while True:  # read pings, never answer them
                    ws.receive_text()
            assert closed.value.code == 1011
        wait_until(lambda: len(calls.named("on_disconnect")) == 1)
    [(_, session, _)] = calls.named("on_timeout")
    assert session.id == hello["session"]
    assert calls.named("on_disconnect")[0][1] is session


def test_resume_hook_runs_when_a_session_is_resumed(client_factory: ClientFactory) -> None:
    """on_resume runs with the resumed session; on_connect does not run again for it."""
    calls = Calls()
    app = stabilized(
        secret="k" * 32,
        on_connect=calls.recorder("on_connect"),
        on_resume=calls.recorder("on_resume"),
    )
    with client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?stabilizer=1") as ws:
            hello = control(ws.receive_text())
            assert hello is not None
            client.portal.call(app.manager.close, hello["session"], 1012, "restart")
            with pytest.raises(WebSocketDisconnect):
                ws.receive_text()
        wait_until(lambda: app.manager.get(hello["session"]) is not None)
        query = f"stabilizer=1&stabilizer_resume={hello['token']}&stabilizer_ack=0"
        with client.websocket_connect(f"/echo?{query}") as ws:
            again = control(ws.receive_text())
            assert again is not None and again["resumed"] is True
            wait_until(lambda: len(calls.named("on_resume")) == 1)
    [(_, session, state)] = calls.named("on_resume")
    assert session.id == hello["session"] and state is SessionState.CONNECTED
    assert len(calls.named("on_connect")) == 1


def test_failing_hook_is_logged_with_the_session_and_not_propagated(
    client_factory: ClientFactory,
) -> None:
    """A hook that raises is logged (hook_failed, with the session id) and the connection
    carries on as if nothing happened."""

    async def broken(session: Session) -> None:
        raise RuntimeError("hook exploded")

    app = stabilized(on_connect=broken, on_disconnect=broken)
    with captured_logs() as logs, client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?stabilizer=1") as ws:
            hello = control(ws.receive_text())
            assert hello is not None
            wait_until(lambda: len(logs.events(slog.HOOK_FAILED)) == 1)
            for text in ("still", "working"):
                ws.send_text(text)
                assert ws.receive_text() == text
        wait_until(lambda: len(logs.events(slog.HOOK_FAILED)) == 2)
    for name in ("on_connect", "on_disconnect"):
        record = logs.one(slog.HOOK_FAILED, hook=name)
        assert record.levelname == "ERROR"
        assert record.session == hello["session"]
        assert "hook exploded" in record.error


def test_slow_hook_does_not_block_connections(client_factory: ClientFactory) -> None:
    """A hook that never returns delays nothing: its own connection and others keep working."""
    started = threading.Event()

    async def stuck(session: Session) -> None:
        started.set()
        await anyio.sleep_forever()

    app = stabilized(on_connect=stuck, on_disconnect=stuck)
    with client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo") as first:
            first.send_text("a")
            assert first.receive_text() == "a"
            assert started.wait(5)
            with client.websocket_connect("/echo") as second:
                second.send_text("b")
                assert second.receive_text() == "b"
            first.send_text("c")
            assert first.receive_text() == "c"
        assert client.get("/_stabilizer/health").json() == {"status": "ok"}

"""Lifecycle hooks: called with the session, and an exception in one never reaches the app."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from stabilizer_asgi import Session, StabilizerMiddleware

from .support import Recorder, make_chat_app, session_id, wait_until


def test_connect_and_disconnect_hooks(client_factory: Callable[..., TestClient]) -> None:
    """`on_connect` runs after accept and `on_disconnect` after the app returns."""
    calls: list[tuple[str, str, Any]] = []

    async def on_connect(session: Session) -> None:
        calls.append(("connect", session.id, session.state.value))

    async def on_disconnect(session: Session) -> None:
        calls.append(("disconnect", session.id, session.close_code))

    rec = Recorder()
    mw = StabilizerMiddleware(
        make_chat_app(rec), on_connect=on_connect, on_disconnect=on_disconnect
    )
    with client_factory(mw) as client:
        with client.websocket_connect("/ws") as ws:
            sid = session_id(ws)
            wait_until(lambda: len(calls) == 1)
            ws.close(4000)
            rec.wait_done()
        wait_until(lambda: len(calls) == 2)
    assert calls == [("connect", sid, "connected"), ("disconnect", sid, 4000)]


def test_failing_hook_is_logged_not_raised(
    client_factory: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises is logged as `hook_failed`; the connection carries on."""

    async def on_connect(session: Session) -> None:
        raise RuntimeError("hook bug")

    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), on_connect=on_connect)
    with (
        caplog.at_level(logging.ERROR, logger="stabilizer_asgi"),
        client_factory(mw) as client,
        client.websocket_connect("/ws") as ws,
    ):
        session_id(ws)
        wait_until(lambda: any(getattr(r, "event", None) == "hook_failed" for r in caplog.records))
        ws.send_text("still works")
        assert ws.receive_text() == "still works"
    record = next(r for r in caplog.records if getattr(r, "event", None) == "hook_failed")
    assert record.hook == "on_connect"  # type: ignore[attr-defined]
    assert "hook bug" in record.error  # type: ignore[attr-defined]

"""Helpers for the ASGI tests: control-frame parsing, polling, a recorder and small endpoints.

The endpoints are plain Starlette code; the manager is reached only through `websocket.state`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.websockets import WebSocket

from stabilizer_asgi import Stabilizer, StabilizerMiddleware
from tests.helpers import RS, WAIT, control, wait_until  # noqa: F401 - re-exported


def hello(ws: WebSocketTestSession) -> dict[str, Any]:
    """Read the `hello` control frame an opted-in client gets first."""
    frame = control(ws.receive_text())
    assert frame is not None and frame["t"] == "hello", frame
    return frame


class Recorder:
    """What the app observed, appended from the event-loop thread, read from the test."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.done = threading.Event()

    def add(self, *event: Any) -> None:
        self.events.append(event if len(event) != 1 else event[0])

    def wait_done(self) -> None:
        assert self.done.wait(WAIT), "the endpoint did not return"


def make_chat_app(rec: Recorder) -> Starlette:
    """`/ws`: tells the client its session id, then echoes; records the disconnect it gets."""

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        session = websocket.state.stabilizer_session
        rec.add("connected", session.id)
        try:
            await websocket.send_text("id:" + session.id)
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    rec.add("disconnect", session.id, message.get("code"), message.get("reason"))
                    return
                rec.add("received", session.id, message.get("text", message.get("bytes")))
                if message.get("text") is not None:
                    await websocket.send_text(message["text"])
                else:
                    await websocket.send_bytes(message["bytes"])
        finally:
            rec.done.set()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


def session_id(ws: WebSocketTestSession) -> str:
    """The id the `make_chat_app` endpoint announces (after `hello`, if opted in)."""
    text = ws.receive_text()
    if control(text) is not None:
        text = ws.receive_text()
    assert text.startswith("id:"), text
    return text[3:]


def on_loop(client: TestClient, fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(*args)` (sync or async) in the client's event loop; needs `with client:`."""
    portal = client.portal
    assert portal is not None, "use `with client:` so every connection shares one loop"
    return portal.call(fn, *args)


def registered(client: TestClient, manager: Stabilizer) -> int:
    """Number of sessions the manager has registered, read in the event loop."""
    return int(on_loop(client, manager.count))


def stabilized(app: Any, **settings: Any) -> StabilizerMiddleware:
    return StabilizerMiddleware(app, **settings)


async def call_websocket(
    app: Any, incoming: list[dict[str, Any]], **scope: Any
) -> list[dict[str, Any]]:
    """Call `app` directly with a websocket scope: feed `incoming`, return what it sent.

    For scope details TestClient cannot produce (raw query bytes, no `state`, a shared dict).
    """
    queue = list(incoming)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    full: dict[str, Any] = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [],
        "client": ("10.0.0.1", 4321),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}},
        **scope,
    }
    with anyio.fail_after(WAIT):
        await app(full, receive, send)
    return sent

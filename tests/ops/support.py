"""Helpers for the operations tests: apps, control frames, log capture, polling."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi import logging as slog
from tests.helpers import (  # noqa: F401 - re-exported for the ops tests
    RS,
    WAIT,
    await_until,
    control,
    never_reading_client,
    wait_until,
)

LOOPBACK = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.7", 50000)


class AppCalls:
    """Records which HTTP paths reached the app (the middleware's routes never should)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.lock = threading.Lock()


def make_app(calls: AppCalls | None = None) -> Starlette:
    """Echo websocket, a sleepy websocket that ignores disconnects, and a catch-all HTTP route."""

    async def echo_until_disconnect(websocket: WebSocket) -> None:
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await echo_until_disconnect(websocket)

    async def stubborn(websocket: WebSocket) -> None:
        # Never reads or writes after accepting: a close from the middleware cannot unwind it.
        await websocket.accept()
        await anyio.sleep(float(websocket.query_params.get("sleep", "1")))

    async def store(websocket: WebSocket) -> None:
        # Keeps `bytes` bytes of user data in the session, then echoes.
        await websocket.accept()
        session = websocket.state.stabilizer_session
        session.data["blob"] = "x" * int(websocket.query_params["bytes"])
        await websocket.send_text("stored")
        await echo_until_disconnect(websocket)

    async def broadcast(request: Request) -> JSONResponse:
        stab = request.state.stabilizer
        text = "x" * int(request.query_params.get("size", "10"))
        results = [await stab.broadcast(text) for _ in range(int(request.query_params["n"]))]
        return JSONResponse({"failed": sum(r.failed for r in results)})

    async def shutdown(request: Request) -> JSONResponse:
        report = await request.state.stabilizer.shutdown(float(request.query_params["timeout"]))
        return JSONResponse(report._asdict())

    async def anything(request: Request) -> PlainTextResponse:
        if calls is not None:
            with calls.lock:
                calls.paths.append(request.url.path)
        return PlainTextResponse("app", status_code=200)

    return Starlette(
        routes=[
            WebSocketRoute("/echo", echo),
            WebSocketRoute("/stubborn", stubborn),
            WebSocketRoute("/store", store),
            Route("/shutdown", shutdown, methods=["POST"]),
            Route("/broadcast", broadcast, methods=["POST"]),
            Route("/{path:path}", anything, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
        ]
    )


def stabilized(calls: AppCalls | None = None, **settings: Any) -> StabilizerMiddleware:
    return StabilizerMiddleware(make_app(calls), **settings)


def answer_first_ping(ws: Any) -> None:
    """On an opted-in test-client websocket: read the hello and the first ping, answer it."""
    control(ws.receive_text())  # hello
    ping = control(ws.receive_text())
    assert ping is not None and ping["t"] == "ping"
    ws.send_text(RS + '{"t":"pong","ts":' + str(ping["ts"]) + ',"n":0}')


class Captured(logging.Handler):
    """Every record of every logger, from any thread, while installed."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.records.append(record)

    def events(self, name: str) -> list[logging.LogRecord]:
        with self._lock2:
            return [r for r in self.records if getattr(r, "event", None) == name]

    def one(self, name: str, **match: Any) -> logging.LogRecord:
        """The single `name` record whose fields equal `match`."""
        found = [
            r
            for r in self.events(name)
            if all(getattr(r, key, object()) == value for key, value in match.items())
        ]
        assert len(found) == 1, (name, match, [slog.fields(r) for r in self.events(name)])
        return found[0]


@contextmanager
def captured_logs() -> Iterator[Captured]:
    """Capture every log record (root logger, DEBUG) while the block runs."""
    handler = Captured()
    root = logging.getLogger()
    ours = logging.getLogger(slog.LOGGER_NAME)
    old_root, old_ours = root.level, ours.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    ours.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_root)
        ours.setLevel(old_ours)

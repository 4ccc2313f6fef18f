"""The applications under test, shared by the in-memory and the uvicorn benchmarks.

- ``bare``: a Starlette echo endpoint, nothing else. Its bench route broadcasts with a raw
  loop over the connections' ASGI ``send`` callables (the floor any library is compared to).
- ``ours``: the *same* Starlette app wrapped by ``StabilizerMiddleware`` (endpoint unchanged);
  its bench route broadcasts with ``request.state.stabilizer.broadcast``.
- ``seed``: a FastAPI app using ``fastapi-websocket-stabilizer`` exactly as its README does
  (``start()`` in lifespan, ``connect``/``handle_pong``/``disconnect`` in the endpoint), echoing
  instead of re-broadcasting chat lines; its bench route calls the seed's ``broadcast``.
- ``bare_fastapi``: the seed's endpoint without the seed, to separate FastAPI's own cost.
- ``passthrough``: the bare app behind the thinnest possible pure-ASGI middleware, whose
  ``receive`` and ``send`` wrappers only await the server's: the floor for any middleware that
  has to see every frame.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

APPS = ("bare", "ours", "seed", "bare_fastapi", "passthrough")
# Each benchmark variant: the app it runs and how its clients behave (`_driver` / `_loadgen`
# modes). "raw" is the bare app whose broadcast is a plain loop over the sockets.
APP_AND_MODE = {
    "bare": ("bare", "plain"),
    "raw": ("bare", "plain"),
    "passthrough": ("passthrough", "plain"),
    "ours": ("ours", "plain"),
    "ours_optin": ("ours", "optin"),
    "seed": ("seed", "seed"),
    "bare_fastapi": ("bare_fastapi", "plain"),
}
BROADCAST_PREFIX = "B:"


class Hub:
    """What a bench route needs to reach: the open websockets and, for ours, the manager."""

    def __init__(self) -> None:
        self.sockets: dict[int, WebSocket] = {}
        self.manager: Any = None
        self.seed: Any = None

    def raw_sends(self) -> list[Send]:
        # The ASGI send the server handed to each connection: the cheapest possible broadcast.
        return [ws._send for ws in self.sockets.values()]


def broadcast_text(bid: int, size: int) -> str:
    """The frame a broadcast carries; clients find the id after the prefix."""
    head = f"{BROADCAST_PREFIX}{bid}:"
    return head + "x" * max(0, size - len(head))


async def _raw_broadcast(hub: Hub, text: str) -> dict[str, Any]:
    message = {"type": "websocket.send", "text": text}
    sends = hub.raw_sends()
    for send in sends:
        await send(message)
    return {"total": len(sends)}


def _bench_routes(hub: Hub, mode: str) -> list[Route]:
    async def bench_broadcast(request: Request) -> JSONResponse:
        bid = int(request.query_params.get("id", "0"))
        text = broadcast_text(bid, int(request.query_params.get("size", "64")))
        t0_wall = time.time()
        t0 = time.perf_counter()
        if mode == "raw":
            info = await _raw_broadcast(hub, text)
        elif mode == "ours":
            res = await request.state.stabilizer.broadcast(text)
            info = {k: getattr(res, k, None) for k in ("total", "delivered", "dropped", "failed")}
        else:
            res = await hub.seed.broadcast(text)
            info = {"total": res.total, "succeeded": res.succeeded, "failed": res.failed}
        server_s = time.perf_counter() - t0
        return JSONResponse({"t0": t0_wall, "server_s": server_s, "result": info})

    async def bench_info(request: Request) -> JSONResponse:
        if mode == "ours":
            count = request.state.stabilizer.count()
        elif mode == "seed":
            count = hub.seed.get_connection_count()
        else:
            count = len(hub.sockets)
        return JSONResponse({"connections": count, "pid": os.getpid()})

    async def bench_gc(request: Request) -> JSONResponse:
        collected = gc.collect()
        return JSONResponse({"collected": collected})

    async def bench_send(request: Request) -> JSONResponse:
        # Frames "<prefix>:<start>" … "<prefix>:<start+count-1>" to one session (connected or
        # detached): what resume must replay.
        session_id = request.query_params["session"]
        count = int(request.query_params.get("count", "1"))
        start = int(request.query_params.get("start", "0"))
        prefix = request.query_params.get("prefix", "R")
        stab = request.state.stabilizer
        sent = 0
        for i in range(start, start + count):
            sent += bool(await stab.send(session_id, f"{prefix}:{i}"))
        return JSONResponse({"sent": sent})

    async def bench_session(request: Request) -> JSONResponse:
        session = request.state.stabilizer.get(request.query_params["id"])
        state = None if session is None else getattr(session.state, "value", str(session.state))
        return JSONResponse({"state": state})

    async def bench_stats(request: Request) -> JSONResponse:
        if mode == "ours":
            return JSONResponse(request.state.stabilizer.stats())
        return JSONResponse({})

    return [
        Route("/bench/broadcast", bench_broadcast, methods=["POST"]),
        Route("/bench/info", bench_info),
        Route("/bench/gc", bench_gc, methods=["POST"]),
        Route("/bench/send", bench_send, methods=["POST"]),
        Route("/bench/session", bench_session),
        Route("/bench/stats", bench_stats),
    ]


def starlette_app(hub: Hub, *, mode: str) -> Starlette:
    """The bare Starlette echo app (also the app ``ours`` wraps)."""

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        if hub.manager is None:
            hub.manager = websocket.scope.get("state", {}).get("stabilizer")
        key = id(websocket)
        hub.sockets[key] = websocket
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is not None:
                    await websocket.send_text(text)
                else:
                    await websocket.send_bytes(message.get("bytes") or b"")
        finally:
            hub.sockets.pop(key, None)

    return Starlette(routes=[WebSocketRoute("/ws", ws_endpoint), *_bench_routes(hub, mode)])


class PassThrough:
    """Wraps ``receive`` and ``send`` and does nothing else."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return

        async def wrapped_receive() -> Any:
            return await receive()

        async def wrapped_send(message: Any) -> None:
            await send(message)

        await self.app(scope, wrapped_receive, wrapped_send)


def ours_app(hub: Hub, **config: Any) -> ASGIApp:
    """The bare app with the middleware added the documented way (endpoint untouched)."""
    from stabilizer_asgi import StabilizerMiddleware

    app = starlette_app(hub, mode="ours")
    app.add_middleware(StabilizerMiddleware, **config)
    return app


def _add_fastapi_ws(app: Any, endpoint: Any, websocket_class: type) -> None:
    """Register ``endpoint`` at ``/ws/{client_id}`` as ``@app.websocket`` would.

    This module uses postponed annotations, so FastAPI would see the *string*
    ``"FastAPIWebSocket"`` (imported locally, invisible to the function's globals) and treat
    the parameter as a required query field. Give it the real classes first.
    """
    endpoint.__annotations__ = {"websocket": websocket_class, "client_id": str, "return": None}
    app.add_api_websocket_route("/ws/{client_id}", endpoint)


def seed_app(hub: Hub, *, heartbeat_interval: float, heartbeat_timeout: float) -> ASGIApp:
    """The seed package used as its README shows."""
    from fastapi import FastAPI
    from fastapi import WebSocket as FastAPIWebSocket
    from fastapi_websocket_stabilizer import (
        ConnectionNotFoundError,
        WebSocketConfig,
        WebSocketConnectionManager,
    )

    ws_manager = WebSocketConnectionManager(
        WebSocketConfig(heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout)
    )
    hub.seed = ws_manager

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ws_manager.start()
        yield
        await ws_manager.graceful_shutdown(timeout=5.0)

    app = FastAPI(lifespan=lifespan)

    async def websocket_endpoint(websocket: FastAPIWebSocket, client_id: str) -> None:
        await websocket.accept()
        try:
            await ws_manager.connect(client_id, websocket)
            while True:
                data = await websocket.receive_text()
                if data == "pong":
                    await ws_manager.handle_pong(client_id)
                    continue
                await websocket.send_text(data)
        except WebSocketDisconnect:
            # The README calls disconnect() here; after the seed's own heartbeat already
            # dropped the client it raises ConnectionNotFoundError, which we do not want
            # reported as an application error in a benchmark.
            with contextlib.suppress(ConnectionNotFoundError):
                await ws_manager.disconnect(client_id)

    _add_fastapi_ws(app, websocket_endpoint, FastAPIWebSocket)
    app.router.routes.extend(_bench_routes(hub, "seed"))
    return app


def bare_fastapi_app(hub: Hub) -> ASGIApp:
    """The seed's FastAPI endpoint shape without the seed."""
    from fastapi import FastAPI
    from fastapi import WebSocket as FastAPIWebSocket

    app = FastAPI()

    async def websocket_endpoint(websocket: FastAPIWebSocket, client_id: str) -> None:
        await websocket.accept()
        key = id(websocket)
        hub.sockets[key] = websocket
        try:
            while True:
                data = await websocket.receive_text()
                await websocket.send_text(data)
        except WebSocketDisconnect:
            pass
        finally:
            hub.sockets.pop(key, None)

    _add_fastapi_ws(app, websocket_endpoint, FastAPIWebSocket)
    app.router.routes.extend(_bench_routes(hub, "raw"))
    return app


def build_app(
    name: str,
    hub: Hub,
    *,
    heartbeat_interval: float | None = None,
    heartbeat_timeout: float | None = None,
    ours_options: dict[str, Any] | None = None,
) -> ASGIApp:
    """Build one of :data:`APPS`; ``None`` intervals mean each library's own default."""
    if name == "bare":
        return starlette_app(hub, mode="raw")
    if name == "bare_fastapi":
        return bare_fastapi_app(hub)
    if name == "passthrough":
        app = starlette_app(hub, mode="raw")
        app.add_middleware(PassThrough)
        return app
    if name == "ours":
        config: dict[str, Any] = {"secret": "benchmark-secret"}
        if heartbeat_interval is not None:
            config["heartbeat_interval"] = heartbeat_interval
        if heartbeat_timeout is not None:
            config["heartbeat_timeout"] = heartbeat_timeout
        config.update(ours_options or {})
        return ours_app(hub, **config)
    if name == "seed":
        return seed_app(
            hub,
            heartbeat_interval=30.0 if heartbeat_interval is None else heartbeat_interval,
            heartbeat_timeout=60.0 if heartbeat_timeout is None else heartbeat_timeout,
        )
    raise ValueError(f"unknown app {name!r}; choose from {APPS}")


def ws_path(app: str, client_mode: str, index: int, prefix: str = "c") -> str:
    """The path (and query) a client of this app connects to."""
    if app in ("seed", "bare_fastapi"):
        return f"/ws/{prefix}-{index}"
    return "/ws?stabilizer=1" if client_mode == "optin" else "/ws"

"""The app every node of the cluster end-to-end tests serves (one uvicorn process per node).

Settings come from the environment: STABILIZER_TEST_BACKEND (a redis:// URL),
STABILIZER_TEST_CLUSTER (cluster_name), STABILIZER_TEST_PROBE (probe_interval),
STABILIZER_TEST_DUPLICATE (duplicate_client), STABILIZER_TEST_TIMEOUT (cluster_timeout).
HTTP routes drive the manager the way an app's
own routes or background jobs would.
"""

from __future__ import annotations

import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import Stabilizer, StabilizerMiddleware


async def ws(websocket: WebSocket) -> None:
    """Tells a plain client its session id; echoes what an opted-in client sends ("echo:" +
    text); stays until the client leaves."""
    await websocket.accept()
    me = websocket.state.stabilizer_session
    if not me.opted_in:
        await websocket.send_json({"me": me.id})
    try:
        while True:
            text = await websocket.receive_text()
            if me.opted_in:
                await websocket.send_text("echo:" + text)
    except WebSocketDisconnect:
        pass


async def stall(request: Request) -> JSONResponse:
    """Block this worker's event loop for `?seconds=` (tests: while it cannot accept, the
    kernel hands new connections to the other worker)."""
    time.sleep(float(request.query_params.get("seconds", "0.3")))  # noqa: ASYNC251 - on purpose
    return JSONResponse({"stalled": True})


def _manager(request: Request) -> Stabilizer:
    manager: Stabilizer = request.state.stabilizer
    return manager


async def broadcast(request: Request) -> JSONResponse:
    q = request.query_params
    exclude = q.getlist("exclude") or None
    result = await _manager(request).broadcast(q["text"], group=q.get("group"), exclude=exclude)
    return JSONResponse(result._asdict())


async def send(request: Request) -> JSONResponse:
    q = request.query_params
    return JSONResponse({"ok": await _manager(request).send(q["sid"], q["text"])})


async def close(request: Request) -> JSONResponse:
    q = request.query_params
    ok = await _manager(request).close(q["sid"], int(q.get("code", "1000")), q.get("reason", ""))
    return JSONResponse({"ok": ok})


async def join(request: Request) -> JSONResponse:
    q = request.query_params
    return JSONResponse({"ok": await _manager(request).join(q["sid"], q["group"])})


async def leave(request: Request) -> JSONResponse:
    q = request.query_params
    return JSONResponse({"ok": await _manager(request).leave(q["sid"], q["group"])})


app = StabilizerMiddleware(
    Starlette(
        routes=[
            WebSocketRoute("/ws", ws),
            Route("/broadcast", broadcast, methods=["POST"]),
            Route("/send", send, methods=["POST"]),
            Route("/close", close, methods=["POST"]),
            Route("/join", join, methods=["POST"]),
            Route("/leave", leave, methods=["POST"]),
            Route("/stall", stall),
        ]
    ),
    backend=os.environ.get("STABILIZER_TEST_BACKEND", "memory"),
    cluster_name=os.environ.get("STABILIZER_TEST_CLUSTER", "stabilizer"),
    probe_interval=float(os.environ.get("STABILIZER_TEST_PROBE", "1.0")),
    duplicate_client=os.environ.get("STABILIZER_TEST_DUPLICATE", "allow"),
    secret="cluster-e2e-secret",
    cluster_timeout=float(os.environ.get("STABILIZER_TEST_TIMEOUT", "2.0")),
    heartbeat_interval=5.0,
)

"""The app each node of the rolling-deploy tests and benchmark serves, without the middleware:
``stabilizer-asgi serve benchmarks._deploy_app:app --backend redis://… --secret …`` wraps it.

- ``/ws``: echoes every text frame back to its sender.
- ``POST /broadcast?text=…``: ``broadcast(text)`` to every session of the cluster.
- ``POST /send?sid=…&text=…``: ``send`` to one session, wherever it is.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def broadcast(request: Request) -> JSONResponse:
    manager = request.state.stabilizer
    result = await manager.broadcast(request.query_params["text"])
    return JSONResponse(result._asdict())


async def send(request: Request) -> JSONResponse:
    q = request.query_params
    return JSONResponse({"ok": await request.state.stabilizer.send(q["sid"], q["text"])})


app = Starlette(
    routes=[
        WebSocketRoute("/ws", echo),
        Route("/broadcast", broadcast, methods=["POST"]),
        Route("/send", send, methods=["POST"]),
    ]
)

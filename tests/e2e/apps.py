"""Endpoints used by the end-to-end tests: plain Starlette code, no stabilizer imports."""

from __future__ import annotations

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

EVENTS: list[tuple[str, object]] = []


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                EVENTS.append(("echo_disconnect", message.get("code")))
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:  # pragma: no cover - receive() returns, never raises
        EVENTS.append(("echo_disconnect", exc.code))


async def push(websocket: WebSocket) -> None:
    """Push-only: never calls receive()."""
    await websocket.accept()
    try:
        n = 0
        while True:
            n += 1
            await websocket.send_text(f"tick {n}")
            await anyio.sleep(0.02)
    except WebSocketDisconnect as exc:
        EVENTS.append(("push_disconnect", exc.code))


async def room(websocket: WebSocket) -> None:
    await websocket.accept()
    stab = websocket.state.stabilizer
    me = websocket.state.stabilizer_session
    await stab.join(me.id, "room")
    await websocket.send_text("joined")
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


async def broadcast(request):  # type: ignore[no-untyped-def]
    stab = request.state.stabilizer
    text = request.query_params.get("text", "hi")
    if "size" in request.query_params:
        text = "x" * int(request.query_params["size"])
    result = await stab.broadcast(text, group=request.query_params.get("group"))
    return JSONResponse(result._asdict())


def make_app() -> Starlette:
    return Starlette(
        routes=[
            WebSocketRoute("/echo", echo),
            WebSocketRoute("/push", push),
            WebSocketRoute("/room", room),
            Route("/broadcast", broadcast, methods=["POST"]),
        ]
    )

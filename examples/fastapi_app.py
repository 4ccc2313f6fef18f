"""A FastAPI app: the endpoints are ordinary FastAPI code, stabilized by one middleware line.

    uvicorn examples.fastapi_app:app        # or: stabilizer-asgi serve examples.fastapi_app:app

`/ws/echo` is an unchanged echo endpoint; `/ws/feed` is push-only (never calls receive(), the
middleware still detects a dead peer); `POST /announce` broadcasts to every connected session.
"""

from __future__ import annotations

import anyio
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware

app = FastAPI(title="stabilizer-asgi FastAPI example")
app.add_middleware(
    StabilizerMiddleware,
    heartbeat_interval=20,
    heartbeat_timeout=10,
    max_connections=10_000,
    max_message_size=64 * 1024,
)


@app.websocket("/ws/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


@app.websocket("/ws/feed")
async def feed(websocket: WebSocket) -> None:
    await websocket.accept()
    tick = 0
    try:
        while True:
            tick += 1
            await websocket.send_json({"tick": tick})
            await anyio.sleep(1)
    except WebSocketDisconnect:
        pass


@app.post("/announce")
async def announce(request: Request, text: str) -> dict[str, int]:
    result = await request.state.stabilizer.broadcast({"announce": text})
    return result._asdict()


@app.get("/sessions")
async def sessions(request: Request) -> list[dict[str, object]]:
    return [
        {"id": s.id, "state": s.state.value, "rtt": s.rtt, "opted_in": s.opted_in}
        for s in request.state.stabilizer.sessions()
    ]

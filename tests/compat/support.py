"""A seed-style app for the compat tests: the README's endpoint shape, recording what it sees."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.compat import WebSocketConnectionManager, WebSocketStabilizerError
from tests.asgi.support import Recorder, on_loop, wait_until  # noqa: F401 - re-exported


async def connect_with_meta(manager: Any, client_id: str, websocket: WebSocket) -> None:
    """`manager.connect(client_id, websocket)`, with `?meta=<n>` passing n bytes of metadata."""
    meta = websocket.query_params.get("meta")
    await manager.connect(
        client_id, websocket, metadata={"blob": "x" * int(meta)} if meta else None
    )


def seed_app(
    manager: WebSocketConnectionManager, rec: Recorder, *, middleware: bool = False
) -> Any:
    """`/ws/{client_id}` as the seed README writes it (lifespan start/shutdown, connect after
    accept, "pong" to handle_pong, broadcast of every message, disconnect on
    WebSocketDisconnect), plus `?meta=<n>` to pass n bytes of metadata. With `middleware`, the
    same app behind `StabilizerMiddleware(manager=manager.stabilizer)`."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await manager.start()
        yield
        rec.add("shutdown", await manager.graceful_shutdown())

    async def endpoint(websocket: WebSocket) -> None:
        client_id = websocket.path_params["client_id"]
        await websocket.accept()
        try:
            await connect_with_meta(manager, client_id, websocket)
        except WebSocketStabilizerError as exc:
            rec.add("refused", client_id, type(exc).__name__)
            await websocket.close(code=4000, reason=type(exc).__name__)
            return
        session = getattr(websocket.state, "stabilizer_session", None)
        rec.add("connected", client_id, None if session is None else session.id)
        try:
            while True:
                data = await websocket.receive_text()
                if data == "pong":
                    rec.add("pong reached the endpoint", client_id)
                    await manager.handle_pong(client_id)
                    continue
                await manager.broadcast(json.dumps({"user": client_id, "message": data}))
        except WebSocketDisconnect as exc:
            rec.add("disconnect", client_id, exc.code)
            await manager.disconnect(client_id)
            rec.add("unwound", client_id)

    app = Starlette(routes=[WebSocketRoute("/ws/{client_id}", endpoint)], lifespan=lifespan)
    if middleware:
        return StabilizerMiddleware(app, manager=manager.stabilizer)
    return app


def events(rec: Recorder, kind: str) -> list[Any]:
    return [e for e in rec.events if isinstance(e, tuple) and e[0] == kind]

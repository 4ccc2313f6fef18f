"""One instance of a cluster benchmark variant (run by ``benchmarks.cluster``).

``python -m benchmarks._cluster_server --variant ours --port 8765 --redis redis://…`` serves:

- ``raw``: bare Starlette websockets; every instance subscribes to one Redis pub/sub channel and
  loops over its own connections' sends for each message (the floor);
- ``ours``: a plain endpoint behind ``StabilizerMiddleware(backend=<redis URL>)``,
  ``stabilizer.broadcast()`` from the route;
- ``socketio``: python-socketio's ``AsyncServer`` with ``AsyncRedisManager``, ``emit()``.

Clients connecting with ``?group=half`` join the group (room) "half".
``POST /bench/publish?start=S&count=M&group=&rate=`` publishes messages S..S+M-1 as
``"<i>:<time.time()>"`` (at ``rate`` per second, or as fast as they go) and answers when it has,
with how many publishes raised; ``GET /bench/info`` answers the instance's connection count.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio

VARIANTS = ("raw", "ours", "socketio")


def _publish_loop_params(query: Any) -> tuple[range, str | None, float]:
    first = int(query.get("start", "0"))
    indices = range(first, first + int(query.get("count", "1")))
    group = query.get("group") or None
    rate = float(query.get("rate", "0") or 0)
    return indices, group, rate


async def _paced(indices: range, rate: float, publish: Any) -> int:
    """Publish every index (at `rate` per second if given); the number that raised."""
    began = time.monotonic()
    errors = 0
    for n, i in enumerate(indices):
        if rate > 0:
            delay = began + n / rate - time.monotonic()
            if delay > 0:
                await anyio.sleep(delay)
        try:
            await publish(f"{i}:{time.time()!r}")
        except Exception:
            errors += 1
    return errors


def raw_app(redis_url: str) -> Any:
    import contextlib

    import redis.asyncio as aioredis
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    everyone: set[WebSocket] = set()
    half: set[WebSocket] = set()
    client = aioredis.Redis.from_url(redis_url)

    async def listen() -> None:
        pubsub = client.pubsub()
        await pubsub.subscribe("raw:all", "raw:half")
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            text = message["data"].decode()
            targets = everyone if message["channel"] == b"raw:all" else half
            for ws in list(targets):
                with contextlib.suppress(Exception):
                    await ws.send_text(text)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listen)
            yield
            tg.cancel_scope.cancel()

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        member = websocket.query_params.get("group") == "half"
        everyone.add(websocket)
        if member:
            half.add(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            everyone.discard(websocket)
            half.discard(websocket)

    async def publish(request: Request) -> JSONResponse:
        indices, group, rate = _publish_loop_params(request.query_params)
        channel = "raw:half" if group else "raw:all"

        async def one(text: str) -> None:
            await client.publish(channel, text)

        errors = await _paced(indices, rate, one)
        return JSONResponse({"published": len(indices), "errors": errors})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"connections": len(everyone)})

    return Starlette(
        routes=[
            WebSocketRoute("/ws", ws),
            Route("/bench/publish", publish, methods=["POST"]),
            Route("/bench/info", info),
        ],
        lifespan=lifespan,
    )


def ours_app(redis_url: str) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from stabilizer_asgi import StabilizerMiddleware

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        if websocket.query_params.get("group") == "half":
            stab = websocket.state.stabilizer
            await stab.join(websocket.state.stabilizer_session.id, "half")
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass

    async def publish(request: Request) -> JSONResponse:
        indices, group, rate = _publish_loop_params(request.query_params)
        stab = request.state.stabilizer

        async def one(text: str) -> None:
            await stab.broadcast(text, group=group)

        errors = await _paced(indices, rate, one)
        return JSONResponse({"published": len(indices), "errors": errors})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"connections": request.state.stabilizer.count()})

    app = Starlette(
        routes=[
            WebSocketRoute("/ws", ws),
            Route("/bench/publish", publish, methods=["POST"]),
            Route("/bench/info", info),
        ]
    )
    return StabilizerMiddleware(
        app, backend=redis_url, cluster_name="bench", secret="bench-secret", probe_interval=2.0
    )


def socketio_app(redis_url: str) -> Any:
    import socketio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    sio = socketio.AsyncServer(
        async_mode="asgi", client_manager=socketio.AsyncRedisManager(redis_url)
    )
    connected: set[str] = set()

    @sio.event  # type: ignore[misc]
    async def connect(sid: str, environ: dict[str, Any]) -> None:
        connected.add(sid)
        if "group=half" in environ.get("QUERY_STRING", ""):
            await sio.enter_room(sid, "half")

    @sio.event  # type: ignore[misc]
    async def disconnect(sid: str, *args: Any) -> None:
        connected.discard(sid)

    async def publish(request: Request) -> JSONResponse:
        indices, group, rate = _publish_loop_params(request.query_params)

        async def one(text: str) -> None:
            await sio.emit("m", text, room=group)

        errors = await _paced(indices, rate, one)
        return JSONResponse({"published": len(indices), "errors": errors})

    async def info(request: Request) -> JSONResponse:
        return JSONResponse({"connections": len(connected)})

    return Starlette(
        routes=[
            Route("/bench/publish", publish, methods=["POST"]),
            Route("/bench/info", info),
            Mount("/", socketio.ASGIApp(sio)),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._cluster_server")
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args(argv)

    import uvicorn

    from benchmarks._common import raise_nofile_limit

    raise_nofile_limit()
    build = {"raw": raw_app, "ours": ours_app, "socketio": socketio_app}[args.variant]
    config = uvicorn.Config(
        build(args.redis),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One instance of a cluster benchmark variant (run by ``benchmarks.cluster`` through
``_procs.ServerProcess``): ``python -m benchmarks._cluster_apps --app ours --port P --redis URL``.

Every app serves the same routes, and every broadcast carries the same text:

- a websocket endpoint (``/ws``, or Socket.IO's ``/socket.io/``); a client connecting with
  ``?group=half`` is a member of the group (room, channel) ``half``;
- ``POST /bench/publish?start=S&count=M&size=B[&rate=R][&group=half]`` publishes messages
  ``S … S+M-1``, each ``"<i>:<time.time() at publish>:"`` padded to ``B`` bytes, as fast as they
  go (or ``R`` per second), and answers when all were issued: ``t0`` (wall clock at the first),
  ``seconds`` and ``errors`` (publishes that raised; the message is then lost);
- ``GET /bench/info``: this instance's local connections and group members, and its pid.

Apps (each used the way its documentation shows):

- ``raw``: bare Starlette; each instance subscribes to two Redis pub/sub channels and, for each
  message, loops over its own connections' ASGI ``send`` (the floor). Publishing is one Redis
  ``PUBLISH``. Its listener reconnects and resubscribes 0.1 s after any error (redis-py's own
  ``listen()`` raises and does not), and nothing more: what was published meanwhile is lost.
- ``ours``: the same endpoint behind ``StabilizerMiddleware(backend=<redis URL>,
  cluster_name=..., secret=...)``; members join with ``stabilizer.join``; publishing is
  ``stabilizer.broadcast(text, group=...)``.
- ``socketio``: python-socketio's ``AsyncServer`` with ``AsyncRedisManager``; members enter the
  room on connect; publishing is ``sio.emit("m", text, room=...)``.
- ``broadcaster``: encode/broadcaster's ``Broadcast(<redis URL>)`` as its README's chat example
  uses it: each websocket subscribes to the channel and relays every event with ``send_text``
  (plus one subscriber held from start-up: see ``broadcaster_app``). Everyone only, no group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from benchmarks._common import run_uvicorn

APPS = ("raw", "ours", "socketio", "broadcaster")
GROUP = "half"
CLUSTER_NAME = "bench"
SECRET = "benchmark-cluster-secret"

Publish = Callable[[str, "str | None"], Awaitable[None]]


def message_text(index: int, size: int) -> str:
    """The text of broadcast ``index``: its number and publish time, padded to ``size``."""
    head = f"{index}:{time.time():.6f}:"
    return head + "x" * max(0, size - len(head))


def bench_routes(publish: Publish, info: Callable[[], dict[str, int]]) -> list[Route]:
    async def publish_route(request: Request) -> JSONResponse:
        q = request.query_params
        start, count = int(q.get("start", "0")), int(q.get("count", "1"))
        size, rate = int(q.get("size", "64")), float(q.get("rate", "0") or 0)
        group = q.get("group") or None
        errors = 0
        t0 = time.time()
        began = time.monotonic()
        for n in range(count):
            if rate > 0:
                delay = began + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                await publish(message_text(start + n, size), group)
            except Exception:
                errors += 1
        return JSONResponse(
            {"t0": t0, "seconds": time.monotonic() - began, "errors": errors, "count": count}
        )

    async def info_route(request: Request) -> JSONResponse:
        return JSONResponse({**info(), "pid": os.getpid()})

    return [
        Route("/bench/publish", publish_route, methods=["POST"]),
        Route("/bench/info", info_route),
    ]


def _is_member(websocket: WebSocket) -> bool:
    return websocket.query_params.get("group") == GROUP


async def _until_disconnect(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


# --- raw: Redis pub/sub and a plain send loop per instance ------------------------------------


def raw_app(redis_url: str) -> ASGIApp:
    import redis.asyncio as aioredis

    everyone: dict[int, Send] = {}
    members: dict[int, Send] = {}
    client = aioredis.Redis.from_url(redis_url)
    channels = {f"raw:{GROUP}".encode(): members, b"raw:all": everyone}

    async def listen() -> None:
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                async for item in pubsub.listen():
                    if item["type"] != "message":
                        continue
                    message = {"type": "websocket.send", "text": item["data"].decode()}
                    for send in list(channels[item["channel"]].values()):
                        with contextlib.suppress(Exception):  # a client that just left
                            await send(message)
            except Exception:
                await asyncio.sleep(0.1)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(listen())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        key = id(websocket)
        everyone[key] = websocket._send
        if _is_member(websocket):
            members[key] = websocket._send
        try:
            await _until_disconnect(websocket)
        finally:
            everyone.pop(key, None)
            members.pop(key, None)

    async def publish(text: str, group: str | None) -> None:
        await client.publish(f"raw:{group}" if group else "raw:all", text)

    def info() -> dict[str, int]:
        return {"connections": len(everyone), "members": len(members)}

    return Starlette(
        routes=[WebSocketRoute("/ws", ws), *bench_routes(publish, info)], lifespan=lifespan
    )


# --- ours: the middleware with its Redis backend ----------------------------------------------


def ours_app(redis_url: str) -> ASGIApp:
    from stabilizer_asgi import StabilizerMiddleware

    manager: list[Any] = []

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        stab = websocket.state.stabilizer
        if not manager:
            manager.append(stab)
        if _is_member(websocket):
            await stab.join(websocket.state.stabilizer_session.id, GROUP)
        with contextlib.suppress(WebSocketDisconnect):
            await _until_disconnect(websocket)

    async def publish(text: str, group: str | None) -> None:
        await manager[0].broadcast(text, group=group)

    def info() -> dict[str, int]:
        if not manager:
            return {"connections": 0, "members": 0}
        stab = manager[0]
        return {"connections": stab.count(), "members": len(stab.sessions(group=GROUP))}

    app = Starlette(routes=[WebSocketRoute("/ws", ws), *bench_routes(publish, info)])
    app.add_middleware(
        StabilizerMiddleware, backend=redis_url, cluster_name=CLUSTER_NAME, secret=SECRET
    )
    return app


# --- python-socketio with AsyncRedisManager ---------------------------------------------------


def socketio_app(redis_url: str) -> ASGIApp:
    import socketio

    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(redis_url),
        logger=False,
        engineio_logger=False,
    )
    connected: set[str] = set()
    members: set[str] = set()

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        connected.add(sid)
        if f"group={GROUP}" in environ.get("QUERY_STRING", ""):
            await sio.enter_room(sid, GROUP)
            members.add(sid)

    async def disconnect(sid: str, *args: Any) -> None:
        connected.discard(sid)
        members.discard(sid)

    sio.on("connect", connect)
    sio.on("disconnect", disconnect)

    async def publish(text: str, group: str | None) -> None:
        await sio.emit("m", text, room=group)

    def info() -> dict[str, int]:
        return {"connections": len(connected), "members": len(members)}

    routes = Starlette(routes=bench_routes(publish, info))
    return socketio.ASGIApp(sio, other_asgi_app=routes)  # type: ignore[no-any-return]


# --- encode/broadcaster -----------------------------------------------------------------------


def broadcaster_app(redis_url: str) -> ASGIApp:
    from broadcaster import Broadcast

    broadcast = Broadcast(redis_url)
    connected: set[int] = set()

    async def placeholder() -> None:
        # Broadcast.subscribe() of broadcaster 0.3.1 races: subscribers entering at once while
        # the channel has none each replace the channel's subscriber set, so all but the last
        # one of a burst of connections silently receive nothing. One subscriber held from
        # start-up (as an app that must not lose its first clients has to) avoids that.
        async with broadcast.subscribe(channel="all") as subscriber:
            async for _ in subscriber:  # type: ignore[union-attr]
                pass

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broadcast.connect()
        task = asyncio.create_task(placeholder())
        yield
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await broadcast.disconnect()

    async def relay(websocket: WebSocket) -> None:
        async with broadcast.subscribe(channel="all") as subscriber:
            async for event in subscriber:  # type: ignore[union-attr]
                await websocket.send_text(event.message)

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        key = id(websocket)
        connected.add(key)
        sender = asyncio.create_task(relay(websocket))
        try:
            await _until_disconnect(websocket)
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            connected.discard(key)

    async def publish(text: str, group: str | None) -> None:
        if group:
            raise NotImplementedError("the broadcaster variant broadcasts to everyone only")
        await broadcast.publish(channel="all", message=text)

    def info() -> dict[str, int]:
        # Group members are counted as such only by apps that have groups.
        return {"connections": len(connected), "members": -1}

    return Starlette(
        routes=[WebSocketRoute("/ws", ws), *bench_routes(publish, info)], lifespan=lifespan
    )


BUILDERS: dict[str, Callable[[str], ASGIApp]] = {
    "raw": raw_app,
    "ours": ours_app,
    "socketio": socketio_app,
    "broadcaster": broadcaster_app,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._cluster_apps")
    parser.add_argument("--app", choices=APPS, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args(argv)

    return run_uvicorn(lambda: BUILDERS[args.app](args.redis), args.host, args.port)


if __name__ == "__main__":
    raise SystemExit(main())

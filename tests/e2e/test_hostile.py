"""Hostile control frames through real uvicorn and a real websockets peer: counted, ignored,
never fatal, on the server (echo and push-only endpoints) and in the Python client."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.client import ClientState, connect

from .apps import make_app

pytestmark = pytest.mark.anyio

RS = "\x1e"
DEEP = RS + "[" * 2000 + "]" * 2000  # 4 KB: a RecursionError in json.loads
HOSTILE = [
    DEEP,
    RS + '{"t":"ping","ts":' + "[" * 1000 + "]" * 1000 + "}",
    RS + '{"t":"pong","ts":NaN,"n":0}',
    RS + '{"t":"ping","ts":Infinity,"n":0}',
    RS + '{"t":"ping","ts":1e999,"n":0}',
    RS + '{"t":"ping","ts":' + "9" * 4000 + ',"n":0}',
    RS + '{"t":"ack","n":' + "1" * 40 + "}",
    RS + '{"t":"ack","n":"3"}',
    RS + '{"t":"ack","n":true}',
    RS + '{"t":"ping","n":0}',
    RS + '{"t":"hello","v":1}',  # a server-only type
    RS + '{"t":"no-such-type"}',
    RS + '{"no t":1}',
    RS + "[1,2]",
    RS + "not json",
    RS + '{"t":"ping","ts":1,"n":0,"pad":"' + "x" * 5000 + '"}',
]

# The same, as a server would send them (a `hello` is valid from a server).
FROM_SERVER = [frame for frame in HOSTILE if '"hello"' not in frame]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def control(frame: str | bytes) -> dict[str, Any] | None:
    if isinstance(frame, str) and frame[:1] == RS and frame[1:2] != RS:
        obj = json.loads(frame[1:])
        assert isinstance(obj, dict)
        return obj
    return None


async def test_hostile_control_frames_to_an_echo_endpoint_are_counted_and_ignored(
    uvicorn_server: Any,
) -> None:
    """Deeply nested, NaN, huge, mistyped, unknown and oversize control frames reach neither
    the app nor a close: each is counted, and the connection echoes on."""
    app = StabilizerMiddleware(make_app())
    server = uvicorn_server(app)
    async with ws_connect(server.url("/echo?stabilizer=1")) as ws:
        hello = control(await ws.recv())
        assert hello is not None and hello["t"] == "hello"
        for frame in HOSTILE:
            await ws.send(frame)
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"  # no pong, no close before
        await ws.send(RS + '{"t":"ping","ts":1e308,"n":0}')
        pong = control(await asyncio.wait_for(ws.recv(), 5))
        assert pong == {"t": "pong", "ts": 1e308, "n": 1}
    assert app.manager.counters["invalid_control_frames"] == len(HOSTILE)


async def test_hostile_control_frame_on_a_push_only_endpoint_is_no_dead_peer(
    uvicorn_server: Any,
) -> None:
    """On a push-only endpoint (the middleware reads for the app), a hostile frame before each
    pong neither kills the reader nor gets the live client closed for a heartbeat timeout."""
    interval = timeout = 0.15
    app = StabilizerMiddleware(make_app(), heartbeat_interval=interval, heartbeat_timeout=timeout)
    server = uvicorn_server(app)
    pings = 0
    async with ws_connect(server.url("/push?stabilizer=1")) as ws:
        loop = asyncio.get_running_loop()
        until = loop.time() + 8 * (interval + timeout)
        ticks = 0
        while loop.time() < until:
            frame = await asyncio.wait_for(ws.recv(), 5)
            msg = control(frame)
            if msg is None:
                ticks += 1
            elif msg["t"] == "ping":
                pings += 1
                await ws.send(DEEP)
                await ws.send(RS + json.dumps({"t": "pong", "ts": msg["ts"], "n": ticks}))
        assert ws.close_code is None
    assert pings >= 2
    counters = app.manager.counters
    assert counters["invalid_control_frames"] == pings
    assert "closed_1011" not in counters


async def test_python_client_survives_a_hostile_server() -> None:
    """The Python client counts and ignores every hostile control frame from a server, never
    answers a non-finite ping, and keeps its connection and session."""
    answered: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def hostile(ws: ServerConnection) -> None:
        hello = {"t": "hello", "v": 1, "session": "s1", "token": "tok", "interval": 25}
        await ws.send(RS + json.dumps({**hello, "timeout": 10, "resumed": False, "ack": 0}))
        for frame in [
            *FROM_SERVER,
            RS + '{"t":"reconnect","after_ms":1e999}',
            RS + '{"t":"ping","ts":"\\ud800","n":0}',
            RS + '{"t":"reconnect","after_ms":0,"reason":"\\udc00"}',
            RS + '{"t":"hello","v":1,"session":"s2","token":"t","interval":NaN}',
        ]:
            await ws.send(frame)
        await ws.send(RS + '{"t":"ping","ts":12.5,"n":0}')
        await ws.send("after")
        async for frame in ws:
            msg = control(frame)
            if msg is not None:
                answered.append(msg)
            if msg is not None and msg["t"] == "pong":
                done.set()
        return

    async with serve(hostile, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=5, max_attempts=1) as conn:
            assert await asyncio.wait_for(conn.recv(), 5) == "after"
            await asyncio.wait_for(done.wait(), 5)
            assert conn.state is ClientState.OPEN and conn.session_id == "s1"
            assert conn.invalid_control_frames == len(FROM_SERVER) + 4
    pongs = [m for m in answered if m["t"] == "pong"]
    assert pongs == [{"t": "pong", "ts": 12.5, "n": 0}]
    assert all(math.isfinite(v) for m in answered for v in m.values() if isinstance(v, float))

"""End to end: a real uvicorn server, real `websockets` clients, over loopback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stabilizer_asgi import StabilizerMiddleware
from tests.helpers import never_reading_client

from .apps import EVENTS, make_app

pytestmark = pytest.mark.anyio

RS = "\x1e"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def stabilized(**kwargs: Any) -> StabilizerMiddleware:
    return StabilizerMiddleware(make_app(), **kwargs)


async def read_data(ws: ClientConnection, *, answer_pings: bool = True) -> str | bytes:
    """Next data frame; answers in-band pings like a well-behaved opted-in client."""
    while True:
        frame = await ws.recv()
        if isinstance(frame, str) and frame.startswith(RS) and not frame.startswith(RS * 2):
            control = json.loads(frame[1:])
            if control["t"] == "ping" and answer_pings:
                await ws.send(RS + json.dumps({"t": "pong", "ts": control["ts"], "n": 0}))
            continue
        return frame


async def close_code(ws: ClientConnection, within: float) -> int | None:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    assert ws.protocol.close_rcvd is not None
    return ws.protocol.close_rcvd.code


async def test_push_only_endpoint_detects_silent_client(uvicorn_server: Any) -> None:
    """A push-only endpoint (never calls receive) still gets dead clients closed with 1011."""
    EVENTS.clear()
    interval, timeout = 0.2, 0.2
    server = uvicorn_server(stabilized(heartbeat_interval=interval, heartbeat_timeout=timeout))
    async with connect(server.url("/push?stabilizer=1")) as ws:
        hello = json.loads((await ws.recv())[1:])
        assert hello["t"] == "hello" and hello["interval"] == interval
        started = time.monotonic()
        # read everything but never answer a ping: from the server's view the client is silent
        code = await close_code(ws, within=5)
        detected = time.monotonic() - started
    assert code == 1011
    assert (
        ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.reason == "heartbeat timeout"
    )
    assert interval + timeout - 0.05 <= detected < interval + timeout + 1.0
    for _ in range(100):
        if ("push_disconnect", 1011) in EVENTS:
            break
        await asyncio.sleep(0.01)
    assert ("push_disconnect", 1011) in EVENTS


async def test_client_answering_pings_stays_connected(uvicorn_server: Any) -> None:
    """A client that answers pings survives many intervals on a push-only endpoint; RTT is kept."""
    server = uvicorn_server(stabilized(heartbeat_interval=0.05, heartbeat_timeout=0.5))
    async with connect(server.url("/push?stabilizer=1")) as ws:
        # Beyond interval + timeout: a client that stopped answering would be gone by then.
        deadline = time.monotonic() + 1.5
        ticks = 0
        while time.monotonic() < deadline:
            frame = await read_data(ws)
            assert isinstance(frame, str) and frame.startswith("tick")
            ticks += 1
        assert ticks > 10
    async with httpx.AsyncClient() as http:
        stats = (await http.get(server.http("/_stabilizer/stats"))).json()
    assert stats["heartbeat"]["timeouts"] == 0
    assert stats["heartbeat"]["pings"] >= 1
    assert stats["heartbeat"]["rtt_p50"] is not None


async def test_chatty_client_is_never_pinged(uvicorn_server: Any) -> None:
    """Any inbound frame is liveness: a client that talks within the interval is not pinged."""
    server = uvicorn_server(stabilized(heartbeat_interval=0.3, heartbeat_timeout=0.3))
    async with connect(server.url("/echo?stabilizer=1")) as ws:
        await ws.recv()  # hello
        for i in range(40):
            await ws.send(f"m{i}")
            frame = await ws.recv()
            while frame.startswith(RS + '{"t":"ack"'):  # the server confirming what it took
                frame = await ws.recv()
            assert frame == f"m{i}"  # a ping in between would fail this
            await asyncio.sleep(0.02)


async def test_half_open_client_is_detected_by_echo_endpoint(uvicorn_server: Any) -> None:
    """A client that stops reading and answering (half-open) is closed; its session is gone."""
    server = uvicorn_server(stabilized(heartbeat_interval=0.1, heartbeat_timeout=0.1))
    ws = await connect(server.url("/echo?stabilizer=1"))
    await ws.recv()
    ws.transport.pause_reading()  # from here on the client neither reads nor answers
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            stats = (await http.get(server.http("/_stabilizer/stats"))).json()
            if stats["heartbeat"]["timeouts"] == 1 and stats["connections"] == 0:
                break
            await asyncio.sleep(0.02)
    assert stats["heartbeat"]["timeouts"] == 1
    assert stats["connections"] == 0
    assert stats["sessions"]["connected"] == 0
    ws.transport.abort()


async def test_plain_client_in_auto_mode_sees_no_control_frames(uvicorn_server: Any) -> None:
    """heartbeat="auto": a client that did not opt in gets no hello and no pings."""
    server = uvicorn_server(stabilized(heartbeat_interval=0.05, heartbeat_timeout=0.05))
    async with connect(server.url("/echo")) as ws:
        await asyncio.sleep(0.3)
        await ws.send("x")
        assert await ws.recv() == "x"


async def test_always_mode_pings_plain_clients_with_text(uvicorn_server: Any) -> None:
    """heartbeat="always": plain clients get ping_text, their pong_text is swallowed."""
    server = uvicorn_server(
        stabilized(heartbeat="always", heartbeat_interval=0.1, heartbeat_timeout=0.3)
    )
    async with connect(server.url("/echo")) as ws:
        assert await asyncio.wait_for(ws.recv(), 2) == "ping"
        await ws.send("pong")  # swallowed: the echo app never sees it
        await ws.send("data")
        assert await asyncio.wait_for(ws.recv(), 2) == "data"


async def test_capacity_denial_is_503_with_retry_after(uvicorn_server: Any) -> None:
    """Over max_connections, the handshake gets HTTP 503 + Retry-After and never reaches the app."""
    server = uvicorn_server(stabilized(max_connections=2, retry_after=7))
    async with connect(server.url("/echo")), connect(server.url("/echo")):
        with pytest.raises(InvalidStatus) as info:
            await connect(server.url("/echo"))
    response = info.value.response
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "7"
    assert json.loads(response.body) == {"error": "capacity"}
    async with connect(server.url("/echo")) as ws:  # slots are released
        await ws.send("ok")
        assert await ws.recv() == "ok"


async def test_oversized_frame_closes_1009(uvicorn_server: Any) -> None:
    """An inbound frame over max_message_size closes the connection with 1009."""
    EVENTS.clear()
    server = uvicorn_server(stabilized(max_message_size=1000))
    async with connect(server.url("/echo")) as ws:
        await ws.send("a" * 1000)
        assert await ws.recv() == "a" * 1000
        await ws.send("é" * 501)  # 1002 bytes in UTF-8
        assert await close_code(ws, within=5) == 1009
    for _ in range(100):
        if ("echo_disconnect", 1009) in EVENTS:
            break
        await asyncio.sleep(0.01)
    assert ("echo_disconnect", 1009) in EVENTS


async def test_rate_limit_closes_1008(uvicorn_server: Any) -> None:
    """Past the token bucket (rate, burst), the connection is closed with 1008."""
    server = uvicorn_server(stabilized(rate_limit=(5.0, 3)))
    async with connect(server.url("/echo")) as ws:
        for i in range(10):
            await ws.send(str(i))
        received = []
        with pytest.raises(ConnectionClosed):
            while True:
                received.append(await asyncio.wait_for(ws.recv(), 5))
        assert received == ["0", "1", "2"]
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1008


async def test_broadcast_reaches_1000_clients(uvicorn_server: Any) -> None:
    """A broadcast from an HTTP route reaches every one of 1,000 real clients, exactly once."""
    server = uvicorn_server(stabilized())
    clients = []
    try:
        for _ in range(10):
            clients += await asyncio.gather(
                *(connect(server.url("/room"), open_timeout=30) for _ in range(100))
            )
        await asyncio.gather(*(c.recv() for c in clients))  # "joined"
        async with httpx.AsyncClient() as http:
            result = (await http.post(server.http("/broadcast?text=news&group=room"))).json()
        assert result == {"total": 1000, "delivered": 1000, "dropped": 0, "failed": 0}
        got = await asyncio.wait_for(asyncio.gather(*(c.recv() for c in clients)), 20)
        assert got == ["news"] * 1000
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def test_slow_consumer_does_not_delay_others(uvicorn_server: Any) -> None:
    """A client that stops reading is closed 1008 (slow consumer); the others get every frame."""
    server = uvicorn_server(stabilized(max_queue_messages=20, max_queue_bytes=10_000_000))
    slow = await never_reading_client(server.port, "/room")
    fast = await connect(server.url("/room"))
    await fast.recv()
    payload = "x" * 65536
    results = []
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            r = (await http.post(server.http(f"/broadcast?size={len(payload)}"))).json()
            results.append(r)
            assert await asyncio.wait_for(fast.recv(), 5) == payload
    assert results[0]["delivered"] == 2
    assert results[-1] == {"total": 1, "delivered": 1, "dropped": 0, "failed": 0}
    assert any(r["failed"] == 1 for r in results)
    slow.close()
    await fast.close()

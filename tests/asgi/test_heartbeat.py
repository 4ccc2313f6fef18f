"""Heartbeat through TestClient, with intervals of tens of milliseconds and generous timeouts.

Nothing here asserts on how long anything took; tests wait for frames, not for the clock.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketTestSession
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware
from tests.conftest import MS

from .support import (
    RS,
    Recorder,
    control,
    hello,
    make_chat_app,
    on_loop,
    registered,
    session_id,
    wait_until,
)

# After a ping the next check is due `heartbeat_timeout` later, so a client that answers is
# pinged about every max(interval, timeout): keep the timeout short but far above a reply's
# latency (it is scaled by STABILIZER_TESTS_TIMEOUT_FACTOR, like every interval here).
FAST: dict[str, Any] = {"heartbeat_interval": 40 * MS, "heartbeat_timeout": 250 * MS}
DEADLY: dict[str, Any] = {"heartbeat_interval": 40 * MS, "heartbeat_timeout": 60 * MS}
HEARTBEAT_CLOSE = {"type": "websocket.close", "code": 1011, "reason": "heartbeat timeout"}


def next_data(ws: WebSocketTestSession, ping_text: str = "ping") -> str:
    """The next text frame that is not a heartbeat ping (a slow test thread may get one) or the
    server's `ack`."""
    while True:
        frame = ws.receive_text()
        ping = control(frame)
        if ping is not None and ping["t"] == "ping":
            ws.send_text(RS + f'{{"t":"pong","ts":{ping["ts"]},"n":0}}')
        elif ping is not None and ping["t"] == "ack":
            continue
        elif frame != ping_text:
            return frame


def answer_control_ping(ws: WebSocketTestSession) -> dict[str, Any]:
    """Wait for the next control ping (past the server's `ack`s) and answer it; return it."""
    ping = control(ws.receive_text())
    while ping is not None and ping["t"] == "ack":
        ping = control(ws.receive_text())
    assert ping is not None and ping["t"] == "ping", ping
    ws.send_text(RS + f'{{"t":"pong","ts":{ping["ts"]},"n":0}}')
    return ping


def test_always_mode_pings_plain_clients_and_swallows_pongs(
    client_factory: Callable[..., TestClient],
) -> None:
    """`heartbeat="always"`: a silent plain client gets `ping_text`; its `pong_text` is consumed."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), heartbeat="always", **FAST)
    with client_factory(mw) as client, client.websocket_connect("/ws") as ws:
        sid = session_id(ws)
        for _ in range(2):
            assert ws.receive_text() == "ping"
            ws.send_text("pong")
        ws.send_text("data")
        assert next_data(ws) == "data"  # the app echoed no "pong" before it
        session = on_loop(client, mw.manager.get, sid)
        assert session.rtt is not None and session.rtt >= 0
        ws.close()
        rec.wait_done()
    assert [e[2] for e in rec.events if e[0] == "received"] == ["data"]


def test_custom_ping_and_pong_text(client_factory: Callable[..., TestClient]) -> None:
    """`ping_text` / `pong_text` replace the payloads; other text is the app's data."""
    rec = Recorder()
    mw = StabilizerMiddleware(
        make_chat_app(rec), heartbeat="always", ping_text="hb?", pong_text="hb!", **FAST
    )
    with client_factory(mw) as client, client.websocket_connect("/ws") as ws:
        session_id(ws)
        assert ws.receive_text() == "hb?"
        ws.send_text("hb!")
        ws.send_text("pong")
        assert next_data(ws, "hb?") == "pong"  # an ordinary message now: echoed by the app


def test_always_mode_closes_a_silent_plain_client_with_1011(
    client_factory: Callable[..., TestClient],
) -> None:
    """A plain client that never answers is closed with 1011 and the app gets the disconnect."""
    rec = Recorder()
    timeouts: list[str] = []

    async def on_timeout(session: Any) -> None:
        timeouts.append(session.id)

    mw = StabilizerMiddleware(
        make_chat_app(rec), heartbeat="always", on_timeout=on_timeout, **DEADLY
    )
    with client_factory(mw) as client, client.websocket_connect("/ws") as ws:
        sid = session_id(ws)
        assert ws.receive_text() == "ping"
        assert ws.receive() == HEARTBEAT_CLOSE
        rec.wait_done()
        wait_until(lambda: timeouts == [sid])
        stats = on_loop(client, mw.manager.stats)
    assert ("disconnect", sid, 1011, "heartbeat timeout") in rec.events
    assert stats["heartbeat"]["timeouts"] == 1 and stats["heartbeat"]["pings"] >= 1


def test_opted_in_client_gets_control_pings(client_factory: Callable[..., TestClient]) -> None:
    """In "auto" mode an opted-in client gets control pings; answering keeps it alive."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), **FAST)
    with client_factory(mw) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        sid = hello(ws)["session"]
        assert session_id(ws) == sid
        ws.send_text("one")
        assert next_data(ws) == "one"
        ping = answer_control_ping(ws)
        assert set(ping) == {"t", "ts", "n"} and ping["n"] == 1
        answer_control_ping(ws)
        ws.send_text("still here")
        assert next_data(ws) == "still here"
        wait_until(lambda: on_loop(client, mw.manager.get, sid).rtt is not None)
        rtt = on_loop(client, mw.manager.get, sid).rtt
        assert rtt is not None and 0 <= rtt < 5, rtt  # seconds, from the echoed `ts`
        assert on_loop(client, mw.manager.stats)["heartbeat"]["rtt_p50"] is not None


def test_opted_in_silent_client_is_closed_with_1011(
    client_factory: Callable[..., TestClient],
) -> None:
    """An opted-in client that stops answering is closed with 1011 "heartbeat timeout"."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), **DEADLY)
    with client_factory(mw) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        sid = session_id(ws)
        ping = control(ws.receive_text())
        assert ping is not None and ping["t"] == "ping"
        assert ws.receive() == HEARTBEAT_CLOSE
        rec.wait_done()
    assert ("disconnect", sid, 1011, "heartbeat timeout") in rec.events


def push_app(rec: Recorder) -> Starlette:
    """A push-only endpoint: it never calls `receive()`."""

    async def push(websocket: WebSocket) -> None:
        await websocket.accept()
        n = 0
        try:
            while True:
                n += 1
                await websocket.send_text(f"tick {n}")
                await anyio_sleep(10 * MS)
        except WebSocketDisconnect as exc:
            rec.add("push ended", exc.code, exc.reason)
        finally:
            rec.done.set()

    return Starlette(routes=[WebSocketRoute("/push", push)])


async def anyio_sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


@pytest.mark.parametrize("mode", ["opted-in", "always"])
def test_push_only_endpoint_gets_heartbeat(
    client_factory: Callable[..., TestClient], mode: str
) -> None:
    """An endpoint that never reads still has pongs consumed and dead clients closed (1011)."""
    rec = Recorder()
    query = "?stabilizer=1" if mode == "opted-in" else ""
    heartbeat = "auto" if mode == "opted-in" else "always"
    mw = StabilizerMiddleware(push_app(rec), heartbeat=heartbeat, **FAST)
    pings = 0
    with client_factory(mw) as client, client.websocket_connect("/push" + query) as ws:
        # answer two pings: the connection survives well past interval + timeout
        while pings < 2:
            frame = ws.receive_text()
            if frame == "ping" or (control(frame) or {}).get("t") == "ping":
                pings += 1
                if mode == "always":
                    ws.send_text("pong")
                else:
                    ws.send_text(RS + f'{{"t":"pong","ts":{control(frame)["ts"]},"n":0}}')  # type: ignore[index]
            else:
                assert frame.startswith("tick") or control(frame) is not None
        # then go silent, but keep reading: the server must declare us dead
        while True:
            message = ws.receive()
            if message["type"] == "websocket.close":
                break
        assert message == HEARTBEAT_CLOSE
        rec.wait_done()
    assert rec.events == [("push ended", 1011, "heartbeat timeout")]


def test_auto_mode_never_pings_plain_clients(client_factory: Callable[..., TestClient]) -> None:
    """In "auto" mode a plain client is never pinged, even while opted-in clients are."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), **FAST)
    with (
        client_factory(mw) as client,
        client.websocket_connect("/ws") as plain,
        client.websocket_connect("/ws?stabilizer=1") as opted,
    ):
        session_id(plain)
        session_id(opted)
        for _ in range(2):  # the opted-in client is our clock: two intervals have passed
            answer_control_ping(opted)
        plain.send_text("first")
        assert plain.receive_text() == "first"  # nothing was queued before the echo


def test_heartbeat_off_sends_no_pings(client_factory: Callable[..., TestClient]) -> None:
    """`heartbeat="off"`: even opted-in clients are never pinged nor timed out."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), heartbeat="off", **DEADLY)
    with client_factory(mw) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        session_id(ws)
        time.sleep(10 * DEADLY["heartbeat_interval"])  # many intervals: a ping would be queued
        ws.send_text("first")
        assert ws.receive_text() == "first"
        assert on_loop(client, mw.manager.stats)["heartbeat"]["pings"] == 0


def test_app_receive_cancelled_by_its_own_timeout_still_gets_heartbeat(
    client_factory: Callable[..., TestClient],
) -> None:
    """After `move_on_after(...)` cancels the app's `receive()`, the app is known not to be
    reading: the middleware reads pongs for it instead of declaring a live client dead."""
    import anyio

    rec = Recorder()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        with anyio.move_on_after(5 * MS):
            await websocket.receive()  # nothing comes: the app gives up and only pushes
        try:
            while True:
                await websocket.send_text("tick")
                await anyio.sleep(10 * MS)
        except WebSocketDisconnect as exc:
            rec.add("push ended", exc.code)

    mw = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", endpoint)]), **FAST)
    with client_factory(mw) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        hello(ws)
        pings = 0
        while pings < 3:
            message = ws.receive()
            assert message["type"] == "websocket.send", message  # never closed while answering
            ping = control(message["text"])
            if ping is not None and ping["t"] == "ping":
                pings += 1
                ws.send_text(RS + f'{{"t":"pong","ts":{ping["ts"]},"n":0}}')
    assert rec.events == []


def test_closed_connections_leave_the_heartbeat_wheel_at_once(
    client_factory: Callable[..., TestClient],
) -> None:
    """With a long interval, connections that opened and closed are neither scheduled nor kept
    alive by the heartbeat wheel: it releases them at close, not when their slot comes due."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), heartbeat_interval=25.0)
    conns: list[weakref.ref[Any]] = []
    with client_factory(mw) as client:
        for _ in range(20):
            rec.done.clear()
            with client.websocket_connect("/ws?stabilizer=1") as ws:
                sid = session_id(ws)
                conn = on_loop(client, lambda: mw.manager.get(sid)._conn)  # noqa: B023
                conns.append(weakref.ref(conn))
                del conn
            rec.wait_done()
        wait_until(lambda: registered(client, mw.manager) == 0)
        gc.collect()
        assert [ref for ref in conns if ref() is not None] == []
        assert on_loop(client, mw.manager.stats)["heartbeat"]["scheduled"] == 0

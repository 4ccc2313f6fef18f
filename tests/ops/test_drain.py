"""Drain and shutdown: reconnect hints spread over the period, 1012 closes, exact reports."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import stabilizer_asgi.manager as manager_module
from stabilizer_asgi import logging as slog

from .support import RS, await_until, captured_logs, control, stabilized

DRAIN = "/_stabilizer/drain"
TOKEN = "drain-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEALTH = "/_stabilizer/health"


@dataclass
class Observed:
    """What one client saw from the moment the drain was requested."""

    hints: list[dict[str, Any]] = field(default_factory=list)
    hint_before_close: bool = True
    code: int | None = None
    reason: str | None = None
    closed_after: float | None = None


async def watch(ws: ClientConnection, started: list[float], seen: Observed) -> None:
    """Read until the server closes; record reconnect hints and the close."""
    try:
        while True:
            frame = await ws.recv()
            hint = control(frame)
            if hint is not None and hint["t"] == "reconnect":
                seen.hints.append(hint)
    except ConnectionClosed:
        pass
    seen.closed_after = time.monotonic() - started[0]
    assert ws.protocol.close_rcvd is not None
    seen.code = ws.protocol.close_rcvd.code
    seen.reason = ws.protocol.close_rcvd.reason


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_drain_1000_connections(uvicorn_server: Any) -> None:
    """1,000 real connections: opted-in ones get one `reconnect` with after_ms spread over the
    period, every one gets 1012, plain ones are closed spread over the period, the report is
    exact, and health and handshakes answer 503 meanwhile."""
    # 2 s: closing 800 hinted connections takes up to ~0.7 s of loop time on a loaded 2-core
    # machine, and the plain closes must still visibly spread over the rest of the period.
    opted_in, plain, period = 800, 200, 2.0
    app = stabilized(drain_period=period, heartbeat_interval=60, retry_after=2, admin_token=TOKEN)
    server = uvicorn_server(app, backlog=2048)
    limit = asyncio.Semaphore(100)

    async def open_one(i: int) -> ClientConnection:
        path = "/echo?stabilizer=1" if i < opted_in else "/echo"
        async with limit:
            ws = await connect(server.url(path), ping_interval=None, open_timeout=30)
            if i < opted_in:
                hello = control(await ws.recv())
                assert hello is not None and hello["t"] == "hello"
            return ws

    t0 = time.monotonic()
    clients = await asyncio.gather(*(open_one(i) for i in range(opted_in + plain)))
    connect_s = time.monotonic() - t0
    await await_until(lambda: app.manager.count() == opted_in + plain)
    started = [0.0]
    seen = [Observed() for _ in clients]
    watchers = [
        asyncio.create_task(watch(ws, started, s)) for ws, s in zip(clients, seen, strict=True)
    ]
    async with httpx.AsyncClient(timeout=30) as http:
        started[0] = time.monotonic()
        drain = asyncio.create_task(http.post(server.http(DRAIN), headers=AUTH))
        await asyncio.sleep(period / 4)
        health = await http.get(server.http(HEALTH))
        assert health.status_code == 503 and health.headers["retry-after"] == "2"
        with pytest.raises(InvalidStatus) as denied:
            async with connect(server.url("/echo?stabilizer=1")):
                pass  # pragma: no cover
        assert denied.value.response.status_code == 503
        response = await drain
        drain_s = time.monotonic() - started[0]
    await asyncio.wait_for(asyncio.gather(*watchers), 10)
    all_closed_s = max(s.closed_after or 0 for s in seen)

    report = response.json()
    assert response.status_code == 200
    assert report["closed"] == opted_in + plain and report["failed"] == 0
    assert report["duration"] <= drain_s
    assert all(s.code == 1012 and s.reason == "server draining" for s in seen)
    hints = [s.hints for s in seen[:opted_in]]
    assert all(len(h) == 1 for h in hints), "each opted-in client gets exactly one hint"
    assert all(not s.hints for s in seen[opted_in:]), "plain clients never see control frames"
    after = sorted(h[0]["after_ms"] for h in hints)
    assert after[0] >= 0 and after[-1] <= period * 1000
    tenth = period * 100  # ms
    deciles = [sum(1 for a in after if k * tenth <= a < (k + 1) * tenth) for k in range(10)]
    assert min(deciles) >= opted_in // 20, deciles  # uniform: about 80 in each tenth
    # Plain clients cannot be told when to come back: their closes are spread over the period.
    plain_closes = sorted(s.closed_after or 0 for s in seen[opted_in:])
    assert plain_closes[-1] - plain_closes[0] > period * 0.5
    assert plain_closes[-1] > period * 0.7
    print(
        f"\ndrain of {opted_in + plain} connections: connect {connect_s:.2f}s, "
        f"POST drain answered after {drain_s:.3f}s, last close seen after {all_closed_s:.3f}s, "
        f"report {report}, after_ms deciles {deciles}"
    )


@pytest.mark.anyio
async def test_shutdown_reports_exact_counts(uvicorn_server: Any) -> None:
    """shutdown(timeout) closes what is left with 1012; an app that does not unwind in time
    is counted as failed, the others as closed."""
    app = stabilized()
    server = uvicorn_server(app)
    clients = [await connect(server.url("/echo"), ping_interval=None) for _ in range(3)]
    clients.append(await connect(server.url("/stubborn?sleep=1.5"), ping_interval=None))
    await await_until(lambda: app.manager.count() == 4)
    started = [time.monotonic()]
    seen = [Observed() for _ in clients]
    watchers = [
        asyncio.create_task(watch(ws, started, s)) for ws, s in zip(clients, seen, strict=True)
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(server.http("/shutdown?timeout=0.3"))
    report = response.json()
    assert report["closed"] == 3 and report["failed"] == 1
    assert 0.3 <= report["duration"] < 1.5
    await asyncio.wait_for(asyncio.gather(*watchers), 5)
    assert [s.code for s in seen] == [1012] * 4
    assert {s.reason for s in seen} == {"server shutdown"}


@pytest.mark.anyio
async def test_drain_counts_an_app_that_does_not_unwind_as_failed(
    uvicorn_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """drain() waits a bounded grace for the closed apps to end; one that does not is failed."""
    monkeypatch.setattr(manager_module, "DRAIN_GRACE", 0.2)
    app = stabilized(admin_token=TOKEN)
    server = uvicorn_server(app)
    echo = await connect(server.url("/echo?stabilizer=1"), ping_interval=None)
    stubborn = await connect(server.url("/stubborn?stabilizer=1&sleep=1"), ping_interval=None)
    for ws in (echo, stubborn):
        hello = control(await ws.recv())
        assert hello is not None and hello["t"] == "hello"
    async with httpx.AsyncClient(timeout=10) as http:
        report = (await http.post(server.http(DRAIN + "?period=0"), headers=AUTH)).json()
    assert report["closed"] == 1 and report["failed"] == 1
    assert 0.2 <= report["duration"] < 1
    for ws in (echo, stubborn):
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
        assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1012


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_lifespan_shutdown_closes_websockets_before_completing(anyio_backend: str) -> None:
    """A server that sends lifespan.shutdown before closing sockets gets a graceful shutdown:
    each websocket is closed with 1012 before lifespan.shutdown.complete."""
    app = stabilized()
    log: list[Any] = []
    lifespan_in, lifespan_feed = anyio.create_memory_object_stream[dict[str, Any]](4)
    ws_in, ws_feed = anyio.create_memory_object_stream[dict[str, Any]](4)
    started = anyio.Event()
    opened = anyio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        log.append(("lifespan", message["type"]))
        if message["type"] == "lifespan.startup.complete":
            started.set()

    async def ws_send(message: dict[str, Any]) -> None:
        log.append(("ws", message["type"], message.get("code"), message.get("reason")))
        text = message.get("text")
        if text is not None and text.startswith(RS) and json.loads(text[1:])["t"] == "hello":
            opened.set()

    scope_ws = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/echo",
        "raw_path": b"/echo",
        "root_path": "",
        "query_string": b"stabilizer=1",
        "headers": [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "scheme": "ws",
        "subprotocols": [],
        "state": {},
    }
    with captured_logs() as logs:
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                          lifespan_feed.receive, lifespan_send)  # fmt: skip
            await lifespan_in.send({"type": "lifespan.startup"})
            with anyio.fail_after(5):
                await started.wait()
            tg.start_soon(app, scope_ws, ws_feed.receive, ws_send)
            await ws_in.send({"type": "websocket.connect"})
            with anyio.fail_after(5):
                await opened.wait()
            await lifespan_in.send({"type": "lifespan.shutdown"})
    closes = [i for i, entry in enumerate(log) if entry[:2] == ("ws", "websocket.close")]
    complete = log.index(("lifespan", "lifespan.shutdown.complete"))
    assert len(closes) == 1 and closes[0] < complete
    assert log[closes[0]][2:] == (1012, "server shutdown")
    record = logs.one(slog.SHUTDOWN)
    assert (record.closed, record.failed) == (1, 0)
    for stream in (lifespan_in, lifespan_feed, ws_in, ws_feed):
        stream.close()

"""Clients that never read, through real uvicorn (every websocket implementation it has): their
connections are closed, their sockets released within `close_timeout`, their slots held until
then."""

from __future__ import annotations

import socket
import time
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from uvicorn.config import WS_PROTOCOLS

from stabilizer_asgi import StabilizerMiddleware
from tests.helpers import WAIT, await_until, never_reading_client

from .apps import make_app

CLOSED: list[float] = []


async def flood_then_close(websocket: WebSocket) -> None:
    """Sends until a send stalls (the client stopped reading), then closes 1008 itself."""
    await websocket.accept()
    while True:
        with anyio.move_on_after(0.3) as stalled:
            await websocket.send_text("x" * PAYLOAD)
        if stalled.cancelled_caught:
            break
    started = time.monotonic()
    await websocket.close(1008, "too slow")
    CLOSED.append(time.monotonic() - started)


pytestmark = pytest.mark.anyio

WS_IMPLEMENTATIONS = [name for name in WS_PROTOCOLS if name not in ("auto", "none")]
MAX_CONNECTIONS = 4
ROUNDS = 3
CLOSE_TIMEOUT = 0.5
PAYLOAD = 512 * 1024


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def established(port: int, clients: list[socket.socket]) -> int:
    """The server's sockets (local port `port`) in state ESTABLISHED whose peer is one of
    `clients`, read from the kernel's tables (the test's HTTP connection is not counted)."""
    peers = {sock.getsockname()[1] for sock in clients}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local = int(fields[1].rsplit(":", 1)[1], 16)
                remote = int(fields[2].rsplit(":", 1)[1], 16)
                if local == port and remote in peers and fields[3] == "01":
                    count += 1
    return count


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("ws", WS_IMPLEMENTATIONS)
async def test_never_reading_clients_release_their_sockets_and_slots(
    uvicorn_server: Any, ws: str
) -> None:
    """Rounds of never-reading clients are closed 1008, their sockets are gone within
    close_timeout, and the server never holds more sockets than max_connections."""
    app = StabilizerMiddleware(
        make_app(),
        max_connections=MAX_CONNECTIONS,
        max_queue_messages=4,
        close_timeout=CLOSE_TIMEOUT,
    )
    server = uvicorn_server(app, ws=ws)
    port = server.port
    held: list[socket.socket] = []
    try:
        async with httpx.AsyncClient(timeout=WAIT) as http:

            async def stats() -> dict[str, Any]:
                doc: dict[str, Any] = (await http.get(server.http("/_stabilizer/stats"))).json()
                return doc

            for round_ in range(1, ROUNDS + 1):
                for _ in range(MAX_CONNECTIONS):
                    held.append(await never_reading_client(port, "/room"))
                await await_until(
                    lambda: _group_size(stats, MAX_CONNECTIONS), what="the round in the room"
                )
                closed = 0
                deadline = time.monotonic() + 60
                while closed < MAX_CONNECTIONS * round_:
                    assert time.monotonic() < deadline, "the clients were never closed 1008"
                    await http.post(server.http(f"/broadcast?size={PAYLOAD}&group=room"))
                    assert established(port, held) <= MAX_CONNECTIONS
                    closed = (await stats())["counters"].get("closed_1008", 0)
                await await_until(
                    lambda: established(port, held) == 0,
                    timeout=CLOSE_TIMEOUT + WAIT,
                    what="the closed clients' sockets to be released",
                )
                # The slot is given back once the app has returned and the transport is gone.
                await await_until(
                    lambda: _connections(stats, 0), what="the closed clients' slots to be free"
                )
                # Their ports are free for reuse now (the test's own HTTP connection may get
                # one): only the next round's sockets may count as peers.
                for sock in held:
                    sock.close()
                held.clear()
    finally:
        for sock in held:
            sock.close()


async def _connections(stats: Any, count: int) -> bool:
    doc = await stats()
    return bool(doc["connections"] == count)


async def _group_size(stats: Any, size: int) -> bool:
    doc = await stats()
    return bool(doc["connections"] == size and doc["groups"] == 1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("ws", WS_IMPLEMENTATIONS)
async def test_app_close_to_a_client_that_stopped_reading_is_bounded(
    uvicorn_server: Any, ws: str
) -> None:
    """The app's own close to a client that stopped reading returns within close_timeout and
    the socket is released."""
    CLOSED.clear()
    app = StabilizerMiddleware(
        Starlette(routes=[WebSocketRoute("/flood", flood_then_close)]),
        close_timeout=CLOSE_TIMEOUT,
    )
    server = uvicorn_server(app, ws=ws)
    client = await never_reading_client(server.port, "/flood")
    try:
        await await_until(lambda: CLOSED, timeout=CLOSE_TIMEOUT + WAIT, what="close to return")
        await await_until(
            lambda: established(server.port, [client]) == 0, what="the socket to be released"
        )
        assert app.manager.counters["transport_aborts"] == 1
    finally:
        client.close()

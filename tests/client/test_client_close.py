"""The Python client's own deadlines: a prompt close that ends the session, the hello wait."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import SessionState, StabilizerMiddleware
from stabilizer_asgi.client import ClientClosedError, ClientState, connect

from ..helpers import WAIT, await_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def echo_app(codes: list[int]) -> StabilizerMiddleware:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect as exc:
            codes.append(exc.code)

    return StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", echo)]), secret="close")


async def test_leaving_the_block_right_after_recv_closes_at_once_and_ends_the_session(
    uvicorn_server: Any,
) -> None:
    """Leaving `async with connect(...)` right after `recv()` (the documented example) closes
    within a generous bound (not after ping_interval + ping_timeout, as Python 3.10/3.11 did
    when a swallowed cancellation kept the client's timer alive), the server's app sees 1000
    and the session is ended, not kept DETACHED."""
    codes: list[int] = []
    app = echo_app(codes)
    server = uvicorn_server(app)
    for round_ in range(3):
        # Default pings (20 s + 10 s): a close that waits for the dead-peer verdict overruns.
        with anyio.fail_after(WAIT):
            async with connect(server.url("/ws")) as conn:
                sid = conn.session_id
                assert sid is not None
                await conn.send(f"m{round_}")
                assert await conn.recv() == f"m{round_}"
        assert conn.state is ClientState.CLOSED
        await await_until(lambda n=round_: len(codes) > n, WAIT, "the app saw the disconnect")
        assert codes[round_] == 1000
        session = app.manager.get(sid)
        assert session is None or session.state is SessionState.CLOSED
    assert app.manager.count() == 0


async def test_a_server_that_never_says_hello_is_given_up_after_open_timeout(
    uvicorn_server: Any,
) -> None:
    """A server that accepts the websocket but never sends `hello` (not stabilized) fails each
    attempt after `open_timeout`, and `max_attempts` of them end the client with that reason."""

    async def mute(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            pass

    server = uvicorn_server(mute, lifespan="off")
    with anyio.fail_after(WAIT), pytest.raises(ClientClosedError) as info:
        async with connect(server.url("/ws"), open_timeout=0.2, max_attempts=2, backoff_base=0.01):
            pass
    assert info.value.code == 1006
    assert info.value.reason == "no hello within open_timeout (gave up after 2 attempts)"

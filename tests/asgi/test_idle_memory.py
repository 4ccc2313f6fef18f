"""What an idle opted-in session holds beyond a plain one: no replay buffer of its own."""

from __future__ import annotations

import gc
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.core.replay import ReplayBuffer

from .support import hello, on_loop, wait_until


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while (message := await websocket.receive())["type"] != "websocket.disconnect":
        await websocket.send_text(message["text"])


def replay_buffers() -> int:
    """Live `ReplayBuffer` objects in the process."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, ReplayBuffer))


def test_idle_opted_in_sessions_allocate_no_replay_buffer(
    client_factory: Callable[..., TestClient],
) -> None:
    """Idle opted-in sessions allocate no replay buffer; a session gets one at its first frame,
    and that frame is still delivered."""
    mw = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", echo)]), secret="s")
    with client_factory(mw) as client:
        before = replay_buffers()
        sockets = [client.websocket_connect("/ws?stabilizer=1").__enter__() for _ in range(5)]
        try:
            for ws in sockets:
                hello(ws)
            wait_until(lambda: on_loop(client, mw.manager.count) == 5)
            assert replay_buffers() == before
            sockets[0].send_text("first")
            assert sockets[0].receive_text() == "first"
            assert replay_buffers() == before + 1
        finally:
            for ws in sockets:
                ws.__exit__(None, None, None)

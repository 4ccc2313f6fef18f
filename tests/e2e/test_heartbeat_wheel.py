"""The heartbeat wheel under real uvicorn: connections that come and go are not kept."""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any

import pytest
from websockets.asyncio.client import connect

from stabilizer_asgi import StabilizerMiddleware
from tests.helpers import await_until

from .apps import make_app

pytestmark = pytest.mark.anyio

RS = "\x1e"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_reconnecting_clients_leave_no_connection_in_the_heartbeat_wheel(
    uvicorn_server: Any,
) -> None:
    """With the default 25 s interval, 30 opted-in connect/close cycles leave the wheel empty
    and every connection object (with uvicorn's protocol behind it) collectable at once."""
    app = StabilizerMiddleware(make_app())
    server = uvicorn_server(app)
    refs: list[weakref.ref[Any]] = []
    for _ in range(30):
        async with connect(server.url("/echo?stabilizer=1")) as ws:
            hello = json.loads((await ws.recv())[1:])
            session = app.manager.get(hello["session"])
            assert session is not None and session._conn is not None
            refs.append(weakref.ref(session._conn))
            del session
    await await_until(lambda: app.manager.count() == 0, what="every session ended")
    gc.collect()
    assert [ref for ref in refs if ref() is not None] == []
    assert app.manager.stats()["heartbeat"]["scheduled"] == 0

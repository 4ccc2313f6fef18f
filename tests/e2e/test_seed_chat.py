"""The seed README's chat app (`examples/seed_chat.py`, only its import changed) end to end:
real uvicorn, real `websockets` clients."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import await_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def seed_chat() -> Iterator[ModuleType]:
    """The example module, imported here: its manager sets the library logger's level (the
    seed's `log_level`), which is put back afterwards."""
    log = logging.getLogger("stabilizer_asgi")
    level = log.level
    try:
        yield importlib.import_module("examples.seed_chat")
    finally:
        log.setLevel(level)


async def test_seed_chat_example_end_to_end(uvicorn_server: Any, seed_chat: ModuleType) -> None:
    """Two users chat through the unchanged seed example; a leaving user is unregistered by
    the endpoint's own `disconnect()`; stopping the server closes the rest with 1012."""
    app, ws_manager = seed_chat.app, seed_chat.ws_manager
    server = uvicorn_server(app, lifespan="on")
    async with connect(server.url("/ws/alice")) as alice:
        async with connect(server.url("/ws/bob")) as bob:
            await await_until(lambda: ws_manager.get_connection_count() == 2, what="two users")
            await alice.send("hello bob")
            expected = {"user": "alice", "message": "hello bob"}
            for ws in (alice, bob):
                assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == expected
            assert sorted(ws_manager.get_active_connections()) == ["alice", "bob"]
            stats = ws_manager.stabilizer.stats()
            assert stats["connections"] == 2
            # Read off uvicorn as the middleware would (its default ws_max_size, 16 MiB).
            assert stats["limits"]["server_ws_max_size"] == 16 * 1024 * 1024
        await await_until(lambda: ws_manager.get_active_connections() == ["alice"], what="bob gone")
        await alice.send("anyone?")
        assert json.loads(await asyncio.wait_for(alice.recv(), 5))["message"] == "anyone?"
        server.__exit__(None, None, None)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(alice.recv(), 10)
        assert alice.close_code == 1012
    assert ws_manager.get_connection_count() == 0

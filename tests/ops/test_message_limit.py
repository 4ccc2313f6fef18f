"""`max_message_size` bounds what the server reads: the sidecar passes uvicorn a matching
`ws_max_size`, and stats say what the server's own limit is when it can be read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from stabilizer_asgi import StabilizerConfig, StabilizerMiddleware, cli

from .support import make_app
from .test_cli import APP, Sidecar

RS = "\x1e"
LIMIT = 10_000


@pytest.fixture
def sidecar() -> Iterator[Sidecar]:
    started = Sidecar(APP, "--factory", "--max-message-size", str(LIMIT))
    yield started
    started.stop()


async def close_of(url: str, frame: str) -> tuple[int | None, str | None]:
    """Send one frame and read until the server closes: its close code and reason."""
    async with connect(url, max_size=None, ping_interval=None) as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        close = ws.protocol.close_rcvd
        return (close.code, close.reason) if close else (None, None)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sidecar_passes_uvicorn_a_ws_max_size_from_max_message_size(
    sidecar: Sidecar, anyio_backend: str
) -> None:
    """Under `serve --max-message-size N`, uvicorn's own limit is N + 1 (stats say so): a frame
    one byte over gets the middleware's 1009, a larger one uvicorn's 1009 before it is read,
    and app text of exactly N bytes that the client escaped (N + 1 on the wire) still passes."""
    async with httpx.AsyncClient() as http:
        stats = (await http.get(sidecar.http("/_stabilizer/stats"))).json()
    assert stats["limits"] == {
        "max_message_size": LIMIT,
        "server_ws_max_size": LIMIT + 1,
        "server_limit_above_ours": False,
    }
    assert await close_of(sidecar.url("/echo"), "x" * (LIMIT + 1)) == (1009, "message too big")
    code, reason = await close_of(sidecar.url("/echo"), "x" * (20 * LIMIT))
    assert code == 1009 and reason != "message too big"  # uvicorn's, from the frame header
    async with connect(sidecar.url("/echo?stabilizer=1"), ping_interval=None) as ws:
        await ws.recv()  # hello
        await ws.send(RS + RS + "x" * (LIMIT - 1))  # the app text RS + "x"*(N-1): N bytes
        assert await asyncio.wait_for(ws.recv(), 10) == RS + RS + "x" * (LIMIT - 1)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    ("ours", "ws_max_size", "above"),
    [
        (1_048_576, None, True),  # uvicorn's 16 MiB default
        (1_048_576, 1_048_577, False),
        (1_048_576, 1_048_576, False),
        (10, 4096, False),  # the floor kept for control frames is not "above"
        (10, 4097, True),
    ],
)
async def test_stats_say_when_plain_uvicorn_reads_more_than_max_message_size(
    uvicorn_server: Any, anyio_backend: str, ours: int, ws_max_size: int | None, above: bool
) -> None:
    """Under plain uvicorn the middleware reads uvicorn's `ws_max_size` (16 MiB unless set)
    off the connection, and stats say whether it is above what the sidecar would set."""
    settings = {} if ws_max_size is None else {"ws_max_size": ws_max_size}
    app = StabilizerMiddleware(make_app(), max_message_size=ours)
    server = uvicorn_server(app, **settings)
    async with connect(server.url("/echo"), ping_interval=None) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
    assert app.manager.stats()["limits"] == {
        "max_message_size": ours,
        "server_ws_max_size": ws_max_size or 16 * 1024 * 1024,
        "server_limit_above_ours": above,
    }


def test_ws_max_size_is_one_byte_over_our_limit_and_never_cuts_control_frames() -> None:
    """N + 1 for the RS escape and our own 1009; at least 4096 for control frames; None
    (uvicorn's default) when there is no limit."""
    assert cli.ws_max_size_for(1_048_576) == 1_048_577
    assert cli.ws_max_size_for(10) == 4096
    assert cli.ws_max_size_for(None) is None


def with_middleware(*args: Any, **kwargs: Any) -> Starlette:
    app = FastAPI()
    app.add_middleware(StabilizerMiddleware, *args, **kwargs)
    return app


@pytest.mark.parametrize(
    ("app", "size"),
    [
        (StabilizerMiddleware(make_app(), max_message_size=5000), 5000),
        (with_middleware(max_message_size=6000), 6000),
        (with_middleware(StabilizerConfig(max_message_size=7000)), 7000),
        (with_middleware(config=StabilizerConfig(max_message_size=None)), None),
        (with_middleware(), 1_048_576),
        (with_middleware(no_such_option=1), 1_048_576),  # its own error comes at startup
    ],
)
def test_the_sidecar_finds_the_max_message_size_of_an_already_wrapped_app(
    app: Any, size: int | None
) -> None:
    """An app that adds the middleware itself: its limit, built or only declared."""
    assert cli.max_message_size_of(app) == size

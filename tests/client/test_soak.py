"""Resume under faults: the Python client behind a proxy that resets every connection."""

from __future__ import annotations

from typing import Any

import pytest

from .soak import AnsweringApp, soak


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_resets_every_few_hundred_ms_lose_nothing(
    uvicorn_server: Any, anyio_backend: str
) -> None:
    """50 clients exchanging numbered messages while every connection is reset 50–500 ms after
    it opens: no resync, every message taken once and in order, every answer received once."""
    app = AnsweringApp()
    server = uvicorn_server(app.asgi())
    result = await soak(server.port, app, clients=50, seconds=10)
    assert result.resets >= 50, result.summary()  # the faults really happened
    assert result.sent > 0 and result.answered == result.sent, result.summary()
    assert (result.resyncs, result.lost, result.lost_answers) == (0, 0, 0), result.summary()
    assert (result.duplicated, result.out_of_order) == (0, 0), result.summary()

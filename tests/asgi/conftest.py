"""Fixtures for the ASGI tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from starlette.testclient import WebSocketTestSession

from .support import WAIT


@pytest.fixture(autouse=True)
def bounded_websocket_receive(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A TestClient `receive()` that fails after `WAIT` seconds instead of hanging forever, so a
    frame the middleware wrongly swallows fails the test instead of stalling the suite."""

    def receive(self: WebSocketTestSession) -> Any:
        async def bounded() -> Any:
            with anyio.fail_after(WAIT):
                return await self._send_rx.receive()

        return self.portal.call(bounded)

    monkeypatch.setattr(WebSocketTestSession, "receive", receive)
    yield

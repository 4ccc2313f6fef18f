"""Reconnecting, resuming WebSocket client for stabilized endpoints (extra ``client``).

``async with connect(url) as conn:`` gives a connection whose drops, reconnections, resumes,
resends and duplicate suppression are invisible to the caller, except for a `ResyncEvent` when
the server could not resume the session. The protocol logic lives in a sans-I/O core
(`stabilizer_asgi.client._protocol`) that this package drives with `websockets` on asyncio.
"""

from __future__ import annotations

from ._connection import (
    ClientClosedError,
    ClientOptions,
    ClientState,
    StabilizerConnection,
    connect,
)
from ._protocol import ResyncEvent

__all__ = [
    "ClientClosedError",
    "ClientOptions",
    "ClientState",
    "ResyncEvent",
    "StabilizerConnection",
    "connect",
]

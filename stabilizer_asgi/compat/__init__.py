"""`fastapi-websocket-stabilizer` 1.1.0's public API on this project's machinery.

Switch by changing one import::

    from stabilizer_asgi.compat import WebSocketConnectionManager, WebSocketConfig

then adopt `StabilizerMiddleware(app, manager=ws_manager.stabilizer)` and the native API at
your own pace. `docs/migration.md` maps every seed call and setting to the native one.
"""

from __future__ import annotations

from .config import (
    BroadcastResult,
    CompressionMode,
    MemoryEvictionPolicy,
    ShutdownReport,
    WebSocketConfig,
)
from .exceptions import (
    BroadcastFailedError,
    ConnectionLimitExceededError,
    ConnectionNotFoundError,
    ConnectionTimeoutError,
    InvalidTokenError,
    MemoryLimitExceededError,
    ShutdownError,
    TokenExpiredError,
    WebSocketStabilizerError,
)
from .logs import configure_logging, get_logger
from .manager import METADATA_KEY, WebSocketConnectionManager

__version__ = "1.1.0"

__all__ = [
    "METADATA_KEY",
    "BroadcastFailedError",
    "BroadcastResult",
    "CompressionMode",
    "ConnectionLimitExceededError",
    "ConnectionNotFoundError",
    "ConnectionTimeoutError",
    "InvalidTokenError",
    "MemoryEvictionPolicy",
    "MemoryLimitExceededError",
    "ShutdownError",
    "ShutdownReport",
    "TokenExpiredError",
    "WebSocketConfig",
    "WebSocketConnectionManager",
    "WebSocketStabilizerError",
    "configure_logging",
    "get_logger",
]

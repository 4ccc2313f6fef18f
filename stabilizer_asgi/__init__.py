"""stabilizer_asgi: WebSockets behind Starlette and FastAPI that survive production."""

from .asgi.middleware import StabilizerMiddleware
from .config import StabilizerConfig
from .core.session import Session, SessionState
from .exceptions import (
    ConfigError,
    ConnectionLimitExceededError,
    InvalidTokenError,
    MemoryLimitExceededError,
    SessionNotFoundError,
    StabilizerError,
    TokenExpiredError,
)
from .manager import BroadcastResult, ShutdownReport, Stabilizer

__version__ = "0.1.0"

__all__ = [
    "BroadcastResult",
    "ConfigError",
    "ConnectionLimitExceededError",
    "InvalidTokenError",
    "MemoryLimitExceededError",
    "Session",
    "SessionNotFoundError",
    "SessionState",
    "ShutdownReport",
    "Stabilizer",
    "StabilizerConfig",
    "StabilizerError",
    "StabilizerMiddleware",
    "TokenExpiredError",
    "__version__",
]

"""The seed's exception names, rooted in this project's error tree.

Each class keeps the seed's place (`WebSocketStabilizerError` at the top; `TokenExpiredError` is
not an `InvalidTokenError`, as in the seed) and is also the native error of the same meaning, so
`except stabilizer_asgi.MemoryLimitExceededError` catches the compat one too.
"""

from __future__ import annotations

from .. import exceptions as native


class WebSocketStabilizerError(native.StabilizerError):
    """Base of every error the compat API raises on purpose."""


class ConnectionNotFoundError(WebSocketStabilizerError):
    """No connection is registered under that client id (or the client id is empty)."""


class ConnectionLimitExceededError(WebSocketStabilizerError, native.ConnectionLimitExceededError):
    """`max_connections` is reached, or the manager is shutting down."""


class ConnectionTimeoutError(WebSocketStabilizerError):
    """A heartbeat timeout. Exported for the seed's imports; like the seed, nothing raises it:
    a dead connection is closed with 1011 and the endpoint's `receive` reports the disconnect."""


class TokenExpiredError(WebSocketStabilizerError, native.TokenExpiredError):
    """A reconnect token older than `reconnect_token_ttl`."""


class InvalidTokenError(WebSocketStabilizerError, native.InvalidTokenError):
    """A reconnect token that is malformed, tampered with, unknown or already used."""


class BroadcastFailedError(WebSocketStabilizerError):
    """A broadcast that reached recipients and failed for every one of them."""


class ShutdownError(WebSocketStabilizerError):
    """Exported for the seed's imports; like the seed, nothing raises it."""


class MemoryLimitExceededError(WebSocketStabilizerError, native.MemoryLimitExceededError):
    """Storing this would take a connection (or the process) over its memory limit."""


class ConfigTypeError(native.ConfigError, TypeError):
    """A configuration value of the wrong type: a `ConfigError` that is also the `TypeError`
    the seed raises for it."""

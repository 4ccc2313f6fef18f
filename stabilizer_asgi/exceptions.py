"""The error tree. Every error the library raises on purpose is a `StabilizerError`."""

from __future__ import annotations


class StabilizerError(Exception):
    """Base class of every error raised by stabilizer_asgi."""


class ConfigError(StabilizerError, ValueError):
    """An invalid configuration value.

    The message names the field, the value and what is allowed.
    """

    def __init__(self, field: str, value: object, allowed: str, *, message: str = "") -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(message or f"invalid value for {field!r}: {value!r} (allowed: {allowed})")


class SessionNotFoundError(StabilizerError, KeyError):
    """No session with that id is known to this process."""

    def __str__(self) -> str:
        return f"no such session: {self.args[0]!r}" if self.args else "no such session"


class ConnectionLimitExceededError(StabilizerError):
    """A connection limit (`max_connections`, `max_connections_per_ip`) is reached."""


class MemoryLimitExceededError(StabilizerError):
    """Storing this would take a session (or the process) over its memory limit."""


class InvalidTokenError(StabilizerError):
    """A reconnect token that is malformed, tampered with, signed by an unknown key or reused."""


class TokenExpiredError(InvalidTokenError):
    """A reconnect token whose session is no longer resumable (its resume window has passed)."""

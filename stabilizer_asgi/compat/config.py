"""`WebSocketConfig` and the seed's result types, and how each seed setting maps to ours."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any

from ..config import StabilizerConfig
from ..exceptions import ConfigError
from .exceptions import ConfigTypeError

# The seed's heartbeat frame was `{"type": "ping", "timestamp": <now>}`; the native heartbeat
# sends one fixed text, so the timestamp is gone. Clients answer "pong", as before.
SEED_PING_TEXT = '{"type":"ping"}'
SEED_PONG_TEXT = "pong"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Admin routes a seed app gets only with `enable_metrics=True` (those this version has).
METRICS_PATHS = ("stats_path", "metrics_path", "dashboard_path")


class CompressionMode(str, Enum):
    """permessage-deflate on or off. The server negotiates it, not the app: see `compression`."""

    DEFLATE = "deflate"
    NONE = "none"


class MemoryEvictionPolicy(str, Enum):
    """Which connections make room when `max_total_memory` is reached."""

    LRU = "lru"
    FIFO = "fifo"
    OLDEST = "oldest"


@dataclass
class WebSocketConfig:
    """The seed's settings, same names and defaults; `docs/migration.md` says where each goes.

    Rejected values raise what the seed raises (`ValueError`, or `TypeError` for a wrong type),
    as a `ConfigError` naming the field, the value and what is allowed. Values the seed took
    and ignored (`heartbeat_type`, `compression`) are checked here too.
    """

    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 60.0
    heartbeat_type: str = "ping"
    max_connections: int | None = None
    max_message_size: int = 1024 * 1024
    reconnect_token_ttl: timedelta = field(default_factory=lambda: timedelta(hours=1))
    enable_reconnect: bool = True
    compression: CompressionMode = CompressionMode.DEFLATE
    log_level: str = "INFO"
    enable_metrics: bool = False
    num_shards: int = 16
    max_concurrent_cleanup: int = 100
    max_concurrent_broadcast: int = 1000
    memory_check_interval: float = 60.0
    memory_eviction_policy: MemoryEvictionPolicy = MemoryEvictionPolicy.LRU
    max_memory_per_connection: int | None = None
    max_total_memory: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (in the seed's order, so the first bad one is the one reported);
        the manager calls it again, since a dataclass can be changed after construction."""
        _seconds(self, "heartbeat_interval")
        _seconds(self, "heartbeat_timeout")
        _count(self, "max_connections", optional=True, seed="must be positive or None")
        _count(self, "max_message_size")
        ttl = self.reconnect_token_ttl
        if not isinstance(ttl, timedelta):
            _refuse("reconnect_token_ttl", ttl, "a datetime.timedelta", "must be a timedelta", True)
        if ttl.total_seconds() <= 0:
            _refuse("reconnect_token_ttl", ttl, "a timedelta > 0", "must be positive")
        if self.log_level not in LOG_LEVELS:
            _refuse(
                "log_level", self.log_level, ", ".join(LOG_LEVELS), "must be a valid logging level"
            )
        _count(self, "num_shards", maximum=65536)
        _count(self, "max_concurrent_cleanup")
        _count(self, "max_concurrent_broadcast")
        _seconds(self, "memory_check_interval")
        self.memory_eviction_policy = _enum(
            MemoryEvictionPolicy, "memory_eviction_policy", self.memory_eviction_policy
        )
        _count(self, "max_memory_per_connection", optional=True)
        _count(self, "max_total_memory", optional=True)
        if self.heartbeat_type not in ("ping", "custom"):
            _refuse("heartbeat_type", self.heartbeat_type, "'ping' or 'custom'", "is not supported")
        self.compression = _enum(CompressionMode, "compression", self.compression)
        for name in ("enable_reconnect", "enable_metrics"):
            if not isinstance(getattr(self, name), bool):
                _refuse(name, getattr(self, name), "True or False", "must be a bool", True)

    def native_options(self) -> dict[str, Any]:
        """The `StabilizerConfig` keyword arguments these settings stand for."""
        native: dict[str, Any] = {
            # "ping": the middleware pings plain clients with SEED_PING_TEXT and swallows their
            # "pong"; "custom": the app runs its own heartbeat, the middleware pings no plain
            # client (opted-in clients keep the wire protocol's heartbeat).
            "heartbeat": "always" if self.heartbeat_type == "ping" else "auto",
            "heartbeat_interval": float(self.heartbeat_interval),
            "heartbeat_timeout": float(self.heartbeat_timeout),
            "ping_text": SEED_PING_TEXT,
            "pong_text": SEED_PONG_TEXT,
            "max_connections": self.max_connections,
            "max_message_size": self.max_message_size,
            "num_shards": self.num_shards,
            "max_memory_per_session": self.max_memory_per_connection,
            "max_total_memory": self.max_total_memory,
            "eviction": self.memory_eviction_policy.value,
        }
        if not self.enable_reconnect:
            native["resume_window"] = 0.0
        if not self.enable_metrics:
            known = {f.name for f in dataclasses.fields(StabilizerConfig)}
            native.update({name: None for name in METRICS_PATHS if name in known})
        return native


@dataclass
class BroadcastResult:
    """What a broadcast did. `total` counts every registered connection, the excluded one
    included (as the seed did); `errors` lists `(client_id, error)` for transport failures seen
    during the call."""

    total: int
    succeeded: int
    failed: int
    errors: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ShutdownReport:
    """What `graceful_shutdown` did: connections closed, closes that failed, seconds taken."""

    closed_count: int
    failed_count: int
    duration_seconds: float


def _refuse(name: str, value: object, allowed: str, seed: str, wrong_type: bool = False) -> None:
    """Raise a `ConfigError` (a `ValueError`; also a `TypeError` when the seed raised that)
    whose message starts with the seed's own ("num_shards must be positive: ...")."""
    exc = (ConfigTypeError if wrong_type else ConfigError)(name, value, allowed)
    exc.args = (f"{name} {seed}: {exc.args[0]}",)
    raise exc


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _seconds(config: WebSocketConfig, name: str) -> None:
    value = getattr(config, name)
    if not _is_number(value):
        _refuse(name, value, "a finite number of seconds > 0", "must be positive", True)
    if not math.isfinite(value) or value <= 0:
        _refuse(name, value, "a finite number of seconds > 0", "must be positive")


def _count(
    config: WebSocketConfig,
    name: str,
    *,
    optional: bool = False,
    maximum: int | None = None,
    seed: str = "must be positive",
) -> None:
    value = getattr(config, name)
    if value is None and optional:
        return
    allowed = ("None or " if optional else "") + "an int >= 1"
    if maximum is not None:
        allowed += f" and <= {maximum}"
    if not isinstance(value, int) or isinstance(value, bool):
        _refuse(name, value, allowed, seed, True)
    if value <= 0 or (maximum is not None and value > maximum):
        _refuse(name, value, allowed, seed)


def _enum(kind: type[Enum], name: str, value: object) -> Any:
    """The member of `kind` for `value` (a member, or its value in any case, as the seed took)."""
    if isinstance(value, kind):
        return value
    allowed = [member.value for member in kind]
    if isinstance(value, str):
        try:
            return kind(value.lower())
        except ValueError:
            pass
    _refuse(name, value, " or ".join(repr(a) for a in allowed), f"must be one of: {allowed}")

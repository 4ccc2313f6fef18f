"""`StabilizerConfig`: every setting, validated once at construction."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .backends import BACKEND_MEMBERS, check_backend
from .exceptions import ConfigError

__all__ = ["BACKEND_MEMBERS", "StabilizerConfig"]

if TYPE_CHECKING:
    from .core.session import Session
    from .types import Scope

Hook = Callable[["Session"], Awaitable[None]]
HeartbeatMode = Literal["auto", "always", "off"]
SlowConsumerPolicy = Literal["close", "drop"]
EvictionPolicy = Literal["lru", "fifo", "oldest"]
DuplicatePolicy = Literal["allow", "replace", "reject"]
Secret = str | bytes | Sequence[str | bytes]

MIB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class StabilizerConfig:
    """All settings of the middleware. Invalid values raise `ConfigError` naming the field."""

    heartbeat: HeartbeatMode = "auto"
    heartbeat_interval: float = 25.0
    heartbeat_timeout: float = 10.0
    ping_text: str = "ping"
    pong_text: str = "pong"
    max_connections: int | None = None
    max_connections_per_ip: int | None = None
    max_message_size: int | None = MIB
    rate_limit: tuple[float, int] | None = None
    num_shards: int = 16
    max_queue_messages: int = 1024
    max_queue_bytes: int = 4 * MIB
    max_read_ahead: int = 16
    slow_consumer: SlowConsumerPolicy = "close"
    close_timeout: float = 5.0
    max_memory_per_session: int | None = None
    max_total_memory: int | None = None
    eviction: EvictionPolicy = "lru"
    client_id: Callable[[Scope], str | None] | None = None
    duplicate_client: DuplicatePolicy = "allow"
    resume_window: float = 120.0
    replay_buffer_messages: int = 1000
    replay_buffer_bytes: int = MIB
    secret: Secret | None = field(default=None, repr=False)
    stats_path: str | None = "/_stabilizer/stats"
    health_path: str | None = "/_stabilizer/health"
    drain_path: str | None = "/_stabilizer/drain"
    client_js_path: str | None = "/_stabilizer/client.js"
    metrics_path: str | None = "/_stabilizer/metrics"
    dashboard_path: str | None = "/_stabilizer/"
    admin_token: str | None = field(default=None, repr=False)
    drain_period: float = 10.0
    retry_after: int = 5
    on_connect: Hook | None = None
    on_disconnect: Hook | None = None
    on_timeout: Hook | None = None
    on_resume: Hook | None = None
    backend: Any = "memory"
    cluster_name: str = "stabilizer"
    probe_interval: float = 10.0
    cluster_timeout: float = 5.0
    cluster_outbox_messages: int = 10_000
    cluster_outbox_bytes: int = 16 * MIB
    cluster_history: int = 10_000
    cluster_connections: int = 32
    otel: bool = False

    def __post_init__(self) -> None:
        _choice("heartbeat", self.heartbeat, ("auto", "always", "off"))
        _positive_float("heartbeat_interval", self.heartbeat_interval)
        _positive_float("heartbeat_timeout", self.heartbeat_timeout)
        for name in ("ping_text", "pong_text"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or value.startswith("\x1e"):
                raise ConfigError(name, value, "a non-empty str that does not start with U+001E")
        if self.ping_text == self.pong_text:
            raise ConfigError("pong_text", self.pong_text, "a str different from ping_text")
        _optional_int("max_connections", self.max_connections, 1)
        _optional_int("max_connections_per_ip", self.max_connections_per_ip, 1)
        _optional_int("max_message_size", self.max_message_size, 1)
        if self.rate_limit is not None:
            rl = self.rate_limit
            ok = (
                isinstance(rl, tuple | list)
                and len(rl) == 2
                and _is_number(rl[0])
                and rl[0] > 0
                and math.isfinite(rl[0])
                and _is_int(rl[1])
                and rl[1] >= 1
            )
            if not ok:
                raise ConfigError("rate_limit", rl, "None or (messages_per_second > 0, burst >= 1)")
            object.__setattr__(self, "rate_limit", (float(rl[0]), int(rl[1])))
        _int("num_shards", self.num_shards, 1, 65536)
        _int("max_queue_messages", self.max_queue_messages, 1)
        _int("max_queue_bytes", self.max_queue_bytes, 1)
        _int("max_read_ahead", self.max_read_ahead, 1)
        _choice("slow_consumer", self.slow_consumer, ("close", "drop"))
        _positive_float("close_timeout", self.close_timeout)
        _optional_int("max_memory_per_session", self.max_memory_per_session, 1)
        _optional_int("max_total_memory", self.max_total_memory, 1)
        _choice("eviction", self.eviction, ("lru", "fifo", "oldest"))
        if self.client_id is not None and not callable(self.client_id):
            raise ConfigError(
                "client_id", self.client_id, "None or a callable (scope) -> str | None"
            )
        _choice("duplicate_client", self.duplicate_client, ("allow", "replace", "reject"))
        _non_negative_float("resume_window", self.resume_window)
        _int("replay_buffer_messages", self.replay_buffer_messages, 0)
        _int("replay_buffer_bytes", self.replay_buffer_bytes, 0)
        _validate_secret(self.secret)
        for name in (
            "stats_path",
            "health_path",
            "drain_path",
            "client_js_path",
            "metrics_path",
            "dashboard_path",
        ):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, str) or not value.startswith("/") or "?" in value
            ):
                raise ConfigError(name, value, "None or a path starting with '/' (no query)")
        if self.admin_token is not None and (
            not isinstance(self.admin_token, str) or not self.admin_token.strip()
        ):
            raise ConfigError("admin_token", "<redacted>", "None or a non-empty str")
        _non_negative_float("drain_period", self.drain_period)
        _int("retry_after", self.retry_after, 0)
        for name in ("on_connect", "on_disconnect", "on_timeout", "on_resume"):
            hook = getattr(self, name)
            if hook is not None and not (
                inspect.iscoroutinefunction(hook)
                or inspect.iscoroutinefunction(getattr(hook, "__call__", None))  # noqa: B004
            ):
                raise ConfigError(name, hook, "None or an async callable (session) -> None")
        if not isinstance(self.otel, bool):
            raise ConfigError("otel", self.otel, "True or False")
        url_backend = check_backend(self.backend)  # the check create_backend makes
        name = self.cluster_name
        if (
            not isinstance(name, str)
            or not name
            or len(name) > 64
            or any(c.isspace() or c == ":" for c in name)
        ):
            raise ConfigError(
                "cluster_name", name, "a non-empty str of at most 64 characters, no space or ':'"
            )
        _positive_float("probe_interval", self.probe_interval)
        _positive_float("cluster_timeout", self.cluster_timeout)
        _int("cluster_outbox_messages", self.cluster_outbox_messages, 1)
        _int("cluster_outbox_bytes", self.cluster_outbox_bytes, 1)
        _int("cluster_history", self.cluster_history, 1)
        _int("cluster_connections", self.cluster_connections, 1)
        if url_backend is not None and self.secret is None:
            # Every node must verify the tokens the others sign: a key generated per process
            # cannot be shared across machines.
            raise ConfigError(
                "secret", None, "a shared secret (str/bytes) with a cluster backend (redis://)"
            )

    @classmethod
    def from_kwargs(cls, config: StabilizerConfig | None = None, **kwargs: Any) -> StabilizerConfig:
        """Build a config from an optional base config plus keyword overrides."""
        if config is not None and not isinstance(config, StabilizerConfig):
            raise ConfigError("config", config, "None or a StabilizerConfig")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in kwargs:
            if key not in names:
                known = ", ".join(sorted(names))
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                # The value is not echoed: a misspelt `secret` or `admin_token` is a secret.
                raise ConfigError(
                    key,
                    kwargs[key],
                    "a known option: " + known,
                    message=f"unknown option {key!r}{hint} (known options: {known})",
                )
        if config is None:
            return cls(**kwargs)
        return dataclasses.replace(config, **kwargs) if kwargs else config

    def public(self) -> dict[str, Any]:
        """The effective settings without secrets, for the stats document."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("secret", "admin_token"):
                value = None if value is None else "<set>"
            elif callable(value):
                value = getattr(value, "__qualname__", type(value).__name__)
            elif f.name == "backend" and not isinstance(value, str):
                value = type(value).__name__
            elif f.name == "backend" and isinstance(value, str) and "@" in value:
                scheme, _, rest = value.partition("://")
                value = f"{scheme}://<redacted>@{rest.rpartition('@')[2]}"
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, value, " or ".join(repr(a) for a in allowed))


def _positive_float(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type,operator]
        raise ConfigError(name, value, "a finite number of seconds > 0")


def _non_negative_float(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value) or value < 0:  # type: ignore[arg-type,operator]
        raise ConfigError(name, value, "a finite number of seconds >= 0")


def _int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):  # type: ignore[operator]
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(name, value, f"an int {bound}")


def _optional_int(name: str, value: object, minimum: int) -> None:
    if value is not None and (not _is_int(value) or value < minimum):  # type: ignore[operator]
        raise ConfigError(name, value, f"None or an int >= {minimum}")


def _validate_secret(secret: object) -> None:
    if secret is None:
        return
    if isinstance(secret, str | bytes):
        if not secret:
            raise ConfigError(
                "secret", "<empty>", "None, a non-empty str/bytes or a sequence of them"
            )
        return
    if isinstance(secret, Sequence | Mapping) and not isinstance(secret, Mapping):
        keys = list(secret)
        if keys and all(isinstance(k, str | bytes) and k for k in keys):
            return
    raise ConfigError(
        "secret", f"<{type(secret).__name__}>", "None, a non-empty str/bytes or a sequence of them"
    )

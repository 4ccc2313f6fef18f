"""The cluster seam (`base`) and its implementations.

The `backend` setting is "memory" (`MemoryBackend` on a hub of its own: a cluster of one node,
in this process), a URL whose scheme is listed in `URL_BACKENDS` together with the extra that
provides it (redis://, rediss://, unix:// → `RedisBackend`, extra `[redis]`, imported only
then), or a backend object used as is. `check_backend` is the one check both
`StabilizerConfig` (at construction) and `create_backend` rely on, so a setting the config
accepts is one the manager can use. Every backend passes `tests/backends/contract.py`.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, NamedTuple

from ..exceptions import ConfigError
from .base import (
    Backend,
    BackendStatus,
    Broker,
    Command,
    Handover,
    Node,
    NodeInfo,
    Parcel,
    ParkRequest,
    Payload,
    Presence,
    Publication,
    SessionStore,
    Whereabouts,
)
from .memory import MemoryBackend, MemoryHub

if TYPE_CHECKING:
    from ..config import StabilizerConfig

__all__ = [
    "BACKEND_MEMBERS",
    "URL_BACKENDS",
    "Backend",
    "BackendStatus",
    "Broker",
    "Command",
    "Handover",
    "MemoryBackend",
    "MemoryHub",
    "Node",
    "NodeInfo",
    "Parcel",
    "ParkRequest",
    "Payload",
    "Presence",
    "Publication",
    "SessionStore",
    "UrlBackend",
    "Whereabouts",
    "check_backend",
    "create_backend",
]

BACKEND_MEMBERS = ("node_id", "broker", "presence", "store", "run", "stop", "status")
"""What a backend object must provide (`base.Backend`), checked at config time."""


class UrlBackend(NamedTuple):
    """A backend chosen by URL scheme: the extra that installs what it needs, the module that
    must be importable, and the `module:Class` built with the URL and the cluster settings."""

    extra: str
    requires: str
    factory: str


_REDIS = UrlBackend("redis", "redis", "stabilizer_asgi.backends.redis:RedisBackend")
URL_BACKENDS: dict[str, UrlBackend] = {"redis": _REDIS, "rediss": _REDIS, "unix": _REDIS}
"""URL scheme → the backend it selects."""


def _scheme(url: str) -> str:
    # Never echo the whole URL: it may carry a password.
    return url.split("://", 1)[0].lower() if "://" in url else url[:32]


def _allowed() -> str:
    schemes = " or ".join(f"{scheme}://" for scheme in sorted(URL_BACKENDS))
    return f"'memory', a {schemes} URL, or a backend object"


def check_backend(spec: object) -> UrlBackend | None:
    """Raise `ConfigError` unless `spec` is a backend this installation can use; for a URL,
    the `UrlBackend` its scheme selects."""
    if spec == "memory":
        return None
    if isinstance(spec, str):
        if "://" not in spec:
            raise ConfigError("backend", _scheme(spec), _allowed())
        scheme = _scheme(spec)
        known = URL_BACKENDS.get(scheme)
        if known is None:
            raise ConfigError("backend", f"{scheme}://...", _allowed())
        if importlib.util.find_spec(known.requires) is None:
            raise ConfigError(
                "backend",
                f"{scheme}://...",
                f"a {scheme}:// URL needs the [{known.extra}] extra: "
                f"pip install 'stabilizer-asgi[{known.extra}]'",
            )
        return known
    missing = [name for name in BACKEND_MEMBERS if not hasattr(spec, name)]
    if missing:
        raise ConfigError(
            "backend", spec, f"{_allowed()} (a backend object lacks {', '.join(missing)})"
        )
    return None


def create_backend(config: StabilizerConfig) -> Backend:
    """The backend the `backend` setting names, built with the cluster settings."""
    spec = config.backend
    url_backend = check_backend(spec)
    if spec == "memory":
        return MemoryBackend(timeout=config.cluster_timeout)
    if url_backend is not None:
        module, _, name = url_backend.factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
        backend: Backend = factory(
            spec,
            cluster_name=config.cluster_name,
            probe_interval=config.probe_interval,
            timeout=config.cluster_timeout,
            max_outbox_messages=config.cluster_outbox_messages,
            max_outbox_bytes=config.cluster_outbox_bytes,
            history_messages=config.cluster_history,
            max_connections=config.cluster_connections,
        )
        return backend
    if not isinstance(spec, Backend):
        raise ConfigError("backend", spec, "an object implementing backends.base.Backend")
    return spec

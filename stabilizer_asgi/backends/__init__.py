"""Where broadcasts travel and where resumable sessions are recorded.

`Backend` is the interface; `MemoryBackend` the single-process default. A multi-instance
backend (Redis) implements the same protocol and must pass `tests/backends/contract.py`.

The `backend` setting is "memory", a backend object, or a URL whose scheme is listed in
`URL_BACKENDS` together with the extra that provides it. `check_backend` is the one check that
both `StabilizerConfig` (at construction) and `create_backend` rely on, so a setting the config
accepts is one the manager can use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import NamedTuple

from ..exceptions import ConfigError
from ._legacy import Backend, Deliver, Envelope, SessionRecord
from ._legacy import MemoryBackend as LegacyMemoryBackend
from .base import Backend as ClusterBackend
from .base import (
    BackendStatus,
    Broker,
    Command,
    Node,
    NodeInfo,
    Payload,
    Presence,
    Publication,
    SessionStore,
)
from .memory import MemoryBackend, MemoryHub

__all__ = [
    "URL_BACKENDS",
    "Backend",
    "BackendStatus",
    "Broker",
    "ClusterBackend",
    "Command",
    "Deliver",
    "Envelope",
    "LegacyMemoryBackend",
    "MemoryBackend",
    "MemoryHub",
    "Node",
    "NodeInfo",
    "Payload",
    "Presence",
    "Publication",
    "SessionRecord",
    "SessionStore",
    "UrlBackend",
    "check_backend",
    "create_backend",
]

BACKEND_METHODS = ("start", "stop", "publish", "save_session", "load_session", "delete_session")
"""What a backend object must provide (`Backend`), checked at config time."""


class UrlBackend(NamedTuple):
    """A backend chosen by URL scheme: the extra that installs what it needs, the module that
    must be importable, and the `module:Class` built with the URL."""

    extra: str
    requires: str
    factory: str


URL_BACKENDS: dict[str, UrlBackend] = {}
"""URL scheme → the backend it selects. Empty in this release: a Redis backend registers
`redis` and `rediss` here (extra `redis`)."""


def _scheme(url: str) -> str:
    # Never echo the whole URL: it may carry a password.
    return url.split("://", 1)[0].lower() if "://" in url else url[:32]


def _allowed() -> str:
    schemes = " or ".join(f"{scheme}://" for scheme in sorted(URL_BACKENDS))
    return "'memory', " + (f"a {schemes} URL, " if schemes else "") + "or a backend object"


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
    if not all(callable(getattr(spec, method, None)) for method in BACKEND_METHODS):
        raise ConfigError(
            "backend",
            spec,
            f"{_allowed()} with methods {', '.join(BACKEND_METHODS)}",
        )
    return None


def create_backend(spec: object) -> Backend:
    """The backend the `backend` setting names: "memory", a URL backend, or the object as is."""
    url_backend = check_backend(spec)
    if spec == "memory":
        return LegacyMemoryBackend()
    if url_backend is not None:
        module, _, name = url_backend.factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
        backend: Backend = factory(spec)
        return backend
    if not isinstance(spec, Backend):
        raise ConfigError(
            "backend", spec, "an object implementing stabilizer_asgi.backends.Backend"
        )
    return spec

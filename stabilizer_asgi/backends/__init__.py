"""Where broadcasts travel and where resumable sessions are recorded.

`Backend` is the interface; `MemoryBackend` the single-process default. A multi-instance
backend (Redis) implements the same protocol and must pass `tests/backends/contract.py`.
"""

from ..exceptions import ConfigError
from .base import Backend, Deliver, Envelope, SessionRecord
from .memory import MemoryBackend

__all__ = ["Backend", "Deliver", "Envelope", "MemoryBackend", "SessionRecord", "create_backend"]


def create_backend(spec: object) -> Backend:
    """The backend the `backend` setting names: "memory", or a backend object as is."""
    if spec == "memory":
        return MemoryBackend()
    if isinstance(spec, str):
        scheme = spec.split("://", 1)[0] + "://"
        raise ConfigError(
            "backend", scheme, "'memory' or a backend object (no Redis backend in this release)"
        )
    if not isinstance(spec, Backend):
        raise ConfigError(
            "backend", spec, "an object implementing stabilizer_asgi.backends.Backend"
        )
    return spec

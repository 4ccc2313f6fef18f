"""The backend protocol: broadcast fan-out and the record of resumable sessions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Envelope:
    """One broadcast: the encoded frame, its target group (None = all) and exclusions."""

    frame: dict[str, Any]
    size: int
    group: str | None = None
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What another instance needs to know about a detached, resumable session."""

    session_id: str
    client_id: str | None
    groups: frozenset[str]
    generation: int
    detached_at: float  # epoch seconds


# Delivers an envelope to this instance's sessions; returns (total, delivered, dropped, failed).
Deliver = Callable[[Envelope], tuple[int, int, int, int]]


@runtime_checkable
class Backend(Protocol):
    """What the manager needs from a backend. Every method is safe to call concurrently.

    `publish` must deliver to this instance's sessions before it returns (through the `deliver`
    callback given to `start`) and return those counts; a distributed backend also forwards the
    envelope to every other instance, which deliver it with their own callbacks.
    Session records expire by themselves `ttl` seconds after they are saved.
    """

    async def start(self, deliver: Deliver) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, envelope: Envelope) -> Awaitable[tuple[int, int, int, int]]: ...

    async def save_session(self, record: SessionRecord, ttl: float) -> None: ...

    async def load_session(self, session_id: str) -> SessionRecord | None: ...

    async def delete_session(self, session_id: str) -> None: ...

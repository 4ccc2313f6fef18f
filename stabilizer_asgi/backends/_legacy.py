"""The single-process backend protocol the manager still uses (replaced by `base` when the
manager is wired to the cluster seam)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Generator
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


class _Ready:
    """An already-finished awaitable: local fan-out costs no task and no suspension."""

    __slots__ = ("value",)

    def __init__(self, value: tuple[int, int, int, int]) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, tuple[int, int, int, int]]:
        return self.value
        yield  # pragma: no cover - makes this a generator


class MemoryBackend:
    """Broadcasts go straight to this process's sessions; records live in a dict with TTLs.

    Records are bounded by the sessions that exist: the manager saves one per detached session
    and deletes it when the session resumes or ends; expired ones are dropped when read.
    """

    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._records: dict[str, tuple[SessionRecord, float]] = {}

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        self._deliver = None

    def publish(self, envelope: Envelope) -> _Ready:
        deliver = self._deliver
        if deliver is None:
            raise RuntimeError("backend not started")
        return _Ready(deliver(envelope))

    async def save_session(self, record: SessionRecord, ttl: float) -> None:
        self._records[record.session_id] = (record, time.monotonic() + ttl)

    async def load_session(self, session_id: str) -> SessionRecord | None:
        entry = self._records.get(session_id)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._records[session_id]
            return None
        return entry[0]

    async def delete_session(self, session_id: str) -> None:
        self._records.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._records)

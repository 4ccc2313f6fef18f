"""The in-memory backend: one process, no I/O; the default."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

from .base import Deliver, Envelope, SessionRecord


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

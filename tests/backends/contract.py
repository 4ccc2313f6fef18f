"""The backend contract: every backend's test module subclasses `BackendContract`.

A subclass provides the `backend` fixture (a fresh, not yet started backend). The tests run on
asyncio and trio and use only the public `Backend` protocol.
"""

from __future__ import annotations

from typing import ClassVar

import anyio
import pytest

from stabilizer_asgi.backends import Backend, Envelope, SessionRecord


def record(sid: str = "s1", generation: int = 0) -> SessionRecord:
    return SessionRecord(sid, "client-1", frozenset({"room"}), generation, 1_700_000_000.0)


class BackendContract:
    """Behaviour every backend must have."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    async def test_is_a_backend(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)

    async def test_publish_delivers_locally_and_returns_counts(self, backend: Backend) -> None:
        seen: list[Envelope] = []

        def deliver(envelope: Envelope) -> tuple[int, int, int, int]:
            seen.append(envelope)
            return (3, 2, 1, 0)

        await backend.start(deliver)
        try:
            env = Envelope({"type": "websocket.send", "text": "hi"}, 2, "room", frozenset({"x"}))
            assert await backend.publish(env) == (3, 2, 1, 0)
            assert seen == [env]
        finally:
            await backend.stop()

    async def test_publish_preserves_order(self, backend: Backend) -> None:
        seen: list[str] = []

        def deliver(envelope: Envelope) -> tuple[int, int, int, int]:
            seen.append(envelope.frame["text"])
            return (1, 1, 0, 0)

        await backend.start(deliver)
        try:
            for i in range(100):
                await backend.publish(Envelope({"type": "websocket.send", "text": str(i)}, 1))
            assert seen == [str(i) for i in range(100)]
        finally:
            await backend.stop()

    async def test_session_records_round_trip(self, backend: Backend) -> None:
        await backend.start(lambda env: (0, 0, 0, 0))
        try:
            assert await backend.load_session("s1") is None
            await backend.save_session(record(), ttl=60)
            assert await backend.load_session("s1") == record()
            await backend.save_session(record(generation=1), ttl=60)  # overwrite
            loaded = await backend.load_session("s1")
            assert loaded is not None and loaded.generation == 1
            await backend.delete_session("s1")
            assert await backend.load_session("s1") is None
            await backend.delete_session("s1")  # deleting twice is harmless
        finally:
            await backend.stop()

    async def test_records_expire(self, backend: Backend) -> None:
        await backend.start(lambda env: (0, 0, 0, 0))
        try:
            await backend.save_session(record("short"), ttl=0.05)
            await backend.save_session(record("long"), ttl=60)
            await anyio.sleep(0.1)
            assert await backend.load_session("short") is None
            assert await backend.load_session("long") is not None
        finally:
            await backend.stop()

    async def test_records_are_isolated(self, backend: Backend) -> None:
        await backend.start(lambda env: (0, 0, 0, 0))
        try:
            await backend.save_session(record("a"), ttl=60)
            await backend.save_session(record("b"), ttl=60)
            await backend.delete_session("a")
            assert await backend.load_session("a") is None
            loaded = await backend.load_session("b")
            assert loaded is not None and loaded.session_id == "b"
        finally:
            await backend.stop()

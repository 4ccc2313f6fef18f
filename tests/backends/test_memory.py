"""The in-memory hub against the cluster contract: managers in one process form a cluster."""

from __future__ import annotations

import pytest

from stabilizer_asgi.backends import MemoryBackend, MemoryHub

from .contract import ClusterContract, NewBackend


class TestMemoryHub(ClusterContract):
    @pytest.fixture
    def new_backend(self) -> NewBackend:
        hub = MemoryHub()
        return lambda: MemoryBackend(hub)

"""The in-memory backend against the backend contract, and through the manager."""

from __future__ import annotations

import pytest

from stabilizer_asgi import ConfigError, Stabilizer
from stabilizer_asgi.backends import MemoryBackend

from .contract import BackendContract


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    def backend(self) -> MemoryBackend:
        return MemoryBackend()


def test_manager_uses_a_backend_object_it_is_given() -> None:
    backend = MemoryBackend()
    assert Stabilizer(backend=backend).backend is backend


@pytest.mark.parametrize("spec", ["redis://localhost:6379/0", object()])
def test_unavailable_backends_are_config_errors(spec: object) -> None:
    with pytest.raises(ConfigError) as info:
        Stabilizer(backend=spec)
    assert "backend" in str(info.value)

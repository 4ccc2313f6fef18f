"""Fixtures of the compat tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _library_log_level() -> Iterator[None]:
    """Each compat manager sets the library logger's level (`log_level`): undo it after."""
    log = logging.getLogger("stabilizer_asgi")
    level = log.level
    yield
    log.setLevel(level)

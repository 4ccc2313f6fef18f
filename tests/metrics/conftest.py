"""Fixtures of the metrics tests: a headless Chromium page, and where screenshots go."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.client.test_browser import chromium_page


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    """A 1280x900 page in a fresh headless Chromium profile; fails the test on any uncaught
    page error."""
    async with chromium_page(tmp_path, viewport={"width": 1280, "height": 900}) as page:
        yield page


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Any, str], Any]:
    """Save a full-page screenshot; also into $STABILIZER_SCREENSHOTS when set (to look at)."""

    def keep(path: Path) -> None:
        out = os.environ.get("STABILIZER_SCREENSHOTS")
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(out) / path.name)

    async def take(page: Any, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        await anyio.to_thread.run_sync(keep, path)
        return path

    return take

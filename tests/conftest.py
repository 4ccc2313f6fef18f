"""Shared fixtures: both anyio backends, TestClient factory, a real uvicorn server."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import settings
from starlette.testclient import TestClient

# Property tests check what is accepted, not how fast: no per-example deadline, which a loaded
# 2-core machine can exceed (one example took 458 ms against hypothesis' default 200 ms).
settings.register_profile("stabilizer", deadline=None)
settings.load_profile("stabilizer")

# One time unit for timing-based tests, scaled by an environment variable (as websockets does)
# so a slow machine can stretch every interval without editing tests.
MS = 0.001 * float(os.environ.get("STABILIZER_TESTS_TIMEOUT_FACTOR", "1"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client_factory(anyio_backend: str) -> Callable[..., TestClient]:
    def make(app: Any, **kwargs: Any) -> TestClient:
        return TestClient(app, backend=anyio_backend, **kwargs)

    return make


class UvicornThread:
    """A real uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        import uvicorn

        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "auto")
        self.config = uvicorn.Config(app, host="127.0.0.1", port=0, **config)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.port = 0

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def uvicorn_server() -> Iterator[Callable[..., UvicornThread]]:
    started: list[UvicornThread] = []

    def start(app: Any, **config: Any) -> UvicornThread:
        server = UvicornThread(app, **config).__enter__()
        started.append(server)
        return server

    yield start
    for server in started:
        with contextlib.suppress(Exception):
            server.__exit__(None, None, None)


def require_tool(name: str) -> str:
    """Path of an external tool; a missing one fails the test (`make tools` installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required but not installed: run `make tools`")
    return path


@pytest.fixture
def redis_server() -> Iterator[Any]:
    """A real redis-server on a free port, no persistence, stopped by pid afterwards."""
    from .redis_support import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()

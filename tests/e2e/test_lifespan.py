"""Lifespan under real uvicorn: wrapped apps behave exactly as bare ones; bad config stops it.

Each scenario runs the bare app and the wrapped app through `uvicorn.Server.run()` (its own
`asyncio.run`, so a lifespan call left running at exit is cancelled and logged as it would be in
production), with `--lifespan on` and `auto`, and compares what uvicorn logs and decides.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.backends import MemoryBackend
from stabilizer_asgi.types import ASGIApp, Receive, Scope, Send

SECRET = "lifespan-tests-secret-0123456789abcdef"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Run:
    """What uvicorn did with an app: whether it served, its lifespan verdict, what it logged."""

    started: bool
    exit_status: int | None
    flags: dict[str, bool]
    log: list[tuple[str, str, str]]
    status: int | None


def run_uvicorn(app: ASGIApp, lifespan: str, *, request: bool = False) -> Run:
    """Start uvicorn on a free port, optionally GET / once, then stop it; what it did."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan=lifespan, log_config=None, log_level="info"
    )
    server = uvicorn.Server(config)
    handler = _Records()
    uv = logging.getLogger("uvicorn")
    old_level = uv.level
    uv.addHandler(handler)
    uv.setLevel(logging.INFO)
    status = None
    exits: list[int | None] = []

    def serve() -> None:
        try:
            server.run()
        except SystemExit as exc:  # uvicorn's startup failure
            exits.append(exc.code if isinstance(exc.code, int) else None)
        else:
            exits.append(None)

    try:
        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if server.started and request:
            port = server.servers[0].sockets[0].getsockname()[1]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status = exc.code
        server.should_exit = True
        thread.join(20)
        assert not thread.is_alive(), "uvicorn did not stop"
    finally:
        uv.removeHandler(handler)
        uv.setLevel(old_level)
    state = server.lifespan if hasattr(server, "lifespan") else None
    flags = {
        name: bool(getattr(state, name, False))
        for name in ("startup_failed", "shutdown_failed", "error_occurred", "should_exit")
    }
    log = [
        (r.levelname, _normalize(r.getMessage()), _exception(r))
        for r in handler.records
        if r.name in ("uvicorn", "uvicorn.error")
    ]
    return Run(server.started, exits[0], flags, log, status)


def _normalize(message: str) -> str:
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", message)


def _exception(record: logging.LogRecord) -> str:
    if not record.exc_info or record.exc_info[1] is None:
        return ""
    exc = record.exc_info[1]
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- lifespan scenarios


async def _not_found(send: Send) -> None:
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def raw_app(
    on_startup: str = "complete", on_shutdown: str = "complete"
) -> Callable[[Scope, Receive, Send], Any]:
    """A bare ASGI app whose startup and shutdown each `complete`, `fail` (send *.failed),
    `fail_raise` (send *.failed, then raise), `raise`, or `return` (say nothing, return)."""

    async def step(outcome: str, phase: str, send: Send) -> bool:
        if outcome == "complete":
            await send({"type": f"lifespan.{phase}.complete"})
            return True
        if outcome in ("fail", "fail_raise"):
            await send({"type": f"lifespan.{phase}.failed", "message": f"{phase} went wrong"})
            if outcome == "fail_raise":
                raise RuntimeError(f"{phase} raised after failing")
            return False
        if outcome == "raise":
            raise RuntimeError(f"{phase} raised")
        return False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await _not_found(send)
            return
        message = await receive()
        assert message["type"] == "lifespan.startup"
        if not await step(on_startup, "startup", send):
            return
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await step(on_shutdown, "shutdown", send)

    return app


async def no_lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app written for HTTP only: it refuses any other scope, as many do."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")
    await _not_found(send)


async def ignoring_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that returns at once from any scope but HTTP."""
    if scope["type"] == "http":
        await _not_found(send)


async def early_return_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Completes startup, then returns without waiting for shutdown."""
    if scope["type"] == "http":
        await _not_found(send)
        return
    await receive()
    await send({"type": "lifespan.startup.complete"})


def starlette_app(fail: str = "") -> Starlette:
    """A Starlette app with a lifespan context that may raise in `startup` or `shutdown`."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if fail == "startup":
            raise RuntimeError("database unreachable")
        yield
        if fail == "shutdown":
            raise RuntimeError("could not flush")

    return Starlette(routes=[], lifespan=lifespan)


SCENARIOS: dict[str, Callable[[], ASGIApp]] = {
    "complete": raw_app,
    "startup_raises": lambda: raw_app("raise"),
    "startup_fails": lambda: raw_app("fail"),
    "startup_fails_then_raises": lambda: raw_app("fail_raise"),
    "shutdown_raises": lambda: raw_app(on_shutdown="raise"),
    "shutdown_fails": lambda: raw_app(on_shutdown="fail"),
    "shutdown_fails_then_raises": lambda: raw_app(on_shutdown="fail_raise"),
    "no_lifespan_support": lambda: no_lifespan_app,
    "ignores_lifespan": lambda: ignoring_app,
    "returns_after_startup": lambda: early_return_app,
    "starlette": starlette_app,
    "starlette_startup_raises": lambda: starlette_app("startup"),
    "starlette_shutdown_raises": lambda: starlette_app("shutdown"),
}


@pytest.mark.parametrize("lifespan", ["on", "auto"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lifespan_is_indistinguishable_from_the_bare_app(scenario: str, lifespan: str) -> None:
    """uvicorn logs the same lines, reaches the same verdict (served or not, startup/shutdown
    failed, error seen) and raises nothing new for the wrapped app as for the bare one."""
    make = SCENARIOS[scenario]
    bare = run_uvicorn(make(), lifespan)
    wrapped = run_uvicorn(StabilizerMiddleware(make(), secret=SECRET), lifespan)
    assert wrapped == bare


# ---------------------------------------------------------------------- configuration errors


def misconfigured() -> Starlette:
    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("home")  # pragma: no cover - never served

    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(StabilizerMiddleware, heartbeat_intervall=25)
    return app


@pytest.mark.parametrize("lifespan", ["on", "auto"])
def test_a_config_error_stops_uvicorn_with_the_message(lifespan: str) -> None:
    """`add_middleware(StabilizerMiddleware, heartbeat_intervall=25)`: uvicorn logs the error
    (with a did-you-mean) and refuses to start, whether lifespan is `on` or `auto`."""
    run = run_uvicorn(misconfigured(), lifespan)
    assert not run.started
    errors = [message for level, message, _ in run.log if level == "ERROR"]
    assert any(
        "unknown option 'heartbeat_intervall'; did you mean 'heartbeat_interval'?" in message
        for message in errors
    ), run.log
    assert ("ERROR", "Application startup failed. Exiting.", "") in run.log
    assert not any("lifespan' protocol appears unsupported" in m for _, m, _ in run.log)


def test_a_config_error_without_lifespan_fails_every_request_loudly() -> None:
    """With `--lifespan off` there is no startup to fail: each request answers 500 and uvicorn
    logs the ConfigError with its did-you-mean."""
    run = run_uvicorn(misconfigured(), "off", request=True)
    assert run.started and run.status == 500
    assert any(
        level == "ERROR" and "did you mean 'heartbeat_interval'?" in exc
        for level, _, exc in run.log
    ), run.log


# ---------------------------------------------------------------------- our own start and stop


class FailingBackend(MemoryBackend):
    """The memory backend, made to fail in `run` (before it is up) or `stop`."""

    def __init__(self, fail_in: str) -> None:
        super().__init__()
        self.fail_in = fail_in
        self.calls: list[str] = []

    async def run(self, node: Any, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        self.calls.append("start")
        if self.fail_in == "start":
            raise ConnectionError("backend unreachable")
        await super().run(node, task_status=task_status)

    async def stop(self, timeout: float = 5.0) -> None:
        self.calls.append("stop")
        if self.fail_in == "stop":
            raise ConnectionError("backend would not close")
        await super().stop(timeout)


@pytest.mark.parametrize("lifespan", ["on", "auto"])
def test_our_start_and_stop_run_with_lifespan_and_their_failures_are_reported(
    lifespan: str,
) -> None:
    """The backend starts at lifespan startup and stops at shutdown; if it cannot start,
    uvicorn refuses to start with the reason; if it cannot stop, shutdown fails with it."""
    ok = FailingBackend("")
    run = run_uvicorn(StabilizerMiddleware(raw_app(), secret=SECRET, backend=ok), lifespan)
    assert run.started and ok.calls == ["start", "stop"]
    assert not any(level == "ERROR" for level, _, _ in run.log), run.log

    broken = FailingBackend("start")
    app = StabilizerMiddleware(raw_app(), secret=SECRET, backend=broken)
    run = run_uvicorn(app, lifespan)
    assert not run.started and run.exit_status == 3 and broken.calls == ["start"]
    assert ("ERROR", "stabilizer_asgi: ConnectionError: backend unreachable", "") in run.log
    assert ("ERROR", "Application startup failed. Exiting.", "") in run.log

    stuck = FailingBackend("stop")
    run = run_uvicorn(StabilizerMiddleware(raw_app(), secret=SECRET, backend=stuck), lifespan)
    assert run.started and stuck.calls == ["start", "stop"] and run.flags["shutdown_failed"]
    assert ("ERROR", "stabilizer_asgi: ConnectionError: backend would not close", "") in run.log
    assert ("ERROR", "Application shutdown failed. Exiting.", "") in run.log

"""The `stabilizer-asgi serve` sidecar: options from the config, environment, errors, drain."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.testclient import TestClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from stabilizer_asgi import StabilizerConfig, StabilizerMiddleware, cli
from stabilizer_asgi import logging as slog

from .support import LOOPBACK, captured_logs, control, make_app

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.ops.support:make_app"


def parse(*args: str, environ: dict[str, str] | None = None) -> cli.ServeSettings:
    parser, _ = cli.build_parser()
    return cli.resolve(parser.parse_args(["serve", *args]), environ or {})


def build(settings: cli.ServeSettings) -> Any:
    return settings.app()


async def hook(session: Any) -> None:
    """An async hook importable by the CLI tests."""


def sync_hook(session: Any) -> None:
    """Not a coroutine function: refused by the config."""


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI callable (no framework)."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"raw"})


# ---------------------------------------------------------------------- options


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail instead of starting a server if a bad option were accepted."""

    def refuse(*args: Any) -> int:
        raise AssertionError("the options were accepted")

    monkeypatch.setattr(cli, "serve", refuse)
    # main() configures logging for the process it runs in: not for the test process.
    monkeypatch.setattr(cli, "_configure_logging", lambda level, fmt: None)


def test_every_config_field_is_an_option_with_env_var_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--help lists every StabilizerConfig field and server option, with its default and its
    STABILIZER_* variable."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    options = cli.all_options()
    fields = [f.name for f in dataclasses.fields(StabilizerConfig)]
    assert [o.name for o in options if o.config] == fields
    for option in options:
        assert option.flag in text
        entry = text[text.index(option.flag + " ") :]
        entry = entry[: entry.index(f"env {option.env})") + len(option.env) + 5]
        default = cli._shown(option.default)
        assert f"(default: {default}; env {option.env})" in entry, entry


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    """A flag beats STABILIZER_*, which beats the default; unset fields stay unset."""
    settings = parse(
        "m:a",
        "--heartbeat-interval",
        "5",
        "--port",
        "9001",
        environ={
            "STABILIZER_HEARTBEAT_INTERVAL": "7",
            "STABILIZER_HEARTBEAT_TIMEOUT": "3",
            "STABILIZER_PORT": "9002",
            "STABILIZER_HOST": "0.0.0.0",
            "STABILIZER_MAX_CONNECTIONS": "",  # empty means unset
        },
    )
    assert settings.config == {"heartbeat_interval": 5.0, "heartbeat_timeout": 3.0}
    assert settings.sources == {
        "heartbeat_interval": "--heartbeat-interval",
        "heartbeat_timeout": "STABILIZER_HEARTBEAT_TIMEOUT",
        "port": "--port",
        "host": "STABILIZER_HOST",
    }
    assert settings.server["port"] == 9001 and settings.server["host"] == "0.0.0.0"
    assert settings.server["workers"] == 1 and settings.server["log_format"] == "text"


def test_values_are_parsed_by_field_type() -> None:
    """Choices, numbers, RATE,BURST, 'none', key lists and import strings become config values."""
    settings = parse(
        APP,
        "--heartbeat",
        "always",
        "--rate-limit",
        "20,40",
        "--max-message-size",
        "none",
        "--stats-path",
        "NONE",
        "--max-total-memory",
        "1_000_000",
        "--secret",
        "new-key,old-key",
        "--on-connect",
        "tests.ops.test_cli:hook",
        environ={"STABILIZER_ADMIN_TOKEN": "tok", "STABILIZER_FACTORY": "yes"},
    )
    assert settings.server["factory"] is True
    app = build(settings)
    assert isinstance(app, StabilizerMiddleware)
    cfg = app.config
    assert cfg.heartbeat == "always" and cfg.rate_limit == (20.0, 40)
    assert cfg.max_message_size is None and cfg.stats_path is None
    assert cfg.max_total_memory == 1_000_000
    assert cfg.secret == ["new-key", "old-key"] and cfg.admin_token == "tok"
    assert cfg.on_connect is hook


@pytest.mark.parametrize(
    ("args", "environ", "expected"),
    [
        (["--heartbeat-interval", "abc"], {}, ["--heartbeat-interval", "a number"]),
        (["--heartbeat-interval", "0"], {}, ["--heartbeat-interval", "seconds > 0"]),
        (["--heartbeat-interval", "inf"], {}, ["--heartbeat-interval", "a number"]),
        (["--heartbeat", "sometimes"], {}, ["--heartbeat", "'auto' or 'always' or 'off'"]),
        (["--max-connections", "-1"], {}, ["--max-connections", "None or an int >= 1"]),
        (["--rate-limit", "5"], {}, ["--rate-limit", "RATE,BURST"]),
        (["--stats-path", "stats"], {}, ["--stats-path", "starting with '/'"]),
        (["--on-connect", "nocolon"], {}, ["--on-connect", "MODULE:ATTRIBUTE"]),
        (["--on-connect", "tests.ops.test_cli:nothing"], {}, ["--on-connect", "cannot import"]),
        (["--on-connect", "tests.ops.test_cli:sync_hook"], {}, ["--on-connect", "async"]),
        (["--port", "70000"], {}, ["--port", "0 to 65535"]),
        (["--workers", "0"], {}, ["--workers", ">= 1"]),
        (["--log-format", "xml"], {}, ["--log-format", "'text' or 'json'"]),
        (["--nope", "1"], {}, ["unrecognized arguments: --nope"]),
        ([], {"STABILIZER_PORT": "x"}, ["STABILIZER_PORT (--port)", "0 to 65535"]),
        ([], {"STABILIZER_FACTORY": "maybe"}, ["STABILIZER_FACTORY (--factory)", "on/off"]),
        ([], {"STABILIZER_NUM_SHARDS": "0"}, ["STABILIZER_NUM_SHARDS", "between 1 and 65536"]),
        ([], {"STABILIZER_EVICTION": "random"}, ["STABILIZER_EVICTION", "'lru' or 'fifo'"]),
        (["--backend", "postgres://x"], {}, ["--backend", "'postgres://...'", "'memory'"]),
        (
            [],
            {"STABILIZER_BACKEND": "nope"},
            ["STABILIZER_BACKEND: invalid value 'nope'", "'memory'"],
        ),
    ],
)
def test_bad_options_exit_2_naming_the_option(
    capsys: pytest.CaptureFixture[str],
    no_serving: None,
    args: list[str],
    environ: dict[str, str],
    expected: list[str],
) -> None:
    """A bad flag or variable exits with status 2 and says which option and what is allowed."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", APP, *args], environ={"STABILIZER_FACTORY": "1", **environ})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: stabilizer-asgi")
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("nomodule:app", "cannot import 'nomodule:app'"),
        ("tests.ops.support:missing", "cannot import"),
        ("no-colon", "cannot import"),
        ("tests.ops.support:RS", "is a str, not an ASGI app"),
    ],
)
def test_bad_app_exits_2(
    capsys: pytest.CaptureFixture[str], no_serving: None, target: str, expected: str
) -> None:
    """An app that cannot be imported, or is not callable, is a usage error (status 2)."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", target], environ={})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "MODULE:APP" in err and expected in err


def misconfigured_app() -> Starlette:
    """An app that adds the middleware with a misspelt setting (imported by the CLI test)."""
    app = Starlette()
    app.add_middleware(StabilizerMiddleware, heartbeat_intervall=25)
    return app


def test_a_misconfigured_added_middleware_exits_2(
    capsys: pytest.CaptureFixture[str], no_serving: None
) -> None:
    """An app whose `add_middleware(StabilizerMiddleware, ...)` has a bad setting is refused
    before uvicorn starts (status 2), with the did-you-mean."""
    target = "tests.ops.test_cli:misconfigured_app"
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", target, "--factory"], environ={})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "MODULE:APP" in err and "did you mean 'heartbeat_interval'?" in err, err


def test_secrets_are_never_echoed_in_errors(
    capsys: pytest.CaptureFixture[str], no_serving: None
) -> None:
    """A bad secret or admin token is reported as <redacted>, never echoed."""
    for args, environ in (
        (["--secret", "visible-part,,other"], {}),
        ([], {"STABILIZER_SECRET": "visible-part,"}),
        ([], {"STABILIZER_ADMIN_TOKEN": "   "}),
    ):
        with pytest.raises(SystemExit):
            cli.main(["serve", APP, "--factory", *args], environ=environ)
        err = capsys.readouterr().err
        assert "<redacted>" in err and "visible-part" not in err


# ---------------------------------------------------------------------- wrapping


def wrapped_starlette() -> Starlette:
    return Starlette(middleware=[Middleware(StabilizerMiddleware, heartbeat_interval=9)])


class Outer:
    """Some other middleware around an already stabilized app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def fastapi_with_middleware() -> FastAPI:
    app = FastAPI()
    app.add_middleware(StabilizerMiddleware)
    return app


@pytest.mark.parametrize(
    ("make", "stabilized"),
    [
        (lambda: StabilizerMiddleware(make_app()), True),
        (wrapped_starlette, True),
        (fastapi_with_middleware, True),
        (lambda: Outer(Outer(StabilizerMiddleware(raw_app))), True),
        (make_app, False),
        (FastAPI, False),
        (lambda: raw_app, False),
        (lambda: Outer(make_app()), False),
    ],
)
def test_already_stabilized_apps_are_detected(make: Any, stabilized: bool) -> None:
    """An instance anywhere in the .app chain or an add_middleware entry counts as wrapped."""
    assert cli.is_stabilized(make()) is stabilized


def test_an_already_wrapped_app_is_served_as_is() -> None:
    """examples.chat:app adds the middleware itself: serve uses it unchanged, and refuses
    middleware options that its own settings would silently override."""
    from examples.chat import app as chat

    settings = parse("examples.chat:app")
    assert build(settings) is chat
    settings = parse("examples.chat:app", environ={"STABILIZER_DRAIN_PERIOD": "3"})
    with pytest.raises(cli.UsageError) as refused:
        build(settings)
    assert refused.value.option == "STABILIZER_DRAIN_PERIOD"
    assert "already adds StabilizerMiddleware" in str(refused.value)


def test_raw_asgi_callable_is_wrapped_and_served() -> None:
    """A bare ASGI callable gets the middleware: its routes answer, the app still does."""
    app = build(parse("tests.ops.test_cli:raw_app", "--health-path", "/healthz"))
    assert isinstance(app, StabilizerMiddleware) and app.app is raw_app
    client = TestClient(app, client=LOOPBACK)  # no lifespan: raw_app does not speak it
    assert client.get("/healthz").json()["status"] == "ok"
    assert client.get("/anything").text == "raw"


def test_find_manager_reaches_a_built_middleware_stack() -> None:
    """The manager of an add_middleware app is found once the stack is built (lifespan)."""
    app = wrapped_starlette()
    assert cli.find_manager(app) is None
    with TestClient(app):
        manager = cli.find_manager(app)
    assert manager is not None and manager.config.heartbeat_interval == 9


def test_log_config_routes_our_logger_through_the_formatters() -> None:
    """JSON mode formats uvicorn and stabilizer_asgi with JsonFormatter; text mode keeps
    uvicorn's look and adds the key=value formatter for our logger."""
    config = cli.log_config("debug", "json")
    assert config["formatters"]["default"]["()"] == "stabilizer_asgi.logging.JsonFormatter"
    assert config["loggers"]["stabilizer_asgi"]["level"] == "DEBUG"
    text = cli.log_config("warning", "text")
    assert text["formatters"]["stabilizer"]["()"] == "stabilizer_asgi.logging.TextFormatter"
    assert text["loggers"]["stabilizer_asgi"]["handlers"] == ["stabilizer"]
    assert text["loggers"]["uvicorn"]["handlers"] == ["default"]


# ---------------------------------------------------------------------- the real sidecar


class Sidecar:
    """`stabilizer-asgi serve ...` as a real subprocess with JSON logs on stderr."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, with_stdout: bool = False
    ) -> None:
        script = Path(sys.executable).with_name("stabilizer-asgi")
        command = (
            [str(script)] if script.exists() else [sys.executable, "-m", "stabilizer_asgi.cli"]
        )
        self.proc = subprocess.Popen(
            [*command, "serve", *args, "--port", "0", "--log-format", "json"],
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            # with_stdout: uvicorn's access lines (stdout) too, in one stream with stderr
            stdout=subprocess.PIPE if with_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if with_stdout else subprocess.PIPE,
            text=True,
        )
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._port()

    def _read(self) -> None:
        stream = self.proc.stderr or self.proc.stdout
        assert stream is not None
        for line in stream:
            self.raw.append(line)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def _port(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line["message"])
                if found:
                    return int(found.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError("sidecar did not start:\n" + "".join(self.raw))

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == name]

    def index(self, predicate: Any) -> int:
        return next(i for i, line in enumerate(list(self.lines)) if predicate(line))

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def sidecars() -> Iterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for sidecar in started:
        sidecar.stop()


async def open_clients(sidecar: Sidecar, opted_in: int, plain: int) -> list[ClientConnection]:
    clients = []
    for i in range(opted_in + plain):
        path = "/echo?stabilizer=1" if i < opted_in else "/echo"
        ws = await connect(sidecar.url(path), ping_interval=None)
        if i < opted_in:
            hello = control(await ws.recv())
            assert hello is not None and hello["t"] == "hello"
        else:
            await ws.send("ready")
            assert await ws.recv() == "ready"
        clients.append(ws)
    return clients


async def observe(ws: ClientConnection) -> tuple[list[dict[str, Any]], int | None, str | None]:
    """(reconnect hints, close code, close reason) the client saw until the server closed."""
    hints = []
    try:
        while True:
            frame = control(await ws.recv())
            if frame is not None and frame["t"] == "reconnect":
                hints.append(frame)
    except ConnectionClosed:
        pass
    close = ws.protocol.close_rcvd
    return hints, close.code if close else None, close.reason if close else None


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sigterm_drains_then_uvicorn_shuts_down(
    sidecars: list[Sidecar], anyio_backend: str
) -> None:
    """On SIGTERM the sidecar drains (health 503, handshakes 503, reconnect hints, 1012 for
    every client), and only then does uvicorn shut down; the drain report is logged."""
    sidecar = Sidecar(
        APP, "--factory", "--drain-period", "1",
        env={"STABILIZER_DRAIN_PERIOD": "60", "STABILIZER_RETRY_AFTER": "4"},
    )  # fmt: skip
    sidecars.append(sidecar)
    clients = await open_clients(sidecar, opted_in=20, plain=10)
    watchers = [asyncio.create_task(observe(ws)) for ws in clients]
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            health = await http.get(sidecar.http("/_stabilizer/health"))
            if health.status_code == 503:
                break
            await asyncio.sleep(0.01)
    assert health.status_code == 503 and health.headers["retry-after"] == "4"
    with pytest.raises(InvalidStatus) as denied:
        async with connect(sidecar.url("/echo")):
            pass  # pragma: no cover
    assert denied.value.response.status_code == 503
    seen = await asyncio.wait_for(asyncio.gather(*watchers), 10)
    code = await asyncio.to_thread(sidecar.wait, 15)
    elapsed = time.monotonic() - started
    assert code in (0, -signal.SIGTERM)
    assert elapsed < 10  # the flag's 1 s period won over the variable's 60 s
    for i, (hints, close_code, reason) in enumerate(seen):
        assert (close_code, reason) == (1012, "server draining")
        assert len(hints) == (1 if i < 20 else 0)
        if hints:
            assert 0 <= hints[0]["after_ms"] <= 1000
    [signalled] = sidecar.events(slog.SIGNAL_RECEIVED)
    assert (signalled["signal"], signalled["action"]) == ("SIGTERM", "drain")
    [begun] = sidecar.events(slog.DRAIN_STARTED)
    assert (begun["connections"], begun["period"]) == (30, 1.0)
    [drained] = sidecar.events(slog.DRAINED)
    assert (drained["closed"], drained["failed"]) == (30, 0)
    assert sidecar.index(lambda x: x.get("event") == slog.DRAINED) < sidecar.index(
        lambda x: x["message"] == "Shutting down"
    )
    assert sidecar.events(slog.SHUTDOWN)[0]["closed"] == 0  # nothing left for lifespan


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_second_sigterm_skips_the_rest_of_the_drain(
    sidecars: list[Sidecar], anyio_backend: str
) -> None:
    """A second SIGTERM during a long drain hands over to uvicorn at once; every client
    still gets a 1012 close."""
    sidecar = Sidecar("tests.ops.support:make_app", "--factory", "--drain-period", "60")
    sidecars.append(sidecar)
    clients = await open_clients(sidecar, opted_in=0, plain=5)
    watchers = [asyncio.create_task(observe(ws)) for ws in clients]
    sidecar.proc.send_signal(signal.SIGTERM)
    for _ in range(200):
        if sidecar.events(slog.DRAIN_STARTED):
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    sidecar.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(sidecar.wait, 15)
    assert code in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10
    seen = await asyncio.wait_for(asyncio.gather(*watchers), 5)
    assert all(close_code == 1012 for _, close_code, _ in seen)
    actions = [line["action"] for line in sidecar.events(slog.SIGNAL_RECEIVED)]
    assert actions == ["drain", "exit"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_workers_each_drain_on_sigterm(sidecars: list[Sidecar], anyio_backend: str) -> None:
    """With --workers 2 the supervisor forwards SIGTERM and every worker drains its own
    connections: opted-in clients get their reconnect hint before 1012."""
    sidecar = Sidecar(APP, "--factory", "--workers", "2", "--drain-period", "0.2")
    sidecars.append(sidecar)
    for _ in range(1000):
        ready = [x for x in sidecar.lines if x["message"] == "Application startup complete."]
        if len(ready) == 2:
            break
        await asyncio.sleep(0.02)
    clients: list[ClientConnection] = []
    for _ in range(100):  # until both workers have answered a handshake
        clients += await open_clients(sidecar, opted_in=4, plain=0)
        await asyncio.sleep(0.05)
        pids = {line["process"] for line in sidecar.events(slog.CONNECTED)}
        if len(pids) == 2:
            break
    assert len(pids) == 2
    watchers = [asyncio.create_task(observe(ws)) for ws in clients]
    sidecar.proc.send_signal(signal.SIGTERM)
    seen = await asyncio.wait_for(asyncio.gather(*watchers), 15)
    assert all(len(hints) == 1 and code == 1012 for hints, code, _ in seen)
    assert await asyncio.to_thread(sidecar.wait, 15) in (0, -signal.SIGTERM)
    drained = sidecar.events(slog.DRAINED)
    assert {line["process"] for line in drained} == pids
    assert sum(line["closed"] for line in drained) == len(clients)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_every_json_log_line_is_json(sidecars: list[Sidecar], anyio_backend: str) -> None:
    """With `--log-format json` every line on stderr and stdout is a JSON object, from the
    generated-secret warning logged while the app is built (before uvicorn starts) through
    uvicorn's startup, access and shutdown lines, and each message is a sentence."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STABILIZER_")}
    sidecar = Sidecar(APP, "--factory", env=env, with_stdout=True)
    sidecars.append(sidecar)
    async with httpx.AsyncClient() as http:
        assert (await http.get(sidecar.http("/hello"))).status_code == 200
    async with connect(sidecar.url("/echo"), ping_interval=None) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
    sidecar.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(sidecar.wait, 15) in (0, -signal.SIGTERM)
    assert sidecar.raw and len(sidecar.lines) == len(sidecar.raw), "".join(sidecar.raw)
    first = sidecar.lines[0]
    assert (first["event"], first["level"]) == (slog.SECRET_GENERATED, "WARNING")
    assert first["message"] == slog.SECRET_GENERATED_MESSAGE
    messages = [line["message"] for line in sidecar.lines]
    assert any('"GET /hello HTTP/1.1" 200' in m for m in messages)  # uvicorn's access line
    assert any(m.startswith("Uvicorn running on") for m in messages)
    for line in sidecar.lines:
        if line.get("event"):
            assert line["message"] != line["event"] and " " in line["message"]


@pytest.mark.parametrize(
    ("trusted", "warned"), [("*", True), ("10.0.0.1, *", True), ("127.0.0.1", False), (None, False)]
)
def test_trusting_every_proxy_logs_a_warning(trusted: str | None, warned: bool) -> None:
    """`--forwarded-allow-ips '*'` (alone or in a list) logs one WARNING sentence; a list of
    proxies does not."""
    with captured_logs() as logs:
        cli.warn_trust_all(trusted)
    records = [r for r in logs.records if getattr(r, "event", None) == cli.TRUST_ALL_PROXIES]
    assert len(records) == (1 if warned else 0)
    if warned:
        assert records[0].levelno == logging.WARNING
        assert records[0].getMessage().startswith("--forwarded-allow-ips '*' trusts")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_sidecar_warns_about_trusting_every_proxy_and_an_open_admin(
    sidecars: list[Sidecar], anyio_backend: str
) -> None:
    """The real sidecar with `--forwarded-allow-ips '*'` and no admin token logs both startup
    warnings as JSON lines, and still refuses a spoofed loopback address."""
    sidecar = Sidecar(APP, "--factory", "--forwarded-allow-ips", "*")
    sidecars.append(sidecar)
    assert [line["level"] for line in sidecar.events(cli.TRUST_ALL_PROXIES)] == ["WARNING"]
    assert [line["level"] for line in sidecar.events("admin_unprotected")] == ["WARNING"]
    async with httpx.AsyncClient() as http:
        spoofed = {"X-Forwarded-For": "127.0.0.1"}
        stats = await http.get(sidecar.http("/_stabilizer/stats"), headers=spoofed)
        assert stats.status_code == 403

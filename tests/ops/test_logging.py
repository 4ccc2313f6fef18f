"""Structured logs: event names as constants, fields in `extra`, JSON output, no secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect
from websockets.asyncio.client import connect

from stabilizer_asgi import logging as slog

from .support import (
    LOOPBACK,
    await_until,
    captured_logs,
    control,
    never_reading_client,
    stabilized,
    wait_until,
)

ClientFactory = Callable[..., TestClient]
TOKEN = "admin-TOKEN-1f2e3d"
SECRET = "signing-SECRET-9a8b7c6d5e4f3a2b1c0d"
PAYLOAD = "PAYLOAD-7e6d5c"


def test_event_names_are_unique_snake_case_constants() -> None:
    """Each lifecycle event is a module constant whose value is its lower-case name."""
    assert len(set(slog.EVENTS)) == len(slog.EVENTS)
    for name in slog.EVENTS:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", name)
        assert getattr(slog, name.upper()) == name
    assert slog.LOGGER_NAME == "stabilizer_asgi"


def test_connected_and_disconnected_fields(client_factory: ClientFactory) -> None:
    """`connected` and `disconnected` carry session, client, remote, code, reason, duration."""
    with captured_logs() as logs, client_factory(stabilized(), client=LOOPBACK) as client:
        with client.websocket_connect("/echo?stabilizer=1&client_id=alice") as ws:
            hello = control(ws.receive_text())
            assert hello is not None
            sid = hello["session"]
            ws.close(1000)
        wait_until(lambda: len(logs.events(slog.DISCONNECTED)) == 1)
    connected = logs.one(slog.CONNECTED)
    assert connected.name == "stabilizer_asgi" and connected.levelno == logging.INFO
    assert connected.getMessage() == (
        f"Session {sid} connected from 127.0.0.1:50000 (client alice, opted in: True)"
    )
    assert slog.fields(connected) == {
        "event": "connected",
        "session": sid,
        "client": "alice",
        "remote": LOOPBACK,
        "opted_in": True,
    }
    disconnected = logs.one(slog.DISCONNECTED)
    assert disconnected.levelno == logging.INFO
    fields = slog.fields(disconnected)
    assert fields.pop("duration_ms") >= 0
    assert fields == {
        "event": "disconnected",
        "session": sid,
        "client": "alice",
        "code": 1000,
        "reason": "",
        "rtt_ms": None,
        "expired": False,
    }
    assert re.fullmatch(
        rf"Session {sid} ended \(close code 1000, reason -\) after [\d.]+ ms \(client alice\)",
        disconnected.getMessage(),
    )


def test_heartbeat_timeout_fields(client_factory: ClientFactory) -> None:
    """`heartbeat_timeout` names the session, client, remote and last RTT."""
    app = stabilized(heartbeat_interval=0.05, heartbeat_timeout=0.05, resume_window=0)
    with captured_logs() as logs, client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?stabilizer=1&client_id=bob") as ws:
            hello = control(ws.receive_text())
            assert hello is not None
            with pytest.raises(WebSocketDisconnect):
                while True:
                    ws.receive_text()
        wait_until(lambda: len(logs.events(slog.DISCONNECTED)) == 1)
    record = logs.one(slog.HEARTBEAT_TIMEOUT)
    assert slog.fields(record) == {
        "event": "heartbeat_timeout",
        "session": hello["session"],
        "client": "bob",
        "remote": LOOPBACK,
        "rtt_ms": None,
    }
    assert logs.one(slog.DISCONNECTED).code == 1011


def test_rejected_drain_and_shutdown_fields(client_factory: ClientFactory) -> None:
    """`rejected` has reason and remote; `drain_started`, `drained` and `shutdown` have the
    counts and durations of the report."""
    app = stabilized(max_connections=1, admin_token=TOKEN)
    with captured_logs() as logs, client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo") as ws:
            with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/echo"):
                pass  # pragma: no cover
            ws.send_text("x")
            assert ws.receive_text() == "x"
            report = client.post(
                "/_stabilizer/drain?period=0", headers={"Authorization": f"Bearer {TOKEN}"}
            ).json()
        with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/echo"):
            pass  # pragma: no cover
    capacity = logs.one(slog.REJECTED, reason="capacity")
    assert slog.fields(capacity) == {"event": "rejected", "reason": "capacity", "remote": LOOPBACK}
    logs.one(slog.REJECTED, reason="draining")
    started = logs.one(slog.DRAIN_STARTED)
    assert (started.connections, started.period) == (1, 0.0)
    drained = logs.one(slog.DRAINED)
    assert (drained.closed, drained.failed) == (report["closed"], report["failed"]) == (1, 0)
    assert drained.duration_ms == pytest.approx(report["duration"] * 1000, abs=1)
    shutdown = logs.one(slog.SHUTDOWN)  # lifespan shutdown when the TestClient exits
    assert (shutdown.closed, shutdown.failed) == (0, 0) and shutdown.duration_ms >= 0


def test_evicted_fields(client_factory: ClientFactory) -> None:
    """`evicted` (WARNING) names the session that lost its data and the policy."""
    app = stabilized(max_total_memory=1000)
    with (
        captured_logs() as logs,
        client_factory(app, client=LOOPBACK) as client,
        client.websocket_connect("/store?bytes=600&client_id=old") as old,
    ):
        assert old.receive_text() == "stored"
        with client.websocket_connect("/store?bytes=600&client_id=new") as new:
            assert new.receive_text() == "stored"
            with pytest.raises(WebSocketDisconnect) as closed:
                old.receive_text()
            assert closed.value.code == 1013
    record = logs.one(slog.EVICTED)
    assert record.levelno == logging.WARNING
    fields = slog.fields(record)
    assert fields.pop("session")
    assert fields == {"event": "evicted", "client": "old", "policy": "lru"}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_slow_consumer_fields(uvicorn_server: Any, anyio_backend: str) -> None:
    """`slow_consumer` (WARNING) names the session of a client that stopped reading."""
    app = stabilized(max_queue_messages=4, max_queue_bytes=1 << 20)
    server = uvicorn_server(app)
    with captured_logs() as logs:
        sloth = await never_reading_client(server.port, "/echo?client_id=sloth")
        try:
            await await_until(lambda: app.manager.count() == 1)
            async with httpx.AsyncClient(timeout=30) as http:
                for _ in range(50):
                    await http.post(server.http("/broadcast?n=20&size=65536"))
                    if logs.events(slog.SLOW_CONSUMER):
                        break
            await await_until(lambda: bool(logs.events(slog.SLOW_CONSUMER)))
        finally:
            sloth.close()
    record = logs.one(slog.SLOW_CONSUMER)
    assert record.levelno == logging.WARNING
    fields = slog.fields(record)
    assert fields.pop("session")
    assert fields == {"event": "slow_consumer", "client": "sloth"}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_resumed_names_the_new_connection_s_peer(
    uvicorn_server: Any, anyio_backend: str
) -> None:
    """`resumed` carries the address of the connection that resumed, not of the dropped one."""
    server = uvicorn_server(stabilized(secret=SECRET))
    with captured_logs() as logs:
        first = await connect(server.url("/echo?stabilizer=1"))
        hello = control(await first.recv())
        assert hello is not None
        first.transport.abort()
        await await_until(lambda: bool(logs.events(slog.DETACHED)))
        resume = f"/echo?stabilizer=1&stabilizer_resume={hello['token']}&stabilizer_ack=0"
        async with connect(server.url(resume)) as second:
            again = control(await second.recv())
            assert again is not None and again["resumed"] is True
            await await_until(lambda: bool(logs.events(slog.RESUMED)))
            port = second.local_address[1]
    assert first.local_address[1] != port
    assert tuple(logs.one(slog.RESUMED).remote) == ("127.0.0.1", port)


def test_json_formatter_writes_one_object_per_line() -> None:
    """JsonFormatter: time, level, logger, message and every extra field; exceptions too."""
    logger = logging.getLogger("stabilizer_asgi.test_json")
    with captured_logs() as logs:
        slog.event(logger, slog.REJECTED, reason="capacity", remote=("10.0.0.1", 5))
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("failed %s", "here", extra={"session": "s1"})
    first, second = (slog.JsonFormatter().format(r) for r in logs.records[-2:])
    assert "\n" not in first
    obj = json.loads(first)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj.pop("time"))
    assert obj == {
        "level": "INFO",
        "logger": "stabilizer_asgi.test_json",
        "process": os.getpid(),
        "message": "Refused a websocket handshake from 10.0.0.1:5: capacity",
        "event": "rejected",
        "reason": "capacity",
        "remote": ["10.0.0.1", 5],
    }
    obj = json.loads(second)
    assert obj["message"] == "failed here" and obj["session"] == "s1"
    assert obj["level"] == "ERROR" and "ValueError: bad" in obj["exc"]


def test_text_formatter_appends_fields() -> None:
    """TextFormatter: uvicorn's level prefix, the event's sentence, then key=value fields."""
    logger = logging.getLogger("stabilizer_asgi.test_text")
    with captured_logs() as logs:
        slog.event(logger, slog.DISCONNECTED, session="s1", code=1000, reason="bye now")
    line = slog.TextFormatter().format(logs.records[-1])
    assert line == (
        "INFO:     Session s1 ended (close code 1000, reason bye now) after - ms (client -) "
        'session=s1 code=1000 reason="bye now"'
    )


def test_no_token_secret_or_payload_is_ever_logged(client_factory: ClientFactory) -> None:
    """Across a whole lifecycle (hello token, data both ways, admin calls with right and wrong
    bearers, drain, shutdown) no record contains a token, a secret or a payload; every record
    of ours at INFO or above is a lifecycle event, never a per-frame one."""
    app = stabilized(secret=SECRET, admin_token=TOKEN, heartbeat_interval=0.05)
    with (
        captured_logs() as logs,
        client_factory(app, client=LOOPBACK) as client,
        client.websocket_connect(f"/echo?stabilizer=1&client_id=c&x={PAYLOAD}") as ws,
    ):
        hello = control(ws.receive_text())
        assert hello is not None and hello["token"]
        for _ in range(20):
            ws.send_text(PAYLOAD)
            while (frame := ws.receive_text()) != PAYLOAD:
                ping = control(frame)
                assert ping is not None and ping["t"] in ("ping", "ack")
                if ping["t"] == "ping":
                    ws.send_text("\x1e" + json.dumps({"t": "pong", "ts": ping["ts"], "n": 0}))
        client.get("/_stabilizer/stats", headers={"Authorization": f"Bearer {TOKEN}"})
        client.get("/_stabilizer/stats", headers={"Authorization": f"Bearer {TOKEN}x"})
        client.post("/_stabilizer/drain?period=0", headers={"Authorization": f"Bearer {TOKEN}"})
    # Drained with 1012, the session stays resumable: detached, not disconnected.
    assert logs.one(slog.DETACHED).session == hello["session"]
    forbidden = (TOKEN, SECRET, hello["token"], PAYLOAD)
    formatter = slog.JsonFormatter()
    for record in logs.records:
        text = formatter.format(record) + repr(record.args) + repr(vars(record))
        for value in forbidden:
            assert value not in text, (record.getMessage(), slog.fields(record))
        if record.name == "stabilizer_asgi" and record.levelno >= logging.INFO:
            assert getattr(record, "event", None) in slog.EVENTS, record.getMessage()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_logs_from_a_real_server_are_captured(
    uvicorn_server: Any, anyio_backend: str
) -> None:
    """Through uvicorn the same events arrive with the real remote address."""
    app = stabilized()
    server = uvicorn_server(app)
    with captured_logs() as logs:
        async with connect(server.url("/echo?client_id=real"), ping_interval=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
            port = ws.local_address[1]
        await await_until(lambda: len(logs.events(slog.DISCONNECTED)) == 1)
    connected = logs.one(slog.CONNECTED)
    assert connected.client == "real" and tuple(connected.remote) == ("127.0.0.1", port)
    assert logs.one(slog.DISCONNECTED).code == 1000
    await asyncio.sleep(0)


def test_plain_uvicorn_shows_our_warning_as_a_sentence() -> None:
    """Under plain `uvicorn` (its own logging config, none for our logger) the generated-secret
    warning reads as a sentence on stderr, not as a bare event name."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STABILIZER_")}
    command = [sys.executable, "-m", "uvicorn", "--factory", "tests.ops.support:stabilized",
               "--port", "0"]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=root, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if "Uvicorn running on" in line or len(lines) > 50:
                break
    finally:
        proc.terminate()
        proc.wait(15)
    assert slog.SECRET_GENERATED_MESSAGE in lines, lines
    assert slog.SECRET_GENERATED not in lines

"""Limits the middleware enforces: connection caps, message size, rate, draining."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse, WebSocketTestSession
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware

from .support import (
    RS,
    Recorder,
    control,
    make_chat_app,
    on_loop,
    registered,
    session_id,
    wait_until,
)


def client_from_header(app: ASGIApp, *, http_response: bool = True) -> ASGIApp:
    """A server stand-in: the client address comes from `x-ip`; optionally no denial extension."""

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope = dict(scope)
            for name, value in scope["headers"]:
                if name == b"x-ip":
                    scope["client"] = (value.decode(), 1234)
            if not http_response:
                scope["extensions"] = {}
        await app(scope, receive, send)

    return server


class Limits:
    def __init__(self, client: TestClient, mw: StabilizerMiddleware, rec: Recorder) -> None:
        self.client, self.mw, self.rec = client, mw, rec
        self.manager = mw.manager
        self.stack = ExitStack()

    def connect(self, query: str = "", ip: str = "10.0.0.1") -> tuple[WebSocketTestSession, str]:
        ws = self.stack.enter_context(
            self.client.websocket_connect("/ws?" + query, headers={"x-ip": ip})
        )
        return ws, session_id(ws)

    def sessions_started(self) -> int:
        """How many connections reached the app (it records each disconnect it sees)."""
        return len({e[1] for e in self.rec.events})

    def disconnects(self) -> dict[str, tuple[int, str]]:
        return {e[1]: (e[2], e[3]) for e in self.rec.events if e[0] == "disconnect"}


@pytest.fixture
def limits_factory(client_factory: Callable[..., TestClient]) -> Iterator[Callable[..., Limits]]:
    with ExitStack() as stack:

        def make(http_response: bool = True, **settings: Any) -> Limits:
            rec = Recorder()
            mw = StabilizerMiddleware(make_chat_app(rec), **settings)
            client = stack.enter_context(
                client_factory(client_from_header(mw, http_response=http_response))
            )
            limits = Limits(client, mw, rec)
            stack.callback(limits.stack.close)
            return limits

        yield make


def test_max_connections_denies_with_503(limits_factory: Callable[..., Limits]) -> None:
    """Over `max_connections` the handshake gets 503 + Retry-After and never reaches the app."""
    lim = limits_factory(max_connections=2, retry_after=7)
    first, _ = lim.connect()
    lim.connect(ip="10.0.0.2")
    with pytest.raises(WebSocketDenialResponse) as info:
        lim.connect(ip="10.0.0.3")
    denial = info.value
    assert denial.status_code == 503
    assert denial.headers["retry-after"] == "7"
    assert denial.json() == {"error": "capacity"}
    assert on_loop(lim.client, lim.manager.stats)["rejections"]["capacity"] == 1
    assert registered(lim.client, lim.manager) == 2
    first.close()
    wait_until(lambda: on_loop(lim.client, lim.manager.stats)["connections"] == 1)
    lim.connect(ip="10.0.0.3")  # a freed slot is usable again
    assert registered(lim.client, lim.manager) == 2


def test_max_connections_per_ip(limits_factory: Callable[..., Limits]) -> None:
    """Over `max_connections_per_ip` one address is refused while others still connect."""
    lim = limits_factory(max_connections_per_ip=2)
    lim.connect(ip="10.0.0.1")
    held, _ = lim.connect(ip="10.0.0.1")
    with pytest.raises(WebSocketDenialResponse) as info:
        lim.connect(ip="10.0.0.1")
    assert info.value.status_code == 503 and info.value.json() == {"error": "per_ip"}
    assert "retry-after" in info.value.headers
    lim.connect(ip="10.0.0.2")
    held.close()
    wait_until(lambda: on_loop(lim.client, lim.manager.stats)["connections"] == 2)
    lim.connect(ip="10.0.0.1")


def test_denial_without_http_response_extension_closes_before_accept(
    limits_factory: Callable[..., Limits],
) -> None:
    """A server without `websocket.http.response` gets a close before accept (it answers 403)."""
    lim = limits_factory(max_connections=1, http_response=False)
    lim.connect()
    with pytest.raises(WebSocketDisconnect) as info:
        lim.connect()
    assert not isinstance(info.value, WebSocketDenialResponse)
    assert info.value.code == 1013
    assert lim.sessions_started() == 1


def test_denied_handshakes_never_reach_the_app(limits_factory: Callable[..., Limits]) -> None:
    """The app runs only for admitted connections."""
    lim = limits_factory(max_connections=1)
    ws, sid = lim.connect()
    for _ in range(3):
        with pytest.raises(WebSocketDenialResponse):
            lim.connect()
    ws.close()
    wait_until(lambda: sid in lim.disconnects())
    assert lim.sessions_started() == 1


def test_draining_denies_new_handshakes(limits_factory: Callable[..., Limits]) -> None:
    """After `drain()` existing clients are closed with 1012 and new ones get 503 "draining"."""
    lim = limits_factory()
    ws, sid = lim.connect()

    async def drain() -> Any:
        return await lim.manager.drain(0)

    report = on_loop(lim.client, drain)
    assert report.closed == 1
    assert ws.receive() == {"type": "websocket.close", "code": 1012, "reason": "server draining"}
    wait_until(lambda: sid in lim.disconnects())
    assert lim.disconnects()[sid] == (1012, "server draining")
    with pytest.raises(WebSocketDenialResponse) as info:
        lim.connect()
    assert info.value.status_code == 503 and info.value.json() == {"error": "draining"}


@pytest.mark.parametrize(
    ("frame", "allowed"),
    [
        ("x" * 10, True),
        ("x" * 11, False),
        ("é" * 5, True),  # 10 bytes of UTF-8
        ("é" * 6, False),  # 6 characters but 12 bytes
        (b"\x00" * 10, True),
        (b"\x00" * 11, False),
    ],
)
def test_max_message_size_closes_with_1009(
    limits_factory: Callable[..., Limits], frame: str | bytes, allowed: bool
) -> None:
    """An inbound data frame over `max_message_size` bytes closes the connection with 1009."""
    lim = limits_factory(max_message_size=10)
    ws, sid = lim.connect()
    if isinstance(frame, str):
        ws.send_text(frame)
    else:
        ws.send_bytes(frame)
    if allowed:
        assert ws.receive()["type"] == "websocket.send"
        return
    assert ws.receive() == {"type": "websocket.close", "code": 1009, "reason": "message too big"}
    wait_until(lambda: sid in lim.disconnects())
    assert lim.disconnects()[sid] == (1009, "message too big")
    assert not [e for e in lim.rec.events if e[0] == "received"]  # the app never saw it


@pytest.mark.parametrize(
    ("frame", "allowed"),
    [
        (RS + RS + "x" * 9, True),  # the app text RS + 9 x: 10 bytes, escaped to 11
        (RS + RS + "x" * 10, False),
        (RS + "x" * 10, False),  # plain clients' text is never unescaped
    ],
)
def test_max_message_size_counts_escaped_text_as_the_app_sees_it(
    limits_factory: Callable[..., Limits], frame: str, allowed: bool
) -> None:
    """For an opted-in client the limit applies to the app's text, without the escape RS."""
    lim = limits_factory(max_message_size=10)
    query = "stabilizer=1" if frame.startswith(RS + RS) else ""
    ws, _ = lim.connect(query)
    ws.send_text(frame)
    if allowed:
        assert ws.receive_text() == frame  # echoed: RS + 9 x, escaped again
    else:
        assert ws.receive()["code"] == 1009


def test_control_frames_are_not_data_for_max_message_size(
    limits_factory: Callable[..., Limits],
) -> None:
    """A tiny `max_message_size` does not close an opted-in client for its pings and pongs:
    control frames have their own bound."""
    lim = limits_factory(max_message_size=8)
    ws, _ = lim.connect("stabilizer=1")
    ws.send_text(RS + '{"t":"ping","ts":1.5,"n":0}')
    assert control(ws.receive_text()) == {"t": "pong", "ts": 1.5, "n": 0}
    ws.send_text("x" * 9)
    assert ws.receive()["code"] == 1009


def test_max_message_size_is_on_by_default(limits_factory: Callable[..., Limits]) -> None:
    """Without settings, frames over 1 MiB are refused (the one limit enforced by default)."""
    lim = limits_factory()
    ws, _ = lim.connect()
    ws.send_bytes(b"\x00" * (1024 * 1024))
    assert ws.receive_bytes() == b"\x00" * (1024 * 1024)
    ws.send_bytes(b"\x00" * (1024 * 1024 + 1))
    assert ws.receive() == {"type": "websocket.close", "code": 1009, "reason": "message too big"}


def test_max_message_size_none_disables_it(limits_factory: Callable[..., Limits]) -> None:
    """`max_message_size=None` accepts any size."""
    lim = limits_factory(max_message_size=None)
    ws, _ = lim.connect()
    ws.send_text("y" * (2 * 1024 * 1024))
    assert len(ws.receive_text()) == 2 * 1024 * 1024


def test_rate_limit_closes_with_1008(limits_factory: Callable[..., Limits]) -> None:
    """More than `burst` messages faster than `rate` per second closes with 1008."""
    lim = limits_factory(rate_limit=(0.01, 3))
    ws, sid = lim.connect()
    for n in range(3):
        ws.send_text(f"m{n}")
        assert ws.receive_text() == f"m{n}"
    ws.send_text("one too many")
    assert ws.receive() == {
        "type": "websocket.close",
        "code": 1008,
        "reason": "rate limit exceeded",
    }
    wait_until(lambda: sid in lim.disconnects())
    assert lim.disconnects()[sid] == (1008, "rate limit exceeded")
    received = [e[2] for e in lim.rec.events if e[0] == "received"]
    assert received == ["m0", "m1", "m2"]


def test_rate_limit_is_per_connection(limits_factory: Callable[..., Limits]) -> None:
    """Each connection has its own bucket."""
    lim = limits_factory(rate_limit=(0.01, 2))
    a, _ = lim.connect()
    b, _ = lim.connect()
    for ws in (a, b, a, b):
        ws.send_text("x")
        assert ws.receive_text() == "x"


def test_app_send_after_limit_close_raises_disconnect(
    client_factory: Callable[..., TestClient],
) -> None:
    """Once the middleware closed the connection, the app's sends raise `WebSocketDisconnect`."""
    rec = Recorder()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        message = await websocket.receive()
        rec.add("got", message["type"], message.get("code"))
        try:
            await websocket.send_text("too late")
        except WebSocketDisconnect as exc:
            rec.add("send raised", exc.code, exc.reason)
        finally:
            rec.done.set()

    app = StabilizerMiddleware(
        Starlette(routes=[WebSocketRoute("/ws", endpoint)]), max_message_size=1
    )
    with client_factory(app) as client, client.websocket_connect("/ws") as ws:
        ws.send_text("xx")
        assert ws.receive()["code"] == 1009
        rec.wait_done()
    assert rec.events == [
        ("got", "websocket.disconnect", 1009),
        ("send raised", 1009, "message too big"),
    ]


def test_a_crashing_app_frees_its_slot_and_session(
    client_factory: Callable[..., TestClient],
) -> None:
    """When the app raises, the exception propagates and the connection slot is released."""

    async def crash(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise ValueError("app bug")

    mw = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", crash)]), max_connections=1)
    with client_factory(mw) as client:
        for _ in range(2):  # the second connection is admitted: the first one's slot was freed
            with pytest.raises(ValueError, match="app bug"), client.websocket_connect("/ws") as ws:
                ws.send_text("crash now")
                wait_until(lambda: registered(client, mw.manager) == 0)
        stats = on_loop(client, mw.manager.stats)
    assert stats["connections"] == 0 and not any(stats["rejections"].values())

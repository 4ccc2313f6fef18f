"""Wire protocol v1 for opted-in clients (`?stabilizer=1`): hello, escaping, control frames."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware

from .support import RS, WAIT, Recorder, control, hello, make_chat_app, on_loop, session_id

HELLO_FIELDS = {"t", "v", "session", "token", "interval", "timeout", "resumed", "reason", "ack"}


def test_hello_is_the_first_frame(client_factory: Callable[..., TestClient]) -> None:
    """An opted-in client's first frame is `hello`, with the fields of the contract."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec), heartbeat_interval=7.5, heartbeat_timeout=2)
    with client_factory(mw) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        frame = hello(ws)
        assert set(frame) == HELLO_FIELDS
        assert frame["v"] == 1
        assert frame["interval"] == 7.5 and frame["timeout"] == 2
        assert frame["resumed"] is False and frame["reason"] is None and frame["ack"] == 0
        assert isinstance(frame["token"], str)
        # the app's own first frame comes after hello and names the same session
        assert session_id(ws) == frame["session"]
        session = on_loop(client, mw.manager.get, frame["session"])
        assert session is not None and session.opted_in is True


@pytest.mark.parametrize("value", ["0", "false", ""])
def test_opting_out_values_get_no_hello(
    value: str, client_factory: Callable[..., TestClient]
) -> None:
    """`stabilizer=0` / `false` / empty is a plain client: no hello, no escaping."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec))
    with client_factory(mw) as client, client.websocket_connect(f"/ws?stabilizer={value}") as ws:
        sid = ws.receive_text()
        assert sid.startswith("id:")
        ws.send_text(RS + RS + "x")
        assert ws.receive_text() == RS + RS + "x"
        assert on_loop(client, mw.manager.get, sid[3:]).opted_in is False


@pytest.mark.parametrize("how", ["close", "denial"])
def test_no_hello_when_the_app_refuses(how: str, client_factory: Callable[..., TestClient]) -> None:
    """A handshake the app refuses gets no hello: the refusal reaches the client untouched."""

    async def refuse(websocket: WebSocket) -> None:
        if how == "close":
            await websocket.close(4403, "forbidden")
        else:
            await websocket.send_denial_response(PlainTextResponse("no", status_code=403))

    app = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", refuse)]))
    with client_factory(app) as client:
        if how == "close":
            with pytest.raises(WebSocketDisconnect) as info:
                client.websocket_connect("/ws?stabilizer=1").__enter__()
            assert (info.value.code, info.value.reason) == (4403, "forbidden")
        else:
            with pytest.raises(WebSocketDenialResponse) as denial:
                client.websocket_connect("/ws?stabilizer=1").__enter__()
            assert denial.value.status_code == 403 and denial.value.content == b"no"


async def send_raw(websocket: WebSocket) -> None:
    """Sends the frames the client asks for, verbatim, so escaping can be observed."""
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            await websocket.send_text(text.removeprefix("say:"))
        else:
            await websocket.send_bytes(message["bytes"])


@pytest.mark.parametrize(
    ("app_text", "on_wire"),
    [
        (RS + "x", RS + RS + "x"),
        (RS, RS + RS),
        (RS + RS, RS + RS + RS),
        (RS + '{"t":"ping","ts":1}', RS + RS + '{"t":"ping","ts":1}'),
        ("x" + RS, "x" + RS),
        ("plain", "plain"),
    ],
)
def test_app_text_starting_with_rs_is_escaped(
    app_text: str, on_wire: str, client_factory: Callable[..., TestClient]
) -> None:
    """App text that starts with RS gets one more RS, so it never reads as a control frame."""
    app = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", send_raw)]))
    with client_factory(app) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        hello(ws)
        ws.send_text("say:" + app_text)
        assert ws.receive_text() == on_wire


def test_binary_frames_are_never_escaped(client_factory: Callable[..., TestClient]) -> None:
    """Binary frames are always data: a leading 0x1E byte passes both ways unchanged."""
    app = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", send_raw)]))
    with client_factory(app) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        hello(ws)
        ws.send_bytes(b"\x1e\x1e{}")
        assert ws.receive_bytes() == b"\x1e\x1e{}"


@pytest.mark.parametrize(
    ("client_text", "app_sees"),
    [
        (RS + RS + "x", RS + "x"),
        (RS + RS, RS),
        (RS + RS + RS, RS + RS),
        ("x" + RS, "x" + RS),
    ],
)
def test_client_escaped_frames_are_unescaped_for_the_app(
    client_text: str, app_sees: str, client_factory: Callable[..., TestClient]
) -> None:
    """A client frame starting with RS RS reaches the app with one RS removed."""
    rec = Recorder()
    with (
        client_factory(StabilizerMiddleware(make_chat_app(rec))) as client,
        client.websocket_connect("/ws?stabilizer=1") as ws,
    ):
        sid = session_id(ws)
        ws.send_text(client_text)
        ws.receive_text()
        ws.close()
        rec.wait_done()
    assert ("received", sid, app_sees) in rec.events


CONTROL_FRAMES = [
    RS + '{"t":"pong","ts":1,"n":0}',
    RS + '{"t":"ack","n":0}',
    RS + '{"t":"ack","n":"junk"}',
    RS + '{"t":"ping","ts":"not a number"}',
    RS + '{"t":"ping"}',
    RS + '{"t":"hello"}',
    RS + '{"t":"no-such-type"}',
    RS + "not json",
    RS + "[1,2]",
    RS + '{"t":5}',
    RS + '{"no t":1}',
    RS,
    RS + "{",
    RS + '{"t":"ping","ts":1,"pad":"' + "x" * 10_000 + '"}',
    RS + '"\\ud800"',
]


def test_control_frames_never_reach_the_app(client_factory: Callable[..., TestClient]) -> None:
    """Control frames, valid or malformed, are consumed; the app sees only data frames."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec))
    with client_factory(mw) as client, client.websocket_connect("/ws?stabilizer=1") as ws:
        sid = session_id(ws)
        for frame in CONTROL_FRAMES:
            ws.send_text(frame)
        ws.send_text("data")
        assert ws.receive_text() == "data"  # nothing was answered or echoed before it
        session = on_loop(client, mw.manager.get, sid)
        assert session.frames_in == 1
        counters = on_loop(client, mw.manager.stats)["counters"]
        # all but the first two (a valid pong and ack) are not valid protocol
        assert counters.get("invalid_control_frames") == len(CONTROL_FRAMES) - 2
        ws.close()
        rec.wait_done()
    assert [e for e in rec.events if e[0] == "received"] == [("received", sid, "data")]


def test_client_ping_is_answered_with_pong(client_factory: Callable[..., TestClient]) -> None:
    """A client `ping` gets a `pong` echoing `ts`, with `n` = data frames the server received."""
    rec = Recorder()
    with (
        client_factory(StabilizerMiddleware(make_chat_app(rec))) as client,
        client.websocket_connect("/ws?stabilizer=1") as ws,
    ):
        session_id(ws)
        ws.send_text("one")
        assert ws.receive_text() == "one"
        ws.send_text(RS + '{"t":"ping","ts":123.5,"n":2}')
        pong = control(ws.receive_text())
        assert pong == {"t": "pong", "ts": 123.5, "n": 1}
        ws.send_text("two")
        assert ws.receive_text() == "two"


def test_plain_client_rs_frames_are_data(client_factory: Callable[..., TestClient]) -> None:
    """Without opting in, a frame that looks like control is the app's data, both ways."""
    rec = Recorder()
    with (
        client_factory(StabilizerMiddleware(make_chat_app(rec))) as client,
        client.websocket_connect("/ws") as ws,
    ):
        sid = session_id(ws)
        ws.send_text(RS + '{"t":"ping","ts":1}')
        assert ws.receive_text() == RS + '{"t":"ping","ts":1}'
        ws.close()
        rec.wait_done()
    assert ("received", sid, RS + '{"t":"ping","ts":1}') in rec.events


def test_manager_sends_are_escaped_for_opted_in_clients_only(
    client_factory: Callable[..., TestClient],
) -> None:
    """`send` and `broadcast` escape RS text for opted-in clients and leave plain clients alone."""
    rec = Recorder()
    mw = StabilizerMiddleware(make_chat_app(rec))
    with (
        client_factory(mw) as client,
        client.websocket_connect("/ws?stabilizer=1") as opted,
        client.websocket_connect("/ws") as plain,
    ):
        opted_id, plain_id = session_id(opted), session_id(plain)
        assert on_loop(client, mw.manager.send, opted_id, RS + "a") is True
        assert on_loop(client, mw.manager.send, plain_id, RS + "a") is True
        assert opted.receive_text() == RS + RS + "a"
        assert plain.receive_text() == RS + "a"
        on_loop(client, mw.manager.broadcast, RS + "b")
        assert opted.receive_text() == RS + RS + "b"
        assert plain.receive_text() == RS + "b"


def hello_held_back(app: Any, gate: threading.Event) -> Any:
    """A server whose transport is slow exactly while the `hello` frame is being written."""

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        async def slow_hello_send(message: Message) -> None:
            frame = control(message.get("text"))
            if frame is not None and frame["t"] == "hello":
                await anyio.to_thread.run_sync(gate.wait, WAIT)
            await send(message)

        await app(scope, receive, slow_hello_send if scope["type"] == "websocket" else send)

    return server


def test_hello_precedes_a_broadcast_racing_with_it(
    client_factory: Callable[..., TestClient],
) -> None:
    """Even when the transport is slow to write hello, no data frame overtakes it."""

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        stab = websocket.state.stabilizer
        while (await websocket.receive())["type"] != "websocket.disconnect":
            await stab.broadcast("news")

    gate = threading.Event()
    mw = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", endpoint)]))
    with (
        client_factory(hello_held_back(mw, gate)) as client,
        client.websocket_connect("/ws") as plain,
        # returns on accept, while the hello is still being written
        client.websocket_connect("/ws?stabilizer=1") as opted,
    ):
        try:
            plain.send_text("broadcast now")
            assert plain.receive_text() == "news"  # the broadcast happened during the hello
        finally:
            gate.set()
        first = control(opted.receive_text())
        assert first is not None and first["t"] == "hello"
        assert opted.receive_text() == "news"


def test_client_gone_before_hello_does_not_crash_accept(
    client_factory: Callable[..., TestClient],
) -> None:
    """If writing hello fails, `accept()` still returns; the app learns of it on `receive()`."""
    rec = Recorder()

    async def endpoint(websocket: WebSocket) -> None:
        try:
            await websocket.accept()
            rec.add("accepted")
            rec.add(await websocket.receive())
        except Exception as exc:
            rec.add("raised", type(exc).__name__)
        finally:
            rec.done.set()

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        async def failing_send(message: Message) -> None:
            if message["type"] == "websocket.send":
                raise OSError("client disconnected")  # as uvicorn's ClientDisconnected
            await send(message)

        await mw(scope, receive, failing_send if scope["type"] == "websocket" else send)

    mw = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", endpoint)]))
    with client_factory(server) as client, client.websocket_connect("/ws?stabilizer=1"):
        rec.wait_done()
    assert rec.events[0] == "accepted"

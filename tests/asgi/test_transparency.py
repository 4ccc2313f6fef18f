"""Transparency, tested differentially: the same app with and without the middleware.

Each scenario is an endpoint plus a client script. It runs against the bare app, against the app
wrapped from outside (`StabilizerMiddleware(app)`) and with the middleware added inside Starlette
(`middleware=[Middleware(StabilizerMiddleware)]`), on asyncio and trio. What the client saw
(messages, accept details, close codes, denial responses, exceptions) and what the app saw
(messages, misuse errors) must be identical. The client never opts in; heartbeat is "auto".
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import pytest
from starlette.applications import Starlette
from starlette.exceptions import WebSocketException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from stabilizer_asgi import StabilizerMiddleware

from .support import RS, Recorder

Server = Callable[[WebSocket, Recorder], Awaitable[None]]
ClientScript = Callable[[TestClient, list[Any], Recorder], None]
MODES = ["outer", "inner"]
Backend = Literal["asyncio", "trio"]


def describe(exc: BaseException) -> tuple[Any, ...]:
    """Everything observable about an exception, comparable across runs."""
    if isinstance(exc, WebSocketDenialResponse):
        return ("denial", exc.status_code, sorted(exc.headers.multi_items()), exc.content)
    return (
        type(exc).__name__,
        str(exc),
        getattr(exc, "code", None),
        getattr(exc, "reason", None),
    )


async def record_misuse(rec: Recorder, action: Awaitable[Any]) -> None:
    """Await a call the app should not make and record how it failed (or that it did not)."""
    try:
        await action
    except Exception as exc:
        rec.add("raised", *describe(exc))
    else:
        rec.add("no error")


@dataclass(frozen=True)
class Scenario:
    server: Server | None
    client: ClientScript
    raw_app: Callable[[Recorder], Any] | None = None
    strict: bool = False  # put a server that rejects protocol misuse (like uvicorn) in front


def strict_server(app: Any) -> Any:
    """Emulate a server that enforces the ASGI websocket protocol the way uvicorn does.

    TestClient forwards whatever the app sends; uvicorn raises `RuntimeError` for messages the
    protocol does not allow and an `OSError` (its `ClientDisconnected`) for a send after the
    client has gone, or when the transport fails (here: the text "explode").
    """

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await app(scope, receive, send)
            return
        phase = {"app": "connecting", "client_gone": False}

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                phase["client_gone"] = True
            return message

        async def checked_send(message: Message) -> None:
            kind = message["type"]
            if phase["client_gone"] or message.get("text") == "explode":
                raise OSError("client disconnected")
            if phase["app"] == "connecting":
                if kind == "websocket.accept":
                    phase["app"] = "open"
                elif kind == "websocket.close":
                    phase["app"] = "closed"
                else:
                    raise RuntimeError(
                        f"Expected 'websocket.accept' or 'websocket.close', got {kind!r}"
                    )
            elif phase["app"] == "open":
                if kind == "websocket.close":
                    phase["app"] = "closed"
                elif kind != "websocket.send":
                    raise RuntimeError(
                        f"Expected 'websocket.send' or 'websocket.close', got {kind!r}"
                    )
            else:
                raise RuntimeError(f"Unexpected ASGI message {kind!r} after 'websocket.close'")
            await send(message)

        await app(scope, checked_receive, checked_send)

    return server


def build(scenario: Scenario, rec: Recorder, mode: str) -> Any:
    """The scenario's app: bare, wrapped from outside, or with the middleware added inside."""
    if scenario.raw_app is not None:
        raw = scenario.raw_app(rec)
        wrapped = raw if mode == "bare" else StabilizerMiddleware(raw, heartbeat="auto")
        return strict_server(wrapped) if scenario.strict else wrapped
    server = scenario.server
    assert server is not None

    async def endpoint(websocket: WebSocket) -> None:
        try:
            await server(websocket, rec)
        finally:
            rec.done.set()

    routes = [WebSocketRoute("/ws", endpoint)]
    if mode == "inner":
        app: Any = Starlette(
            routes=routes, middleware=[Middleware(StabilizerMiddleware, heartbeat="auto")]
        )
    else:
        app = Starlette(routes=routes)
        if mode == "outer":
            app = StabilizerMiddleware(app, heartbeat="auto")
    return strict_server(app) if scenario.strict else app


def transcript(scenario: Scenario, backend: str, mode: str) -> tuple[list[Any], list[Any]]:
    """(what the client observed, what the app observed) for one run."""
    rec = Recorder()
    seen: list[Any] = []
    try:
        with TestClient(build(scenario, rec, mode), backend=cast(Backend, backend)) as client:
            scenario.client(client, seen, rec)
    except Exception as exc:
        seen.append(("raised", *describe(exc)))
    return seen, rec.events


# ---------------------------------------------------------------------------- scenarios


async def echo_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    while True:
        message = await ws.receive()
        rec.add(dict(message))
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text == "send json":
            await ws.send_json({"k": [1, "é", None]})
        elif text is not None:
            await ws.send_text(text)
        else:
            await ws.send_bytes(message["bytes"])


TEXTS = [
    "hello",
    "",
    "ping",  # the "always"-mode heartbeat payloads are ordinary data for a plain client
    "pong",
    RS + "starts with RS",  # no escaping for a client that did not opt in
    RS + '{"t":"ping","ts":1}',  # looks like a control frame: still data for a plain client
    RS + RS + "two RS",
    "é ☃ 😀",
    "x" * 70_000,
]


def messages_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        for text in TEXTS:
            ws.send_text(text)
            seen.append(ws.receive())
        for data in (b"\x00\x01\xff", b"", RS.encode() + b"binary"):
            ws.send_bytes(data)
            seen.append(ws.receive())
        ws.send_json({"a": [1, 2], "b": "ü"})
        seen.append(ws.receive())
        ws.send_json({"binary": True}, mode="binary")
        seen.append(ws.receive())
        ws.send_text("send json")
        seen.append(ws.receive_json())
        ws.close(1000)
        rec.wait_done()


async def accept_details_server(ws: WebSocket, rec: Recorder) -> None:
    rec.add("subprotocols", ws.scope["subprotocols"])
    rec.add("x-test", ws.headers.get("x-test"))
    rec.add("query", ws.scope["query_string"], dict(ws.query_params))
    rec.add("path", ws.scope["path"], ws.scope["client"])
    await ws.accept(subprotocol="two", headers=[(b"x-server", b"yes"), (b"x-server", b"twice")])
    await ws.send_text("accepted")
    rec.add(await ws.receive())


def accept_details_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect(
        "/ws?a=1&b=two&a=3", subprotocols=["one", "two"], headers={"x-test": "v"}
    ) as ws:
        seen.append((ws.accepted_subprotocol, ws.extra_headers))
        seen.append(ws.receive_text())
        ws.close(1001)
        rec.wait_done()


async def plain_accept_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    await ws.send_text("accepted")
    rec.add(await ws.receive())


def plain_accept_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        seen.append((ws.accepted_subprotocol, ws.extra_headers))
        seen.append(ws.receive())
        ws.close()
        rec.wait_done()


async def app_close_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    await ws.send_text("bye")
    await ws.close(code=4001, reason="custom reason")
    await record_misuse(rec, ws.send_text("after close"))
    await record_misuse(rec, ws.close())


def app_close_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        seen.append(ws.receive())
        seen.append(ws.receive())
        rec.wait_done()


async def app_close_default_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    await ws.close()


def app_close_default_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        seen.append(ws.receive())
        rec.wait_done()


def client_close_client(code: int, reason: str | None) -> ClientScript:
    def script(client: TestClient, seen: list[Any], rec: Recorder) -> None:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("before close")
            seen.append(ws.receive())
            ws.close(code, reason)
            rec.wait_done()

    return script


async def denial_server(ws: WebSocket, rec: Recorder) -> None:
    response = PlainTextResponse("nope", status_code=401, headers={"x-why": "auth"})
    await ws.send_denial_response(response)
    rec.add("denied")


async def streamed_denial_server(ws: WebSocket, rec: Recorder) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"first "
        yield b"second"

    await ws.send_denial_response(StreamingResponse(body(), status_code=429))
    rec.add("denied")


def connect_only_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    try:
        with client.websocket_connect("/ws") as ws:
            seen.append(ws.receive())
    finally:
        rec.wait_done()


async def close_before_accept_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.close(code=1008, reason="go away")
    await record_misuse(rec, ws.accept())


def no_route_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/nowhere") as ws:  # Starlette's router closes before accept
        seen.append(ws.receive())


async def starlette_misuse_server(ws: WebSocket, rec: Recorder) -> None:
    await record_misuse(rec, ws.send_text("before accept"))
    await record_misuse(rec, ws.receive_text())
    await record_misuse(rec, ws.send({"type": "websocket.bogus"}))
    await ws.accept()
    await record_misuse(rec, ws.accept())
    await record_misuse(rec, ws.send({"type": "websocket.http.response.start", "status": 500}))
    await record_misuse(rec, ws.send({"type": "websocket.bogus"}))
    await ws.send_text("ready")
    rec.add(await ws.receive())
    await ws.close(4000)
    await record_misuse(rec, ws.send_bytes(b"late"))
    rec.add(await ws.receive())  # the client answers the close
    await record_misuse(rec, ws.receive())


def misuse_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        seen.append(ws.receive())
        ws.send_text("go on")
        seen.append(ws.receive())
        ws.close(4000)
        rec.wait_done()


async def send_after_client_left_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    rec.add(await ws.receive())
    await record_misuse(rec, ws.send_text("nobody listens"))
    await record_misuse(rec, ws.receive())


def leave_early_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.close(1001, "gone")
        rec.wait_done()


async def raise_after_accept_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    text = await ws.receive_text()
    raise ValueError("boom: " + text)


async def raise_before_accept_server(ws: WebSocket, rec: Recorder) -> None:
    raise RuntimeError("refused to start")


async def raise_after_close_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    rec.add(await ws.receive())
    raise LookupError("after the client left")


def send_then_wait_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.send_text("trigger")
        rec.wait_done()


def close_then_wait_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.close(1000)
        rec.wait_done()


async def ws_exception_before_accept_server(ws: WebSocket, rec: Recorder) -> None:
    raise WebSocketException(code=1008, reason="policy")


async def ws_exception_after_accept_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    await ws.send_text("soon closed")
    raise WebSocketException(code=4400, reason="bad input")


def receive_all_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        seen.append(ws.receive())
        seen.append(ws.receive())
        rec.wait_done()


def raw_misuse_app(rec: Recorder) -> Any:
    """A raw ASGI app that breaks the websocket protocol; only the server may object."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan_loop(receive, send)
            return
        try:
            rec.add(await receive())
            await send({"type": "websocket.send", "text": "before accept"})
            await send({"type": "websocket.accept", "subprotocol": None})
            await send({"type": "websocket.bogus", "x": 1})
            await send({"type": "websocket.send", "bytes": b"data"})
            await send({"type": "websocket.close", "code": 4003, "reason": "r"})
            await send({"type": "websocket.send", "text": "after close"})
            await send({"type": "websocket.close", "code": 4004})
            rec.add(await receive())
        finally:
            rec.done.set()

    return app


async def lifespan_loop(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return


def raw_misuse_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        seen.append(("accepted", ws.accepted_subprotocol))
        for _ in range(6):
            seen.append(ws.receive())
        ws.close(1000)
        rec.wait_done()


def raw_denial_app(rec: Recorder) -> Any:
    """A raw ASGI app sending a denial response in several body chunks."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan_loop(receive, send)
            return
        try:
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 403,
                    "headers": [(b"x-a", b"1")],
                }
            )
            await send({"type": "websocket.http.response.body", "body": b"a", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"b"})
        finally:
            rec.done.set()

    return app


async def transport_failure_server(ws: WebSocket, rec: Recorder) -> None:
    await ws.accept()
    await record_misuse(rec, ws.send_text("explode"))
    await record_misuse(rec, ws.send_text("after the failure"))
    rec.add(await ws.receive())


def raw_strict_misuse_app(rec: Recorder) -> Any:
    """A raw ASGI app whose protocol errors the (strict) server raises into it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan_loop(receive, send)
            return
        try:
            rec.add(await receive())
            await record_misuse(rec, send({"type": "websocket.send", "text": "before accept"}))
            await send({"type": "websocket.accept"})
            await record_misuse(rec, send({"type": "websocket.bogus"}))
            await record_misuse(rec, send({"type": "websocket.send", "text": "explode"}))
            await send({"type": "websocket.send", "text": "still open"})
            rec.add(await receive())
            await send({"type": "websocket.close", "code": 4005})
            await record_misuse(rec, send({"type": "websocket.send", "text": "after close"}))
            rec.add(await receive())
            await record_misuse(rec, send({"type": "websocket.close"}))
        finally:
            rec.done.set()

    return app


def raw_strict_client(client: TestClient, seen: list[Any], rec: Recorder) -> None:
    with client.websocket_connect("/ws") as ws:
        seen.append(ws.receive())
        ws.send_bytes(b"go")
        seen.append(ws.receive())
        ws.close(4006, "ok")
        rec.wait_done()


SCENARIOS = {
    "messages": Scenario(echo_server, messages_client),
    "accept_subprotocol_and_headers": Scenario(accept_details_server, accept_details_client),
    "accept_plain": Scenario(plain_accept_server, plain_accept_client),
    "app_close_custom_code": Scenario(app_close_server, app_close_client),
    "app_close_default": Scenario(app_close_default_server, app_close_default_client),
    "client_close_custom_code": Scenario(echo_server, client_close_client(4002, "client bye")),
    "client_close_going_away": Scenario(echo_server, client_close_client(1001, None)),
    "denial_response": Scenario(denial_server, connect_only_client),
    "denial_response_streamed": Scenario(streamed_denial_server, connect_only_client),
    "close_before_accept": Scenario(close_before_accept_server, connect_only_client),
    "no_route": Scenario(echo_server, no_route_client),
    "starlette_misuse": Scenario(starlette_misuse_server, misuse_client),
    "send_after_client_left": Scenario(send_after_client_left_server, leave_early_client),
    "raise_after_accept": Scenario(raise_after_accept_server, send_then_wait_client),
    "raise_before_accept": Scenario(raise_before_accept_server, connect_only_client),
    "raise_after_client_left": Scenario(raise_after_close_server, close_then_wait_client),
    "ws_exception_before_accept": Scenario(ws_exception_before_accept_server, connect_only_client),
    "ws_exception_after_accept": Scenario(ws_exception_after_accept_server, receive_all_client),
    "raw_protocol_misuse": Scenario(None, raw_misuse_client, raw_misuse_app),
    "raw_denial_in_chunks": Scenario(None, connect_only_client, raw_denial_app),
    "strict_server_send_after_client_left": Scenario(
        send_after_client_left_server, leave_early_client, strict=True
    ),
    "strict_server_transport_failure": Scenario(
        transport_failure_server, close_then_wait_client, strict=True
    ),
    "strict_server_starlette_misuse": Scenario(starlette_misuse_server, misuse_client, strict=True),
    "strict_server_raw_misuse": Scenario(None, raw_strict_client, raw_strict_misuse_app, True),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_websocket_is_transparent(name: str, mode: str, anyio_backend: str) -> None:
    """A plain client and the app see exactly what they see without the middleware."""
    scenario = SCENARIOS[name]
    expected = transcript(scenario, anyio_backend, "bare")
    assert expected[0] or expected[1], "the scenario observed nothing"
    assert transcript(scenario, anyio_backend, mode) == expected


def test_scenarios_observe_what_they_claim(anyio_backend: str) -> None:
    """The differential baseline itself shows the behaviours the scenarios are named after."""
    seen, events = transcript(SCENARIOS["app_close_custom_code"], anyio_backend, "bare")
    assert seen[1] == {"type": "websocket.close", "code": 4001, "reason": "custom reason"}
    assert events[0][:2] == ("raised", "WebSocketDisconnected")
    seen, _ = transcript(SCENARIOS["denial_response"], anyio_backend, "bare")
    assert seen[0][1:3] == ("denial", 401) and seen[0][4] == b"nope"
    assert ("x-why", "auth") in seen[0][3]
    seen, _ = transcript(SCENARIOS["close_before_accept"], anyio_backend, "bare")
    assert seen == [("raised", "WebSocketDisconnect", "", 1008, "go away")]
    seen, _ = transcript(SCENARIOS["raise_after_accept"], anyio_backend, "bare")
    assert seen == [("raised", "ValueError", "boom: trigger", None, None)]
    _, events = transcript(SCENARIOS["client_close_custom_code"], anyio_backend, "bare")
    assert events[-1] == {"type": "websocket.disconnect", "code": 4002, "reason": "client bye"}


# ---------------------------------------------------------------------------- http and lifespan


def http_app(rec: Recorder, mode: str) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        rec.add("startup")
        yield {"greeting": "hi", "shared": []}
        rec.add("shutdown")

    async def plain(request: Request) -> Response:
        return PlainTextResponse(
            f"{request.url.query}|{request.state.greeting}",
            headers={"x-a": "b"},
        )

    async def state(request: Request) -> Response:
        keys = sorted(k for k in request.scope["state"] if not k.startswith("stabilizer"))
        return JSONResponse(keys)

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body[::-1], media_type="application/octet-stream", status_code=201)

    async def stream(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(3):
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def boom(request: Request) -> Response:
        raise ValueError("http boom")

    routes = [
        Route("/plain", plain),
        Route("/state", state),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        Route("/boom", boom),
    ]
    if mode == "inner":
        return Starlette(
            routes=routes, lifespan=lifespan, middleware=[Middleware(StabilizerMiddleware)]
        )
    app = Starlette(routes=routes, lifespan=lifespan)
    return app if mode == "bare" else StabilizerMiddleware(app)


def http_transcript(backend: str, mode: str) -> tuple[list[Any], list[Any]]:
    rec = Recorder()
    seen: list[Any] = []
    with TestClient(http_app(rec, mode), backend=cast(Backend, backend)) as client:
        seen.append(("app_state", sorted(client.app_state)))
        rec.add("served")
        for method, url, body in [
            ("GET", "/plain?x=1&y=%20z&stabilizer_x=kept-for-http", None),
            ("GET", "/state", None),
            ("POST", "/echo", b"abc"),
            ("GET", "/stream", None),
            ("HEAD", "/plain", None),
            ("GET", "/missing", None),
            ("POST", "/plain", None),
        ]:
            response = client.request(method, url, content=body)
            seen.append((response.status_code, sorted(response.headers.multi_items())))
            seen.append(response.content)
        try:
            client.get("/boom")
        except Exception as exc:
            seen.append(describe(exc))
    return seen, rec.events


@pytest.mark.parametrize("mode", MODES)
def test_http_and_lifespan_are_transparent(mode: str, anyio_backend: str) -> None:
    """HTTP responses, app exceptions, lifespan events and lifespan state pass unchanged."""
    expected = http_transcript(anyio_backend, "bare")
    assert expected[1] == ["startup", "served", "shutdown"]
    assert ("ValueError", "http boom", None, None) in expected[0]
    assert http_transcript(anyio_backend, mode) == expected


def failing_lifespan_app(where: str) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if where == "startup":
            raise RuntimeError("cannot start")
        yield
        raise RuntimeError("cannot stop")

    return Starlette(lifespan=lifespan)


async def no_lifespan_support(scope: Scope, receive: Receive, send: Send) -> None:
    assert scope["type"] == "http", "this app only speaks http"


def lifespan_outcome(app: Any, backend: str) -> tuple[Any, ...] | None:
    try:
        with TestClient(app, backend=cast(Backend, backend)):
            pass
    except Exception as exc:
        return describe(exc)
    return None


@pytest.mark.parametrize("kind", ["startup", "shutdown", "unsupported"])
def test_lifespan_failures_are_transparent(kind: str, anyio_backend: str) -> None:
    """A failing or unsupported lifespan reaches the server as the app's own exception."""

    def make() -> Any:
        return no_lifespan_support if kind == "unsupported" else failing_lifespan_app(kind)

    expected = lifespan_outcome(make(), anyio_backend)
    assert expected is not None
    assert lifespan_outcome(StabilizerMiddleware(make()), anyio_backend) == expected


def test_lifespan_state_written_by_a_raw_app_reaches_the_server(anyio_backend: str) -> None:
    """A raw app storing lifespan state sees the server's dict itself, not a copy."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            scope["state"]["pool"] = "ready"
            await lifespan_loop(receive, send)

    with TestClient(StabilizerMiddleware(app), backend=cast(Backend, anyio_backend)) as client:
        assert client.app_state == {"pool": "ready"}


def test_reused_app_serves_again_after_a_lifespan_shutdown(anyio_backend: str) -> None:
    """One app object run by several `TestClient`s (one per test) accepts after each restart."""
    rec = Recorder()
    app = StabilizerMiddleware(Starlette(routes=[WebSocketRoute("/ws", _accept_and_greet)]))
    for _ in range(2):
        with (
            TestClient(app, backend=cast(Backend, anyio_backend)) as client,
            client.websocket_connect("/ws") as ws,
        ):
            rec.add(ws.receive_text())
    assert rec.events == ["hi", "hi"]


async def _accept_and_greet(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text("hi")
    message: Message = await ws.receive()
    assert message["type"] == "websocket.disconnect"

"""What the app finds in its scope: `stabilizer*` query parameters removed, the manager and the
session in a copied `scope["state"]`."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from stabilizer_asgi import Session, SessionState, Stabilizer, StabilizerMiddleware

from .support import Recorder, call_websocket, control, on_loop

CONNECT = {"type": "websocket.connect"}
DISCONNECT = {"type": "websocket.disconnect", "code": 1000}


def scope_app(rec: Recorder) -> Starlette:
    """`/ws` records the query string and state it sees; `/http` does the same for HTTP."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"pool": ["shared resource"]}

    async def ws(websocket: WebSocket) -> None:
        state = websocket.scope["state"]
        rec.add("query", websocket.scope["query_string"])
        rec.add("state", dict(state))
        await websocket.accept()
        await websocket.send_text("ready")
        await websocket.receive()
        rec.done.set()

    async def http(request: Request) -> Response:
        state = request.scope["state"]
        rec.add("http_state", dict(state))
        rec.add("query", request.scope["query_string"])
        return JSONResponse(sorted(state))

    return Starlette(routes=[WebSocketRoute("/ws", ws), Route("/http", http)], lifespan=lifespan)


def query_seen(client: TestClient, rec: Recorder, query: str) -> bytes:
    """The query string the endpoint saw for a connection made with `?query`."""
    rec.events.clear()
    rec.done.clear()
    with client.websocket_connect("/ws?" + query) as ws:
        first = ws.receive_text()
        if control(first) is not None:
            first = ws.receive_text()
        assert first == "ready"
        ws.close()
        rec.wait_done()
    seen: bytes = rec.events[0][1]
    return seen


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("stabilizer=1", b""),
        ("a=1&stabilizer=1&b=2", b"a=1&b=2"),
        ("stabilizer=1&stabilizer_resume=abc.def&stabilizer_ack=3&room=9", b"room=9"),
        ("b=2&a=1&stabilizerX=9&a=0", b"b=2&a=1&a=0"),
        ("stabilizer_future_option=on&x=y", b"x=y"),
        ("stabilizer", b""),
        ("q=stabilizer&stabilizer_in_value=stabilizer", b"q=stabilizer"),
        ("notstabilizer=1&Stabilizer=1", b"notstabilizer=1&Stabilizer=1"),
        ("stabiliz%65r=1&a=1", b"stabiliz%65r=1&a=1"),  # names are matched undecoded
        ("a=%20b+c&client_id=%C3%A9&flag", b"a=%20b+c&client_id=%C3%A9&flag"),
        ("stabilizer_ack=not-a-number&stabilizer=1&keep=1", b"keep=1"),
        ("", b""),
    ],
)
def test_stabilizer_query_parameters_are_removed(
    query: str, expected: bytes, client_factory: Callable[..., TestClient]
) -> None:
    """Only parameters whose name starts with `stabilizer` disappear; the rest keep their order."""
    rec = Recorder()
    with client_factory(StabilizerMiddleware(scope_app(rec))) as client:
        assert query_seen(client, rec, query) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"a=\xff\xfe&stabilizer=1&b=\x00", b"a=\xff\xfe&b=\x00"),
        (b"&&stabilizer=1&&", b"&&&"),
        (b"=&==&stabilizer==&a==b", b"=&==&a==b"),
        (b"%ZZ&stabilizer=%E2%28&stabilizer_ack=%FF", b"%ZZ"),
        (b"stabilizer_resume=" + b"t" * 5000 + b"&x=1", b"x=1"),
        (b"stabilizer_ack=99999999999999999999999&y", b"y"),
    ],
)
async def test_malformed_query_strings_do_not_crash(raw: bytes, expected: bytes) -> None:
    """Junk query bytes reach the app with only the `stabilizer*` parts removed."""
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["query_string"])
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    sent = await call_websocket(StabilizerMiddleware(app), [CONNECT, DISCONNECT], query_string=raw)
    assert seen == [expected]
    assert sent[0] == {"type": "websocket.accept"}


def test_http_query_strings_are_untouched(client_factory: Callable[..., TestClient]) -> None:
    """HTTP requests keep `stabilizer*` parameters: only websocket handshakes carry the protocol."""
    rec = Recorder()
    with client_factory(StabilizerMiddleware(scope_app(rec))) as client:
        assert client.get("/http?stabilizer=1&a=2").status_code == 200
    assert ("query", b"stabilizer=1&a=2") in rec.events


def test_websocket_state_has_manager_and_session(
    client_factory: Callable[..., TestClient],
) -> None:
    """`websocket.state.stabilizer` is the manager; `stabilizer_session` is this connection."""
    rec = Recorder()
    mw = StabilizerMiddleware(scope_app(rec))
    with client_factory(mw) as client:
        with client.websocket_connect("/ws?client_id=c1") as ws:
            assert ws.receive_text() == "ready"
            state = rec.events[1][1]
            session = state["stabilizer_session"]
            assert state["stabilizer"] is mw.manager
            assert isinstance(session, Session)
            assert on_loop(client, mw.manager.get, session.id) is session
            assert session.client_id == "c1" and session.state is SessionState.CONNECTED
            assert state["pool"] == ["shared resource"]  # lifespan state still there
            ws.close()
            rec.wait_done()
        assert set(client.app_state) == {"pool"}  # the server's lifespan state is untouched


def test_http_state_has_manager_only(client_factory: Callable[..., TestClient]) -> None:
    """`request.state.stabilizer` is the manager; HTTP has no session."""
    rec = Recorder()
    mw = StabilizerMiddleware(scope_app(rec))
    with client_factory(mw) as client:
        assert client.get("/http").json() == ["pool", "stabilizer"]
        assert set(client.app_state) == {"pool"}
    state = rec.events[0][1]
    assert state["stabilizer"] is mw.manager


def test_manager_passed_in_is_the_one_in_state(client_factory: Callable[..., TestClient]) -> None:
    """`StabilizerMiddleware(app, manager=m)` exposes exactly `m` to endpoints."""
    rec = Recorder()
    manager = Stabilizer(heartbeat="off")
    with client_factory(StabilizerMiddleware(scope_app(rec), manager=manager)) as client:
        client.get("/http")
    assert rec.events[0][1]["stabilizer"] is manager


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["websocket", "http"])
async def test_state_is_copied_not_written_into(kind: str) -> None:
    """The server's state dict is not mutated; the app gets a shallow copy with our keys added."""
    shared_value = ["pool"]
    server_state: dict[str, Any] = {"pool": shared_value}
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"])
        if kind == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await receive()
        else:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    mw = StabilizerMiddleware(app)
    if kind == "websocket":
        await call_websocket(mw, [CONNECT, DISCONNECT], state=server_state)
    else:
        await call_http(mw, state=server_state)
    assert server_state == {"pool": shared_value}
    state = seen[0]
    assert state is not server_state
    assert state["pool"] is shared_value  # shallow: lifespan resources are shared, not cloned
    assert state["stabilizer"] is mw.manager
    assert ("stabilizer_session" in state) is (kind == "websocket")


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["websocket", "http"])
@pytest.mark.parametrize("given", ["absent", "none", "empty"])
async def test_state_is_created_when_the_server_gives_none(kind: str, given: str) -> None:
    """A server that passes no state (or None, or {}) still gives the app the manager."""
    seen: list[dict[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"])
        if kind == "websocket":
            await receive()
            await send({"type": "websocket.close"})
        else:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    options: dict[str, dict[str, Any]] = {
        "absent": {},
        "none": {"state": None},
        "empty": {"state": {}},
    }
    extra = options[given]
    mw = StabilizerMiddleware(app)
    if kind == "websocket":
        await call_websocket(mw, [CONNECT], **extra)
    else:
        await call_http(mw, **extra)
    assert seen[0]["stabilizer"] is mw.manager
    if kind == "websocket":
        assert isinstance(seen[0]["stabilizer_session"], Session)
    if given == "empty":
        assert extra["state"] == {}


def test_starlette_request_state_works_without_lifespan(
    client_factory: Callable[..., TestClient],
) -> None:
    """`request.state.stabilizer` works for an app that has no lifespan state at all."""

    async def http(request: Request) -> Response:
        return JSONResponse(request.state.stabilizer.count())

    app = StabilizerMiddleware(Starlette(routes=[Route("/", http)]))
    with client_factory(app) as client:
        assert client.get("/").json() == 0


async def call_http(app: Any, **scope: Any) -> list[dict[str, Any]]:
    """Call `app` directly with an HTTP scope; return what it sent."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    full: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [],
        "client": ("10.0.0.1", 4321),
        "server": ("testserver", 80),
        **scope,
    }
    await app(full, receive, send)
    return sent


def test_state_survives_copy_and_deepcopy(client_factory: Callable[..., TestClient]) -> None:
    """`copy.copy` / `copy.deepcopy(scope["state"])` work once the middleware is in, on HTTP
    and websocket scopes, and every copy holds this very manager and session."""
    seen: dict[str, Any] = {}

    async def ws(websocket: WebSocket) -> None:
        state = websocket.scope["state"]
        for name, make in (("shallow", copy.copy), ("deep", copy.deepcopy)):
            clone = make(state)
            seen[f"ws_{name}"] = (clone["stabilizer"], clone["stabilizer_session"], clone["pool"])
        seen["ws"] = (state["stabilizer"], state["stabilizer_session"], state["pool"])
        await websocket.accept()
        await websocket.send_text("ready")
        await websocket.receive()

    async def http(request: Request) -> Response:
        seen["http_deep"] = copy.deepcopy(request.scope["state"])["stabilizer"]
        return Response("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        yield {"pool": ["shared resource"]}

    app = StabilizerMiddleware(
        Starlette(routes=[WebSocketRoute("/ws", ws), Route("/http", http)], lifespan=lifespan)
    )
    with client_factory(app) as client:
        assert client.get("/http").text == "ok"
        with client.websocket_connect("/ws?stabilizer=1") as websocket:
            while websocket.receive_text() != "ready":
                pass
            manager, session, pool = seen["ws"]
            assert isinstance(session, Session) and session.state is SessionState.CONNECTED
    assert manager is app.manager and seen["http_deep"] is app.manager
    for name in ("ws_shallow", "ws_deep"):
        assert seen[name][0] is manager and seen[name][1] is session
    assert seen["ws_shallow"][2] is pool
    assert seen["ws_deep"][2] == pool and seen["ws_deep"][2] is not pool  # the rest is copied

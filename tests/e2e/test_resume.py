"""Resume end to end: real uvicorn, raw `websockets` clients that abort TCP mid-stream.

Every test asserts on what a client author sees on the wire (protocol v1) and on what the app
received, frame by frame: exactly once, in order, both ways — or a new session with the reason.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from websockets.asyncio.client import ClientConnection, connect

from stabilizer_asgi import StabilizerMiddleware

from ..helpers import await_until, recording_sink

pytestmark = pytest.mark.anyio

RS = "\x1e"
RECEIVED: dict[str, list[str]] = {}
SESSIONS: list[tuple[str, bool]] = []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


sink = recording_sink(RECEIVED, SESSIONS)


async def burst(request: Request) -> JSONResponse:
    stab = request.state.stabilizer
    start = int(request.query_params["start"])
    count = int(request.query_params["count"])
    delivered = 0
    for i in range(start, start + count):
        result = await stab.broadcast(f"m{i}")
        delivered += result.delivered
    return JSONResponse({"delivered": delivered})


async def state(request: Request) -> JSONResponse:
    session = request.state.stabilizer.get(request.query_params["sid"])
    return JSONResponse({"state": None if session is None else session.state.value})


def make(**kwargs: Any) -> StabilizerMiddleware:
    app = Starlette(
        routes=[
            WebSocketRoute("/ws", sink),
            Route("/burst", burst, methods=["POST"]),
            Route("/state", state),
        ]
    )
    kwargs.setdefault("secret", "test-secret")
    return StabilizerMiddleware(app, **kwargs)


class Peer:
    """A raw protocol-v1 client: counts data frames, answers pings, never reconnects itself."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}
        self.data: list[str] = []

    @classmethod
    async def open(cls, base: str, *, token: str | None = None, ack: int | str = 0) -> Peer:
        url = base + "/ws?stabilizer=1"
        if token is not None:
            url += f"&stabilizer_resume={quote(token)}&stabilizer_ack={ack}"
        peer = cls(await connect(url))
        first = await asyncio.wait_for(peer.ws.recv(), 5)
        assert isinstance(first, str) and first.startswith(RS)
        peer.hello = json.loads(first[1:])
        assert peer.hello["t"] == "hello"
        return peer

    async def read(self, count: int) -> list[str]:
        """The next `count` data frames (control frames handled, escapes removed)."""
        out: list[str] = []
        while len(out) < count:
            frame = await asyncio.wait_for(self.ws.recv(), 5)
            assert isinstance(frame, str)
            if frame.startswith(RS) and not frame.startswith(RS * 2):
                control = json.loads(frame[1:])
                if control["t"] == "ping":
                    pong = {"t": "pong", "ts": control["ts"], "n": len(self.data)}
                    await self.ws.send(RS + json.dumps(pong))
                continue
            if frame.startswith(RS):
                frame = frame[1:]
            self.data.append(frame)
            out.append(frame)
        return out

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network cut)."""
        self.ws.transport.abort()


async def wait_state(http: httpx.AsyncClient, server: Any, sid: str, want: str | None) -> None:
    for _ in range(500):
        got = (await http.get(server.http(f"/state?sid={sid}"))).json()["state"]
        if got == want:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"session {sid} never became {want}; last {got}")


async def test_server_to_client_frames_survive_a_cut(uvicorn_server: Any) -> None:
    """Frames in flight when TCP dies and frames sent while detached arrive once, in order."""
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        assert peer.hello["resumed"] is False and token
        await http.post(server.http("/burst?start=1&count=50"))
        await peer.read(20)
        peer.abort()  # frames 21..50 may be in flight or in kernel buffers: all lost
        await wait_state(http, server, sid, "detached")
        r = await http.post(server.http("/burst?start=51&count=50"))
        assert r.json() == {"delivered": 50}  # a detached session buffers for replay

        again = await Peer.open(base, token=token, ack=20)
        assert again.hello["resumed"] is True
        assert again.hello["session"] == sid
        assert again.hello["token"] not in ("", token)
        assert again.hello["reason"] is None
        await http.post(server.http("/burst?start=101&count=10"))
        got = await again.read(90)
        assert peer.data + got == [f"m{i}" for i in range(1, 111)]
        assert SESSIONS[-1] == (sid, True)
        await again.ws.close()


async def test_client_to_server_frames_survive_a_cut(uvicorn_server: Any) -> None:
    """hello.ack tells the client what to resend; the app takes every frame exactly once."""
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        sent = [f"c{i}" for i in range(1, 201)]
        for text in sent[:150]:
            await peer.ws.send(text)
        peer.abort()
        await wait_state(http, server, sid, "detached")
        again = await Peer.open(base, token=token, ack=0)
        assert again.hello["resumed"] is True
        ack = again.hello["ack"]
        assert 0 <= ack <= 150
        for text in sent[ack:]:
            await again.ws.send(text)
        await await_until(lambda: len(RECEIVED[sid]) >= len(sent))
        assert RECEIVED[sid] == sent
        await again.ws.close()


async def test_takeover_of_a_half_open_connection(uvicorn_server: Any) -> None:
    """Resuming while the server still holds the old connection supersedes it, losing nothing."""
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        await peer.ws.send("before")
        await http.post(server.http("/burst?start=1&count=5"))
        await peer.read(5)
        again = await Peer.open(base, token=token, ack=5)  # old one still open server-side
        assert again.hello["resumed"] is True and again.hello["session"] == sid
        assert again.hello["ack"] == 1
        await again.ws.send("after")
        await http.post(server.http("/burst?start=6&count=1"))
        assert await again.read(1) == ["m6"]
        await await_until(lambda: len(RECEIVED[sid]) >= 2)
        assert RECEIVED[sid] == ["before", "after"]
        with pytest.raises(Exception):  # noqa: B017 - the superseded socket is closed
            await peer.read(1)
        await again.ws.close()


@pytest.mark.parametrize(
    ("mangle", "ack", "reason"),
    [
        (lambda t: "garbage", 0, "invalid"),
        (lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"), 0, "invalid"),
        (lambda t: t[: len(t) // 2], 0, "invalid"),
        (lambda t: t, 999, "invalid"),
        (lambda t: t, "-1", "invalid"),
        (lambda t: t, "abc", "invalid"),
    ],
    ids=["garbage", "tampered", "truncated", "ack-beyond-sent", "ack-negative", "ack-junk"],
)
async def test_bad_resume_requests_get_a_new_session(
    uvicorn_server: Any, mangle: Any, ack: int | str, reason: str
) -> None:
    """Bad tokens and absurd acks: a fresh session with the reason; the real one is untouched."""
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        await http.post(server.http("/burst?start=1&count=3"))
        await peer.read(3)
        peer.abort()
        await wait_state(http, server, sid, "detached")
        bad = await Peer.open(base, token=mangle(token), ack=ack)
        assert bad.hello["resumed"] is False
        assert bad.hello["reason"] == reason
        assert bad.hello["session"] != sid
        await http.post(server.http("/burst?start=4&count=1"))
        assert await bad.read(1) == ["m4"]  # only live traffic, none of the other session's
        await bad.ws.close()
        good = await Peer.open(base, token=token, ack=3)  # the real client still resumes
        assert good.hello["resumed"] is True and good.hello["session"] == sid
        assert await good.read(1) == ["m4"]
        await good.ws.close()


async def test_a_token_from_a_restarted_process_without_secret_is_unknown(
    uvicorn_server: Any,
) -> None:
    """Without `secret` each process signs with its own random key: a token from before a
    restart (another process) is answered `unknown`, as for any session the server lacks."""
    before = uvicorn_server(make(secret=None))
    after = uvicorn_server(make(secret=None))
    peer = await Peer.open(f"ws://127.0.0.1:{before.port}")
    token = peer.hello["token"]
    peer.abort()
    fresh = await Peer.open(f"ws://127.0.0.1:{after.port}", token=token, ack=0)
    assert fresh.hello["resumed"] is False and fresh.hello["reason"] == "unknown"
    await fresh.ws.close()


async def test_used_token_is_refused(uvicorn_server: Any) -> None:
    """Once the client sent a frame on the resumed connection, the token it resumed with is
    spent: a replay of it gets a new session with reason "invalid"."""
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        peer.abort()
        await wait_state(http, server, sid, "detached")
        first = await Peer.open(base, token=token, ack=0)
        assert first.hello["resumed"] is True
        await first.ws.send("proof")  # it read hello: it holds the new token
        await await_until(lambda: RECEIVED.get(sid, [])[-1:] == ["proof"])
        first.abort()
        await wait_state(http, server, sid, "detached")
        replayed = await Peer.open(base, token=token, ack=0)
        assert replayed.hello["resumed"] is False and replayed.hello["reason"] == "invalid"
        await replayed.ws.close()


async def test_a_lost_hello_does_not_cost_the_session(uvicorn_server: Any) -> None:
    """A resumed connection that drops before its client sent anything (its hello may be lost)
    leaves the spent token good for a retry, which gets the same new token and every frame."""
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        peer.abort()
        await wait_state(http, server, sid, "detached")
        await http.post(server.http("/burst?start=1&count=3"))
        lost = await Peer.open(base, token=token, ack=0)
        assert lost.hello["resumed"] is True
        lost.abort()  # as if the hello never reached the client
        await wait_state(http, server, sid, "detached")
        retry = await Peer.open(base, token=token, ack=0)
        assert retry.hello["resumed"] is True and retry.hello["session"] == sid
        assert retry.hello["token"] == lost.hello["token"]
        assert await retry.read(3) == ["m1", "m2", "m3"]
        await retry.ws.send("proof")
        await await_until(lambda: RECEIVED.get(sid, [])[-1:] == ["proof"])
        retry.abort()
        await wait_state(http, server, sid, "detached")
        spent = await Peer.open(base, token=token, ack=0)
        assert spent.hello["resumed"] is False and spent.hello["reason"] == "invalid"
        await spent.ws.close()
        resumed = await Peer.open(base, token=retry.hello["token"], ack=3)
        assert resumed.hello["resumed"] is True and resumed.hello["session"] == sid
        await resumed.ws.close()


async def test_a_retry_with_the_previous_token_takes_over_the_live_connection(
    uvicorn_server: Any,
) -> None:
    """While the resumed connection is still open, a retry with the previous token takes the
    session over and the half-dead connection is closed: never two live connections."""
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        peer.abort()
        await wait_state(http, server, sid, "detached")
        half_dead = await Peer.open(base, token=token, ack=0)
        assert half_dead.hello["resumed"] is True
        retry = await Peer.open(base, token=token, ack=0)
        assert retry.hello["resumed"] is True and retry.hello["session"] == sid
        await asyncio.wait_for(half_dead.ws.wait_closed(), 5)
        assert half_dead.ws.close_code == 1000
        await http.post(server.http("/burst?start=1&count=2"))
        assert await retry.read(2) == ["m1", "m2"]
        await retry.ws.close()


async def test_normal_close_ends_the_session(uvicorn_server: Any) -> None:
    server = uvicorn_server(make())
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        peer = await Peer.open(base)
        sid, token = peer.hello["session"], peer.hello["token"]
        await peer.ws.close(1000)
        await wait_state(http, server, sid, None)
        again = await Peer.open(base, token=token, ack=0)
        assert again.hello["resumed"] is False and again.hello["reason"] == "unknown"
        await again.ws.close()


async def test_expired_window_and_overflowed_buffer(uvicorn_server: Any) -> None:
    server = uvicorn_server(make(resume_window=0.3, replay_buffer_messages=10))
    base = f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as http:
        old = await Peer.open(base)
        old.abort()
        await wait_state(http, server, old.hello["session"], None)  # swept after the window
        late = await Peer.open(base, token=old.hello["token"], ack=0)
        assert late.hello["resumed"] is False and late.hello["reason"] == "expired"
        late.abort()
        await wait_state(http, server, late.hello["session"], "detached")
        await http.post(server.http("/burst?start=1&count=11"))  # one more than the buffer holds
        gap = await Peer.open(base, token=late.hello["token"], ack=0)
        assert gap.hello["resumed"] is False and gap.hello["reason"] == "gap"
        await gap.ws.close()


async def test_server_restart_is_unknown(uvicorn_server: Any) -> None:
    """Another process with the same secret has no such session: "unknown", never "resumed"."""
    first = uvicorn_server(make())
    peer = await Peer.open(f"ws://127.0.0.1:{first.port}")
    second = uvicorn_server(make())
    again = await Peer.open(f"ws://127.0.0.1:{second.port}", token=peer.hello["token"], ack=0)
    assert again.hello["resumed"] is False and again.hello["reason"] == "unknown"
    await peer.ws.close()
    await again.ws.close()

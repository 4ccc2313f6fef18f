"""Helpers shared by the test packages: control frames, polling, a client that never reads."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

RS = "\x1e"
# Generous upper bound for anything a test waits on; nothing asserts on how fast it happens.
WAIT = 5.0


def control(frame: object) -> dict[str, Any] | None:
    """The control frame in `frame`, or None for a data frame."""
    if isinstance(frame, str) and frame[:1] == RS and frame[1:2] != RS:
        obj = json.loads(frame[1:])
        assert isinstance(obj, dict)
        return obj
    return None


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Poll `predicate` until it holds; fail the test if it never does."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the timeout")
        time.sleep(0.005)


async def await_until(
    check: Callable[[], object], timeout: float = WAIT, what: str = "the condition"
) -> None:
    """`wait_until` for async tests: poll `check()` (its result may be awaitable) until it is
    true; fail saying `what` never happened."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await anyio.sleep(0.005)


def recording_sink(
    received: dict[str, list[str]], sessions: list[tuple[str, bool]]
) -> Callable[[WebSocket], Awaitable[None]]:
    """A plain Starlette endpoint that records, per session, every frame its app takes, and
    each connection's (session id, resumed)."""

    async def sink(websocket: WebSocket) -> None:
        await websocket.accept()
        me = websocket.state.stabilizer_session
        sessions.append((me.id, me.resumed))
        got = received.setdefault(me.id, [])
        try:
            while True:
                got.append(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    return sink


async def never_reading_client(port: int, path: str) -> socket.socket:
    """A websocket client on a bare socket that completes the handshake and never reads.

    Its small receive buffer turns off loopback autotuning (up to 32 MB here), so the kernel
    cannot absorb the server's backlog on its behalf and the server's transport really backs up.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock

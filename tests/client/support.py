"""What the client end-to-end tests share: a TCP proxy they can cut, and the server app."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

from stabilizer_asgi import StabilizerMiddleware

from ..helpers import recording_sink


class TcpProxy:
    """A loopback TCP proxy in front of a server, to break connections the way networks do.

    `cut()` aborts every connection through it (both ends see a reset, nothing is flushed);
    `freeze()` stops forwarding on the current connections without closing them (a black hole:
    only heartbeats can tell). New connections go to the current `upstream`; while `held` is
    cleared they wait (connected to the proxy, not yet to the server).
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.StreamWriter, asyncio.StreamWriter] = {}
        self._frozen: set[asyncio.StreamWriter] = set()
        self.held = asyncio.Event()
        self.held.set()

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        await self._server.wait_closed()

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def cut(self) -> int:
        """Abort every live connection; how many there were."""
        links = list(self._links.items())
        self._links.clear()
        self._frozen.clear()
        for downstream, upstream in links:
            downstream.transport.abort()
            upstream.transport.abort()
        return len(links)

    def freeze(self) -> int:
        """Stop forwarding on every live connection, leaving it open; how many there were."""
        self._frozen.update(self._links)
        return len(self._links)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.held.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._links[writer] = up_writer
        await asyncio.gather(
            self._pipe(reader, up_writer, writer), self._pipe(up_reader, writer, writer)
        )
        if self._links.pop(writer, None) is not None:
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if key in self._frozen:
                    continue  # swallowed: the peer never hears of it
                writer.write(data)
                await writer.drain()
            if key not in self._frozen and writer.can_write_eof():
                writer.write_eof()


RECEIVED: dict[str, list[str]] = {}
"""Every data frame the app took, per session id, in order."""
SESSIONS: list[tuple[str, bool]] = []
"""(session id, resumed) for every connection the app accepted."""

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>client test</title></head><body>
<script type="module">
import { StabilizerSocket } from "/_stabilizer/client.js";
window.StabilizerSocket = StabilizerSocket;
window.moduleLoaded = true;
</script></body></html>
"""


sink = recording_sink(RECEIVED, SESSIONS)


async def push(request: Request) -> JSONResponse:
    """Send `count` numbered frames to one session through the manager (buffered while
    detached); the results of each send."""
    stab = request.state.stabilizer
    sid = request.query_params["sid"]
    start, count = int(request.query_params["start"]), int(request.query_params["count"])
    results = [await stab.send(sid, f"s{i}") for i in range(start, start + count)]
    return JSONResponse(results)


async def kick(request: Request) -> JSONResponse:
    """Close one session's connection from the server (1012 = restart: resumable)."""
    stab = request.state.stabilizer
    code = int(request.query_params.get("code", "1012"))
    return JSONResponse(await stab.close(request.query_params["sid"], code, "kicked"))


async def drain(request: Request) -> JSONResponse:
    """Drain with a short period (the route is the test's, so no admin token is involved)."""
    report = await request.state.stabilizer.drain(float(request.query_params["period"]))
    return JSONResponse(report._asdict())


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


def make_server_app(**kwargs: Any) -> StabilizerMiddleware:
    app = Starlette(
        routes=[
            Route("/", page),
            WebSocketRoute("/ws", sink),
            Route("/push", push, methods=["POST"]),
            Route("/kick", kick, methods=["POST"]),
            Route("/drain", drain, methods=["POST"]),
        ]
    )
    kwargs.setdefault("secret", "client-tests")
    return StabilizerMiddleware(app, **kwargs)


async def break_line(way: int, proxy: TcpProxy, http: Any, kick_url: str) -> None:
    """Break a client's connection the `way % 3`-th way: abort its TCP connection, black-hole
    it (only heartbeats can tell), or have the server close it with 1012 (`kick_url`)."""
    if way % 3 == 0:
        assert proxy.cut() >= 1
    elif way % 3 == 1:
        assert proxy.freeze() >= 1
    else:
        assert (await http.post(kick_url)).json() is True

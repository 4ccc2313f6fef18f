"""A resume soak: Python clients behind a proxy that resets every connection, through uvicorn.

Each client sends numbered messages (`c0`, `c1`, ...) and the app answers each with `r<n>`;
meanwhile a TCP proxy aborts every connection 50–500 ms after it opens. At the end every message
must have been taken by the app exactly once and every answer received exactly once, with no
resync. The test runs it briefly; `python -m tests.client.soak SECONDS` runs it for measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from stabilizer_asgi import StabilizerMiddleware
from stabilizer_asgi.client import ResyncEvent, connect


class ResettingProxy:
    """A loopback TCP proxy that aborts (RST, both ends) each connection a random 50–500 ms
    after it opens, until `calm()`."""

    def __init__(self, upstream: int, low: float = 0.05, high: float = 0.5) -> None:
        self.upstream = upstream
        self.low, self.high = low, high
        self.port = 0
        self.resets = 0
        self.connections = 0
        self._calm = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ResettingProxy:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def calm(self) -> None:
        """Stop resetting: connections opened from now on live on."""
        self._calm = True

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            except OSError:
                writer.transport.abort()
                return
            self.connections += 1
            pipes = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            if self._calm:
                await pipes
            else:
                try:
                    await asyncio.wait_for(pipes, random.uniform(self.low, self.high))
                except asyncio.TimeoutError:
                    self.resets += 1
            writer.transport.abort()
            up_writer.transport.abort()
        except asyncio.CancelledError:
            writer.transport.abort()  # the proxy is closing: end quietly
        finally:
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class AnsweringApp:
    """Records every `c<n>` the app takes, per client (`?cid=`), and answers it with `r<n>`."""

    def __init__(self) -> None:
        self.taken: dict[str, list[int]] = {}

    async def endpoint(self, websocket: WebSocket) -> None:
        await websocket.accept()
        got = self.taken.setdefault(websocket.query_params["cid"], [])
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                text = await websocket.receive_text()
                got.append(int(text[1:]))
                await websocket.send_text("r" + text[1:])

    def asgi(self, **settings: Any) -> StabilizerMiddleware:
        app = Starlette(routes=[WebSocketRoute("/soak", self.endpoint)])
        settings.setdefault("secret", "soak-secret")
        return StabilizerMiddleware(app, **settings)


@dataclass
class SoakResult:
    """What a soak saw; `lost`/`duplicated` count messages in both directions."""

    clients: int
    seconds: float
    sent: int = 0
    answered: int = 0
    resets: int = 0
    resyncs: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    lost_answers: int = 0
    server_counters: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


async def _client(
    url: str, cid: str, stop: asyncio.Event, interval: float, result: SoakResult
) -> tuple[int, list[int]]:
    answers: list[int] = []
    resyncs: list[ResyncEvent] = []
    sent = 0
    conn = await connect(
        f"{url}?cid={cid}",
        backoff_base=0.02,
        backoff_cap=0.2,
        on_resync=resyncs.append,
        open_timeout=5,
    )

    async def read() -> None:
        async for frame in conn:
            assert isinstance(frame, str)
            answers.append(int(frame[1:]))

    reader = asyncio.create_task(read())
    try:
        while not stop.is_set():
            await conn.send(f"c{sent}")
            sent += 1
            await asyncio.sleep(interval * random.uniform(0.5, 1.5))
        # Let the last answers arrive (they may still be replayed after a reset).
        deadline = time.monotonic() + 15
        while len(set(answers)) < sent and time.monotonic() < deadline and not resyncs:  # noqa: ASYNC110 - polls a list the reader fills
            await asyncio.sleep(0.02)
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await conn.close()
    result.resyncs += len(resyncs)
    return sent, answers


async def soak(
    server_port: int, app: AnsweringApp, *, clients: int, seconds: float, interval: float = 0.05
) -> SoakResult:
    """Run `clients` clients through a resetting proxy for `seconds`, then tally."""
    result = SoakResult(clients, seconds)
    stop = asyncio.Event()
    async with ResettingProxy(server_port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/soak"
        runs = [
            asyncio.create_task(_client(url, f"k{i}", stop, interval, result))
            for i in range(clients)
        ]
        await asyncio.sleep(seconds)
        proxy.calm()
        stop.set()
        outcomes = await asyncio.gather(*runs)
        result.resets = proxy.resets
    for i, (sent, answers) in enumerate(outcomes):
        taken = app.taken.get(f"k{i}", [])
        result.sent += sent
        result.answered += len(set(answers))
        for seen in (taken, answers):
            result.duplicated += len(seen) - len(set(seen))
            result.out_of_order += sum(1 for a, b in itertools.pairwise(seen) if b < a)
        result.lost += sent - len(set(taken) & set(range(sent)))
        result.lost_answers += len(set(taken) - set(answers))
    return result


def main() -> None:  # pragma: no cover - a measurement tool
    import logging

    import httpx

    from tests.conftest import UvicornThread

    logging.basicConfig(level=logging.WARNING)
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    app = AnsweringApp()
    with UvicornThread(app.asgi(admin_token="soak")) as server:
        result = asyncio.run(soak(server.port, app, clients=clients, seconds=seconds))
        stats = httpx.get(
            server.http("/_stabilizer/stats"), headers={"Authorization": "Bearer soak"}
        ).json()
    result.server_counters = stats["counters"]
    print(result.summary())


if __name__ == "__main__":  # pragma: no cover
    main()

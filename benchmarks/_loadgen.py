"""A load-generating client process, driven by ``_procs.LoadGen``.

It reads one JSON command per line on stdin and answers each with one JSON line on stdout.
Every connection is a ``websockets`` client (no compression, no library keepalive) with one
reader task that behaves like the client kind it plays:

- ``plain``: counts data frames;
- ``optin``: wire protocol v1: strips control frames, answers each ``ping`` with a ``pong``
  (same ``ts``, ``n`` = data frames received), keeps the ``hello``'s session and token;
- ``seed``: answers the seed's JSON ping with the text ``"pong"``, as its README asks.

Commands: ``open``, ``echo``, ``wait_broadcast``, ``status``, ``close``, ``exit``.
Broadcast frames (``B:<id>:...``) are time-stamped with ``time.time()`` on arrival so the parent
can compare them with the server's start time (same machine, same clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

from benchmarks._apps import BROADCAST_PREFIX, ws_path
from benchmarks._common import (
    can_bind,
    decode_control,
    pong_text,
    run_loadgen,
    serve_loadgen_commands,
)

RS = "\x1e"
SEED_PING_PREFIX = '{"type":"ping"'
ECHO_PREFIX = "E"
_MAX_LATENCY_SAMPLES = 200_000
ACK_EVERY = 32  # stabilizer_asgi.client acknowledges at the latest every 32 data frames


class Client:
    __slots__ = (
        "acked",
        "closed",
        "index",
        "mode",
        "received",
        "sent_at",
        "session",
        "token",
        "ws",
    )

    def __init__(self, ws: Any, mode: str, index: int) -> None:
        self.ws = ws
        self.mode = mode
        self.index = index
        self.received = 0
        self.acked = 0
        self.sent_at = 0.0
        self.session: str | None = None
        self.token: str | None = None
        self.closed = False


class LoadGen:
    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.readers: set[asyncio.Task[None]] = set()
        self.pings = 0
        self.hellos = 0
        self.reconnects = 0
        self.closed = 0
        self.close_codes: dict[str, int] = {}
        self.broadcasts: dict[int, list[float]] = {}  # id -> [count, first, last]
        self.broadcast_event = asyncio.Event()
        self.echo_running = False
        self.echo_deadline = 0.0
        self.echo_payload = ECHO_PREFIX
        self.round_trips = 0
        self.latencies: list[float] = []
        self.outstanding = 0
        self.echo_idle = asyncio.Event()

    # ------------------------------------------------------------------ reading

    async def read(self, c: Client) -> None:
        ws = c.ws
        from websockets.exceptions import ConnectionClosed

        try:
            async for msg in ws:
                if isinstance(msg, str):
                    head = msg[:1]
                    if head == RS and c.mode == "optin":
                        if msg[1:2] != RS:
                            await self.control(c, msg)
                            continue
                        msg = msg[1:]
                    elif c.mode == "seed" and msg.startswith(SEED_PING_PREFIX):
                        self.pings += 1
                        await ws.send("pong")
                        continue
                    c.received += 1
                    if c.mode == "optin" and c.received - c.acked >= ACK_EVERY:
                        # as the Python client does: lets the server trim its replay buffer
                        c.acked = c.received
                        await ws.send(f'{RS}{{"t":"ack","n":{c.received}}}')
                    if head == "B" and msg.startswith(BROADCAST_PREFIX):
                        self.on_broadcast(msg)
                        continue
                    if head == ECHO_PREFIX:
                        await self.on_echo(c)
                        continue
                else:
                    c.received += 1
        except ConnectionClosed:
            pass
        except Exception as exc:  # a broken client must not take the process down
            print(f"reader {c.index}: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            c.closed = True
            self.closed += 1
            code = ws.close_code
            key = str(code if code is not None else 1006)
            self.close_codes[key] = self.close_codes.get(key, 0) + 1
            if self.outstanding and c.sent_at:
                c.sent_at = 0.0
                self.outstanding -= 1
                if not self.outstanding:
                    self.echo_idle.set()

    async def control(self, c: Client, text: str) -> None:
        frame = decode_control(text)
        if frame is None:
            return
        kind = frame.get("t")
        if kind == "ping":
            self.pings += 1
            await c.ws.send(pong_text(frame.get("ts"), c.received))
        elif kind == "hello":
            self.hellos += 1
            c.session = frame.get("session")
            c.token = frame.get("token")
        elif kind == "reconnect":
            self.reconnects += 1

    def on_broadcast(self, text: str) -> None:
        now = time.time()
        bid = int(text[len(BROADCAST_PREFIX) :].split(":", 1)[0])
        entry = self.broadcasts.get(bid)
        if entry is None:
            self.broadcasts[bid] = [1, now, now]
        else:
            entry[0] += 1
            entry[2] = now
        self.broadcast_event.set()

    async def on_echo(self, c: Client) -> None:
        now = time.perf_counter()
        if c.sent_at:
            if now <= self.echo_deadline:
                self.round_trips += 1
                if len(self.latencies) < _MAX_LATENCY_SAMPLES:
                    self.latencies.append(now - c.sent_at)
            if self.echo_running and now < self.echo_deadline:
                c.sent_at = time.perf_counter()
                await c.ws.send(self.echo_payload)
                return
            c.sent_at = 0.0
            self.outstanding -= 1
            if not self.outstanding:
                self.echo_idle.set()

    # ------------------------------------------------------------------ commands

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from websockets.asyncio.client import connect

        url, app, mode = cmd["url"], cmd["app"], cmd["mode"]
        start, count = int(cmd["start"]), int(cmd["count"])
        sem = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        timeout = float(cmd.get("timeout", 60))
        local = cmd.get("local_host")
        if local and not can_bind(local):
            local = None
        extra: dict[str, Any] = {"local_addr": (local, 0)} if local else {}
        errors: list[str] = []
        opened = failed = 0
        started = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal opened, failed
            async with sem:
                try:
                    ws = await connect(
                        url + ws_path(app, mode, i),
                        compression=None,
                        ping_interval=None,
                        open_timeout=timeout,
                        close_timeout=2,
                        max_size=None,
                        proxy=None,
                        user_agent_header=None,
                        **extra,
                    )
                except Exception as exc:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    return
            client = Client(ws, mode, i)
            self.clients.append(client)
            task = asyncio.create_task(self.read(client))
            self.readers.add(task)
            task.add_done_callback(self.readers.discard)
            opened += 1

        await asyncio.gather(*(one(i) for i in range(start, start + count)))
        if mode == "optin":  # the hello frame is the first thing each client reads
            deadline = time.monotonic() + 10
            while self.hellos < opened and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return {
            "opened": opened,
            "failed": failed,
            "errors": errors,
            "seconds": round(time.perf_counter() - started, 3),
            "hellos": self.hellos,
        }

    async def echo(self, cmd: dict[str, Any]) -> dict[str, Any]:
        seconds = float(cmd["seconds"])
        size = int(cmd.get("size", 32))
        self.echo_payload = ECHO_PREFIX + "x" * max(0, size - 1)
        live = [c for c in self.clients if not c.closed]
        self.round_trips = 0
        self.latencies = []
        self.echo_idle = asyncio.Event()
        self.outstanding = len(live)
        self.echo_running = True
        started = time.perf_counter()
        self.echo_deadline = started + seconds
        for c in live:
            c.sent_at = time.perf_counter()
            await c.ws.send(self.echo_payload)
        await asyncio.sleep(max(0.0, self.echo_deadline - time.perf_counter()))
        self.echo_running = False
        elapsed = time.perf_counter() - started
        if self.outstanding:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.echo_idle.wait(), 10)
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None

        return {
            "round_trips": self.round_trips,
            "seconds": elapsed,
            "clients": len(live),
            "latency_p50": pct(0.5),
            "latency_p99": pct(0.99),
        }

    async def wait_broadcast(self, cmd: dict[str, Any]) -> dict[str, Any]:
        bid = int(cmd["id"])
        expected = int(cmd.get("expected", sum(1 for c in self.clients if not c.closed)))
        deadline = time.monotonic() + float(cmd.get("timeout", 60))
        while True:
            entry = self.broadcasts.get(bid)
            if entry is not None and entry[0] >= expected:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.broadcast_event.clear()
            try:
                await asyncio.wait_for(self.broadcast_event.wait(), remaining)
            except asyncio.TimeoutError:
                break
        entry = self.broadcasts.pop(bid, None) or [0, None, None]
        return {"count": entry[0], "first": entry[1], "last": entry[2], "expected": expected}

    def status(self) -> dict[str, Any]:
        return {
            "open": sum(1 for c in self.clients if not c.closed),
            "closed": self.closed,
            "pings": self.pings,
            "hellos": self.hellos,
            "reconnects": self.reconnects,
            "close_codes": dict(self.close_codes),
            "tokens": sum(1 for c in self.clients if c.token),
        }

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        sem = asyncio.Semaphore(200)
        live = [c for c in self.clients if not c.closed]

        async def one(c: Client) -> None:
            async with sem:
                try:
                    await c.ws.close()
                except Exception:
                    c.ws.transport.abort()

        try:
            await asyncio.wait_for(
                asyncio.gather(*(one(c) for c in live)), float(cmd.get("timeout", 60))
            )
        except asyncio.TimeoutError:
            for c in live:
                c.ws.transport.abort()
        if self.readers:
            await asyncio.wait(set(self.readers), timeout=10)
        self.clients.clear()
        return {"closed": len(live)}

    def abort_all(self) -> None:
        for c in self.clients:
            if not c.closed:
                c.ws.transport.abort()


async def serve() -> None:
    gen = LoadGen()
    await serve_loadgen_commands(
        {
            "open": gen.open,
            "echo": gen.echo,
            "wait_broadcast": gen.wait_broadcast,
            "status": lambda cmd: gen.status(),
            "close": gen.close,
        },
        gen.abort_all,
    )


def main() -> int:
    return run_loadgen(serve)


if __name__ == "__main__":
    raise SystemExit(main())

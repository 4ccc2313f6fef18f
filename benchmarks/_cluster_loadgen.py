"""A load-generating client process for ``benchmarks.cluster`` (driven by ``_procs.LoadGen``).

It reads one JSON command per line on stdin and answers each with one JSON line on stdout.
Clients are ``websockets`` connections (no compression, no library keepalive), spread
round-robin over the instances' URLs; each has one reader task that checks every numbered
message it gets (``"<i>:<publish time>:…"``): a message seen twice is a duplicate, one with a
lower number than the highest seen so far a reorder, a missing one a loss. Socket.IO clients
speak Engine.IO 4 / Socket.IO 5 over the plain websocket (open ``0``, connect ``40``, events
``42["m","…"]``, ping ``2`` answered ``3``): the lightest client for the server.

Commands: ``open`` (``urls``, ``kind`` plain|socketio, ``start``, ``count``, ``local_host``),
``expect`` (``lo``, ``hi``, ``group``, ``idle``, ``linger``, ``detail``: wait until every client
that should has messages lo..hi-1 or nothing arrives for ``idle`` seconds, then report per
instance), ``status``, ``close``, ``exit``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from array import array
from typing import Any

from benchmarks._common import can_bind, run_loadgen, serve_loadgen_commands

LATENCY_SAMPLE = 20_000  # latencies returned per instance per expect (a uniform sample)


def is_member(index: int) -> bool:
    """Clients 0, 1, 4, 5, 8, 9, …: half the clients, half of each instance's (round-robin)."""
    return (index // 2) % 2 == 0


class Client:
    __slots__ = ("closed", "got", "index", "instance", "last", "member", "ws")

    def __init__(self, ws: Any, index: int, instance: int) -> None:
        self.ws = ws
        self.index = index
        self.instance = instance
        self.member = is_member(index)
        self.got = bytearray()  # got[i]: copies of message i received
        self.last = -1  # highest message number received so far
        self.closed = False


class Instance:
    """What the clients of one server instance received since the last ``expect``."""

    def __init__(self) -> None:
        self.duplicates = 0
        self.reorders = 0
        self.lat_index = array("q")
        self.lat_value = array("d")
        self.first: dict[int, float] = {}  # message -> first arrival on this instance
        self.last_arrival = 0.0


class LoadGen:
    def __init__(self) -> None:
        self.clients: list[Client] = []
        self.instances: list[Instance] = []
        self.readers: set[asyncio.Task[None]] = set()
        self.progress = 0
        self.reach = array("q")  # reach[i]: clients that have message i (once counted)
        self.errors: list[str] = []

    def take(self, c: Client, text: str) -> None:
        now = time.time()
        head, _, rest = text.partition(":")
        i = int(head)
        got = c.got
        if i >= len(got):
            got.extend(bytes(i + 1024 - len(got)))
        inst = self.instances[c.instance]
        if got[i]:
            inst.duplicates += 1
        else:
            reach = self.reach
            if i >= len(reach):
                reach.extend([0] * (i + 1024 - len(reach)))
            reach[i] += 1
            if i < c.last:
                inst.reorders += 1
        got[i] = min(255, got[i] + 1)
        if i > c.last:
            c.last = i
        inst.lat_index.append(i)
        inst.lat_value.append(now - float(rest[: rest.index(":")]))
        if i not in inst.first:
            inst.first[i] = now
        inst.last_arrival = now
        self.progress += 1

    async def read_plain(self, c: Client) -> None:
        async for msg in c.ws:
            self.take(c, msg if isinstance(msg, str) else msg.decode())

    async def read_socketio(self, c: Client) -> None:
        ws = c.ws
        async for msg in ws:
            text = msg if isinstance(msg, str) else msg.decode()
            if text.startswith("42"):
                self.take(c, json.loads(text[2:])[1])
            elif text == "2":
                await ws.send("3")

    async def read(self, c: Client, kind: str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            if kind == "socketio":
                await self.read_socketio(c)
            else:
                await self.read_plain(c)
        except ConnectionClosed:
            pass
        except Exception as exc:  # a broken client must not take the process down
            if len(self.errors) < 5:
                self.errors.append(f"reader {c.index}: {type(exc).__name__}: {exc}")
        finally:
            c.closed = True

    async def open(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from websockets.asyncio.client import connect

        urls: list[str] = cmd["urls"]
        kind = cmd.get("kind", "plain")
        start, count = int(cmd["start"]), int(cmd["count"])
        while len(self.instances) < len(urls):
            self.instances.append(Instance())
        sem = asyncio.Semaphore(int(cmd.get("concurrency", 100)))
        timeout = float(cmd.get("timeout", 60))
        local = cmd.get("local_host")
        extra: dict[str, Any] = {"local_addr": (local, 0)} if local and can_bind(local) else {}
        opened = failed = 0
        errors: list[str] = []
        started = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal opened, failed
            instance = i % len(urls)
            query = f"group={GROUP}" if is_member(i) else ""
            if kind == "socketio":
                path = "/socket.io/?EIO=4&transport=websocket" + (f"&{query}" if query else "")
            else:
                path = "/ws" + (f"?{query}" if query else "")
            async with sem:
                try:
                    ws = await connect(
                        urls[instance] + path,
                        compression=None,
                        ping_interval=None,
                        open_timeout=timeout,
                        close_timeout=2,
                        max_size=None,
                        max_queue=None,
                        proxy=None,
                        user_agent_header=None,
                        **extra,
                    )
                    if kind == "socketio":
                        opening = await asyncio.wait_for(ws.recv(), timeout)
                        if not str(opening).startswith("0"):
                            raise RuntimeError(f"engine.io open expected: {str(opening)[:40]}")
                        await ws.send("40")
                        while not str(await asyncio.wait_for(ws.recv(), timeout)).startswith("40"):
                            pass
                except Exception as exc:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    return
            client = Client(ws, i, instance)
            self.clients.append(client)
            task = asyncio.create_task(self.read(client, kind))
            self.readers.add(task)
            task.add_done_callback(self.readers.discard)
            opened += 1

        await asyncio.gather(*(one(i) for i in range(start, start + count)))
        return {
            "opened": opened,
            "failed": failed,
            "errors": errors,
            "seconds": round(time.perf_counter() - started, 3),
            "per_instance": [
                sum(1 for c in self.clients if c.instance == k) for k in range(len(urls))
            ],
            "members": sum(1 for c in self.clients if c.member),
        }

    def _complete(self, lo: int, hi: int, expected: int) -> bool:
        return len(self.reach) >= hi and sum(self.reach[lo:hi]) >= expected * (hi - lo)

    async def expect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        lo, hi = int(cmd["lo"]), int(cmd["hi"])
        group = bool(cmd.get("group"))
        idle = float(cmd.get("idle", 10))
        progress, since = -1, time.monotonic()
        expected = sum(1 for c in self.clients if c.member or not group)
        while not self._complete(lo, hi, expected):
            if self.progress != progress:
                progress, since = self.progress, time.monotonic()
            elif time.monotonic() - since > idle:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(float(cmd.get("linger", 0.2)))  # late duplicates would show here
        out = []
        for k, inst in enumerate(self.instances):
            mine = [c for c in self.clients if c.instance == k and (c.member or not group)]
            delivered = lost = 0
            # per message: how many of this instance's expected clients got it
            reached = [0] * (hi - lo)
            for c in mine:
                got = c.got
                for j in range(hi - lo):
                    i = lo + j
                    n = got[i] if i < len(got) else 0
                    if n:
                        reached[j] += 1
                        delivered += n
                    else:
                        lost += 1
            lats = [v for i, v in zip(inst.lat_index, inst.lat_value, strict=True) if lo <= i < hi]
            if len(lats) > LATENCY_SAMPLE:
                lats = random.sample(lats, LATENCY_SAMPLE)
            entry: dict[str, Any] = {
                "clients": len(mine),
                "delivered": delivered,
                "lost": lost,
                "messages_lost": sum(1 for r in reached if r < len(mine)),
                "duplicates": inst.duplicates,
                "reorders": inst.reorders,
                "last_arrival": inst.last_arrival or None,
                "latencies": lats,
            }
            if cmd.get("detail"):
                entry["reached"] = reached
                entry["first"] = [inst.first.get(lo + j) for j in range(hi - lo)]
            out.append(entry)
            self.instances[k] = Instance()
        return {"instances": out, "errors": self.errors[:5]}

    def status(self) -> dict[str, Any]:
        return {
            "open": sum(1 for c in self.clients if not c.closed),
            "closed": sum(1 for c in self.clients if c.closed),
        }

    async def close(self, cmd: dict[str, Any]) -> dict[str, Any]:
        live = [c for c in self.clients if not c.closed]
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


GROUP = "half"


async def serve() -> None:
    gen = LoadGen()
    await serve_loadgen_commands(
        {
            "open": gen.open,
            "expect": gen.expect,
            "status": lambda cmd: gen.status(),
            "close": gen.close,
        },
        gen.abort_all,
    )


def main() -> int:
    return run_loadgen(serve)


if __name__ == "__main__":
    raise SystemExit(main())

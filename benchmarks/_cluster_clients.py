"""A load-generator process for ``benchmarks.cluster``: N websocket clients over some instances.

``python -m benchmarks._cluster_clients --urls ws://…,ws://… --clients N [--socketio]
[--group-every 2]`` opens N clients round-robin over the URLs (every ``group-every``-th one
joins the group "half") and prints ``{"ready": N}`` once all are open. Then, for each line
``LO HI IDLE`` on stdin, it waits until every client that should (all, or the members in a
group run) has messages LO..HI-1, or IDLE seconds pass without progress, and prints one JSON
line: deliveries, losses, duplicates, reorders, a latency sample and per-message first/last
arrival times. ``stop`` (or end of input) ends it.

Messages are ``"<i>:<publish time>"``. Socket.IO clients speak Engine.IO v4 / Socket.IO v5
over a plain websocket (open ``0``, connect ``40``, event ``42["m", text]``, ping ``2`` → ``3``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from typing import Any

import websockets

from benchmarks._common import raise_nofile_limit


class Tally:
    """What one client received: message indices in arrival order, and their latencies."""

    def __init__(self, member: bool) -> None:
        self.member = member
        self.seen: list[int] = []
        self.latencies: list[float] = []
        self.current: set[int] = set()  # indices of the round being waited for

    def take(self, text: str, now: float) -> None:
        index, _, t0 = text.partition(":")
        self.seen.append(int(index))
        self.latencies.append(now - float(t0))


class Clients:
    def __init__(self, group: bool) -> None:
        self.group = group
        self.tallies: list[Tally] = []
        self.ready = 0
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.lo = self.hi = 0
        self.pending = 0  # deliveries the current round still waits for

    def got(self, tally: Tally, text: str) -> None:
        now = time.time()
        tally.take(text, now)
        index = tally.seen[-1]
        if index not in self.first:
            self.first[index] = now
        self.last[index] = now
        if self.lo <= index < self.hi and index not in tally.current:
            tally.current.add(index)
            if tally.member or not self.group:
                self.pending -= 1

    def begin(self, lo: int, hi: int) -> None:
        """Wait for messages lo..hi-1 from now on (counting those that came already)."""
        self.lo, self.hi = lo, hi
        self.pending = 0
        for tally in self.tallies:
            tally.current = {i for i in tally.seen if lo <= i < hi}
            if tally.member or not self.group:
                self.pending += (hi - lo) - len(tally.current)

    async def plain(self, url: str, tally: Tally) -> None:
        async with websockets.connect(url, max_queue=None, ping_interval=None) as ws:
            self.ready += 1
            async for frame in ws:
                self.got(tally, str(frame))

    async def socketio(self, url: str, tally: Tally) -> None:
        async with websockets.connect(url, max_queue=None, ping_interval=None) as ws:
            opened = str(await ws.recv())
            if not opened.startswith("0"):
                raise RuntimeError(f"unexpected engine.io open: {opened[:40]}")
            await ws.send("40")
            while not str(await ws.recv()).startswith("40"):
                pass
            self.ready += 1
            async for frame in ws:
                text = str(frame)
                if text == "2":
                    await ws.send("3")
                elif text.startswith("42"):
                    self.got(tally, json.loads(text[2:])[1])

    def round_result(self, lo: int, hi: int, group: bool) -> dict[str, Any]:
        """Deliveries of messages lo..hi-1: counts, faults, latencies, arrival times."""
        lost = dups = reorders = delivered = 0
        latencies: list[float] = []
        for tally in self.tallies:
            expect = hi - lo if (tally.member or not group) else 0
            picked = [
                (i, lat) for i, lat in zip(tally.seen, tally.latencies, strict=True) if lo <= i < hi
            ]
            indices = [i for i, _ in picked]
            unique = set(indices)
            delivered += len(indices)
            lost += max(0, expect - len(unique))
            dups += len(indices) - len(unique)
            reorders += sum(1 for a, b in itertools.pairwise(indices) if b < a)
            latencies.extend(lat for _, lat in picked)
        sample = random.sample(latencies, min(len(latencies), 5_000))
        firsts = [self.first[i] for i in range(lo, hi) if i in self.first]
        lasts = [self.last[i] for i in range(lo, hi) if i in self.last]
        return {
            "delivered": delivered,
            "lost": lost,
            "duplicates": dups,
            "reorders": reorders,
            "latency_sample": sample,
            "first_arrival": min(firsts) if firsts else None,
            "last_arrival": max(lasts) if lasts else None,
            "arrivals": {
                str(i): [self.first[i], self.last[i]] for i in range(lo, hi) if i in self.first
            },
        }


async def main_async(args: argparse.Namespace) -> None:
    urls = args.urls.split(",")
    group = args.group_every > 0
    clients = Clients(group)
    tasks: list[asyncio.Task[None]] = []
    for i in range(args.clients):
        url = urls[(i + args.offset) % len(urls)]
        member = group and i % args.group_every == 0
        if args.socketio:
            url += "/socket.io/?EIO=4&transport=websocket" + ("&group=half" if member else "")
            run = clients.socketio
        else:
            url += "/ws" + ("?group=half" if member else "")
            run = clients.plain
        tally = Tally(member)
        clients.tallies.append(tally)
        tasks.append(asyncio.create_task(run(url, tally)))
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    deadline = time.monotonic() + 60
    while clients.ready < args.clients:
        failed = [t for t in tasks if t.done()]
        if failed or time.monotonic() > deadline:
            errors = [repr(t.exception()) for t in failed if t.exception()][:3]
            raise RuntimeError(f"opened {clients.ready}/{args.clients}: {errors}")
        await asyncio.sleep(0.01)
    _say({"ready": args.clients})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line or line.strip() == "stop":
            break
        lo, hi, timeout = (float(x) for x in line.split())
        low, high = int(lo), int(hi)
        clients.begin(low, high)
        progress, idle_since = -1, time.monotonic()
        while clients.pending > 0:
            if clients.pending != progress:
                progress, idle_since = clients.pending, time.monotonic()
            elif time.monotonic() - idle_since > timeout:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(args.linger)  # late duplicates would show up here
        _say(clients.round_result(low, high, group))
    for task in tasks:
        task.cancel()


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._cluster_clients")
    parser.add_argument("--urls", required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--socketio", action="store_true")
    parser.add_argument("--group-every", type=int, default=0)
    parser.add_argument("--linger", type=float, default=0.3)
    args = parser.parse_args(argv)
    raise_nofile_limit()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

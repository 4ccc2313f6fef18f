"""The rolling-deploy driver shared by ``tests/cluster/test_resume_anywhere.py`` and
``benchmarks/deploy.py``: traffic both ways through the load balancer, and its check.

- :class:`Fleet`: K Python clients (``stabilizer_asgi.client.connect``, opted in) in one asyncio
  loop. Each sends numbered messages ``u<i>`` that the app echoes back, and receives the
  numbered broadcasts ``b<j>``. :meth:`Fleet.report` counts per client: ``lost`` (an echo of a
  sent message, or a published broadcast, never received), ``duplicated`` (received twice),
  ``reordered`` (a number lower than one already received, per stream; for broadcasts, among
  those published on the same node: the cluster promises publish order per publishing node, not
  across nodes) and the client's resync
  events (``on_resync``) with their reasons.
- :class:`Publisher`: numbered broadcasts through a node's ``POST /broadcast``, one at a time, at
  a steady rate, on whichever node :meth:`Publisher.pick` allows (the test keeps it off the node
  being redeployed). A broadcast whose request failed after it was sent is *uncertain*: neither
  expected nor counted lost (a failed connect is retried on another node, it was never sent).
- :func:`run_deploy`: open the fleet, start the traffic, run the deploy (a callable in a
  thread), stop the traffic, wait until everything has arrived, report.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stabilizer_asgi.client import (
    ClientClosedError,
    ClientState,
    ResyncEvent,
    StabilizerConnection,
    connect,
)

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
MAX_NUMBER = 1 << 20  # bound of the per-client tally arrays (messages per stream)


class Stream:
    """One numbered stream as a client received it."""

    __slots__ = ("arrivals", "count", "duplicated", "highest", "reordered")

    def __init__(self, keep_order: bool = False) -> None:
        self.count = bytearray()  # count[i]: copies of message i received (saturating at 255)
        self.duplicated = 0
        self.reordered = 0
        self.highest = -1
        # first arrivals in order, to count reorders per origin afterwards (see `reorders`)
        self.arrivals: array[int] | None = array("i") if keep_order else None

    def take(self, i: int) -> None:
        if i >= MAX_NUMBER:
            raise ValueError(f"message number {i} beyond {MAX_NUMBER}")
        count = self.count
        if i >= len(count):
            count.extend(bytes(i + 256 - len(count)))
        if count[i]:
            self.duplicated += 1
        else:
            if i < self.highest:
                self.reordered += 1
            if self.arrivals is not None:
                self.arrivals.append(i)
        count[i] = min(255, count[i] + 1)
        self.highest = max(self.highest, i)

    def reorders(self, origin: Mapping[int, int]) -> int:
        """First arrivals numbered below one already received from the same ``origin``."""
        if self.arrivals is None:
            return self.reordered
        highest: dict[int, int] = {}
        reordered = 0
        for i in self.arrivals:
            key = origin.get(i, -1)
            if i < highest.get(key, -1):
                reordered += 1
            else:
                highest[key] = i
        return reordered

    def has(self, i: int) -> bool:
        return i < len(self.count) and self.count[i] > 0

    def missing(self, expected: Sequence[int]) -> int:
        return sum(1 for i in expected if not self.has(i))


class TrafficClient:
    """One Python client: sends ``u<i>``, checks the echoes and the broadcasts."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: StabilizerConnection | None = None
        self.sent = 0
        self.echo = Stream()
        self.broadcasts = Stream(keep_order=True)
        self.resyncs: list[str] = []
        self.resync_at: list[float] = []
        self.resynced_sessions: list[str] = []
        self.closed: str | None = None
        self.received = 0
        self.foreign = 0  # frames that are neither an echo nor a broadcast

    def on_resync(self, event: ResyncEvent) -> None:
        self.resyncs.append(event.reason)
        self.resync_at.append(time.monotonic())
        if len(self.resynced_sessions) < 10:
            self.resynced_sessions.append(event.old_session_id)  # to find it in node logs

    async def read(self) -> None:
        assert self.conn is not None
        try:
            async for frame in self.conn:
                text = frame if isinstance(frame, str) else frame.decode()
                self.received += 1
                kind, number = text[:1], text[1:]
                if kind == "u" and number.isdigit():
                    self.echo.take(int(number))
                elif kind == "b" and number.isdigit():
                    self.broadcasts.take(int(number))
                else:
                    self.foreign += 1
        except ClientClosedError as exc:
            self.closed = f"{exc.code} {exc.reason}"

    async def send_next(self) -> None:
        assert self.conn is not None
        number = self.sent
        self.sent += 1
        await self.conn.send(f"u{number}")


class Fleet:
    """K clients in this asyncio loop, opened through ``url`` (the load balancer)."""

    def __init__(self) -> None:
        self.clients: list[TrafficClient] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sending = False
        self.open_errors: list[str] = []

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def open(
        self,
        url: str,
        count: int,
        *,
        start: int = 0,
        concurrency: int = 50,
        sequential: bool = False,
        client_options: dict[str, Any] | None = None,
    ) -> int:
        """Open ``count`` clients (one at a time with ``sequential``, so that the balancer's
        round robin puts client ``i`` on backend ``i % n``); how many opened."""
        options: dict[str, Any] = {"backoff_base": 0.1, "backoff_cap": 2.0, "open_timeout": 10.0}
        options.update(client_options or {})
        sem = asyncio.Semaphore(1 if sequential else concurrency)
        opened = 0

        async def one(index: int) -> None:
            nonlocal opened
            client = TrafficClient(index)
            async with sem:
                conn = connect(url, on_resync=client.on_resync, **options)
                try:
                    await conn.__aenter__()
                except Exception as exc:
                    if len(self.open_errors) < 5:
                        self.open_errors.append(f"{type(exc).__name__}: {exc}")
                    return
            client.conn = conn
            self.clients.append(client)
            self._spawn(client.read())
            opened += 1

        if sequential:
            for index in range(start, start + count):
                await one(index)
        else:
            await asyncio.gather(*(one(i) for i in range(start, start + count)))
        self.clients.sort(key=lambda c: c.index)
        return opened

    def start_sending(self, interval: float) -> None:
        """Each client sends its next message every ``interval`` seconds (random phase)."""
        self._sending = True

        async def loop(client: TrafficClient) -> None:
            await asyncio.sleep(random.uniform(0, interval))
            while self._sending and client.closed is None:
                with contextlib.suppress(ClientClosedError):
                    await client.send_next()
                await asyncio.sleep(interval)

        for client in self.clients:
            self._spawn(loop(client))

    def stop_sending(self) -> None:
        self._sending = False

    def complete(self, published: Sequence[int]) -> bool:
        """Whether every client has every echo and every broadcast in ``published``."""
        for c in self.clients:
            if c.closed is not None or c.resyncs:
                continue  # nothing more to wait for: what is missing is accounted for
            if any(not c.echo.has(i) for i in range(c.sent)):
                return False
            if any(not c.broadcasts.has(j) for j in published):
                return False
        return True

    async def settle(self, published: Sequence[int], idle: float, timeout: float) -> float:
        """Wait until :meth:`complete`, or nothing arrived for ``idle`` seconds, or
        ``timeout``; the seconds waited."""
        started = time.monotonic()
        last, since = -1, started
        while not self.complete(published):
            now = time.monotonic()
            received = sum(c.received for c in self.clients)
            if received != last:
                last, since = received, now
            elif now - since > idle or now - started > timeout:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a late duplicate would show here
        return time.monotonic() - started

    def report(
        self,
        published: Sequence[int],
        uncertain: Sequence[int] = (),
        origins: Sequence[int] = (),
        detail: bool = False,
    ) -> dict[str, Any]:
        """The check of every client (see the module doc); sums, and per client with
        ``detail``. ``origins[k]`` is the node that published ``published[k]``."""
        origin = dict(zip(published, origins, strict=False))  # no origins: one stream
        skip = set(uncertain)
        expected_b = [j for j in published if j not in skip]
        out: dict[str, Any] = {
            "clients": len(self.clients),
            "sent": 0,
            "received": 0,
            "lost": 0,
            "duplicated": 0,
            "reordered": 0,
            "resyncs": 0,
            "resynced_clients": 0,
            "reasons": {},
            # what a client that saw no resync lost, got twice or out of order: never expected
            "silent_lost": 0,
            "silent_duplicated": 0,
            "silent_reordered": 0,
            # a few clients without a resync that got something wrong: [sent,] lost, dup, reordered
            "silent_samples": [],
            "closed": 0,
            # clients not connected when the check ran (still reconnecting): what they lack may
            # yet come, so it is not counted as silent
            "unsettled": 0,
            "foreign": 0,
            "open_errors": self.open_errors[:5],
        }
        per_client = []
        for c in self.clients:
            lost = c.echo.missing(range(c.sent)) + c.broadcasts.missing(expected_b)
            dup = c.echo.duplicated + c.broadcasts.duplicated
            reo = c.echo.reordered + c.broadcasts.reorders(origin)
            out["sent"] += c.sent
            out["received"] += c.received
            out["lost"] += lost
            out["duplicated"] += dup
            out["reordered"] += reo
            out["resyncs"] += len(c.resyncs)
            out["resynced_clients"] += 1 if c.resyncs else 0
            settled = c.conn is not None and c.conn.state is ClientState.OPEN
            out["unsettled"] += 0 if settled or c.closed is not None else 1
            if not c.resyncs and (settled or c.closed is not None):
                out["silent_lost"] += lost
                out["silent_duplicated"] += dup
                out["silent_reordered"] += reo
                if (lost or dup or reo) and len(out["silent_samples"]) < 5:
                    out["silent_samples"].append(
                        {
                            "index": c.index,
                            "echo": [
                                c.sent,
                                c.echo.missing(range(c.sent)),
                                c.echo.duplicated,
                                c.echo.reordered,
                            ],
                            "broadcast": [
                                c.broadcasts.missing(expected_b),
                                c.broadcasts.duplicated,
                                c.broadcasts.reorders(origin),
                            ],
                            # first arrivals as [number, publisher] (publisher: see origins)
                            "arrivals": [
                                [i, origin.get(i, -1)] for i in (c.broadcasts.arrivals or ())
                            ][:60],
                        }
                    )
            out["closed"] += 1 if c.closed is not None else 0
            out["foreign"] += c.foreign
            for reason in c.resyncs:
                out["reasons"][reason] = out["reasons"].get(reason, 0) + 1
            if detail:
                per_client.append(
                    {
                        "index": c.index,
                        "sent": c.sent,
                        "lost": lost,
                        "duplicated": dup,
                        "reordered": reo,
                        "resyncs": list(c.resyncs),
                        "closed": c.closed,
                    }
                )
        if detail:
            out["per_client"] = per_client
        return out

    async def close(self) -> None:
        self.stop_sending()
        for client in self.clients:
            if client.conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.conn.close(), 5)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)


class Publisher:
    """Numbered broadcasts ``b<j>`` through ``POST /broadcast`` on one of ``urls`` (node HTTP
    base URLs), at ``rate`` per second, in a thread of the caller's loop."""

    def __init__(self, urls: Sequence[str], rate: float) -> None:
        self.urls = list(urls)
        self.rate = rate
        self.allowed = [True] * len(self.urls)
        self._sending = threading.Lock()  # held while a publish is in flight
        self.incarnation = [0] * len(self.urls)
        self.published: list[int] = []
        # who published each of `published`: node index * 1000 + its incarnation (restarts)
        self.origins: list[int] = []
        self.uncertain: list[int] = []
        self.retries = 0
        self._next = 0
        self._current = 0
        self._stop = False

    def avoid(self, index: int) -> None:
        """Publish elsewhere than node ``index`` (it is being redeployed: what it publishes
        next comes from another process, whose order is its own)."""
        self.allowed[index] = False
        with self._sending:  # a publish already on its way there finishes first
            self.incarnation[index] += 1

    def allow(self, index: int) -> None:
        self.allowed[index] = True

    def pick(self) -> str:
        n = len(self.urls)
        for k in range(n):
            index = (self._current + k) % n
            if self.allowed[index]:
                self._current = index
                return self.urls[index]
        return self.urls[self._current]

    def publish_one(self, timeout: float = 10.0) -> None:
        with self._sending:
            self._publish(timeout)

    def _publish(self, timeout: float) -> None:
        j = self._next
        self._next += 1
        for _attempt in range(50):
            url = self.pick()
            req = urllib.request.Request(
                f"{url}/broadcast?{urllib.parse.urlencode({'text': f'b{j}'})}",
                method="POST",
                data=b"",
            )
            try:
                with _NO_PROXY.open(req, timeout=timeout) as reply:
                    reply.read()
                self.published.append(j)
                self.origins.append(self._current * 1000 + self.incarnation[self._current])
                return
            except urllib.error.HTTPError:
                self.uncertain.append(j)
                return
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, ConnectionRefusedError):
                    self.retries += 1  # never sent: try the next node
                    self._current = (self._current + 1) % len(self.urls)
                    time.sleep(0.05)
                    continue
                self.uncertain.append(j)
                return
            except OSError:
                self.uncertain.append(j)
                return
        self.uncertain.append(j)

    def run(self) -> None:
        """Publish until :meth:`stop` (blocking: run it in a thread)."""
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop:
            self.publish_one()
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()

    def stop(self) -> None:
        self._stop = True


async def run_deploy(
    fleet: Fleet,
    publisher: Publisher,
    deploy: Callable[[], Any],
    *,
    send_interval: float,
    warmup: float = 0.5,
    cooldown: float = 0.5,
    idle: float = 5.0,
    settle_timeout: float = 30.0,
) -> tuple[Any, float, float]:
    """Traffic both ways (the fleet sending, the publisher broadcasting) around ``deploy()``
    (run in a thread); then wait for the stragglers. ``(deploy's result, deploy seconds,
    settle seconds)``."""
    loop = asyncio.get_running_loop()
    fleet.start_sending(send_interval)
    publishing = loop.run_in_executor(None, publisher.run)
    try:
        await asyncio.sleep(warmup)
        started = time.monotonic()
        result = await loop.run_in_executor(None, deploy)
        took = time.monotonic() - started
        await asyncio.sleep(cooldown)
    finally:
        fleet.stop_sending()
        publisher.stop()
        await publishing
    settled = await fleet.settle(publisher.published, idle, settle_timeout)
    return result, took, settled

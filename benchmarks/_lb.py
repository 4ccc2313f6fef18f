"""A small round-robin TCP load balancer on 127.0.0.1, for the cluster tests and benchmarks.

``LoadBalancer(ports).start()`` listens on a free loopback port, in a thread of its own with its
own asyncio loop (so anyio tests on either backend, and plain threads, can use it). Each accepted
connection is forwarded to the next backend in turn that is not marked down; a backend whose
connect fails (connection refused: the process is gone or restarting) is skipped for the next
one, as a real balancer's health check would. When no backend takes it, the client's connection
is reset.

- :meth:`down` / :meth:`up` take a backend out of the rotation and put it back (a Kubernetes
  Service dropping a terminating pod's endpoint). Connections already forwarded stay.
- :meth:`abort` resets (RST, both sides) every forwarded connection of one backend: the network
  path to it broke, the client sees a dead TCP connection, the server a reset.
- :meth:`accepted` gives, per backend, the time (``time.monotonic()``) of every connection it
  took; :func:`peak_rate` turns those into the peak handshakes per second.

Bytes are copied with protocol objects and flow control (no buffer grows past the socket's
high-water mark), one client and one upstream transport per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

HOST = "127.0.0.1"
MAX_ACCEPTED_TIMES = 1_000_000  # per backend: timestamps kept for the rate figures


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close ``transport`` with a TCP RST (SO_LINGER 0), not a FIN."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert isinstance(transport, asyncio.Transport)
    transport.abort()


class _Pipe(asyncio.Protocol):
    """One side of a forwarded connection; ``peer`` is the other side."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.early: list[bytes] = []  # client bytes that came before the upstream connected
        self.eof_in = False  # this side has sent its FIN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof_in = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.transport.is_closing():
            return False
        if peer.eof_in or not peer.transport.can_write_eof():
            peer.transport.close()  # both directions are done
            return False
        peer.transport.write_eof()  # half-close: the other direction may still carry data
        return True

    def pause_writing(self) -> None:  # our socket is full: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            if exc is not None and isinstance(exc, ConnectionResetError):
                _reset(peer.transport)
            else:
                peer.transport.close()  # after what is still buffered for it
        self.link.lost()


class _ClientPipe(_Pipe):
    """The client side: reads nothing until an upstream is connected."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
        lb = self.link.lb
        assert lb._loop is not None
        task = lb._loop.create_task(lb._forward(self.link))
        lb._tasks.add(task)
        task.add_done_callback(lb._tasks.discard)


class _Link:
    """A client connection and its upstream: the pair that :meth:`LoadBalancer.abort` resets."""

    def __init__(self, lb: LoadBalancer) -> None:
        self.lb = lb
        self.client: _Pipe = _ClientPipe(self)
        self.upstream: _Pipe | None = None
        self.backend = -1

    def lost(self) -> None:
        if self.backend >= 0:
            self.lb._links[self.backend].discard(self)

    def reset(self) -> None:
        _reset(self.client.transport)
        if self.upstream is not None:
            _reset(self.upstream.transport)


class LoadBalancer:
    """Round-robin TCP forwarding from one loopback port to ``ports`` (see the module doc)."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.ports = list(ports)
        self.port = 0
        self._down = [False] * len(self.ports)
        self._next = 0
        self._accepted: list[list[float]] = [[] for _ in self.ports]
        self._links: list[set[_Link]] = [set() for _ in self.ports]
        self.refused = 0  # client connections no backend took
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # -- lifecycle

    def start(self) -> LoadBalancer:
        """Start listening (in a thread of its own); returns once connections are taken."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(self._accept, HOST, 0, backlog=4096)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                for links in self._links:
                    for link in list(links):
                        link.reset()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()
                self._stopped.set()

        self._thread = threading.Thread(target=run, name="loadbalancer", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop listening and reset every forwarded connection."""
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)

    def __enter__(self) -> LoadBalancer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    # -- control (from any thread)

    def _call(self, fn: Any, *args: Any) -> Any:
        loop = self._loop
        assert loop is not None, "start() the load balancer first"

        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10)

    def down(self, backend: int) -> None:
        """Take ``backend`` out of the rotation (its current connections stay)."""
        self._down[backend] = True

    def up(self, backend: int) -> None:
        """Put ``backend`` back into the rotation."""
        self._down[backend] = False

    def abort(self, backend: int) -> int:
        """Reset (RST) every forwarded connection of ``backend``; how many there were."""

        def reset_all() -> int:
            links = list(self._links[backend])
            for link in links:
                link.reset()
            return len(links)

        return int(self._call(reset_all))

    def open_connections(self, backend: int) -> int:
        """Forwarded connections of ``backend`` still open."""
        return len(self._links[backend])

    def accepted(self, backend: int) -> list[float]:
        """The monotonic time of every connection ``backend`` took, oldest first."""
        return list(self._accepted[backend])

    # -- forwarding (in the balancer's loop)

    def _accept(self) -> asyncio.Protocol:
        return _Link(self).client

    async def _forward(self, link: _Link) -> None:
        loop = self._loop
        assert loop is not None
        n = len(self.ports)
        for _ in range(n):
            backend = self._next % n
            self._next += 1
            if self._down[backend]:
                continue
            upstream = _Pipe(link)
            try:
                await loop.create_connection(lambda u=upstream: u, HOST, self.ports[backend])  # type: ignore[misc]
            except OSError:
                continue  # refused: try the next one
            client = link.client
            if client.transport is None or client.transport.is_closing():
                _reset(upstream.transport)
                return
            link.backend = backend
            link.upstream = upstream
            client.peer, upstream.peer = upstream, client
            accepted = self._accepted[backend]
            if len(accepted) < MAX_ACCEPTED_TIMES:
                accepted.append(time.monotonic())
            self._links[backend].add(link)
            assert upstream.transport is not None
            for side in (client, upstream):
                assert side.peer is not None and side.peer.transport is not None
                for chunk in side.early:
                    side.peer.transport.write(chunk)
                side.early.clear()
            client.transport.resume_reading()
            return
        self.refused += 1
        _reset(link.client.transport)


def peak_rate(times: Iterable[float], window: float = 1.0) -> float:
    """The most events in any ``window`` seconds (a sliding window), per second."""
    ordered = sorted(times)
    best = 0
    for i, t in enumerate(ordered):
        j = bisect_left(ordered, t + window, lo=i)
        best = max(best, j - i)
    return best / window


def count_between(times: Iterable[float], start: float, end: float) -> int:
    """How many of ``times`` fall in ``[start, end)``."""
    return sum(1 for t in times if start <= t < end)

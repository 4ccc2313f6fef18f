"""A real redis-server for the cluster tests, and a TCP proxy that can cut a node off.

The server runs on a free loopback port with no persistence (a restart comes back empty, as a
Redis without persistence does after a crash) and is stopped by its pid. A missing
redis-server fails the test (`make tools` installs it), never skips it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time

import anyio
import anyio.abc

from benchmarks._procs import redis_argv, redis_pong

from .conftest import require_tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; `kill()` is SIGKILL, `start()` again reuses the port."""

    def __init__(self) -> None:
        self.binary = require_tool("redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="stabilizer-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            redis_argv(self.binary, "127.0.0.1", self.port, self.dir, "--protected-mode", "no"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            if redis_pong("127.0.0.1", self.port, 0.2):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL: a crash, with nothing written anywhere."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self.proc = None

    def command(self, *args: str) -> bytes:
        """Run one command with a plain socket (RESP), for test set-up and fault injection."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"".join(parts))
            return sock.recv(65536)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.proc = None
        with contextlib.suppress(OSError):
            for name in os.listdir(self.dir):
                os.unlink(os.path.join(self.dir, name))
            os.rmdir(self.dir)


class Proxy:
    """A loopback TCP proxy to Redis. `mute()` keeps every current connection open but stops
    passing Redis's answers on over them: whoever reads through one goes deaf without any
    error. Connections made afterwards work."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._muted: list[list[bool]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def mute(self) -> None:
        for flag in self._muted:
            flag[0] = True
        self._muted.clear()

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        try:
            upstream = await anyio.connect_tcp("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        muted = [False]
        self._muted.append(muted)
        async with client, upstream, anyio.create_task_group() as tg:

            async def pipe(
                src: anyio.abc.SocketStream, dst: anyio.abc.SocketStream, down: bool
            ) -> None:
                try:
                    async for chunk in src:
                        if down and muted[0]:
                            continue
                        await dst.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(pipe, client, upstream, False)
            tg.start_soon(pipe, upstream, client, True)

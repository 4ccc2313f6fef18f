"""Nodes as real uvicorn processes on one real redis-server, and websockets clients."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import httpx
import websockets

from tests.helpers import WAIT
from tests.redis_support import free_port

ROOT = Path(__file__).resolve().parents[2]
_clusters = itertools.count()


class NodeProcess:
    """One node: `uvicorn tests.cluster.app:app` on a free port, stopped by its pid."""

    def __init__(self, redis_url: str, cluster: str, **env: str) -> None:
        self.port = free_port()
        environ = dict(os.environ)
        environ.update(STABILIZER_TEST_BACKEND=redis_url, STABILIZER_TEST_CLUSTER=cluster, **env)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tests.cluster.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "--lifespan",
                "on",
            ],
            cwd=ROOT,
            env=environ,
        )

    def wait_ready(self) -> NodeProcess:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.http("/_stabilizer/health"), timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node on port {self.port} did not start")
            time.sleep(0.05)

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ws(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def post(self, path: str, **params: Any) -> Any:
        query = urlencode(params, doseq=True)
        reply = httpx.post(self.http(f"{path}?{query}"), timeout=WAIT * 2)
        reply.raise_for_status()
        return reply.json()

    def get(self, path: str) -> tuple[int, Any]:
        reply = httpx.get(self.http(path), timeout=WAIT)
        return reply.status_code, reply.json()

    def stats(self) -> Any:
        return self.get("/_stabilizer/stats")[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@contextlib.contextmanager
def nodes(redis_url: str, n: int = 2, **env: str) -> Iterator[list[NodeProcess]]:
    cluster = f"e2e{os.getpid()}x{next(_clusters)}"
    started = [NodeProcess(redis_url, cluster, **env) for _ in range(n)]
    try:
        for node in started:
            node.wait_ready()
        deadline = time.monotonic() + WAIT * 2
        while any(len(node.stats()["cluster"]["nodes"]) != n for node in started):
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not see each other")
            time.sleep(0.05)
        yield started
    finally:
        for node in started:
            node.stop()


class Client:
    """A plain websockets client that records every text frame after the session id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.frames: list[str] = []
        self.session = ""
        self.close_code: int | None = None
        self._ws: Any = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with websockets.connect(self.url) as ws:
            self._ws = ws
            self.session = json.loads(await ws.recv())["me"]
            task_status.started()
            try:
                async for frame in ws:
                    self.frames.append(str(frame))
            except websockets.ConnectionClosed:
                pass
            self.close_code = ws.close_code

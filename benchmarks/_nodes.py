"""Cluster nodes as real ``stabilizer-asgi serve`` sidecars, for the rolling-deploy tests and
benchmark.

:class:`SidecarNode` runs ``stabilizer-asgi serve benchmarks._deploy_app:app`` (real uvicorn, the
middleware added by the sidecar) on a fixed loopback port, so it can be stopped and started again
on the same port: :meth:`~SidecarNode.drain` is SIGTERM (the sidecar drains: reconnect hints
spread over ``drain_period``, 1012, then exit), :meth:`~SidecarNode.kill` is SIGKILL.

:class:`Deployment` is one redis-server, N such nodes of one cluster on it and a
:class:`~benchmarks._lb.LoadBalancer` in front of them, torn down in reverse.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks._common import free_port
from benchmarks._lb import LoadBalancer

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks._deploy_app:app"
SECRET = "rolling-deploy-secret"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_clusters = itertools.count()
STDERR_LINES = 2000  # kept per node, over its restarts

# Short timings so a deploy takes seconds: every setting is a sidecar option.
FAST: dict[str, Any] = {
    "probe_interval": 1.0,
    "cluster_timeout": 3.0,
    "drain_period": 1.0,
    "heartbeat_interval": 5.0,
    "heartbeat_timeout": 5.0,
}


def _sidecar_command() -> list[str]:
    script = Path(sys.executable).with_name("stabilizer-asgi")
    return [str(script)] if script.exists() else [sys.executable, "-m", "stabilizer_asgi.cli"]


class SidecarNode:
    """One node: the sidecar on ``port`` (a free one by default), restartable on that port."""

    def __init__(
        self,
        backend: str,
        *,
        cluster: str,
        options: Mapping[str, Any] | None = None,
        port: int | None = None,
        app: str = APP,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.cluster = cluster
        self.options = dict(FAST if options is None else options)
        self.port = port or free_port()
        self.app = app
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_level = "warning"
        self.starts = 0
        self._stderr: list[str] = []

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def argv(self) -> list[str]:
        args = [*_sidecar_command(), "serve", self.app, "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", self.log_level]
        args += ["--backend", self.backend, "--cluster-name", self.cluster]
        for name, value in self.options.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        return args

    def spawn(self) -> None:
        """Start the process (see :meth:`wait_ready`)."""
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            "STABILIZER_SECRET": SECRET,  # in the environment, never on a command line
            **self.env,
        }
        self._stderr.append(f"--- start {self.starts + 1} of the node on port {self.port}")
        self.proc = subprocess.Popen(
            self.argv(),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.starts += 1
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())
            del self._stderr[:-STDERR_LINES]

    def stderr_tail(self, lines: int = 10) -> str:
        return "\n".join(self._stderr[-lines:])

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until health answers 200 (ok or degraded)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"node :{self.port} exited: {self.stderr_tail()}")
            try:
                with _NO_PROXY.open(self.http_url + "/_stabilizer/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node :{self.port} not ready: {self.stderr_tail()}")
            time.sleep(0.05)

    def start(self, timeout: float = 30.0) -> SidecarNode:
        self.spawn()
        self.wait_ready(timeout)
        return self

    def drain(self, timeout: float = 60.0) -> float:
        """SIGTERM (the sidecar drains, then exits); seconds until the process is gone."""
        started = time.monotonic()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(
                    f"node :{self.port} did not exit {timeout:g} s after SIGTERM"
                ) from None
        return time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers (teardown)."""
        with contextlib.suppress(RuntimeError):
            self.drain(timeout=15)

    def request(self, method: str, path: str, timeout: float = 10.0, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        url = self.http_url + path + (f"?{query}" if query else "")
        req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
        with _NO_PROXY.open(req, timeout=timeout) as reply:
            return json.loads(reply.read() or b"{}")

    def stats(self) -> Any:
        return self.request("GET", "/_stabilizer/stats")

    def health(self) -> str:
        """The health route's status ("ok", "degraded", "draining"), or "down"."""
        try:
            with _NO_PROXY.open(self.http_url + "/_stabilizer/health", timeout=2) as reply:
                return str(json.loads(reply.read())["status"])
        except urllib.error.HTTPError as exc:
            return str(json.loads(exc.read() or b"{}").get("status", exc.code))
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            return "down"


class Deployment:
    """redis-server (``redis``: anything with ``url``), ``n`` sidecar nodes on it and a load
    balancer in front; use as a context manager (the caller starts and stops Redis)."""

    def __init__(
        self,
        redis_url: str,
        n: int = 3,
        *,
        options: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        cluster = f"deploy{os.getpid()}x{next(_clusters)}"
        self.nodes = [
            SidecarNode(redis_url, cluster=cluster, options=options, env=env) for _ in range(n)
        ]
        self.lb = LoadBalancer([node.port for node in self.nodes])

    def __enter__(self) -> Deployment:
        try:
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_ready()
            self.wait_cluster()
            self.lb.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.lb.stop()
        for node in self.nodes:
            node.kill()  # teardown: the test is over, no drain to wait for

    def ws_url(self, path: str = "/ws?stabilizer=1") -> str:
        return self.lb.url(path)

    def live(self) -> list[SidecarNode]:
        return [node for node in self.nodes if node.alive]

    def wait_cluster(self, timeout: float = 30.0) -> None:
        """Until every live node sees every live node."""
        deadline = time.monotonic() + timeout
        while True:
            live = self.live()
            try:
                if all(len(node.stats()["cluster"]["nodes"]) == len(live) for node in live):
                    return
            except (OSError, urllib.error.URLError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not see each other")
            time.sleep(0.05)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every live node's health says "ok" (not degraded)."""
        deadline = time.monotonic() + timeout
        while any(node.health() != "ok" for node in self.live()):
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not report ok")
            time.sleep(0.05)

    def redeploy(self, index: int, *, ready_timeout: float = 30.0) -> dict[str, float]:
        """One step of a rolling deploy: node ``index`` out of the balancer, SIGTERM (drain),
        started again on its port, back in the balancer. Seconds per phase."""
        node = self.nodes[index]
        t0 = time.monotonic()
        self.lb.down(index)
        drained = node.drain()
        t1 = time.monotonic()
        node.start(ready_timeout)
        t2 = time.monotonic()
        self.lb.up(index)
        return {"drain_s": drained, "restart_s": t2 - t1, "total_s": t2 - t0, "at": t0}

    def rolling_deploy(self, *, pause: float = 0.0) -> list[dict[str, float]]:
        """Every node in turn (:meth:`redeploy`), ``pause`` seconds between two."""
        steps = []
        for index in range(len(self.nodes)):
            steps.append(self.redeploy(index))
            if pause:
                time.sleep(pause)
        return steps


def options_with(**changes: Any) -> dict[str, Any]:
    """:data:`FAST` with ``changes``."""
    return {**FAST, **changes}

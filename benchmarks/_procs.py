"""Parent-side handles on the processes of a real-socket benchmark.

- :class:`ServerProcess`: one uvicorn server (``python -m benchmarks._server``) serving one of
  the apps of ``_apps.py`` on a loopback address, with its bench routes reachable over HTTP.
- :class:`LoadGen` / :class:`LoadGenPool`: client processes (``python -m benchmarks._loadgen``)
  that hold websocket connections and take JSON commands on stdin.

Server and clients are separate processes so that clients never share the server's event
loop; on a small machine they still share its cores, which every result says.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import Json, free_port

ROOT = Path(__file__).resolve().parent.parent
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# --- per-process CPU and memory (Linux /proc, psutil elsewhere) -----------------------------


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except OSError:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
        return int(fields[1]) * _PAGE
    except OSError:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# --- server ----------------------------------------------------------------------------------


class ServerProcess:
    """A uvicorn server in its own process; use as a context manager."""

    def __init__(
        self,
        app: str,
        *,
        host: str = "127.0.0.1",
        heartbeat_interval: float | None = None,
        heartbeat_timeout: float | None = None,
        ours_options: Json | None = None,
        startup_timeout: float = 30.0,
        env: dict[str, str] | None = None,
        module: str = "benchmarks._server",
        extra_args: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.extra_env = env or {}
        self.host = host
        self.port = free_port(host)
        self.args = [
            sys.executable,
            "-m",
            module,
            "--app",
            app,
            "--host",
            host,
            "--port",
            str(self.port),
        ]
        if heartbeat_interval is not None:
            self.args += ["--heartbeat-interval", str(heartbeat_interval)]
        if heartbeat_timeout is not None:
            self.args += ["--heartbeat-timeout", str(heartbeat_timeout)]
        if ours_options:
            self.args += ["--ours-options", json.dumps(ours_options)]
        self.args += list(extra_args)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Spawn the server and wait until it answers."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Spawn the server without waiting (start several, then :meth:`wait_ready` each)."""
        self.proc = subprocess.Popen(
            self.args,
            cwd=ROOT,
            env={**_env(), **self.extra_env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.app} exited: {self.stderr_tail()}")
            try:
                self.get("/bench/info", timeout=1.0)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server {self.app} did not start: {self.stderr_tail()}")

    def _pump_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())
            del self._stderr[:-50]

    def stderr_tail(self, lines: int = 15) -> str:
        return "\n".join(self._stderr[-lines:])

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def request(self, method: str, path: str, *, timeout: float = 60.0) -> Json:
        req = urllib.request.Request(
            self.base_url + path, method=method, data=b"" if method == "POST" else None
        )
        with _NO_PROXY.open(req, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")  # type: ignore[no-any-return]

    def get(self, path: str, *, timeout: float = 60.0) -> Json:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, *, timeout: float = 60.0) -> Json:
        return self.request("POST", path, timeout=timeout)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def rss(self) -> int:
        return proc_rss_bytes(self.pid)

    def connections(self) -> int:
        return int(self.get("/bench/info")["connections"])

    def wait_connections(self, expected: int, timeout: float = 60.0) -> int:
        """Wait until the app reports ``expected`` open websockets; returns the last count."""
        deadline = time.monotonic() + timeout
        count = -1
        while time.monotonic() < deadline:
            count = self.connections()
            if count == expected:
                return count
            time.sleep(0.02)
        return count


# --- load generators --------------------------------------------------------------------------


class LoadGen:
    """One client process; :meth:`call` sends a command and waits for its JSON reply."""

    def __init__(self, *, name: str = "loadgen", module: str = "benchmarks._loadgen") -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._stderr: list[str] = []
        self._replies: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        threading.Thread(target=self._pump_stdout, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())
            del self._stderr[:-50]

    def submit(self, command: Json) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(b"")

    def result(self, timeout: float = 600.0) -> Json:
        """The reply to the oldest command not yet answered (waits at most ``timeout``)."""
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) did not answer in {timeout:g} s"
            ) from None
        if not line:
            tail = "\n".join(self._stderr[-15:])
            raise RuntimeError(f"{self.name} (pid {self.pid}) died: {tail}")
        reply: Json = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, command: Json) -> Json:
        self.submit(command)
        return self.result()

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.submit({"cmd": "exit"})
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


class LoadGenPool:
    """Several client processes driven in lock-step (commands go out to all, then replies)."""

    def __init__(self, count: int) -> None:
        self.gens = [LoadGen(name=f"loadgen-{i}") for i in range(count)]
        self._next_index = 0  # client indices (and so seed client ids) are never reused

    def __enter__(self) -> LoadGenPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.gens)

    def broadcast(self, command: Json) -> list[Json]:
        """The same command to every process."""
        return self.each([command] * len(self.gens))

    def each(self, commands: Sequence[Json | None]) -> list[Json]:
        """One command per process (``None`` skips a process); replies in the same order."""
        for gen, cmd in zip(self.gens, commands, strict=True):
            if cmd is not None:
                gen.submit(cmd)
        return [
            gen.result() if cmd is not None else {}
            for gen, cmd in zip(self.gens, commands, strict=True)
        ]

    def open(
        self,
        url: str,
        app: str,
        mode: str,
        total: int,
        *,
        concurrency: int = 100,
        timeout: float = 120.0,
    ) -> Json:
        """Open ``total`` connections spread evenly over the processes and source addresses.

        Process ``k`` binds its sockets to 127.0.0.(k+2) so no single source address runs out
        of ephemeral ports; returns the summed reply.
        """
        n = len(self.gens)
        shares = [total // n + (1 if k < total % n else 0) for k in range(n)]
        commands: list[Json | None] = []
        start = self._next_index
        self._next_index += total
        for k, share in enumerate(shares):
            commands.append(
                {
                    "cmd": "open",
                    "url": url,
                    "app": app,
                    "mode": mode,
                    "start": start,
                    "count": share,
                    "local_host": f"127.0.0.{k + 2}",
                    "concurrency": concurrency,
                    "timeout": timeout,
                }
                if share
                else None
            )
            start += share
        replies = [r for r in self.each(commands) if r]
        return {
            "opened": sum(r["opened"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "seconds": max((r["seconds"] for r in replies), default=0.0),
            "errors": [e for r in replies for e in r.get("errors", [])][:5],
        }

    def status(self) -> Json:
        replies = self.broadcast({"cmd": "status"})
        out: Json = {"open": 0, "closed": 0, "pings": 0, "hellos": 0, "close_codes": {}}
        for r in replies:
            for key in ("open", "closed", "pings", "hellos"):
                out[key] += r[key]
            for code, n in r["close_codes"].items():
                out["close_codes"][code] = out["close_codes"].get(code, 0) + n
        return out

    def close_all(self, timeout: float = 60.0) -> None:
        self.broadcast({"cmd": "close", "timeout": timeout})

    def cpu_seconds(self) -> float:
        return sum(g.cpu_seconds() for g in self.gens)

    def close(self) -> None:
        for gen in self.gens:
            gen.close()


# --- redis-server ---------------------------------------------------------------------------


def redis_argv(binary: str, host: str, port: int, data_dir: str, *extra: str) -> list[str]:
    """A redis-server command line: ``host:port``, no persistence (no RDB save, no AOF), its
    files in ``data_dir``, warnings only; ``extra`` options after those."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        host,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        data_dir,
        *extra,
        "--loglevel",
        "warning",
    ]


def redis_pong(host: str, port: int, timeout: float) -> bool:
    """Whether a redis-server on ``host:port`` answers PING now."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """Debian's redis-server on a free loopback port, without persistence.

    :meth:`kill` is a ``kill -9``; :meth:`start` again brings it back on the same port, empty
    (nothing is saved), as a crashed and restarted Redis would be.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make tools installs Debian's)")
        self.binary = binary
        self.host = host
        self.port = free_port(host)
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> None:
        """Start it (again) on its port and wait until it answers PING."""
        self.proc = subprocess.Popen(
            redis_argv(self.binary, self.host, self.port, self.dir, "--maxclients", "1000"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            if redis_pong(self.host, self.port, 0.5):
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        """``kill -9`` it (by pid) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

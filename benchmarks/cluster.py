"""Cluster broadcast on Redis, 2 instances: ``python -m benchmarks.cluster``.

Two uvicorn instances of one variant share a fresh redis-server (no persistence). Real
``websockets`` clients are split evenly over them, one load-generator process per instance.
Each repetition publishes M broadcasts on instance 1 from an HTTP route, as fast as they go,
and waits until every client has all of them.

Variants (``benchmarks/_cluster_server.py``): ``raw`` (Redis pub/sub + a plain send loop per
instance: the floor), ``ours`` (``broadcast()`` behind ``StabilizerMiddleware(backend=redis
URL)``), ``ours_group`` (to a group holding half the clients), ``socketio`` / ``socketio_room``
(python-socketio's ``AsyncRedisManager``, emit to all / to a room).

Per repetition: ``wall_ms`` (publish start until the last client has the last message),
``cpu_us_per_delivery`` (both instances' CPU seconds over the repetition, per delivered
frame), ``deliveries_per_s`` and the latency of every delivery (publish → arrival, p50/p99).
Losses, duplicates and reorders over every repetition are listed per variant.

The outage run: fewer clients, ``rate`` broadcasts per second for a few seconds; Redis is
SIGKILLed 2 s in and restarted (empty) 2 s later. Reported per variant: messages lost per
instance and the recovery time (Redis back → first delivery on the other instance of a message
published since the kill).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks._common import (
    Json,
    benchmark,
    case,
    failed,
    free_port,
    make_parser,
    not_available,
    ok,
    ratio,
    run_standalone,
    selected,
    summarize,
)
from benchmarks._procs import ROOT, _env, load_average, proc_cpu_seconds

NAME = "cluster"
VARIANTS = ("raw", "ours", "ours_group", "socketio", "socketio_room")
PROFILES: dict[str, Json] = {
    "full": {
        "clients": 2000,
        "messages": 200,
        "reps": 5,
        "outage_clients": 200,
        "outage_rate": 50,
        "outage_seconds": 8,
    },
    "quick": {
        "clients": 300,
        "messages": 50,
        "reps": 5,
        "outage_clients": 50,
        "outage_rate": 50,
        "outage_seconds": 6,
    },
    "tiny": {
        "clients": 20,
        "messages": 10,
        "reps": 5,
        "outage_clients": 0,  # no outage run at this size (the smoke test)
        "outage_rate": 50,
        "outage_seconds": 5,
        "variants": "raw,ours",
    },
}
INSTANCES = 2


class Redis:
    """A redis-server on a free port without persistence; SIGKILL and restart on that port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make tools)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


class Instance:
    """One uvicorn instance of a variant (``benchmarks._cluster_server``)."""

    def __init__(self, kind: str, redis_url: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._cluster_server",
                "--variant",
                kind,
                "--port",
                str(self.port),
                "--redis",
                redis_url,
            ],
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, timeout: float = 600.0) -> Json:
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=b"" if method == "POST" else None,
        )
        with opener.open(req, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")  # type: ignore[no-any-return]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("instance exited at startup")
            try:
                self.request("GET", "/bench/info", timeout=1)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("instance did not start")

    def connections(self) -> int:
        return int(self.request("GET", "/bench/info")["connections"])

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class LoadGen:
    """Clients of one instance in their own process (``benchmarks._cluster_clients``)."""

    def __init__(self, url: str, clients: int, *, socketio: bool, group: bool) -> None:
        args = [
            sys.executable,
            "-m",
            "benchmarks._cluster_clients",
            "--urls",
            url,
            "--clients",
            str(clients),
        ]
        if socketio:
            args.append("--socketio")
        if group:
            args += ["--group-every", "2"]
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def read(self) -> Json:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("load generator exited")
        return json.loads(line)  # type: ignore[no-any-return]

    def ask(self, lo: int, hi: int, idle: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{lo} {hi} {idle}\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


def _variant(name: str) -> tuple[str, bool]:
    """(server kind, group run)."""
    return {
        "raw": ("raw", False),
        "ours": ("ours", False),
        "ours_group": ("ours", True),
        "socketio": ("socketio", False),
        "socketio_room": ("socketio", True),
    }[name]


class Setup:
    """Redis, the instances and their load generators, torn down in reverse."""

    def __init__(self, name: str, clients: int) -> None:
        kind, self.group = _variant(name)
        self.redis = Redis()
        self.instances: list[Instance] = []
        self.loadgens: list[LoadGen] = []
        self.redis.start()
        try:
            self.instances = [Instance(kind, self.redis.url) for _ in range(INSTANCES)]
            for instance in self.instances:
                instance.wait_ready()
            time.sleep(0.5)  # the instances find each other
            per = clients // INSTANCES
            self.loadgens = [
                LoadGen(i.ws_url, per, socketio=kind == "socketio", group=self.group)
                for i in self.instances
            ]
            for gen in self.loadgens:
                gen.read()  # {"ready": n}
            deadline = time.monotonic() + 30
            while sum(i.connections() for i in self.instances) != per * INSTANCES:
                if time.monotonic() > deadline:
                    raise RuntimeError("the instances do not see every client")
                time.sleep(0.05)
            self.clients = per * INSTANCES
        except BaseException:
            self.close()
            raise

    def publish(self, start: int, count: int, rate: float = 0) -> Json:
        group = "&group=half" if self.group else ""
        return self.instances[0].request(
            "POST", f"/bench/publish?start={start}&count={count}&rate={rate}{group}"
        )

    def close(self) -> None:
        for gen in self.loadgens:
            gen.stop()
        for instance in self.instances:
            instance.stop()
        self.redis.stop()


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _measure(name: str, clients: int, messages: int, reps: int) -> Json:
    setup = Setup(name, clients)
    try:
        wall: list[float] = []
        cpu_per: list[float] = []
        rates: list[float] = []
        p50: list[float] = []
        p99: list[float] = []
        cpu_instance: list[list[float]] = [[] for _ in setup.instances]
        faults = {"lost": 0, "duplicates": 0, "reorders": 0}
        for rep in range(reps + 1):  # rep 0 warms up and is discarded
            lo, hi = rep * messages, (rep + 1) * messages
            cpu0 = [i.cpu() for i in setup.instances]
            t0 = time.time()
            reply = setup.publish(lo, messages)
            if reply.get("errors"):
                raise RuntimeError(f"{reply['errors']} publishes failed")
            for gen in setup.loadgens:
                gen.ask(lo, hi, 10.0)
            results = [gen.read() for gen in setup.loadgens]
            cpu1 = [i.cpu() for i in setup.instances]
            delivered = sum(r["delivered"] for r in results)
            last = max(r["last_arrival"] or t0 for r in results)
            if rep == 0:
                continue
            for key in faults:
                faults[key] += sum(r[key] for r in results)
            spent = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
            for k, s in enumerate(spent):
                cpu_instance[k].append(s)
            wall.append((last - t0) * 1e3)
            cpu_per.append(sum(spent) / max(1, delivered) * 1e6)
            rates.append(delivered / max(1e-9, last - t0))
            sample = [x for r in results for x in r["latency_sample"]]
            p50.append(_pct(sample, 0.5) * 1e3)
            p99.append(_pct(sample, 0.99) * 1e3)
        return ok(
            {
                "wall_ms": summarize(wall, "ms"),
                "cpu_us_per_delivery": summarize(cpu_per, "us"),
                "deliveries_per_s": summarize(rates, "1/s"),
                "latency_p50_ms": summarize(p50, "ms"),
                "latency_p99_ms": summarize(p99, "ms"),
            },
            clients=setup.clients,
            cpu_s_per_instance=[round(statistics.median(c), 3) for c in cpu_instance],
            **faults,
        )
    finally:
        setup.close()


def _outage(name: str, clients: int, rate: int, seconds: int) -> Json:
    setup = Setup(name, clients)
    try:
        count = rate * seconds
        reply: Json = {}

        def publish() -> None:
            reply.update(setup.publish(0, count, rate))

        started = time.time()
        publisher = threading.Thread(target=publish)
        publisher.start()
        time.sleep(2.0)
        killed_at = time.time()
        setup.redis.kill()
        time.sleep(2.0)
        setup.redis.start()
        back_at = time.time()
        publisher.join(seconds + 60)
        for gen in setup.loadgens:
            gen.ask(0, count, 8.0)
        results = [gen.read() for gen in setup.loadgens]
        killed_index = int((killed_at - started) * rate)
        arrivals = results[1]["arrivals"]  # the instance that did not publish
        # First delivery, after Redis is back, of a message published since the kill.
        after = [
            v[0] for k, v in arrivals.items() if int(k) >= killed_index and v[0] >= back_at - 0.5
        ]
        recovery = round(min(after) - back_at, 3) if after else None
        return {
            "status": "ok",
            "published": count,
            "publish_errors": reply.get("errors"),
            "lost_per_instance": [r["lost"] for r in results],
            "duplicates": sum(r["duplicates"] for r in results),
            "reorders": sum(r["reorders"] for r in results),
            "recovery_s": recovery,
        }
    finally:
        setup.close()


def _available(name: str) -> str | None:
    kind, _ = _variant(name)
    try:
        if kind == "socketio":
            import socketio  # noqa: F401
        import redis  # noqa: F401
    except ImportError as exc:
        return f"not installed: {exc.name}"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (make tools)"
    return None


def run(profile: str = "full", *, reps: int | None = None, variants: str | None = None) -> Json:
    """Measure every available variant; returns the benchmark's result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    clients, messages = int(preset["clients"]), int(preset["messages"])
    reps = max(5, reps or int(preset["reps"]))
    names = selected(VARIANTS, variants or preset.get("variants"))
    loads = [load_average()]
    results: dict[str, Json] = {}
    outages: dict[str, Json] = {}
    for name in names:
        reason = _available(name)
        if reason is not None:
            results[name] = not_available(reason)
            continue
        try:
            results[name] = _measure(name, clients, messages, reps)
        except Exception as exc:
            results[name] = failed(f"{type(exc).__name__}: {exc}")
        if name in ("raw", "ours", "socketio") and int(preset["outage_clients"]):
            try:
                outages[name] = _outage(
                    name,
                    int(preset["outage_clients"]),
                    int(preset["outage_rate"]),
                    int(preset["outage_seconds"]),
                )
            except Exception as exc:
                outages[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        loads.append(load_average())
    ratios = [
        ratio(results, "ours", "raw", "cpu_us_per_delivery", target=("<=", 1.2)),
        ratio(results, "ours", "raw", "wall_ms", target=("<=", 1.2)),
        ratio(results, "socketio", "ours", "cpu_us_per_delivery", target=(">=", 4.0)),
        ratio(results, "socketio", "ours", "wall_ms"),
        ratio(results, "ours_group", "raw", "cpu_us_per_delivery"),
        ratio(results, "socketio_room", "ours_group", "cpu_us_per_delivery"),
    ]
    cases = [
        case(
            f"{clients:,} clients on {INSTANCES} instances, {messages} broadcasts",
            {"clients": clients, "messages": messages},
            results,
            ratios,
        )
    ]
    notes = [
        f"{INSTANCES} uvicorn instances per variant on one fresh redis-server (no persistence); "
        f"{clients:,} websockets clients, half on each instance, one load-generator process per "
        "instance; every broadcast is published on instance 1 by an HTTP route. 2 cores shared.",
        "cpu_us_per_delivery: both instances' CPU seconds during a repetition divided by the "
        "frames delivered; wall_ms: publish start until the last client has the last frame. "
        f"{reps} repetitions after one discarded warm-up; median [min–max].",
        "Group variants: half the clients are members; deliveries count only what they get.",
        "encode/broadcaster: not measured (not installed with the pinned redis-py here).",
        "Outage run (Redis SIGKILLed 2 s into the stream, restarted empty 2 s later): "
        + json.dumps(outages),
        f"load average (1, 5, 15 min) before and after each variant: {loads}",
    ]
    params = {"clients": clients, "messages": messages, "reps": reps, "instances": INSTANCES}
    document = benchmark(
        NAME,
        "Cluster broadcast on Redis, 2 instances",
        "cpu_us_per_delivery",
        params,
        cases,
        notes,
        started,
    )
    document["outage"] = outages
    return document


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("cluster", __doc__)
    args = parser.parse_args(argv)
    return run_standalone(run, args)


if __name__ == "__main__":
    raise SystemExit(main())

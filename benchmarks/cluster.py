"""Cluster broadcast on Redis, 2 instances: ``python -m benchmarks.cluster``.

Per variant, a fresh redis-server (Debian's, started here on a free loopback port, no
persistence) and two uvicorn instances of the variant's app (``benchmarks/_cluster_apps.py``)
on it. ``--clients`` real ``websockets`` clients, held by separate load-generator processes
(``benchmarks/_cluster_loadgen.py``), are spread round-robin over both instances. Each
repetition publishes ``--messages`` numbered broadcasts on instance 1 from an HTTP route, as
fast as they go, and waits until every client has every one (or nothing arrives for a while).

Per repetition: ``wall_ms`` (first publish until the last client has the last message),
``deliveries_per_s``, the latency of every delivery (publish → arrival, p50/p99),
``cpu_us_per_delivery`` (both instances' CPU seconds over the repetition, psutil-style from
/proc, per delivered frame), each instance's CPU seconds, Redis's CPU, and the clients' own
check of every numbered message: ``lost``, ``duplicates``, ``reorders``.

Variants: ``raw`` (Redis pub/sub + one plain send loop per instance: the floor), ``ours``
(``StabilizerMiddleware(backend="redis://…")``, ``broadcast()`` from the route),
``ours_group`` (a group holding half the clients), ``socketio`` / ``socketio_room``
(python-socketio ``AsyncServer`` + ``AsyncRedisManager``, emit to all / to a room holding half
the clients), ``broadcaster`` (encode/broadcaster's Redis backend, used as its README shows).

The outage run (``--outage-only``, skipped with ``--no-outage``): fewer clients, a steady
stream of broadcasts (full: 50/s for 10 s); redis-server is killed with SIGKILL mid-run and
restarted on the same port, empty, 2 s later. Reported per variant: messages lost on each
instance, duplicates and reorders, publishes that raised, and the time from Redis's return
until each instance delivers again.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import signal
import sys
import threading
import time

from benchmarks._common import (
    Json,
    benchmark,
    case,
    failed,
    finish_standalone,
    make_parser,
    not_available,
    ok,
    ours_status,
    ratio,
    resolve_profile,
    selected,
    summarize,
)
from benchmarks._procs import LoadGen, RedisServer, ServerProcess, load_average

NAME = "cluster"
VARIANTS = ("raw", "ours", "ours_group", "socketio", "socketio_room", "broadcaster")
OUTAGE_VARIANTS = ("raw", "ours", "socketio", "broadcaster")
INSTANCES = 2
# variant -> (app in _cluster_apps, client kind, broadcasts go to the group holding half)
SETUP: dict[str, tuple[str, str, bool]] = {
    "raw": ("raw", "plain", False),
    "ours": ("ours", "plain", False),
    "ours_group": ("ours", "plain", True),
    "socketio": ("socketio", "socketio", False),
    "socketio_room": ("socketio", "socketio", True),
    "broadcaster": ("broadcaster", "plain", False),
}
PROFILES: dict[str, Json] = {
    "full": {
        "clients": 2000,
        "messages": 200,
        "reps": 5,
        "procs": 2,
        "idle": 15.0,
        "outage": {"clients": 200, "rate": 50, "seconds": 10.0, "kill_at": 4.0, "idle": 3.0},
    },
    "quick": {
        "clients": 200,
        "messages": 100,
        "reps": 5,
        "procs": 2,
        "idle": 10.0,
        "outage": {"clients": 100, "rate": 50, "seconds": 6.0, "kill_at": 2.0, "idle": 3.0},
    },
    "tiny": {
        "clients": 20,
        "messages": 10,
        "reps": 5,
        "procs": 1,
        "idle": 5.0,
        "variants": "raw",
        "outage": {"clients": 10, "rate": 20, "seconds": 4.5, "kill_at": 0.5, "idle": 1.0},
    },
}
RESTART_AFTER = 2.0  # seconds redis-server stays down in the outage run
MESSAGE_SIZE = 64


# --- availability ----------------------------------------------------------------------------


def ours_cluster_status() -> tuple[bool, str | None]:
    """Whether the middleware takes a Redis backend yet (the contract of DESIGN's cluster mode):
    ``StabilizerConfig(backend="redis://…", cluster_name=…, secret=…)`` must construct."""
    usable, reason = ours_status()
    if not usable:
        return False, reason
    try:
        from stabilizer_asgi import StabilizerConfig

        StabilizerConfig(backend="redis://127.0.0.1:6379/0", cluster_name="bench", secret="s")
        if importlib.util.find_spec("stabilizer_asgi.backends.redis") is None:
            raise ImportError("no module stabilizer_asgi.backends.redis")
    except Exception as exc:
        return False, (
            "stabilizer_asgi has no Redis backend yet: StabilizerConfig(backend='redis://…', "
            f"cluster_name=…, secret=…) fails ({type(exc).__name__}: {str(exc)[:160]})"
        )
    return True, None


def variant_status(name: str) -> tuple[bool, str | None]:
    """Whether a variant can run here, and why not."""
    if shutil.which("redis-server") is None:
        return False, "redis-server is not installed (make tools installs Debian's)"
    if importlib.util.find_spec("redis") is None:
        return False, "redis-py is not installed (pip install -e '.[bench]')"
    app = SETUP[name][0]
    if app == "ours":
        return ours_cluster_status()
    if app == "socketio" and importlib.util.find_spec("socketio") is None:
        return False, "python-socketio is not installed (pip install -e '.[bench]')"
    if app == "broadcaster":
        if importlib.util.find_spec("broadcaster") is None:
            return False, "broadcaster is not installed (pip install -e '.[bench]')"
        return broadcaster_status()
    return True, None


def broadcaster_status(timeout: float = 3.0) -> tuple[bool, str | None]:
    """Whether encode/broadcaster's Redis backend delivers anything with the installed redis-py.

    broadcaster 0.3.1 wakes its listener when the first channel is subscribed and iterates
    ``pubsub.listen()``, which ends at once while the pubsub has no channel registered. redis-py
    up to 7.x registered it before the ``SUBSCRIBE`` call first yielded; 8.x registers it after
    the round trip, so the listener finds none, ends, and then waits forever: every message is
    silently dropped. One message through a scratch redis-server tells which case this is.
    """
    import asyncio
    import importlib.metadata

    from broadcaster import Broadcast

    async def probe(url: str) -> bool:
        broadcast = Broadcast(url)
        await broadcast.connect()
        try:
            async with broadcast.subscribe(channel="probe") as subscriber:
                await asyncio.sleep(0.1)
                await broadcast.publish(channel="probe", message="hello")
                try:
                    event = await asyncio.wait_for(subscriber.get(), timeout)
                except asyncio.TimeoutError:
                    return False
                return bool(event.message == "hello")
        finally:
            await broadcast.disconnect()

    with RedisServer() as server:
        works = asyncio.run(probe(server.url))
    if works:
        return True, None
    versions = (
        f"broadcaster {importlib.metadata.version('broadcaster')}, "
        f"redis-py {importlib.metadata.version('redis')}"
    )
    return False, (
        f"encode/broadcaster's Redis backend delivers nothing with the redis-py we install "
        f"({versions}): its listener runs pubsub.listen() before redis-py 8 has registered "
        "the subscription, listen() ends at once and the listener then waits forever, "
        "silently (it works with redis-py 5 to 7)"
    )


# --- one cluster: Redis, two instances, the clients -------------------------------------------


class Cluster:
    """redis-server, the instances of one app on it and the clients, torn down in reverse."""

    def __init__(self, variant: str, clients: int, procs: int) -> None:
        app, self.kind, self.group = SETUP[variant]
        self.redis = RedisServer()
        self.servers: list[ServerProcess] = []
        self.gens: list[LoadGen] = []
        try:
            self.redis.start()
            self.servers = [
                ServerProcess(
                    app,
                    module="benchmarks._cluster_apps",
                    extra_args=["--redis", self.redis.url],
                )
                for _ in range(INSTANCES)
            ]
            for server in self.servers:
                server.spawn()
            for server in self.servers:
                server.wait_ready()
            self.gens = [
                LoadGen(name=f"cluster-loadgen-{k}", module="benchmarks._cluster_loadgen")
                for k in range(procs)
            ]
            self._open(clients)
        except BaseException:
            self.close()
            raise

    def _open(self, clients: int) -> None:
        urls = [s.ws_url for s in self.servers]
        n = len(self.gens)
        shares = [clients // n + (1 if k < clients % n else 0) for k in range(n)]
        start = 0
        for k, (gen, share) in enumerate(zip(self.gens, shares, strict=True)):
            gen.submit(
                {
                    "cmd": "open",
                    "urls": urls,
                    "kind": self.kind,
                    "start": start,
                    "count": share,
                    "local_host": f"127.0.0.{k + 2}",
                    "concurrency": 100,
                    "timeout": 60,
                }
            )
            start += share
        replies = [gen.result(timeout=180) for gen in self.gens]
        opened = sum(r["opened"] for r in replies)
        if opened != clients:
            errors = [e for r in replies for e in r["errors"]][:3]
            raise RuntimeError(f"opened {opened}/{clients} clients: {errors}")
        per_instance = [sum(r["per_instance"][k] for r in replies) for k in range(INSTANCES)]
        members = [
            sum(1 for i in range(clients) if i % INSTANCES == k and (i // 2) % 2 == 0)
            for k in range(INSTANCES)
        ]
        self.clients = clients
        self.expected_members = sum(members)
        deadline = time.monotonic() + 60
        for server, want, want_members in zip(self.servers, per_instance, members, strict=True):
            while True:
                info = server.get("/bench/info")
                if info["connections"] == want and info["members"] in (want_members, -1):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"instance sees {info['connections']}/{want} connections, "
                        f"{info['members']}/{want_members} group members"
                    )
                time.sleep(0.02)

    @property
    def receivers(self) -> int:
        """Clients each broadcast must reach."""
        return self.expected_members if self.group else self.clients

    def publish(self, start: int, count: int, rate: float = 0.0, timeout: float = 600) -> Json:
        group = "&group=half" if self.group else ""
        return self.servers[0].post(
            f"/bench/publish?start={start}&count={count}&size={MESSAGE_SIZE}&rate={rate}{group}",
            timeout=timeout,
        )

    def expect(self, lo: int, hi: int, idle: float, *, detail: bool = False) -> list[Json]:
        """Per instance, what its clients received of messages lo..hi-1 (all gens merged)."""
        command = {
            "cmd": "expect",
            "lo": lo,
            "hi": hi,
            "group": self.group,
            "idle": idle,
            "linger": 0.2,
            "detail": detail,
        }
        for gen in self.gens:
            gen.submit(command)
        replies = [gen.result(timeout=idle + 600) for gen in self.gens]
        merged: list[Json] = []
        for k in range(INSTANCES):
            parts = [r["instances"][k] for r in replies if len(r["instances"]) > k]
            entry: Json = {
                "clients": sum(p["clients"] for p in parts),
                "delivered": sum(p["delivered"] for p in parts),
                "lost": sum(p["lost"] for p in parts),
                "duplicates": sum(p["duplicates"] for p in parts),
                "reorders": sum(p["reorders"] for p in parts),
                "last_arrival": max((p["last_arrival"] or 0.0 for p in parts), default=0.0),
                "latencies": [x for p in parts for x in p["latencies"]],
            }
            if detail:
                entry["reached"] = [
                    sum(col) for col in zip(*(p["reached"] for p in parts), strict=True)
                ]
                entry["first"] = [
                    min((t for t in col if t is not None), default=None)
                    for col in zip(*(p["first"] for p in parts), strict=True)
                ]
            merged.append(entry)
        return merged

    def cpu(self) -> list[float]:
        return [s.cpu_seconds() for s in self.servers]

    def close(self) -> None:
        for gen in self.gens:
            gen.close()
        for server in self.servers:
            server.stop()
        self.redis.stop()


def _reason(exc: BaseException) -> str:
    """An exception as one line: its first line and, for a server's stderr tail, its last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    if len(lines) > 1:
        text += f" … {lines[-1]}"
    return text


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# --- the throughput run ------------------------------------------------------------------------


def _measure(variant: str, clients: int, messages: int, reps: int, procs: int, idle: float) -> Json:
    cluster = Cluster(variant, clients, procs)
    try:
        samples: dict[str, list[float]] = {
            k: []
            for k in (
                "wall_ms",
                "deliveries_per_s",
                "latency_p50_ms",
                "latency_p99_ms",
                "cpu_us_per_delivery",
                "cpu_s_instance1",
                "cpu_s_instance2",
                "redis_cpu_ms",
                "lost",
                "duplicates",
                "reorders",
            )
        }
        publish_errors = 0
        for rep in range(reps + 1):  # rep 0 warms up (subscriptions, caches) and is discarded
            lo, hi = rep * messages, (rep + 1) * messages
            cpu0, redis0 = cluster.cpu(), cluster.redis.cpu_seconds()
            reply = cluster.publish(lo, messages)
            per_instance = cluster.expect(lo, hi, idle)
            cpu1, redis1 = cluster.cpu(), cluster.redis.cpu_seconds()
            if rep == 0:
                continue
            publish_errors += int(reply["errors"])
            delivered = sum(p["delivered"] for p in per_instance)
            if not delivered:
                raise RuntimeError(f"no client received any of broadcasts {lo}..{hi - 1}")
            last = max(p["last_arrival"] for p in per_instance)
            wall = max(1e-9, last - float(reply["t0"]))
            spent = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
            latencies = [x for p in per_instance for x in p["latencies"]] or [math.nan]
            samples["wall_ms"].append(wall * 1e3)
            samples["deliveries_per_s"].append(delivered / wall)
            samples["latency_p50_ms"].append(_pct(latencies, 0.5) * 1e3)
            samples["latency_p99_ms"].append(_pct(latencies, 0.99) * 1e3)
            samples["cpu_us_per_delivery"].append(sum(spent) / max(1, delivered) * 1e6)
            samples["cpu_s_instance1"].append(spent[0])
            samples["cpu_s_instance2"].append(spent[1])
            samples["redis_cpu_ms"].append((redis1 - redis0) * 1e3)
            for key in ("lost", "duplicates", "reorders"):
                samples[key].append(float(sum(p[key] for p in per_instance)))
        units = {
            "wall_ms": "ms",
            "deliveries_per_s": "1/s",
            "latency_p50_ms": "ms",
            "latency_p99_ms": "ms",
            "cpu_us_per_delivery": "µs",
            "cpu_s_instance1": "s",
            "cpu_s_instance2": "s",
            "redis_cpu_ms": "ms",
            "lost": "deliveries",
            "duplicates": "deliveries",
            "reorders": "deliveries",
        }
        return ok(
            {k: summarize(v, units[k]) for k, v in samples.items()},
            clients=cluster.clients,
            receivers=cluster.receivers,
            deliveries_expected=cluster.receivers * messages,
            publish_errors=publish_errors,
        )
    finally:
        cluster.close()


# --- the outage run ------------------------------------------------------------------------------


def _outage(
    variant: str, clients: int, rate: float, seconds: float, kill_at: float, idle: float
) -> Json:
    cluster = Cluster(variant, clients, 1)
    try:
        count = int(rate * seconds)
        reply: Json = {}
        error: list[BaseException] = []

        def publish() -> None:
            try:
                reply.update(cluster.publish(0, count, rate, timeout=seconds + 120))
            except BaseException as exc:
                error.append(exc)

        started = time.time()
        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        time.sleep(max(0.0, started + kill_at - time.time()))
        killed_at = time.time()
        cluster.redis.kill()
        time.sleep(RESTART_AFTER)
        cluster.redis.start()
        back_at = time.time()
        publisher.join(seconds + 150)
        if error:
            raise RuntimeError(f"publishing failed: {error[0]!r}")
        per_instance = cluster.expect(0, count, idle, detail=True)
        t0 = float(reply["t0"])
        kill_index = max(0, math.ceil((killed_at - t0) * rate))
        back_index = max(kill_index, math.ceil((back_at - t0) * rate))
        metrics: dict[str, Json] = {}
        info: Json = {
            "published": count,
            "killed_at_s": round(killed_at - t0, 3),
            "back_at_s": round(back_at - t0, 3),
        }
        for k, p in enumerate(per_instance, start=1):
            reached, first = p["reached"], p["first"]
            lost = [j for j in range(count) if reached[j] < p["clients"]]
            stopped = not any(
                first[j] is not None and first[j] < back_at for j in range(kill_index, back_index)
            )
            later = [first[j] for j in range(kill_index, count) if first[j] and first[j] >= back_at]
            if not stopped:
                recovery: float | None = 0.0
            else:
                recovery = (min(later) - back_at) if later else None
            metrics[f"lost_instance{k}"] = summarize([len(lost)], "messages", single=True)
            if recovery is not None:
                metrics[f"recovery_ms_instance{k}"] = summarize([recovery * 1e3], "ms", single=True)
            info[f"instance{k}"] = {
                "lost_messages": len(lost),
                "lost_deliveries": p["lost"],
                "lost_span_s": round((lost[-1] - lost[0] + 1) / rate, 2) if lost else 0.0,
                "delivery_stopped": stopped,
                "recovery_s": None if recovery is None else round(recovery, 3),
            }
        metrics["duplicates"] = summarize(
            [sum(p["duplicates"] for p in per_instance)], "deliveries", single=True
        )
        metrics["reorders"] = summarize(
            [sum(p["reorders"] for p in per_instance)], "deliveries", single=True
        )
        metrics["publish_errors"] = summarize([int(reply["errors"])], "publishes", single=True)
        return ok(metrics, **info)
    finally:
        cluster.close()


def _outage_note(name: str, v: Json) -> str:
    if v.get("status") != "ok":
        return f"{name}: {v.get('status')} ({str(v.get('reason', ''))[:160]})"
    info = v["info"]
    parts = []
    for k in range(1, INSTANCES + 1):
        i = info[f"instance{k}"]
        where = "publishing instance" if k == 1 else "other instance"
        if not i["delivery_stopped"]:
            resumed = "delivery never stopped"
        elif i["recovery_s"] is None:
            resumed = (
                "delivery never resumed (no message published after the kill reached it after "
                "Redis returned)"
            )
        else:
            resumed = f"delivering again {i['recovery_s'] * 1e3:.0f} ms after Redis returned"
        parts.append(
            f"{where}: {i['lost_messages']} of {info['published']} messages lost "
            f"(≈ {i['lost_span_s']:g} s of the stream), {resumed}"
        )
    return f"{name}: " + "; ".join(parts)


# --- the benchmark -------------------------------------------------------------------------------


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    clients: int | None = None,
    messages: int | None = None,
    throughput: bool = True,
    outage: bool = True,
) -> Json:
    """Measure every available variant; returns the benchmark's result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    reps = max(5, reps or int(preset["reps"]))
    clients = clients or int(preset["clients"])
    messages = messages or int(preset["messages"])
    procs, idle = int(preset["procs"]), float(preset["idle"])
    names = selected(VARIANTS, variants or preset.get("variants"))
    loads = [load_average()]
    cases: list[Json] = []
    if throughput:
        results: dict[str, Json] = {}
        for name in names:
            usable, reason = variant_status(name)
            if not usable:
                results[name] = not_available(reason or "")
                continue
            try:
                results[name] = _measure(name, clients, messages, reps, procs, idle)
            except Exception as exc:
                results[name] = failed(_reason(exc))
            loads.append(load_average())
        ratios = [
            ratio(results, "ours", "raw", "cpu_us_per_delivery", target=("<=", 1.2)),
            ratio(results, "ours", "raw", "wall_ms", target=("<=", 1.2)),
            ratio(results, "socketio", "ours", "cpu_us_per_delivery", target=(">=", 4.0)),
            ratio(results, "socketio", "ours", "wall_ms"),
            ratio(results, "socketio_room", "ours_group", "cpu_us_per_delivery"),
            ratio(results, "ours_group", "raw", "cpu_us_per_delivery"),
            ratio(results, "socketio", "raw", "cpu_us_per_delivery"),
            ratio(results, "socketio", "raw", "wall_ms"),
            ratio(results, "broadcaster", "raw", "cpu_us_per_delivery"),
            ratio(results, "broadcaster", "raw", "wall_ms"),
        ]
        cases.append(
            case(
                f"{clients:,} clients on {INSTANCES} instances, {messages} broadcasts",
                {"clients": clients, "messages": messages, "instances": INSTANCES},
                results,
                [r for r in ratios if r["value"] is not None or "target" in r],
            )
        )
    outage_notes: list[str] = []
    o = preset["outage"]
    if outage:
        outages: dict[str, Json] = {}
        for name in [n for n in OUTAGE_VARIANTS if n in names]:
            usable, reason = variant_status(name)
            if not usable:
                outages[name] = not_available(reason or "")
            else:
                try:
                    outages[name] = _outage(
                        name,
                        int(o["clients"]),
                        float(o["rate"]),
                        float(o["seconds"]),
                        float(o["kill_at"]),
                        float(o["idle"]),
                    )
                except Exception as exc:
                    outages[name] = failed(_reason(exc))
            outage_notes.append(_outage_note(name, outages[name]))
            loads.append(load_average())
        cases.append(
            case(
                f"outage: {int(o['clients'])} clients, {o['rate']:g} broadcasts/s for "
                f"{o['seconds']:g} s, Redis SIGKILLed at {o['kill_at']:g} s and restarted "
                f"{RESTART_AFTER:g} s later",
                {"kind": "outage", **o, "restart_after": RESTART_AFTER},
                outages,
                [],
            )
        )
    notes = [
        f"Per variant: one fresh redis-server (no persistence) and {INSTANCES} uvicorn "
        f"instances; {clients:,} `websockets` clients in {procs} load-generator process(es) on "
        "their own loopback source addresses, round-robin over the instances; every broadcast is "
        f"a {MESSAGE_SIZE}-byte text published on instance 1 by an HTTP route, as fast as the "
        "variant takes them. 2 cores shared by Redis, both instances and the clients.",
        "wall_ms: first publish until the last client had the last message. cpu_us_per_delivery: "
        "both instances' CPU seconds during a repetition (publishing, delivery, 0.2 s of "
        "quiet after the last frame) divided by the frames delivered; cpu_s_instance1 is the "
        "publishing instance. latency: publish → arrival of every delivery (a sample of up to "
        "20,000 per instance and repetition). lost / duplicates / reorders: the clients' check "
        "of every numbered message, per repetition.",
        f"{reps} repetitions of {messages} broadcasts after one discarded warm-up; "
        "median [min–max].",
        "Group variants (ours_group, socketio_room): the group holds half the clients (half of "
        "each instance's); deliveries count the members' frames.",
        "socketio clients speak Engine.IO 4 / Socket.IO 5 over a plain websocket (what a "
        "python-socketio client does after its handshake), the lightest load for the server.",
    ]
    if outage:
        notes.append(
            "Outage run: one run per variant (single figures). lost_instanceN: messages that did "
            "not reach every client of instance N (1 publishes). recovery_ms_instanceN: from "
            "Redis answering again until the instance delivered a message published after the "
            "kill (0 if its delivery never stopped; no figure if it never resumed)."
        )
        notes += [f"outage, {n}" for n in outage_notes]
    notes.append(f"load average (1, 5, 15 min) before and after each variant: {loads}")
    params = {
        "clients": clients,
        "messages": messages,
        "reps": reps,
        "instances": INSTANCES,
        "procs": procs,
        "message_size": MESSAGE_SIZE,
        "outage": {**o, "restart_after": RESTART_AFTER} if outage else None,
    }
    return benchmark(
        NAME,
        "Cluster broadcast on Redis, 2 instances",
        "cpu_us_per_delivery",
        params,
        cases,
        notes,
        started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("cluster", __doc__)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None)
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--no-outage", action="store_true", help="skip the outage run")
    part.add_argument("--outage-only", action="store_true", help="only the outage run")
    args = parser.parse_args(argv)
    # A plain `kill` of this process still stops redis-server, the instances and the clients.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(
        resolve_profile(args),
        reps=args.reps,
        variants=args.variants,
        clients=args.clients,
        messages=args.messages,
        throughput=not args.outage_only,
        outage=not args.no_outage,
    )
    return finish_standalone(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

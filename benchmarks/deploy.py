"""Rolling deploy of 3 nodes under load: ``python -m benchmarks.deploy``.

Per variant, a fresh redis-server (Debian's, on a free loopback port, no persistence), 3 nodes
run as ``stabilizer-asgi serve benchmarks._deploy_app:app --backend redis://… --secret …`` (real
uvicorn, the sidecar adding the middleware) and the round-robin TCP load balancer of
``benchmarks/_lb.py`` in front of them (in a thread of this process). ``--clients`` Python
clients (``stabilizer_asgi.client.connect``, the real reconnecting client, opted in), held by
load-generator processes (``benchmarks/_deploy_loadgen.py``), connect through the balancer.
While each client sends a numbered message every ``send_interval`` seconds (the app echoes it)
and a publisher broadcasts numbered messages through a node's HTTP route, each node in turn is
taken out of the balancer, sent SIGTERM (the sidecar drains: reconnect hints spread over
``drain_period``, 1012, parking, exit), started again on its port and put back; the next node
goes once every client is connected again (or after ``drain_period`` + 10 s).

Reported per variant (one run each, single figures): ``deploy_s`` (first SIGTERM until the last
node is back and every client is connected), ``drain_s`` / ``restart_s`` (per node, the
slowest), the clients' check of every numbered message both ways: ``lost``, ``duplicated``,
``reordered``, ``resyncs`` (the client's resync events, with their reasons in the info), and the
reconnect storm: ``peak_handshakes_per_s`` (the most connections the balancer handed to the
nodes in any 1 s window during the deploy) and ``peak_handshakes_per_s_node`` (the same for the
busiest single node).

Variants: ``spread`` (``drain_period`` 5 s in the full profile: each drained client is told to
come back at a random moment within 5 s) and ``no_spread`` (``drain_period`` 0: all at once).
"""

from __future__ import annotations

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
    resolve_profile,
    selected,
    summarize,
)
from benchmarks._deploy import Publisher
from benchmarks._lb import count_between, peak_rate
from benchmarks._nodes import Deployment, options_with
from benchmarks._procs import LoadGen, RedisServer, load_average

NAME = "deploy"
NODES = 3
VARIANTS = ("spread", "no_spread")
# drain_period of the spread variant per profile (no_spread: 0)
PROFILES: dict[str, Json] = {
    "full": {
        "clients": 2000,
        "procs": 4,
        "send_interval": 5.0,
        "rate": 2.0,
        "idle": 15.0,
        "spread": 5.0,
    },
    "quick": {
        "clients": 300,
        "procs": 2,
        "send_interval": 2.0,
        "rate": 5.0,
        "idle": 10.0,
        "spread": 2.0,
    },
    "tiny": {
        "clients": 24,
        "procs": 1,
        "send_interval": 0.5,
        "rate": 10.0,
        "idle": 5.0,
        "spread": 1.0,
    },
}
NODE_OPTIONS = {
    "probe_interval": 1.0,
    "cluster_timeout": 2.0,
    "heartbeat_interval": 25.0,
    "heartbeat_timeout": 10.0,
    "max_connections": 5000,
}


def variant_status() -> tuple[bool, str | None]:
    if shutil.which("redis-server") is None:
        return False, "redis-server is not installed (make tools installs Debian's)"
    usable, reason = ours_status()
    if not usable:
        return False, reason
    try:
        import redis  # noqa: F401
    except ImportError:
        return False, "redis-py is not installed (pip install -e '.[redis]')"
    return True, None


class Load:
    """The load-generator processes holding the clients."""

    def __init__(self, procs: int) -> None:
        self.gens = [
            LoadGen(name=f"deploy-loadgen-{k}", module="benchmarks._deploy_loadgen")
            for k in range(procs)
        ]

    def each(self, command: Json, timeout: float = 600.0) -> list[Json]:
        for gen in self.gens:
            gen.submit(command)
        return [gen.result(timeout=timeout) for gen in self.gens]

    def open(self, url: str, clients: int) -> None:
        n = len(self.gens)
        shares = [clients // n + (1 if k < clients % n else 0) for k in range(n)]
        start = 0
        for k, (gen, share) in enumerate(zip(self.gens, shares, strict=True)):
            gen.submit(
                {
                    "cmd": "open",
                    "url": url,
                    "start": start,
                    "count": share,
                    "concurrency": 50,
                    "local_host": f"127.0.0.{k + 2}",
                }
            )
            start += share
        replies = [gen.result(timeout=300) for gen in self.gens]
        opened = sum(r["opened"] for r in replies)
        if opened != clients:
            errors = [e for r in replies for e in r["errors"]][:3]
            raise RuntimeError(f"opened {opened}/{clients} clients: {errors}")

    def close(self) -> None:
        for gen in self.gens:
            gen.close()


def _wait_connected(d: Deployment, clients: int, timeout: float) -> float:
    """Until the balancer holds ``clients`` forwarded connections; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if sum(d.lb.open_connections(k) for k in range(len(d.nodes))) >= clients:
            break
        time.sleep(0.05)
    return time.monotonic() - started


def _measure(variant: str, preset: Json, clients: int) -> Json:
    drain_period = float(preset["spread"]) if variant == "spread" else 0.0
    options = options_with(**NODE_OPTIONS, drain_period=drain_period)
    with RedisServer() as redis, Deployment(redis.url, NODES, options=options) as d:
        load = Load(int(preset["procs"]))
        try:
            opened_at = time.monotonic()
            load.open(d.ws_url(), clients)
            open_s = time.monotonic() - opened_at
            publisher = Publisher([node.http_url for node in d.nodes], float(preset["rate"]))
            load.each({"cmd": "start", "interval": float(preset["send_interval"])})
            publishing = threading.Thread(target=publisher.run, daemon=True)
            publishing.start()
            time.sleep(2.0)  # steady traffic first
            steps = []
            started = time.monotonic()
            for index in range(NODES):
                publisher.avoid(index)
                moved = d.lb.open_connections(index)
                step = d.redeploy(index)
                step["clients_moved"] = moved
                publisher.allow(index)
                step["reconnected_s"] = _wait_connected(d, clients, drain_period + 10.0)
                step["end"] = time.monotonic()
                steps.append(step)
            deploy_s = time.monotonic() - started
            time.sleep(1.0)
            load.each({"cmd": "stop"})
            publisher.stop()
            publishing.join(30)
            idle = float(preset["idle"])
            load.each(
                {"cmd": "settle", "published": publisher.published, "idle": idle, "timeout": 120},
                timeout=200,
            )
            reports = load.each(
                {
                    "cmd": "report",
                    "published": publisher.published,
                    "uncertain": publisher.uncertain,
                    "origins": publisher.origins,
                }
            )
            load.each({"cmd": "close"}, timeout=120)
        finally:
            load.close()
        accepted = [d.lb.accepted(k) for k in range(NODES)]
    during = [[t for t in times if started <= t <= steps[-1]["end"]] for times in accepted]
    per_step = []
    for index, step in enumerate(steps):
        survivors = [k for k in range(NODES) if k != index]
        per_step.append(
            {
                "node": index,
                "clients_moved": step["clients_moved"],
                "drain_s": round(step["drain_s"], 3),
                "restart_s": round(step["restart_s"], 3),
                "reconnected_s": round(step["reconnected_s"], 3),
                "handshakes_on_survivors": sum(
                    count_between(accepted[k], step["at"], step["end"]) for k in survivors
                ),
                "peak_handshakes_per_s_survivors": peak_rate(
                    [t for k in survivors for t in accepted[k] if step["at"] <= t <= step["end"]]
                ),
            }
        )
    totals = {key: sum(r[key] for r in reports) for key in ("sent", "received", "lost")}
    for key in (
        "duplicated",
        "reordered",
        "resyncs",
        "resynced_clients",
        "silent_lost",
        "silent_duplicated",
        "silent_reordered",
        "closed",
        "unsettled",
    ):
        totals[key] = sum(r[key] for r in reports)
    reasons: dict[str, int] = {}
    for r in reports:
        for reason, n in r["reasons"].items():
            reasons[reason] = reasons.get(reason, 0) + n

    def single(value: float, unit: str) -> Json:
        return summarize([value], unit, single=True)

    metrics = {
        "deploy_s": single(deploy_s, "s"),
        "drain_s": single(max(s["drain_s"] for s in steps), "s"),
        "restart_s": single(max(s["restart_s"] for s in steps), "s"),
        "lost": single(totals["lost"], "messages"),
        "duplicated": single(totals["duplicated"], "messages"),
        "reordered": single(totals["reordered"], "messages"),
        "resyncs": single(totals["resyncs"], "events"),
        "peak_handshakes_per_s": single(peak_rate([t for ts in during for t in ts]), "1/s"),
        "peak_handshakes_per_s_node": single(max(peak_rate(ts) for ts in during), "1/s"),
    }
    return ok(
        metrics,
        clients=clients,
        drain_period=drain_period,
        open_s=round(open_s, 2),
        messages_sent=totals["sent"],
        frames_received=totals["received"],
        broadcasts_published=len(publisher.published),
        broadcasts_uncertain=len(publisher.uncertain),
        resynced_clients=totals["resynced_clients"],
        silent_lost=totals["silent_lost"],
        silent_duplicated=totals["silent_duplicated"],
        silent_reordered=totals["silent_reordered"],
        silent_samples=[x for r in reports for x in r["silent_samples"]][:5],
        closed_clients=totals["closed"],
        unsettled_clients=totals["unsettled"],
        resync_reasons=reasons,
        handshakes_during_deploy=sum(len(ts) for ts in during),
        steps=per_step,
    )


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    clients: int | None = None,
) -> Json:
    """Measure every variant; returns the benchmark's result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    clients = clients or int(preset["clients"])
    names = selected(VARIANTS, variants)
    loads = [load_average()]
    results: dict[str, Json] = {}
    usable, reason = variant_status()
    for name in names:
        if not usable:
            results[name] = not_available(reason or "")
            continue
        try:
            results[name] = _measure(name, preset, clients)
        except Exception as exc:
            results[name] = failed(f"{type(exc).__name__}: {exc}")
        loads.append(load_average())
    notes = [
        f"{NODES} `stabilizer-asgi serve` nodes on one redis-server (no persistence), behind a "
        "round-robin TCP load balancer (benchmarks/_lb.py, a thread of the benchmark process); "
        f"{clients:,} Python clients (stabilizer_asgi.client, the real reconnecting client) in "
        f"{preset['procs']} load-generator process(es). 2 cores shared by everything.",
        f"Traffic: each client sends a numbered message every {preset['send_interval']:g} s "
        f"(echoed back by the app), {preset['rate']:g} numbered broadcasts/s through a node "
        "that is not being redeployed. lost/duplicated/reordered: the clients' check of every "
        "echo and broadcast after the traffic stopped and settled; resyncs: the clients' resync "
        "events.",
        "Each step: the node leaves the balancer, SIGTERM (drain), start on the same port, back "
        "in the balancer; the next step once every client is connected again (at most "
        "drain_period + 10 s). deploy_s: first SIGTERM until the last step's clients are back.",
        "peak_handshakes_per_s: connections the balancer handed to the nodes in the busiest 1 s "
        "window of the deploy (all nodes; per node for _node). One run per variant.",
        f"Node settings: {NODE_OPTIONS}; drain_period {preset['spread']:g} s (spread) or 0 "
        "(no_spread).",
        f"load average (1, 5, 15 min) before and after each variant: {loads}",
    ]
    params = {"clients": clients, "nodes": NODES, **preset}
    return benchmark(
        NAME,
        f"Rolling deploy of {NODES} nodes under load",
        "deploy_s",
        params,
        [
            case(
                f"{clients:,} clients, rolling deploy of {NODES} nodes",
                {"clients": clients, "nodes": NODES},
                results,
                [],
            )
        ],
        notes,
        started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(NAME, __doc__)
    parser.add_argument("--clients", type=int, default=None)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run(resolve_profile(args), variants=args.variants, clients=args.clients)
    return finish_standalone(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

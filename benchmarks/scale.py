"""How many connections one uvicorn process holds with heartbeat on: ``python -m benchmarks.scale``.

Clients are opened in five equal steps up to ``--target`` (15,000 by default), spread over
client processes of at most 5,000 connections each, each process on its own loopback source
address (127.0.0.2, .3, …), because the per-process open-file limit is 20,000 and one source
address has about 28,000 ephemeral ports. The server process holds one descriptor per
connection, which is what caps a single process at just under the limit.

Variant ``ours``: opted-in clients (heartbeat on, every ping answered), heartbeat interval
``--interval`` (5 s; the default of 25 s would cost a fifth of the heartbeat part). Variant
``bare``: the same app without the middleware and plain clients, for reference (uvicorn's own
protocol-level keepalive pings every 20 s run in both). After the last step, the server's CPU
is sampled over several windows while everything idles; the run then checks that every
connection is still open and that no heartbeat timed out.
"""

from __future__ import annotations

import math
import time

from benchmarks._common import (
    Json,
    benchmark,
    case,
    failed,
    make_parser,
    not_available,
    ok,
    ours_status,
    run_standalone,
    selected,
    summarize,
)
from benchmarks._procs import LoadGenPool, ServerProcess, load_average

NAME = "scale"
VARIANTS = ("ours", "bare")
PER_PROCESS = 5_000
STEPS = 5
PROFILES: dict[str, Json] = {
    "full": {"target": 15_000, "interval": 5.0, "windows": 5, "window": 3.0},
    "quick": {"target": 2_000, "interval": 1.0, "windows": 5, "window": 0.4},
    "tiny": {"target": 60, "interval": 0.2, "windows": 5, "window": 0.1, "variants": "ours"},
}


def _measure(variant: str, target: int, interval: float, windows: int, window: float) -> Json:
    app, mode = ("ours", "optin") if variant == "ours" else ("bare", "plain")
    procs = max(1, math.ceil(target / PER_PROCESS))
    steps: list[Json] = []
    server_kw: Json = (
        {"heartbeat_interval": interval, "heartbeat_timeout": interval} if variant == "ours" else {}
    )
    with ServerProcess(app, **server_kw) as server, LoadGenPool(procs) as pool:
        base_rss = server.rss()
        held = 0
        step = math.ceil(target / STEPS)
        while held < target:
            want = min(step, target - held)
            t0 = time.perf_counter()
            opened = pool.open(server.ws_url, app, mode, want, concurrency=200, timeout=60)
            held += opened["opened"]
            got = server.wait_connections(held, timeout=60)
            steps.append(
                {
                    "connections": got,
                    "failed": opened["failed"],
                    "seconds": round(time.perf_counter() - t0, 2),
                    "rss": server.rss(),
                    "errors": opened["errors"][:2],
                }
            )
            if opened["failed"] > max(5, want // 100) or got != held:
                break
        stats0 = server.get("/bench/stats") if variant == "ours" else {}
        cpu: list[float] = []
        time.sleep(min(2.0, interval))  # let the connect burst's pings settle
        for _ in range(windows):
            c0, w0 = server.cpu_seconds(), time.perf_counter()
            time.sleep(window)
            cpu.append((server.cpu_seconds() - c0) / (time.perf_counter() - w0))
        status = pool.status()
        stats1 = server.get("/bench/stats") if variant == "ours" else {}
        rss = server.rss()
        still = server.connections()
    # one RSS sample per ramp step: bytes added / connections added
    per_conn, prev_rss, prev_n = [], base_rss, 0
    for st in steps:
        if st["connections"] > prev_n:
            per_conn.append((st["rss"] - prev_rss) / (st["connections"] - prev_n))
        prev_rss, prev_n = st["rss"], st["connections"]
    info: Json = {
        "held": still,
        "rss_end": rss,
        "client_processes": procs,
        "steps": steps,
        "clients_closed": status["closed"],
        "close_codes": status["close_codes"],
    }
    if stats1:
        hb0, hb1 = stats0.get("heartbeat", {}), stats1.get("heartbeat", {})
        span = windows * window + min(2.0, interval)
        info["pings_per_s"] = round((hb1.get("pings", 0) - hb0.get("pings", 0)) / span, 1)
        info["heartbeat_timeouts"] = hb1.get("timeouts", 0)
        info["rtt_p50_ms"] = (hb1.get("rtt_p50") or 0) * 1e3
        if info["pings_per_s"]:
            cpu_median = sorted(cpu)[len(cpu) // 2]
            info["server_cpu_us_per_ping"] = round(cpu_median / info["pings_per_s"] * 1e6, 1)
    if still < held:
        raise RuntimeError(f"only {still}/{held} connections survived the idle period: {info}")
    return ok(
        {
            "connections_held": summarize([still], "connections", single=True),
            "idle_cpu_percent": summarize([c * 100 for c in cpu], "% of one core"),
            "rss_bytes_per_connection": summarize(per_conn, "B", single=len(per_conn) < STEPS),
        },
        **info,
    )


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    target: int | None = None,
    interval: float | None = None,
) -> Json:
    """Ramp every variant to the target and measure idle CPU; returns the result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    target = target or int(preset["target"])
    interval = interval or float(preset["interval"])
    windows = max(5, reps or int(preset["windows"]))
    window = float(preset["window"])
    names = selected(VARIANTS, variants or preset.get("variants"))
    ours_ok, ours_reason = ours_status()
    loads = [load_average()]
    results: dict[str, Json] = {}
    for name in names:
        if name == "ours" and not ours_ok:
            results[name] = not_available(ours_reason or "")
            continue
        try:
            results[name] = _measure(name, target, interval, windows, window)
        except Exception as exc:
            results[name] = failed(f"{type(exc).__name__}: {exc}")
        loads.append(load_average())
    held = results.get("ours", {}).get("metrics", {}).get("connections_held")
    ratios = [
        {
            "name": "ours",
            "metric": "connections_held",
            "value": held["median"] if held else None,
            "kind": "absolute",
            "target": {"op": ">=", "value": 15_000},
            "met": None if held is None else held["median"] >= 15_000,
        }
    ]
    if profile != "full":
        ratios = []  # the 15k aim is only meaningful at full size
    cases = [case(f"up to {target:,} connections", {"target": target}, results, ratios)]
    notes = [
        f"Clients in processes of ≤ {PER_PROCESS:,} connections on 127.0.0.2, .3, …; ramp in "
        f"{STEPS} steps; ours: heartbeat interval = timeout = {interval:g} s, opted-in clients "
        "answer every ping.",
        f"idle CPU: server process CPU over {windows} windows of {window:g} s after the ramp "
        "(median [min–max]); the client processes' CPU is not included.",
        "connections_held is one measurement (a single ramp), not a median.",
        f"load average before and after each variant: {loads}",
    ]
    params = {"target": target, "interval": interval, "windows": windows, "window": window}
    return benchmark(
        NAME,
        "Concurrent connections held, idle CPU",
        "connections_held",
        params,
        cases,
        notes,
        started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("scale", __doc__)
    parser.add_argument("--target", type=int, default=None, help="connections to reach")
    parser.add_argument("--interval", type=float, default=None, help="heartbeat interval (s)")
    args = parser.parse_args(argv)
    return run_standalone(
        run,
        args,
        target=args.target,
        interval=args.interval,
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Per-frame overhead through real uvicorn: ``python -m benchmarks.echo``.

Each variant is its own uvicorn process serving the same echo endpoint; 50 ``websockets``
clients in a separate process each keep one message in flight (send, wait for the echo, send
again) for a fixed window. Windows of all variants are interleaved, in a rotating order, so
that a change in machine load hits every variant alike.

Variants: ``bare`` (Starlette, no middleware), ``passthrough`` (the same app behind a pure-ASGI
middleware whose ``receive``/``send`` wrappers only await the server's: the floor for any
middleware that sees every frame), ``ours`` (the same app with
``StabilizerMiddleware``, plain clients), ``ours_optin`` (clients opted in with
``?stabilizer=1``: heartbeat on, replay buffer kept, acks every 32 frames), ``seed`` (FastAPI
endpoint using ``fastapi-websocket-stabilizer`` as its README shows) and ``bare_fastapi`` (that
endpoint without the seed, so the seed's own cost can be told from FastAPI's).

Besides round trips per second (what the target is about) it reports the server's CPU time
per round trip, which does not depend on whether the server or the client process was the
bottleneck on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import time

from benchmarks._apps import APP_AND_MODE
from benchmarks._common import (
    Json,
    benchmark,
    case,
    failed,
    make_parser,
    not_available,
    ok,
    ours_status,
    ratio,
    run_standalone,
    seed_status,
    selected,
    summarize,
)
from benchmarks._procs import LoadGenPool, ServerProcess, load_average

NAME = "echo"
VARIANTS = ("bare", "passthrough", "ours", "ours_optin", "seed", "bare_fastapi")
PROFILES: dict[str, Json] = {
    # full: a fresh server process per variant for every repetition, so that process-level
    # luck (heap layout, hash seed) is sampled into min-max rather than frozen into a variant;
    # quick and tiny keep one server per variant.
    "full": {"clients": 50, "seconds": 3.0, "reps": 7, "warmup": 0.5, "fresh_servers": True},
    "quick": {"clients": 50, "seconds": 0.25, "reps": 5, "warmup": 0.2, "fresh_servers": False},
    "tiny": {"clients": 5, "seconds": 0.04, "reps": 5, "warmup": 0.02, "fresh_servers": False},
}


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    clients: int | None = None,
    seconds: float | None = None,
    message_size: int = 32,
) -> Json:
    """Measure every available variant; returns the benchmark's result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    reps = max(5, reps or int(preset["reps"]))
    clients = clients or int(preset["clients"])
    seconds = seconds or float(preset["seconds"])
    names = selected(VARIANTS, variants)
    results: dict[str, Json] = {}
    ours_ok, ours_reason = ours_status()
    seed_ok, seed_reason = seed_status()
    runnable = []
    for name in names:
        if name.startswith("ours") and not ours_ok:
            results[name] = not_available(ours_reason or "")
        elif name == "seed" and not seed_ok:
            results[name] = not_available(seed_reason or "")
        else:
            runnable.append(name)

    samples: dict[str, dict[str, list[float]]] = {n: {} for n in runnable}
    info: dict[str, Json] = {n: {"closed_during_run": 0} for n in runnable}
    loads: list[list[float] | None] = [load_average()]
    fresh = bool(preset["fresh_servers"])
    with contextlib.ExitStack() as stack:
        pools = {name: stack.enter_context(LoadGenPool(1)) for name in runnable}
        servers: dict[str, ServerProcess] = {}

        def start_servers() -> None:
            for name in runnable:  # all at once; each idles while another is measured
                servers[name] = ServerProcess(APP_AND_MODE[name][0])
                servers[name].spawn()
                stack.callback(servers[name].stop)

        def connect(name: str) -> None:
            app, mode = APP_AND_MODE[name]
            servers[name].wait_ready()
            opened = pools[name].open(servers[name].ws_url, app, mode, clients)
            if opened["opened"] != clients:
                raise RuntimeError(f"opened {opened['opened']}/{clients}: {opened['errors']}")
            pools[name].broadcast({"cmd": "echo", "seconds": preset["warmup"]})

        def retire(name: str) -> None:
            info[name]["closed_during_run"] += pools[name].status()["closed"]
            pools[name].close_all()
            servers[name].stop()

        def measure(name: str) -> None:
            server, pool = servers[name], pools[name]
            # A window in which no round trip completed (a very short one on a loaded machine)
            # measures nothing: it is run again (at most 3 times), so every metric gets its
            # sample from the same window.
            for _attempt in range(3):
                cpu0, cli0 = server.cpu_seconds(), pool.cpu_seconds()
                reply = pool.broadcast({"cmd": "echo", "seconds": seconds, "size": message_size})[0]
                cpu1, cli1 = server.cpu_seconds(), pool.cpu_seconds()
                if reply["latency_p50"] is not None:
                    break
            rts = max(1, int(reply["round_trips"]))
            s = samples[name]
            s.setdefault("round_trips_per_s", []).append(rts / reply["seconds"])
            s.setdefault("server_cpu_us_per_rt", []).append((cpu1 - cpu0) / rts * 1e6)
            s.setdefault("client_cpu_us_per_rt", []).append((cli1 - cli0) / rts * 1e6)
            s.setdefault("server_cpu_util", []).append((cpu1 - cpu0) / reply["seconds"])
            if reply["latency_p50"] is not None:
                s.setdefault("latency_p50_ms", []).append(reply["latency_p50"] * 1e3)
                s.setdefault("latency_p99_ms", []).append(reply["latency_p99"] * 1e3)

        for rep in range(reps):
            if fresh or rep == 0:
                start_servers()
            shift = rep % max(1, len(runnable))
            for name in runnable[shift:] + runnable[:shift]:
                try:
                    if fresh or rep == 0:
                        connect(name)
                    measure(name)
                    if fresh:
                        retire(name)
                except Exception as exc:
                    results[name] = failed(f"{type(exc).__name__}: {exc}")
                    runnable.remove(name)
            loads.append(load_average())
        if not fresh:
            for name in runnable:
                info[name]["closed_during_run"] += pools[name].status()["closed"]
    units = {
        "round_trips_per_s": "rt/s",
        "server_cpu_us_per_rt": "µs",
        "client_cpu_us_per_rt": "µs",
        "server_cpu_util": "cores",
        "latency_p50_ms": "ms",
        "latency_p99_ms": "ms",
    }
    for name in runnable:
        metrics = {m: summarize(v, units[m]) for m, v in samples[name].items()}
        results[name] = ok(metrics, **info[name])
    ordered = {n: results[n] for n in names}
    metric = "round_trips_per_s"
    ratios = [
        ratio(ordered, "ours", "bare", metric, target=(">=", 0.97)),
        ratio(ordered, "ours_optin", "bare", metric, target=(">=", 0.97)),
        ratio(ordered, "passthrough", "bare", metric),
        ratio(ordered, "seed", "bare", metric),
        ratio(ordered, "seed", "bare_fastapi", metric),
        ratio(ordered, "ours", "bare", "server_cpu_us_per_rt"),
        ratio(ordered, "passthrough", "bare", "server_cpu_us_per_rt"),
        ratio(ordered, "ours_optin", "bare", "server_cpu_us_per_rt"),
        ratio(ordered, "seed", "bare_fastapi", "server_cpu_us_per_rt"),
    ]
    label = f"{clients} clients, {seconds:g} s windows"
    cases = [case(label, {"clients": clients, "seconds": seconds}, ordered, ratios)]
    servers_note = (
        "a fresh server process per variant for every window (process-level luck such as heap "
        "layout is part of the spread)"
        if fresh
        else "one server process per variant for all windows"
    )
    notes = [
        f"{clients} `websockets` clients in one separate process, one {message_size}-byte text "
        "message in flight each; uvicorn defaults (asyncio loop, websockets-sansio, h11); "
        f"{servers_note}.",
        f"{reps} windows of {seconds:g} s per variant, each after a {preset['warmup']:g} s "
        "warm-up, interleaved in rotating order; median [min–max].",
        "2 cores are shared by the server and the client process: round trips per second are "
        "bounded by whichever saturates first, while server CPU per round trip is the server's "
        "own cost and does not depend on that.",
        f"load average (1, 5, 15 min) before and after each round: {loads}",
    ]
    params = {"clients": clients, "seconds": seconds, "reps": reps, "message_size": message_size}
    return benchmark(NAME, "Echo through uvicorn", metric, params, cases, notes, started)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("echo", __doc__)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="length of one window")
    parser.add_argument("--message-size", type=int, default=32)
    args = parser.parse_args(argv)
    return run_standalone(
        run,
        args,
        clients=args.clients,
        seconds=args.seconds,
        message_size=args.message_size,
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""Broadcast end to end through uvicorn: ``python -m benchmarks.fanout_e2e``.

A server holds ``--clients`` real websocket connections (``websockets`` clients spread over two
processes and two loopback source addresses). The parent asks the server over HTTP to broadcast
one 64-byte frame; the bench route times the broadcast call itself (``server_ms``) and stamps
its start with ``time.time()``. Every client stamps the frame's arrival with ``time.time()``;
``to_all_clients_ms`` is the last arrival minus the start (same machine, same clock).

Variants: ``raw`` (the bare app looping over the connections' ASGI ``send``), ``ours``
(``stabilizer.broadcast``, plain clients), ``ours_optin`` (opted-in clients, whose frames are
also kept for replay), ``seed`` (``ws_manager.broadcast`` of the seed package).
"""

from __future__ import annotations

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

NAME = "fanout_e2e"
VARIANTS = ("raw", "ours", "ours_optin", "seed")
PROFILES: dict[str, Json] = {
    "full": {"clients": 2000, "reps": 25, "procs": 2, "gap": 0.1},
    "quick": {"clients": 500, "reps": 5, "procs": 2, "gap": 0.1},
    "tiny": {"clients": 20, "reps": 5, "procs": 1, "gap": 0.01, "variants": "raw,ours"},
}


def _measure(variant: str, clients: int, reps: int, procs: int, size: int, gap: float) -> Json:
    app, mode = APP_AND_MODE[variant]
    server_ms: list[float] = []
    to_all: list[float] = []
    to_first: list[float] = []
    info: Json = {}
    with ServerProcess(app) as server, LoadGenPool(procs) as pool:
        opened = pool.open(server.ws_url, app, mode, clients)
        if opened["opened"] != clients:
            raise RuntimeError(f"opened {opened['opened']}/{clients}: {opened['errors']}")
        info["connect_s"] = opened["seconds"]
        got = server.wait_connections(clients, timeout=30)
        if got != clients:
            raise RuntimeError(f"server sees {got}/{clients} connections")
        for rep in range(reps + 1):  # rep 0 warms up and is discarded
            time.sleep(gap)  # let the previous frame's writes and reads finish everywhere
            reply = server.post(f"/bench/broadcast?id={rep}&size={size}")
            arrivals = pool.broadcast({"cmd": "wait_broadcast", "id": rep, "timeout": 60})
            count = sum(a["count"] for a in arrivals)
            if count != clients:
                raise RuntimeError(f"broadcast {rep} reached {count}/{clients} clients")
            last = max(a["last"] for a in arrivals)
            first = min(a["first"] for a in arrivals)
            if rep:
                server_ms.append(reply["server_s"] * 1e3)
                to_all.append((last - reply["t0"]) * 1e3)
                to_first.append((first - reply["t0"]) * 1e3)
            info["result"] = reply["result"]
        status = pool.status()
        info["closed_during_run"] = status["closed"]
    return ok(
        {
            "server_ms": summarize(server_ms, "ms"),
            "to_all_clients_ms": summarize(to_all, "ms"),
            "to_first_client_ms": summarize(to_first, "ms"),
        },
        **info,
    )


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    clients: int | None = None,
    message_size: int = 64,
) -> Json:
    """Measure every available variant; returns the benchmark's result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    reps = max(5, reps or int(preset["reps"]))
    clients = clients or int(preset["clients"])
    procs = int(preset["procs"])
    names = selected(VARIANTS, variants or preset.get("variants"))
    ours_ok, ours_reason = ours_status()
    seed_ok, seed_reason = seed_status()
    loads = [load_average()]
    results: dict[str, Json] = {}
    for name in names:
        if name.startswith("ours") and not ours_ok:
            results[name] = not_available(ours_reason or "")
        elif name == "seed" and not seed_ok:
            results[name] = not_available(seed_reason or "")
        else:
            try:
                gap = float(preset["gap"])
                results[name] = _measure(name, clients, reps, procs, message_size, gap)
            except Exception as exc:
                results[name] = failed(f"{type(exc).__name__}: {exc}")
        loads.append(load_average())
    ratios = [
        ratio(results, "ours", "raw", "server_ms", target=("<=", 1.2)),
        ratio(results, "ours", "raw", "to_all_clients_ms", target=("<=", 1.2)),
        ratio(results, "ours_optin", "raw", "server_ms", target=("<=", 1.2)),
        ratio(results, "ours_optin", "raw", "to_all_clients_ms", target=("<=", 1.2)),
        ratio(results, "seed", "raw", "server_ms"),
        ratio(results, "seed", "raw", "to_all_clients_ms"),
        ratio(results, "seed", "ours", "to_all_clients_ms"),
    ]
    cases = [case(f"{clients:,} clients", {"clients": clients}, results, ratios)]
    notes = [
        f"{clients:,} `websockets` clients in {procs} process(es) on their own loopback source "
        "addresses; one uvicorn server process per variant; 2 cores shared by all of them.",
        "server_ms: the broadcast call inside the server (for ours, until every frame has been "
        "handed to its connection's transport, as it never waits for a socket). "
        "to_all_clients_ms: from the start of that call until the last client read the frame.",
        f"{reps} broadcasts per variant after one discarded warm-up, {preset['gap']:g} s apart; "
        "median [min–max].",
        f"load average (1, 5, 15 min) before and after each variant: {loads}",
    ]
    params = {"clients": clients, "reps": reps, "message_size": message_size, "procs": procs}
    return benchmark(
        NAME,
        "Broadcast end to end through uvicorn",
        "to_all_clients_ms",
        params,
        cases,
        notes,
        started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("fanout_e2e", __doc__)
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--message-size", type=int, default=64)
    args = parser.parse_args(argv)
    return run_standalone(
        run,
        args,
        clients=args.clients,
        message_size=args.message_size,
    )


if __name__ == "__main__":
    raise SystemExit(main())

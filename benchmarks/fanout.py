"""Broadcast overhead of the library itself, with no sockets: ``python -m benchmarks.fanout``.

Sessions are driven through each app by the in-memory ASGI driver (``_driver.py``): every
session is a task running the app, whose transport ``send`` is a no-op that counts. The figure
is the time from calling broadcast until every session's transport ``send`` has been called
(for a library that hands frames to per-session writers, that includes the hand-off).

Variants:
- ``raw``: ``for send in sends: await send(message)`` over the same no-op sends (the floor);
- ``ours``: ``await websocket.state.stabilizer.broadcast(text)``, plain sessions;
- ``ours_optin``: the same with opted-in sessions (``?stabilizer=1``: counted, replayable);
- ``seed``: ``await ws_manager.broadcast(text)`` with sessions registered by the README endpoint.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from benchmarks._apps import APP_AND_MODE, Hub, broadcast_text, build_app, ws_path
from benchmarks._common import (
    Json,
    benchmark,
    case,
    guarded,
    int_list,
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
from benchmarks._driver import InMemoryServer

NAME = "fanout"
VARIANTS = ("raw", "ours", "ours_optin", "seed")
PROFILES: dict[str, Json] = {
    "full": {"sizes": [1_000, 10_000, 50_000], "reps": 7},
    "quick": {"sizes": [1_000, 5_000], "reps": 5},
    "tiny": {"sizes": [100], "reps": 5},
}


async def _measure(variant: str, sessions: int, reps: int, size: int) -> Json:
    app_name, mode = APP_AND_MODE[variant]
    hub = Hub()
    app = build_app(app_name, hub)
    server = InMemoryServer(app, mode=mode, path_for=lambda i: ws_path(app_name, mode, i))
    async with server:
        conns = await server.open(sessions)
        await asyncio.sleep(0.05)  # let hello frames and registrations settle
        transport = server.transport
        sends = [c.send for c in conns]
        to_all: list[float] = []
        returned: list[float] = []
        info: dict[str, Any] = {}
        # Everything set up so far is long-lived: freeze it, so a collection that happens to
        # start inside a timed broadcast only walks young objects (as in a server that has
        # been up for a while) instead of every object of every session.
        gc.collect()
        gc.freeze()
        for rep in range(reps + 1):  # rep 0 warms caches and is discarded
            text = broadcast_text(rep, size)
            message = {"type": "websocket.send", "text": text}
            reached = transport.expect_data(sessions)
            t0 = time.perf_counter()
            if variant == "raw":
                for send in sends:
                    await send(message)
                res: Any = None
            elif variant == "seed":
                res = await hub.seed.broadcast(text)
            else:
                res = await hub.manager.broadcast(text)
            t_returned = time.perf_counter()
            await asyncio.wait_for(reached.wait(), timeout=120)
            t_all = transport.reached_at  # stamped by the send that completed the set
            if rep:
                to_all.append(t_all - t0)
                returned.append(t_returned - t0)
            if res is not None:
                info["result"] = {
                    k: getattr(res, k)
                    for k in ("total", "delivered", "dropped", "failed", "succeeded")
                    if hasattr(res, k)
                }
        gc.unfreeze()
        if transport.errors:
            info["app_errors"] = transport.errors
    return ok(
        {
            "time_to_all_sends_ms": summarize([t * 1e3 for t in to_all], "ms"),
            "per_session_us": summarize([t * 1e6 / sessions for t in to_all], "µs"),
            "broadcast_returned_ms": summarize([t * 1e3 for t in returned], "ms"),
        },
        **info,
    )


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    sizes: list[int] | None = None,
    message_size: int = 64,
) -> Json:
    """Measure every variant at every size; returns the benchmark's result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    reps = max(5, reps or int(preset["reps"]))
    sizes = sizes or list(preset["sizes"])
    names = selected(VARIANTS, variants)
    available, reason = ours_status()
    seed_ok, seed_reason = seed_status()
    cases: list[Json] = []
    for n in sizes:
        results: dict[str, Json] = {}
        for variant in names:
            if variant.startswith("ours") and not available:
                results[variant] = not_available(reason or "")
                continue
            if variant == "seed" and not seed_ok:
                results[variant] = not_available(seed_reason or "")
                continue
            results[variant] = guarded(
                lambda v=variant, n=n: asyncio.run(_measure(v, n, reps, message_size))  # type: ignore[misc]
            )
            gc.collect()
        metric = "time_to_all_sends_ms"
        ratios = [
            ratio(results, "ours", "raw", metric, target=("<=", 1.5)),
            ratio(results, "ours_optin", "raw", metric, target=("<=", 1.5)),
            ratio(results, "seed", "raw", metric),
            ratio(results, "seed", "ours", metric, target=(">=", 30.0)),
            ratio(results, "seed", "ours_optin", metric),
        ]
        cases.append(case(f"{n:,} sessions", {"sessions": n}, results, ratios))
    notes = [
        "In-memory ASGI driver: no sockets, no kernel; the no-op transport send only counts, "
        "so this is the library's own per-recipient cost.",
        "Time runs from the broadcast call until the last session's transport send was called "
        "(for ours, including any hand-off to per-session writers).",
        "raw = `for send in sends: await send(message)` over the same sends, no library.",
        f"{reps} timed repetitions per variant after one discarded warm-up, with the objects "
        "of the set-up frozen out of the garbage collector (gc.freeze); median [min–max].",
    ]
    params = {"sizes": sizes, "reps": reps, "message_size": message_size}
    return benchmark(
        NAME,
        "Broadcast fan-out overhead (in-memory)",
        "time_to_all_sends_ms",
        params,
        cases,
        notes,
        started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("fanout", __doc__)
    parser.add_argument(
        "--sizes",
        type=int_list,
        default=None,
        help="comma-separated session counts (default per profile)",
    )
    parser.add_argument("--message-size", type=int, default=64)
    args = parser.parse_args(argv)
    return run_standalone(
        run,
        args,
        sizes=args.sizes,
        message_size=args.message_size,
    )


if __name__ == "__main__":
    raise SystemExit(main())

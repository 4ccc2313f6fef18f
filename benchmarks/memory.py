"""Memory per idle connection: ``python -m benchmarks.memory``.

Two views of the same question, "what does one more idle websocket cost?":

- ``python_heap``: Python heap bytes per idle session (``tracemalloc``), in one process with the
  in-memory ASGI driver. Includes the driver's own per-connection objects, which are the same
  for every variant, so *differences* between variants are exact and free of allocator noise.
- ``server_rss``: growth of the uvicorn server process's RSS per real connection, clients in
  two separate processes. This is what a deployment pays, sockets and allocator slack included.

Both open the connections in five equal increments and take one sample per increment (bytes
added / connections added), so the median is over five samples per variant. Variants: ``bare``,
``ours`` (plain clients), ``ours_optin`` (opted in: heartbeat on, replay buffer allocated),
``seed`` (FastAPI + seed, README endpoint) and ``bare_fastapi`` (that endpoint, no seed).
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc

from benchmarks._apps import APP_AND_MODE, Hub, build_app, ws_path
from benchmarks._common import (
    Json,
    benchmark,
    case,
    difference,
    finish_standalone,
    guarded,
    make_parser,
    not_available,
    ok,
    ours_status,
    ratio,
    resolve_profile,
    seed_status,
    selected,
    summarize,
)
from benchmarks._driver import InMemoryServer
from benchmarks._procs import LoadGenPool, ServerProcess, load_average

NAME = "memory"
VARIANTS = ("bare", "ours", "ours_optin", "seed", "bare_fastapi")
PROFILES: dict[str, Json] = {
    "full": {"heap_sessions": 10_000, "rss_connections": 10_000, "procs": 2, "settle": 0.2},
    "quick": {"heap_sessions": 1_000, "rss_connections": 1_000, "procs": 2, "settle": 0.05},
    # the smoke test's size: every heap variant, the real-socket view for two of them
    "tiny": {
        "heap_sessions": 100,
        "rss_connections": 50,
        "procs": 1,
        "settle": 0.01,
        "rss_variants": "bare,ours",
    },
}
STEPS = 5
BUDGET = 2048.0  # DESIGN.md: at most +2 KB per idle connection over the bare server


async def _heap(variant: str, sessions: int, settle: float = 0.05) -> list[float]:
    app_name, mode = APP_AND_MODE[variant]
    app = build_app(app_name, Hub())
    server = InMemoryServer(app, mode=mode, path_for=lambda i: ws_path(app_name, mode, i))
    samples: list[float] = []
    async with server:
        await server.open(50)  # first connections pay for lazy imports and caches
        await asyncio.sleep(settle)
        gc.collect()
        tracemalloc.start()
        try:
            step = max(1, sessions // STEPS)
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(STEPS):
                await server.open(step)
                await asyncio.sleep(settle)  # hello frames, registrations
                gc.collect()
                now = tracemalloc.get_traced_memory()[0]
                samples.append((now - before) / step)
                before = now
        finally:
            tracemalloc.stop()
        if server.transport.errors:
            raise RuntimeError(f"app errors: {server.transport.errors}")
    return samples


def _rss(variant: str, connections: int, procs: int, settle: float) -> tuple[list[float], Json]:
    app, mode = APP_AND_MODE[variant]
    samples: list[float] = []
    step = max(1, connections // STEPS)
    with ServerProcess(app) as server, LoadGenPool(procs) as pool:
        warm = pool.open(server.ws_url, app, mode, min(50, step))  # lazy imports, caches
        server.wait_connections(warm["opened"], timeout=30)
        pool.close_all()
        server.wait_connections(0, timeout=30)
        server.post("/bench/gc")
        time.sleep(settle)
        before = server.rss()
        start_rss = before
        held = 0
        for _ in range(STEPS):
            opened = pool.open(server.ws_url, app, mode, step)
            if opened["failed"]:
                raise RuntimeError(f"{opened['failed']} connections failed: {opened['errors']}")
            held += opened["opened"]
            got = server.wait_connections(held, timeout=60)
            if got != held:
                raise RuntimeError(f"server sees {got}/{held} connections")
            server.post("/bench/gc")
            time.sleep(settle)
            now = server.rss()
            samples.append((now - before) / step)
            before = now
        info = {"connections": held, "rss_start": start_rss, "rss_end": before}
    return samples, info


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    heap_sessions: int | None = None,
    rss_connections: int | None = None,
    parts: str = "heap,rss",
) -> Json:
    """Measure both views for every available variant; returns the result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    heap_sessions = heap_sessions or int(preset["heap_sessions"])
    rss_connections = rss_connections or int(preset["rss_connections"])
    procs = int(preset["procs"])
    names = selected(VARIANTS, variants)
    wanted = {p.strip() for p in parts.split(",")}
    settle = float(preset["settle"])
    rss_names = selected(VARIANTS, variants or preset.get("rss_variants"))
    ours_ok, ours_reason = ours_status()
    seed_ok, seed_reason = seed_status()
    loads = [load_average()]

    def unavailable(name: str) -> Json | None:
        if name.startswith("ours") and not ours_ok:
            return not_available(ours_reason or "")
        if name == "seed" and not seed_ok:
            return not_available(seed_reason or "")
        return None

    def targets(results: dict[str, Json], metric: str) -> list[Json]:
        return [
            difference(results, "ours", "bare", metric, target=("<=", BUDGET)),
            difference(results, "ours_optin", "bare", metric, target=("<=", BUDGET)),
            difference(results, "seed", "bare_fastapi", metric),
            ratio(results, "ours", "bare", metric),
            ratio(results, "seed", "bare_fastapi", metric),
        ]

    cases = []
    if "heap" in wanted:
        results: dict[str, Json] = {}
        for name in names:
            results[name] = unavailable(name) or guarded(
                lambda n=name: ok(  # type: ignore[misc]
                    {
                        "bytes_per_session": summarize(
                            asyncio.run(_heap(n, heap_sessions, min(0.05, settle))), "B"
                        )
                    }
                )
            )
            gc.collect()
        cases.append(
            case(
                f"python_heap: {heap_sessions:,} in-memory sessions (tracemalloc)",
                {"view": "python_heap", "sessions": heap_sessions},
                results,
                targets(results, "bytes_per_session"),
            )
        )
    if "rss" in wanted:
        results = {}
        for name in rss_names:
            missing = unavailable(name)
            if missing is not None:
                results[name] = missing
                continue

            def measure(n: str = name) -> Json:
                samples, info = _rss(n, rss_connections, procs, settle)
                return ok({"rss_bytes_per_connection": summarize(samples, "B")}, **info)

            results[name] = guarded(measure)
            loads.append(load_average())
        cases.append(
            case(
                f"server_rss: {rss_connections:,} uvicorn connections",
                {"view": "server_rss", "connections": rss_connections},
                results,
                targets(results, "rss_bytes_per_connection"),
            )
        )
    notes = [
        f"Connections opened in {STEPS} increments; one sample per increment (bytes added / "
        "connections added) after gc.collect(); median [min–max] of the five.",
        "python_heap counts live Python allocations only (tracemalloc), started after 50 "
        "warm-up sessions; the in-memory driver's own objects are in every variant alike.",
        "server_rss: uvicorn defaults, clients without permessage-deflate (a compressor per "
        "connection would dwarf everything else), 50 warm-up connections opened and closed "
        "before the first sample.",
        f"Budget (DESIGN.md): ours − bare ≤ {BUDGET:.0f} bytes per idle connection.",
        f"load average during server_rss: {loads}",
    ]
    params = {
        "heap_sessions": heap_sessions,
        "rss_connections": rss_connections,
        "steps": STEPS,
        "reps": STEPS,
    }
    return benchmark(
        NAME, "Memory per idle connection", "bytes_per_session", params, cases, notes, started
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("memory", __doc__)
    parser.add_argument("--heap-sessions", type=int, default=None)
    parser.add_argument("--connections", type=int, default=None, help="for server_rss")
    parser.add_argument("--parts", default="heap,rss", help="heap, rss or both")
    args = parser.parse_args(argv)
    result = run(
        resolve_profile(args),
        variants=args.variants,
        heap_sessions=args.heap_sessions,
        rss_connections=args.connections,
        parts=args.parts,
    )
    return finish_standalone(result, args.json)


if __name__ == "__main__":
    raise SystemExit(main())

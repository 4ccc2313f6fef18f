"""What reading the metrics costs: ``python -m benchmarks.scrape``.

Sessions are opened through the in-memory ASGI driver, then the two reads a scraper triggers
are timed: ``manager.stats()`` (the JSON stats route, and the dashboard's poll) and the
Prometheus text exposition (the metrics route; needs ``prometheus-client``). Both read the
metrics core, so neither should grow with the number of sessions (before the metrics core,
``stats()`` walked every session: 6-13 ms at 10,000 here).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from benchmarks._apps import APP_AND_MODE, Hub, build_app, ws_path
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
    run_standalone,
    selected,
    summarize,
)
from benchmarks._driver import InMemoryServer

NAME = "scrape"
VARIANTS = ("ours", "ours_optin")
PROFILES: dict[str, Json] = {
    "full": {"sizes": [1_000, 10_000, 50_000], "reps": 30},
    "quick": {"sizes": [1_000, 10_000], "reps": 15},
    "tiny": {"sizes": [100], "reps": 5},
}


def _time(fn: Any, reps: int) -> list[float]:
    fn()  # warm-up
    samples = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e3)
    return samples


async def _measure(variant: str, sessions: int, reps: int) -> Json:
    from stabilizer_asgi.cli import find_manager

    app_name, mode = APP_AND_MODE[variant]
    app = build_app(app_name, Hub())
    server = InMemoryServer(app, mode=mode, path_for=lambda i: ws_path(app_name, mode, i))
    async with server:
        await server.open(sessions)
        await asyncio.sleep(0.05)
        manager = find_manager(app)
        assert manager is not None and manager.count() == sessions, "sessions not registered"
        gc.collect()
        metrics: dict[str, Json] = {"stats_ms": summarize(_time(manager.stats, reps), "ms")}
        info: dict[str, Any] = {}
        try:
            from stabilizer_asgi.prometheus import PrometheusExporter
        except ImportError:
            info["prometheus"] = "prometheus-client not installed"
        else:
            exporter = PrometheusExporter(manager)
            metrics["prometheus_ms"] = summarize(_time(exporter.render, reps), "ms")
            info["exposition_bytes"] = len(exporter.render())
    return ok(metrics, **info)


def run(
    profile: str = "full",
    *,
    reps: int | None = None,
    variants: str | None = None,
    sizes: list[int] | None = None,
) -> Json:
    """Time both reads at every size; returns the benchmark's result document."""
    started = time.perf_counter()
    preset = PROFILES[profile]
    reps = max(5, reps or int(preset["reps"]))
    sizes = sizes or list(preset["sizes"])
    available, reason = ours_status()
    cases: list[Json] = []
    for n in sizes:
        results: dict[str, Json] = {}
        for variant in selected(VARIANTS, variants):
            if not available:
                results[variant] = not_available(reason or "")
                continue
            results[variant] = guarded(
                lambda v=variant, n=n: asyncio.run(_measure(v, n, reps))  # type: ignore[misc]
            )
        cases.append(case(f"{n:,} sessions", {"sessions": n}, results, []))
    notes = [
        "stats_ms: manager.stats(), the document of the stats route (and the dashboard's poll);"
        " prometheus_ms: the whole Prometheus text exposition of the metrics route.",
        f"{reps} timed repetitions after one warm-up; median [min–max]. Neither read walks the "
        "sessions: the figures should not grow with them.",
    ]
    params = {"sizes": sizes, "reps": reps}
    return benchmark(NAME, "Cost of a metrics scrape", "stats_ms", params, cases, notes, started)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(NAME, __doc__)
    parser.add_argument("--sizes", type=int_list, default=None)
    args = parser.parse_args(argv)
    return run_standalone(run, args, sizes=args.sizes)


if __name__ == "__main__":
    raise SystemExit(main())

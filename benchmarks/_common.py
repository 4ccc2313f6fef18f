"""Shared pieces of the benchmarks: result schema, statistics, machine facts, CLI plumbing."""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any

SCHEMA = "stabilizer-asgi-bench/1"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PROFILES = ("full", "quick", "tiny")
STATUSES = ("ok", "not_available", "error")

Json = dict[str, Any]


# --- "ours" availability -----------------------------------------------------------------


def ours_status() -> tuple[bool, str | None]:
    """Whether the middleware can be imported yet, and why not if it cannot."""
    try:
        from stabilizer_asgi import (  # noqa: F401
            StabilizerConfig,
            StabilizerMiddleware,
        )
    except Exception as exc:  # any failure means "not there yet", never a fake number
        return False, (
            "stabilizer_asgi.StabilizerMiddleware/StabilizerConfig not importable yet "
            f"({type(exc).__name__}: {exc})"
        )
    return True, None


def seed_status() -> tuple[bool, str | None]:
    """Whether the seed package (a bench-extra dependency) is installed."""
    try:
        import fastapi_websocket_stabilizer  # noqa: F401
    except Exception as exc:
        return False, (
            "fastapi-websocket-stabilizer==1.1.0 is not installed (it comes with the `bench` "
            f"extra: pip install -e '.[bench]'; {type(exc).__name__}: {exc})"
        )
    return True, None


# --- measurements ------------------------------------------------------------------------


def summarize(samples: Sequence[float], unit: str, *, single: bool = False) -> Json:
    """Median, min and max of repeated samples (the median is the reported figure).

    ``single`` marks a figure that is one measurement by nature (e.g. connections held at the
    end of one ramp); every other figure must come from at least five repetitions.
    """
    values = [float(s) for s in samples]
    if not values:
        raise ValueError("no samples")
    out: Json = {
        "unit": unit,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "samples": values,
    }
    if single:
        out["single"] = True
    return out


def decode_control(text: str) -> Json | None:
    """The JSON object of a control frame (`RS` + JSON) a benchmark client received, or None."""
    try:
        frame = json.loads(text[1:])
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


def pong_text(ts: object, received: int) -> str:
    """The pong a client of ours sends for a ping carrying `ts`, after `received` data frames."""
    return "\x1e" + json.dumps({"t": "pong", "ts": ts, "n": received}, separators=(",", ":"))


def ok(metrics: dict[str, Json], **info: Any) -> Json:
    """A variant that ran: metric name -> summary."""
    return {"status": "ok", "metrics": metrics, "info": info}


def not_available(reason: str) -> Json:
    """A variant that cannot run yet (no numbers, on purpose)."""
    return {"status": "not_available", "reason": reason, "metrics": {}}


def failed(reason: str) -> Json:
    """A variant that was available but broke while measuring."""
    return {"status": "error", "reason": reason[:2000], "metrics": {}}


def median_of(variant: Json | None, metric: str) -> float | None:
    """The median of one metric of a variant, or None when it has no number."""
    if not variant or variant.get("status") != "ok":
        return None
    summary = variant["metrics"].get(metric)
    return None if summary is None else float(summary["median"])


def ratio(
    variants: dict[str, Json],
    num: str,
    den: str,
    metric: str,
    *,
    target: tuple[str, float] | None = None,
) -> Json:
    """``num/den`` of the metric's medians, with an optional target such as ``("<=", 1.5)``."""
    a, b = median_of(variants.get(num), metric), median_of(variants.get(den), metric)
    value = a / b if a is not None and b not in (None, 0.0) else None
    return _judged({"name": f"{num}/{den}", "metric": metric, "value": value}, target)


def difference(
    variants: dict[str, Json],
    a: str,
    b: str,
    metric: str,
    *,
    target: tuple[str, float] | None = None,
) -> Json:
    """``a - b`` of the metric's medians (used for "bytes over bare")."""
    va, vb = median_of(variants.get(a), metric), median_of(variants.get(b), metric)
    value = va - vb if va is not None and vb is not None else None
    entry: Json = {"name": f"{a}-{b}", "metric": metric, "value": value, "kind": "difference"}
    return _judged(entry, target)


def absolute(
    variants: dict[str, Json],
    name: str,
    metric: str,
    *,
    target: tuple[str, float],
) -> Json:
    """A variant's own median against an absolute budget (e.g. "≤ 1.5 µs")."""
    value = median_of(variants.get(name), metric)
    entry: Json = {"name": name, "metric": metric, "value": value, "kind": "absolute"}
    return _judged(entry, target)


def _judged(entry: Json, target: tuple[str, float] | None) -> Json:
    """`entry` with its target and whether its value meets it (None: not measured)."""
    if target is not None:
        op, bound = target
        value = entry["value"]
        entry["target"] = {"op": op, "value": bound}
        entry["met"] = None if value is None else (value <= bound if op == "<=" else value >= bound)
    return entry


def case(label: str, params: Json, variants: dict[str, Json], ratios: list[Json]) -> Json:
    """One measured situation (a size, a client count) with its variants and ratios."""
    return {"label": label, "params": params, "variants": variants, "ratios": ratios}


def benchmark(
    name: str,
    title: str,
    primary_metric: str,
    params: Json,
    cases: list[Json],
    notes: list[str],
    started: float,
) -> Json:
    """The result document of one benchmark."""
    return {
        "name": name,
        "title": title,
        "primary_metric": primary_metric,
        "params": params,
        "cases": cases,
        "notes": notes,
        "duration_s": round(time.perf_counter() - started, 2),
    }


def guarded(fn: Callable[[], Json]) -> Json:
    """Run one variant's measurement; an exception becomes an "error" entry, not a crash."""
    try:
        return fn()
    except Exception as exc:
        return failed(f"{type(exc).__name__}: {exc}")


# --- machine facts -------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info() -> Json:
    """Facts about this machine that change what the numbers mean."""
    try:
        import psutil

        total_memory: int | None = int(psutil.virtual_memory().total)
    except Exception:
        total_memory = None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": total_memory,
        "open_files_limit": [soft, hard],
        "event_loop": "asyncio (uvloop not installed)" if _version("uvloop") is None else "uvloop",
        "cpu_note": (
            "server and load-generating clients share the same cores; clients run in separate "
            "processes, so client work competes with the server for CPU"
        ),
    }


def versions() -> Json:
    """Versions of everything under test."""
    dists = (
        "stabilizer-asgi",
        "fastapi-websocket-stabilizer",
        "uvicorn",
        "websockets",
        "starlette",
        "fastapi",
        "anyio",
        "h11",
        "httptools",
        "uvloop",
        "psutil",
        "matplotlib",
        "redis",
        "python-socketio",
        "python-engineio",
        "broadcaster",
    )
    out: Json = {d: _version(d) for d in dists}
    out["git_revision"] = _git_revision()
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --- OS helpers ----------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def settle_allocator() -> None:
    """Put glibc malloc in the same state in every benchmark process.

    asyncio reads a socket with ``recv(256 KiB)``. Until a process has freed one block above
    malloc's initial 128 KiB mmap threshold, each such buffer is mmap-ed, shrunk with mremap and
    munmap-ed again: three extra syscalls per message. Whether that has already happened depends
    on import-time accidents (it had in the server with the middleware and not in the bare
    one), which was worth ±30 % of echo throughput. Freeing one 1 MiB block raises the dynamic
    threshold for good, as it would in any real application sooner or later.
    """
    block = bytearray(1 << 20)
    del block


def raise_nofile_limit() -> int:
    """Raise this process's open-files soft limit to the hard limit; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


# --- load-generator processes -------------------------------------------------------------

LoadGenHandler = Callable[[dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]


def can_bind(host: str) -> bool:
    """Whether this machine has ``host`` as a local address (a client can bind to it)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


async def serve_loadgen_commands(
    handlers: Mapping[str, LoadGenHandler], abort_all: Callable[[], None]
) -> None:
    """A load generator's command loop: one JSON command a line on stdin, one JSON reply a line
    on stdout. ``{"cmd": "exit"}`` calls ``abort_all`` and returns (the end of stdin returns); any
    other name is looked up in ``handlers``, whose reply (or awaited reply) is written back; an
    exception becomes ``{"error": …}``."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        line = await lines.get()
        if line is None:
            break
        if not line.strip():
            continue
        cmd = json.loads(line)
        name = cmd.get("cmd")
        if name == "exit":
            abort_all()
            break
        reply: dict[str, Any]
        try:
            handler = handlers.get(name)
            if handler is None:
                reply = {"error": f"unknown command {name!r}"}
            else:
                answer = handler(cmd)
                reply = answer if isinstance(answer, dict) else await answer
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def run_loadgen(serve: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """A load generator process's ``main``: raise the open-files limit, settle the allocator,
    run ``serve`` on asyncio."""
    raise_nofile_limit()
    settle_allocator()
    asyncio.run(serve())
    return 0


def run_uvicorn(make_app: Callable[[], Any], host: str, port: int) -> int:
    """A benchmark server process's ``main``: raise the open-files limit, settle the allocator,
    build the app and serve it with uvicorn's defaults, logging only warnings."""
    import uvicorn

    raise_nofile_limit()
    settle_allocator()
    config = uvicorn.Config(
        make_app(),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        backlog=4096,
    )
    uvicorn.Server(config).run()
    return 0


# --- CLI plumbing --------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Flags every benchmark accepts."""
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default="full",
        help="size preset: full (make bench), quick (make bench-quick), tiny (smoke test)",
    )
    parser.add_argument("--quick", action="store_true", help="same as --profile quick")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default per profile)")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma-separated subset of variants to run (default: all)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the result document here (default: benchmarks/results/<name>.json)",
    )


def make_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The argument parser of `python -m benchmarks.<module>`, with the common flags."""
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{module}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_args(parser)
    return parser


def int_list(text: str) -> list[int]:
    """A comma-separated list of ints (`--sizes 1000,10000`)."""
    return [int(x) for x in text.split(",")]


def run_standalone(run: Callable[..., Json], args: argparse.Namespace, **options: Any) -> int:
    """Run one benchmark from its command line (profile, reps, variants) and write its JSON."""
    return finish_standalone(
        run(resolve_profile(args), reps=args.reps, variants=args.variants, **options), args.json
    )


def resolve_profile(args: argparse.Namespace) -> str:
    return "quick" if getattr(args, "quick", False) else str(args.profile)


def selected(variants: Sequence[str], arg: str | None) -> list[str]:
    """The variants to run, in canonical order."""
    if not arg:
        return list(variants)
    wanted = {v.strip() for v in arg.split(",") if v.strip()}
    unknown = wanted - set(variants)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {list(variants)}")
    return [v for v in variants if v in wanted]


def finish_standalone(result: Json, path: Path | None) -> int:
    """Print a short table and write the JSON of a benchmark run on its own."""
    from benchmarks.report import benchmark_markdown

    target = path or RESULTS_DIR / f"{result['name']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": SCHEMA,
        "generated_at": now_iso(),
        "machine": machine_info(),
        "versions": versions(),
        "benchmarks": {result["name"]: result},
    }
    target.write_text(json.dumps(document, indent=2) + "\n")
    print(benchmark_markdown(result))
    print(f"\nwritten: {target}")
    return 0


def emit(obj: Json) -> None:
    """Write one JSON line to stdout (worker processes talk to their parent this way)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --- schema check (used by the runner and by the smoke test) ------------------------------


MIN_REPS = 5


def validate(document: Json) -> list[str]:
    """Problems with a results document; an empty list means it follows the schema."""
    problems: list[str] = []

    def need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            problems.append(f"{where}: missing {key!r}")
            return None
        value = obj[key]
        if not isinstance(value, kind):
            problems.append(f"{where}.{key}: {type(value).__name__}, expected {kind}")
            return None
        return value

    if document.get("schema") != SCHEMA:
        problems.append(f"schema is {document.get('schema')!r}, expected {SCHEMA!r}")
    need(document, "generated_at", str, "document")
    if document.get("profile") not in PROFILES:
        problems.append(f"profile {document.get('profile')!r} not in {PROFILES}")
    need(document, "duration_s", (int, float), "document")
    machine = need(document, "machine", dict, "document")
    if machine is not None:
        need(machine, "cpu_count", int, "machine")
        need(machine, "python", str, "machine")
        need(machine, "cpu_note", str, "machine")
    need(document, "versions", dict, "document")
    need(document, "load", dict, "document")
    need(document, "plots", dict, "document")
    benchmarks = need(document, "benchmarks", dict, "document") or {}
    if not benchmarks:
        problems.append("document: no benchmarks")
    for name, result in benchmarks.items():
        where = f"benchmarks.{name}"
        for key, kind in (
            ("name", str),
            ("title", str),
            ("primary_metric", str),
            ("params", dict),
            ("cases", list),
            ("notes", list),
            ("duration_s", (int, float)),
        ):
            need(result, key, kind, where)
        for i, c in enumerate(result.get("cases") or []):
            cw = f"{where}.cases[{i}]"
            need(c, "label", str, cw)
            need(c, "params", dict, cw)
            for j, r in enumerate(need(c, "ratios", list, cw) or []):
                rw = f"{cw}.ratios[{j}]"
                need(r, "name", str, rw)
                need(r, "metric", str, rw)
                if r.get("value") is not None and not isinstance(r["value"], (int, float)):
                    problems.append(f"{rw}.value is not a number")
                if "target" in r:
                    t = r["target"]
                    if not isinstance(t, dict) or t.get("op") not in ("<=", ">="):
                        problems.append(f"{rw}.target malformed: {t!r}")
                    if r.get("met") not in (True, False, None):
                        problems.append(f"{rw}.met is {r.get('met')!r}")
            for vname, v in (need(c, "variants", dict, cw) or {}).items():
                vw = f"{cw}.variants.{vname}"
                status = v.get("status")
                if status not in STATUSES:
                    problems.append(f"{vw}.status is {status!r}")
                    continue
                metrics = need(v, "metrics", dict, vw)
                if status != "ok":
                    need(v, "reason", str, vw)
                    if metrics:
                        problems.append(f"{vw}: {status} but has metrics")
                    continue
                if not metrics:
                    problems.append(f"{vw}: ok without metrics")
                for mname, m in (metrics or {}).items():
                    mw = f"{vw}.metrics.{mname}"
                    for key in ("median", "min", "max"):
                        need(m, key, (int, float), mw)
                    need(m, "unit", str, mw)
                    n = need(m, "n", int, mw)
                    samples = need(m, "samples", list, mw)
                    if n is not None and samples is not None and n != len(samples):
                        problems.append(f"{mw}: n={n} but {len(samples)} samples")
                    if n is not None and n < MIN_REPS and not m.get("single"):
                        problems.append(f"{mw}: {n} samples, fewer than {MIN_REPS}")
                    try:
                        if not m["min"] <= m["median"] <= m["max"]:
                            problems.append(f"{mw}: min <= median <= max does not hold")
                    except (KeyError, TypeError):
                        pass
    return problems

"""Run every benchmark and write ``benchmarks/results/``: ``python -m benchmarks.run [--quick]``.

``make bench`` runs the full profile (about 10 minutes) and writes ``latest.json``,
``latest.md`` and the plots, and refreshes the results section of ``benchmarks/README.md``;
``make bench-quick`` runs reduced sizes in under a minute and writes ``quick.json`` /
``quick.md`` instead, so a quick run never replaces the published figures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
import traceback
from pathlib import Path

from benchmarks._common import (
    PROFILES,
    RESULTS_DIR,
    SCHEMA,
    Json,
    machine_info,
    now_iso,
    ours_status,
    seed_status,
    validate,
    versions,
)
from benchmarks._procs import load_average

# In-memory benchmarks first (they need a quiet process), then the real-socket ones.
BENCHMARKS = (
    "fanout",
    "heartbeat",
    "memory",
    "scrape",
    "echo",
    "fanout_e2e",
    "scale",
    "resume",
    "cluster",
    "deploy",
)
README = Path(__file__).resolve().parent / "README.md"
_START, _END = "<!-- results:start -->", "<!-- results:end -->"


def _run_one(name: str, profile: str) -> Json:
    module = importlib.import_module(f"benchmarks.{name}")
    started = time.perf_counter()
    try:
        result: Json = module.run(profile)
    except Exception as exc:  # one broken benchmark must not lose the others' figures
        result = {
            "name": name,
            "title": name,
            "primary_metric": "",
            "params": {},
            "cases": [],
            "notes": [f"crashed: {type(exc).__name__}: {exc}"],
            "error": traceback.format_exc()[-2000:],
            "duration_s": round(time.perf_counter() - started, 2),
        }
    return result


def run_all(profile: str, only: list[str] | None = None, out_dir: Path | None = None) -> Json:
    """Run the benchmarks of a profile; write and return the results document."""
    started = time.perf_counter()
    names = [n for n in BENCHMARKS if not only or n in only]
    ours_ok, ours_reason = ours_status()
    seed_ok, seed_reason = seed_status()
    document: Json = {
        "schema": SCHEMA,
        "generated_at": now_iso(),
        "profile": profile,
        "machine": machine_info(),
        "versions": versions(),
        "ours": {"available": ours_ok, "reason": ours_reason},
        "seed": {"available": seed_ok, "reason": seed_reason},
        "load": {"before": load_average(), "per_benchmark": {}},
        "benchmarks": {},
        "plots": {},
    }
    for name in names:
        before = load_average()
        print(f"[bench] {name} ({profile}) … load {before}", file=sys.stderr, flush=True)
        result = _run_one(name, profile)
        document["benchmarks"][name] = result
        document["load"]["per_benchmark"][name] = {"before": before, "after": load_average()}
        print(f"[bench] {name} done in {result['duration_s']} s", file=sys.stderr, flush=True)
    document["load"]["after"] = load_average()
    document["duration_s"] = round(time.perf_counter() - started, 1)
    out_dir = out_dir or RESULTS_DIR
    stem = "latest" if profile == "full" else profile
    _write(document, out_dir, stem)
    problems = validate(document)
    if problems:
        print("[bench] schema problems:\n  " + "\n  ".join(problems[:20]), file=sys.stderr)
    if profile == "full" and out_dir == RESULTS_DIR and not only:
        update_readme(out_dir / f"{stem}.md")
    return document


def _write(document: Json, out_dir: Path, stem: str) -> None:
    from benchmarks.report import write_outputs

    write_outputs(document, out_dir, stem)


def update_readme(markdown: Path, readme: Path = README) -> bool:
    """Put the latest results table between the markers of ``benchmarks/README.md``."""
    if not readme.exists():
        return False
    text = readme.read_text()
    if _START not in text or _END not in text:
        return False
    body = markdown.read_text().replace("](", "](results/")  # plots live in results/
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)  # one level below the README's
    new = text.split(_START)[0] + _START + "\n" + body.strip() + "\n" + _END + text.split(_END)[1]
    readme.write_text(new)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (make bench-quick)")
    parser.add_argument("--profile", choices=PROFILES, default=None)
    parser.add_argument(
        "--only", default=None, help=f"comma-separated subset of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)
    profile = args.profile or ("quick" if args.quick else "full")
    only = [n.strip() for n in args.only.split(",")] if args.only else None
    if only:
        unknown = set(only) - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}")
    document = run_all(profile, only, args.out)
    out = args.out or RESULTS_DIR
    stem = "latest" if profile == "full" else profile
    print((out / f"{stem}.md").read_text())
    print(f"written: {out / (stem + '.json')} ({document['duration_s']} s)")
    return 1 if validate(json.loads((out / f"{stem}.json").read_text())) else 0


if __name__ == "__main__":
    raise SystemExit(main())

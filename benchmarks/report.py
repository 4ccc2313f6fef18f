"""Render a results document as Markdown and PNG plots: ``python -m benchmarks.report``.

Reads ``benchmarks/results/latest.json`` (or ``--json``) and rewrites ``latest.md`` and the plots
next to it, so a table can be regenerated without re-running anything.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, Json

PLOT_FANOUT = "fanout_vs_sessions.png"
PLOT_MEMORY = "memory_per_connection.png"
PLOT_ECHO = "echo_throughput.png"
_COLORS = {
    "raw": "#444444",
    "bare": "#444444",
    "bare_fastapi": "#999999",
    "ours": "#1f77b4",
    "ours_plain": "#1f77b4",
    "ours_optin": "#17becf",
    "seed": "#d62728",
}


def fmt(value: float | None) -> str:
    """A number with sensible precision for a table."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    mag = abs(value)
    if mag >= 1000:
        return f"{value:,.0f}"
    if mag >= 100:
        return f"{value:.0f}"
    if mag >= 10:
        return f"{value:.1f}"
    if mag >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _cell(summary: Json | None) -> str:
    if not summary:
        return "–"
    if summary.get("single"):  # one measurement by nature: no spread to show
        return fmt(summary["median"])
    return f"{fmt(summary['median'])} [{fmt(summary['min'])}–{fmt(summary['max'])}]"


def _short_reason(variant: Json) -> str:
    status = variant.get("status")
    # one line, no table separators: the reason goes into a Markdown table cell
    reason = " ".join(str(variant.get("reason", "")).split()).replace("|", "/")
    if status == "not_available":
        return "not available" + (
            " (middleware not importable yet)"
            if "importable" in reason
            else f" ({reason[:80]})"
            if reason
            else ""
        )
    return f"error: {reason[:120]}"


def _unit(r: Json) -> str:
    kind = r.get("kind")
    if kind == "difference":
        return " B" if "bytes" in r.get("metric", "") else ""
    if kind == "absolute":
        return ""
    return "×"


def _ratio_text(r: Json) -> str:
    value = r.get("value")
    unit = _unit(r)
    text = f"{r['name']} [{r['metric']}]: " + (
        f"{fmt(value)}{unit}" if value is not None else "n/a"
    )
    target = r.get("target")
    if target:
        mark = {True: "met", False: "MISSED", None: "not measured"}[r.get("met")]
        text += f" (target {target['op']} {fmt(target['value'])}{unit}: {mark})"
    return text


def benchmark_markdown(result: Json, heading: str = "###") -> str:
    """One benchmark as Markdown: a table per case plus its ratios and notes."""
    lines = [f"{heading} {result['title']} (`{result['name']}`)", ""]
    for c in result["cases"]:
        variants: dict[str, Json] = c["variants"]
        metric_names: list[str] = []
        for v in variants.values():
            for m in v.get("metrics", {}):
                if m not in metric_names:
                    metric_names.append(m)
        units = {}
        for v in variants.values():
            for m, s in v.get("metrics", {}).items():
                units.setdefault(m, s.get("unit", ""))
        lines.append(f"**{c['label']}**")
        lines.append("")
        if metric_names:
            header = ["variant", *[f"{m} ({units[m]})" for m in metric_names]]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            for name, v in variants.items():
                if v.get("status") == "ok":
                    row = [name, *[_cell(v["metrics"].get(m)) for m in metric_names]]
                else:
                    row = [name, _short_reason(v), *["" for _ in metric_names[1:]]]
                lines.append("| " + " | ".join(row) + " |")
        else:
            for name, v in variants.items():
                lines.append(f"- {name}: {_short_reason(v)}")
        if c.get("ratios"):
            lines.append("")
            lines.append("Ratios of medians: " + "; ".join(_ratio_text(r) for r in c["ratios"]))
        lines.append("")
    if result.get("notes"):
        lines.extend(f"- {n}" for n in result["notes"])
        lines.append("")
    return "\n".join(lines)


def summary_rows(document: Json) -> list[list[str]]:
    """Every figure that has a target, across all benchmarks."""
    rows = []
    for name, result in document.get("benchmarks", {}).items():
        for c in result.get("cases", []):
            for r in c.get("ratios", []):
                if r.get("target"):
                    mark = {True: "met", False: "**MISSED**", None: "not measured"}[r.get("met")]
                    unit = _unit(r)
                    value = f"{fmt(r['value'])}{unit}" if r.get("value") is not None else "–"
                    rows.append(
                        [
                            name,
                            c["label"],
                            f"{r['name']} ({r['metric']})",
                            value,
                            f"{r['target']['op']} {fmt(r['target']['value'])}{unit}",
                            mark,
                        ]
                    )
    return rows


def document_markdown(document: Json) -> str:
    """The whole results document as Markdown."""
    m = document.get("machine", {})
    v = document.get("versions", {})
    load = document.get("load", {})
    lines = [
        f"## Results ({document.get('profile', '?')} profile, {document.get('generated_at', '')}, "
        f"{fmt(document.get('duration_s'))} s)",
        "",
        f"Machine: {m.get('cpu_count')} × {m.get('cpu_model')}, {m.get('platform')}, "
        f"Python {m.get('python')}, {m.get('event_loop')}, open-file limit "
        f"{(m.get('open_files_limit') or ['?'])[0]}. {m.get('cpu_note', '')}.",
        "",
        f"Load average (1, 5, 15 min) just before the run: {load.get('before')} (other work on "
        f"the machine, which shares its cores); at the end: {load.get('after')} (this includes "
        "the benchmark's own server and client processes; per-benchmark values are in the "
        "JSON).",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        "",
    ]
    for key, label in (("ours", "ours"), ("seed", "seed")):
        status = document.get(key, {})
        if status and not status.get("available"):
            lines += [f"**{label}: not available** — {status.get('reason')}", ""]
    rows = summary_rows(document)
    if rows:
        lines += [
            "### Targets",
            "",
            "| benchmark | case | figure | value | target | status |",
            "|---|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    lines.append("Cells: median [min–max] over the repetitions stated in each section.")
    lines.append("")
    for result in document.get("benchmarks", {}).values():
        lines.append(benchmark_markdown(result))
    return "\n".join(lines)


def _plot_fanout(document: Json, path: Path) -> bool:
    import matplotlib.pyplot as plt

    result = document.get("benchmarks", {}).get("fanout")
    if not result:
        return False
    series: dict[str, list[tuple[int, Json]]] = {}
    for c in result["cases"]:
        n = int(c["params"]["sessions"])
        for name, v in c["variants"].items():
            s = v.get("metrics", {}).get("time_to_all_sends_ms")
            if v.get("status") == "ok" and s:
                series.setdefault(name, []).append((n, s))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in series.items():
        xs = [p[0] for p in points]
        med = [p[1]["median"] for p in points]
        lo = [p[1]["median"] - p[1]["min"] for p in points]
        hi = [p[1]["max"] - p[1]["median"] for p in points]
        ax.errorbar(
            xs, med, yerr=[lo, hi], marker="o", capsize=3, label=name, color=_COLORS.get(name)
        )
    missing = [n for n in result["cases"][0]["variants"] if n not in series]
    title = "Broadcast: time until every transport send was called"
    if missing:
        title += f"\n(not available: {', '.join(missing)})"
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sessions")
    ax.set_ylabel("ms (median, min–max bars)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_memory(document: Json, path: Path) -> bool:
    import matplotlib.pyplot as plt

    result = document.get("benchmarks", {}).get("memory")
    if not result:
        return False
    panels = []
    for c in result["cases"]:
        metric = "bytes_per_session" if "bytes_per_session" in json.dumps(c) else None
        for name in ("bytes_per_session", "rss_bytes_per_connection"):
            if name in json.dumps(c["variants"]):
                metric = name
        if metric:
            panels.append((c, metric))
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (c, metric) in zip(axes[0], panels, strict=False):
        names, meds, los, his, colors = [], [], [], [], []
        absent = []
        for name, v in c["variants"].items():
            s = v.get("metrics", {}).get(metric)
            if v.get("status") == "ok" and s:
                names.append(name)
                meds.append(s["median"] / 1024)
                los.append((s["median"] - s["min"]) / 1024)
                his.append((s["max"] - s["median"]) / 1024)
                colors.append(_COLORS.get(name, "#888888"))
            else:
                absent.append(name)
        ax.bar(names, meds, yerr=[los, his], capsize=4, color=colors)
        for x, y in enumerate(meds):
            ax.annotate(f"{y:.1f}", (x, y), ha="center", va="bottom", fontsize=9)
        ax.set_ylabel("KiB per connection")
        title = c["label"]
        if absent:
            title += f"\n(not available: {', '.join(absent)})"
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_echo(document: Json, path: Path) -> bool:
    import matplotlib.pyplot as plt

    result = document.get("benchmarks", {}).get("echo")
    if not result:
        return False
    c = result["cases"][0]
    names, meds, errs, colors = [], [], [[], []], []
    for name, v in c["variants"].items():
        s = v.get("metrics", {}).get("round_trips_per_s")
        if v.get("status") == "ok" and s:
            names.append(name)
            meds.append(s["median"])
            errs[0].append(s["median"] - s["min"])
            errs[1].append(s["max"] - s["median"])
            colors.append(_COLORS.get(name, "#888888"))
    if not names:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, meds, yerr=errs, capsize=4, color=colors)
    ax.set_ylabel("round trips / s (median, min–max)")
    ax.set_title(f"Echo through uvicorn, {c['label']}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(document: Json, out_dir: Path, stem: str) -> dict[str, Any]:
    """Write ``<stem>.json``, ``<stem>.md`` and the plots; returns what was written.

    Without matplotlib (it comes with the ``bench`` extra) the plots are skipped and the
    document says so.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "" if stem == "latest" else f"{stem}-"
    plots: dict[str, str] = {}
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        document["plots_note"] = "matplotlib is not installed (pip install -e '.[bench]')"
    else:
        for filename, fn in (
            (PLOT_FANOUT, _plot_fanout),
            (PLOT_MEMORY, _plot_memory),
            (PLOT_ECHO, _plot_echo),
        ):
            target = out_dir / f"{prefix}{filename}"
            if fn(document, target):
                plots[filename] = target.name
    document["plots"] = plots
    (out_dir / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    md = document_markdown(document)
    if plots:
        md += "\n### Plots\n\n" + "\n".join(f"![{k}]({v})" for k, v in plots.items()) + "\n"
    (out_dir / f"{stem}.md").write_text(md)
    return {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "plots": plots}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args(argv)
    document = json.loads(args.json.read_text())
    written = write_outputs(document, args.json.parent, args.json.stem)
    print(f"written: {written['md']} and {len(written['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Smoke test of `benchmarks/`: the `make bench` logic at tiny sizes, checked against its schema.

No figure is asserted on (speed lives in `benchmarks/`, never in the test suite); this only pins
down that every benchmark still runs our code end to end and writes a well-formed document.
The seed package and matplotlib come with the `bench` extra, which CI does not install: their
variants must then be reported as "not available", not crash the run.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from benchmarks import run as bench_run
from benchmarks._common import SCHEMA, validate


def _installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def test_tiny_run_writes_a_valid_document_with_our_variants_measured(tmp_path: Path) -> None:
    """Every benchmark runs at tiny size; ours is measured and the JSON follows the schema."""
    # The cluster, resume and deploy benchmarks have their own smoke tests
    # (tests/test_benchmarks_{cluster,resume,deploy}_smoke.py).
    names = [n for n in bench_run.BENCHMARKS if n not in ("cluster", "resume", "deploy")]
    document = bench_run.run_all("tiny", only=names, out_dir=tmp_path)

    written = json.loads((tmp_path / "tiny.json").read_text())
    assert written["schema"] == SCHEMA
    assert validate(written) == []
    assert set(written["benchmarks"]) == set(names)
    assert written == json.loads(json.dumps(document))

    seed_installed = _installed("fastapi_websocket_stabilizer")
    for name, result in written["benchmarks"].items():
        assert "error" not in result, f"{name} crashed: {result.get('error')}"
        for c in result["cases"]:
            for variant, v in c["variants"].items():
                where = f"{name} / {c['label']} / {variant}: {v.get('reason')}"
                if variant == "seed" and not seed_installed:
                    assert v["status"] == "not_available", where
                else:
                    assert v["status"] == "ok", where

    markdown = (tmp_path / "tiny.md").read_text()
    assert "### Targets" in markdown
    for result in written["benchmarks"].values():
        assert f"(`{result['name']}`)" in markdown
    if not _installed("matplotlib"):
        assert written["plots"] == {}
    for filename in written["plots"].values():
        assert (tmp_path / filename).stat().st_size > 0

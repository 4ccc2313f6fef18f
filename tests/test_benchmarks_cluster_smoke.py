"""Smoke test of `benchmarks/cluster.py` (`make bench` runs it at full size): its tiny profile.

The raw variant only (Redis pub/sub and a send loop per instance, nothing but redis-py and a real
redis-server), so the harness cannot rot: a real redis-server started on a free port, two real
uvicorn instances, a load-generator process, numbered broadcasts checked by the clients, and the
outage run that SIGKILLs redis-server and restarts it. No figure of speed is asserted on.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import run as bench_run
from benchmarks._common import SCHEMA, validate


def test_cluster_tiny_profile_measures_raw_and_its_outage_on_a_real_redis(tmp_path: Path) -> None:
    """The tiny cluster run reaches every client exactly once and in order, and sees the outage."""
    bench_run.run_all("tiny", only=["cluster"], out_dir=tmp_path)

    written = json.loads((tmp_path / "tiny.json").read_text())
    assert written["schema"] == SCHEMA
    assert validate(written) == []
    result = written["benchmarks"]["cluster"]
    assert "error" not in result, result.get("error")
    throughput, outage = result["cases"]

    raw = throughput["variants"]["raw"]
    assert raw["status"] == "ok", raw.get("reason")
    for fault in ("lost", "duplicates", "reorders"):
        assert raw["metrics"][fault]["max"] == 0, fault
    assert raw["info"]["deliveries_expected"] == 20 * 10
    assert raw["metrics"]["cpu_us_per_delivery"]["n"] >= 5

    killed = outage["variants"]["raw"]
    assert killed["status"] == "ok", killed.get("reason")
    # Plain pub/sub loses what is published while Redis is down: proof that it really was.
    assert killed["metrics"]["publish_errors"]["median"] > 0
    assert killed["info"]["instance2"]["lost_messages"] > 0
    assert killed["info"]["instance2"]["recovery_s"] is not None  # the raw loop resubscribes

    markdown = (tmp_path / "tiny.md").read_text()
    assert "(`cluster`)" in markdown
    assert "outage: " in markdown

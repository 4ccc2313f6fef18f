"""Smoke test of `benchmarks/deploy.py` (`make bench` runs it at full size): its tiny profile.

Real parts, so the harness cannot rot: a redis-server on a free port, 3 `stabilizer-asgi serve`
nodes behind the round-robin load balancer, a load-generator process of Python clients
exchanging numbered messages both ways, each node drained by SIGTERM and restarted. No figure of
speed is asserted on, nor the zero-loss result (tests/cluster/test_resume_anywhere.py pins it).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import run as bench_run
from benchmarks._common import SCHEMA, validate


def test_deploy_tiny_profile_redeploys_3_nodes_and_checks_every_message(tmp_path: Path) -> None:
    """The tiny rolling deploy runs both variants, counts the balancer's handshakes, and its
    check of every message finds nothing silent: a loss, duplicate or reorder only ever comes
    with a resync."""
    bench_run.run_all("tiny", only=["deploy"], out_dir=tmp_path)

    written = json.loads((tmp_path / "tiny.json").read_text())
    assert written["schema"] == SCHEMA
    assert validate(written) == []
    result = written["benchmarks"]["deploy"]
    assert "error" not in result, result.get("error")
    (deploy,) = result["cases"]
    for name in ("spread", "no_spread"):
        variant = deploy["variants"][name]
        assert variant["status"] == "ok", variant.get("reason")
        info, metrics = variant["info"], variant["metrics"]
        assert [step["node"] for step in info["steps"]] == [0, 1, 2]
        assert info["messages_sent"] > 0 and info["broadcasts_published"] > 0
        # A client without a resync got everything exactly once, in order.
        silent = {k: info[k] for k in ("silent_lost", "silent_duplicated", "silent_reordered")}
        assert silent == dict.fromkeys(silent, 0)
        assert info["closed_clients"] == 0
        assert metrics["resyncs"]["max"] == sum(info["resync_reasons"].values())
        # Every client was on a drained node once: each came back through the balancer.
        assert info["handshakes_during_deploy"] >= info["clients"]
        assert metrics["peak_handshakes_per_s"]["max"] > 0
    markdown = (tmp_path / "tiny.md").read_text()
    assert "(`deploy`)" in markdown

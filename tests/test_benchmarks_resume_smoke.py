"""Smoke test of `benchmarks/resume.py` (`make bench` runs it at full size): its tiny profile.

One run of every variant: an in-memory node, and two real uvicorn nodes on a real redis-server
started on a free port, with a raw `websockets` client resuming on the same node and on the
other one. Only what the run reports is checked (resumed, replay exact, schema), never a time.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from benchmarks import run as bench_run
from benchmarks._common import SCHEMA, validate
from benchmarks.resume import Outcome, Tally, replay_problem, variant_result


@pytest.fixture(scope="module")
def resume_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-resume")
    bench_run.run_all("tiny", only=["resume"], out_dir=out)
    written: dict[str, Any] = json.loads((out / "tiny.json").read_text())
    assert written["schema"] == SCHEMA
    assert validate(written) == []
    assert "(`resume`)" in (out / "tiny.md").read_text()
    result: dict[str, Any] = written["benchmarks"]["resume"]
    assert "error" not in result, result.get("error")
    return result


def _exact(variant: dict[str, Any]) -> None:
    assert variant["status"] == "ok", variant.get("reason")
    info = variant["info"]
    assert (info["resyncs"], info["inexact"]) == (0, 0), info
    assert info["resumed"] == info["resumes"] >= 5
    assert variant["metrics"]["to_last_replayed_ms"]["n"] == info["resumes"]


def test_same_node_resumes_replay_exactly_in_memory_and_on_redis(
    resume_result: dict[str, Any],
) -> None:
    """Resuming on the node that held the session replays frames 1..100 exactly, every time."""
    (only_case,) = resume_result["cases"]
    _exact(only_case["variants"]["memory_same"])
    _exact(only_case["variants"]["redis_same"])


def test_cross_node_resumes_replay_exactly(resume_result: dict[str, Any]) -> None:
    """Resuming on the other node replays frames 1..100 exactly, every time, never a resync."""
    (only_case,) = resume_result["cases"]
    _exact(only_case["variants"]["redis_cross"])


def test_resyncs_are_reported_with_their_reasons_never_as_figures() -> None:
    """Resumes answered resumed:false are counted with their reasons; all of them: no figure."""
    resync = Outcome(fresh=0.001, resumed=False, reason="unknown")
    all_resync = variant_result(Tally(outcomes=[resync] * 5))
    assert all_resync["status"] == "not_available"
    assert all_resync["metrics"] == {}
    assert "resumed: false, reason 'unknown' × 5 in 5 of 5 resumes" in all_resync["reason"]

    resumed = Outcome(fresh=0.001, resumed=True, hello=0.002, last=0.004)
    short = Outcome(fresh=0.001, resumed=True, hello=0.002, problem="missing 1 (…)")
    lost = Outcome(fresh=0.001, resumed=False, reason="lost")
    mixed = variant_result(Tally(outcomes=[resumed] * 5 + [short, resync, lost]))
    assert mixed["status"] == "ok"
    assert mixed["metrics"]["resyncs"]["median"] == 2
    assert mixed["metrics"]["inexact"]["median"] == 1
    assert mixed["metrics"]["to_last_replayed_ms"]["n"] == 5
    assert mixed["info"]["resync_reasons"] == {"unknown": 1, "lost": 1}
    assert mixed["info"]["inexact_examples"] == ["missing 1 (…)"]


def test_replay_check_names_missing_duplicated_reordered_and_foreign_frames() -> None:
    """The benchmark's exactness check flags every kind of inexact replay, and only those."""
    expected = ["R:1", "R:2", "R:3"]
    assert replay_problem(expected, expected) is None
    assert "missing 1" in str(replay_problem(["R:1", "R:3"], expected))
    assert "duplicated 1" in str(replay_problem(["R:1", "R:2", "R:2", "R:3"], expected))
    assert "out of order" in str(replay_problem(["R:2", "R:1", "R:3"], expected))
    assert "foreign 1" in str(replay_problem([*expected, "P:5"], expected))

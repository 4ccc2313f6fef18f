"""The metrics core: histograms, counters present from the start, bounded close codes."""

from __future__ import annotations

import pytest

from stabilizer_asgi.core.metrics import (
    EXPORTED_RTT_BUCKETS,
    KNOWN_CLOSE_CODES,
    MAX_CLOSE_CODES,
    RTT_BUCKETS,
    Histogram,
    Metrics,
    seconds,
)
from stabilizer_asgi.core.replay import ReplayBuffer


def test_rtt_buckets_span_100us_to_10s_and_contain_the_exported_ones() -> None:
    """The RTT histogram covers 100 µs … 10 s and every exported bound is one of its own."""
    assert RTT_BUCKETS[0] == 0.0001 and RTT_BUCKETS[-1] == 10.0
    assert list(RTT_BUCKETS) == sorted(set(RTT_BUCKETS))
    assert set(EXPORTED_RTT_BUCKETS) <= set(RTT_BUCKETS)


def test_histogram_cumulative_counts_at_exported_bounds_are_exact() -> None:
    """Cumulative counts at a subset of bounds equal counting the observations directly."""
    h = Histogram(RTT_BUCKETS)
    values = [0.00005, 0.0001, 0.0003, 0.002, 0.002, 0.04, 0.9, 3.0, 12.0]
    for v in values:
        h.observe(v)
    got = dict(h.cumulative(EXPORTED_RTT_BUCKETS))
    for bound in EXPORTED_RTT_BUCKETS:
        assert got[bound] == sum(1 for v in values if v <= bound), bound
    assert got[float("inf")] == len(values) == h.count
    assert h.sum == pytest.approx(sum(values))
    with pytest.raises(ValueError):
        h.cumulative([0.00033])


def test_histogram_quantiles_are_within_one_bucket() -> None:
    """Percentiles estimated from the buckets land within the bucket of the true value."""
    h = Histogram(RTT_BUCKETS)
    assert h.quantile(0.5) is None
    for i in range(1, 1001):
        h.observe(i / 1000 * 0.01)  # 10 µs … 10 ms, uniform
    p50 = h.quantile(0.5)
    p99 = h.quantile(0.99)
    assert p50 is not None and 0.004 <= p50 <= 0.006
    assert p99 is not None and 0.0075 <= p99 <= 0.01


def test_counters_exist_from_the_start_and_only_grow() -> None:
    """Every known counter reads 0 before anything happens; counting only adds."""
    m = Metrics()
    assert m.counters["connections_accepted"] == 0
    assert m.prefixed("rejected_") == {
        "capacity": 0,
        "per_ip": 0,
        "draining": 0,
        "duplicate_client": 0,
    }
    assert set(m.prefixed("resume_failed_")) == {"unknown", "expired", "invalid", "gap", "lost"}
    m.count("rejected_capacity")
    m.count("something_new", 3)
    assert m.counters["rejected_capacity"] == 1 and m.counters["something_new"] == 3


def test_close_codes_are_bounded() -> None:
    """Past MAX_CLOSE_CODES distinct codes, further codes are counted as "other"."""
    m = Metrics()
    m.closed(None)
    m.closed(1000)
    m.closed(1000)
    for code in range(4000, 4000 + 2 * MAX_CLOSE_CODES):
        m.closed(code)
    assert m.closes["1006"] == 1 and m.closes["1000"] == 2 and m.closes["1012"] == 0
    assert len(m.closes) == MAX_CLOSE_CODES + 1
    distinct_app_codes = MAX_CLOSE_CODES - len(KNOWN_CLOSE_CODES)
    assert m.closes["other"] == 2 * MAX_CLOSE_CODES - distinct_app_codes
    assert sum(m.closes.values()) == 3 + 2 * MAX_CLOSE_CODES


def test_rtt_summary_is_rounded_to_the_microsecond() -> None:
    """RTTs in the stats read as 0.005932, never 0.005932438000058937."""
    m = Metrics()
    m.observe_rtt(0.005932438000058937)
    summary = m.rtt_summary()
    assert summary["count"] == 1 and summary["mean"] == 0.005932
    for key in ("p50", "p90", "p99"):
        assert summary[key] == round(summary[key], 6)
    assert seconds(None) is None


def test_listeners_see_every_histogram_observation() -> None:
    """An exporter registered as a listener receives each RTT and broadcast duration."""
    m = Metrics()
    seen: list[tuple[str, float]] = []
    m.listeners.append(lambda name, value: seen.append((name, value)))
    m.observe_rtt(0.01)
    m.observe_broadcast(0.002)
    assert seen == [("rtt", 0.01), ("broadcast", 0.002)]
    assert m.rtt.count == 1 and m.broadcast_duration.count == 1


def test_replay_buffers_add_up_what_they_hold() -> None:
    """The replay gauges follow appends, overflow, acks and clears across buffers."""
    m = Metrics()
    a: ReplayBuffer[str] = ReplayBuffer(3, 1000, m)
    b: ReplayBuffer[str] = ReplayBuffer(10, 1000, m)
    for i in range(5):
        a.append(f"a{i}", 10)
    b.append("b", 7)
    assert m.replay_frames == 4
    a.ack(4)
    assert m.replay_frames == 2
    a.clear()
    b.clear()
    assert m.replay_frames == 0

"""The metrics core: every counter, gauge and histogram the middleware keeps, in one place.

Updated on the hot path at O(1) cost (an attribute or dict increment; a bisect over a fixed
bucket list for a histogram observation), read by the stats route, the Prometheus exposition and
OpenTelemetry alike. Nothing here walks sessions: a scrape costs the same at 10 or 100k sessions.
Pure: no I/O, no clock (durations are measured by the caller).

Counters only go up and are present from the start (zero until something happens), so a rate
computed by Prometheus, Grafana or the dashboard never sees a series appear or reset.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

# Round-trip times: 100 µs … 10 s. The fine bounds serve the percentiles of the stats route and
# the dashboard; the exposition uses the `EXPORTED_RTT_BUCKETS` subset (a cumulative count at a
# bound that both share is exact).
_STEPS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5)
RTT_BUCKETS: tuple[float, ...] = (
    *(round(step * 10.0**exp, 6) for exp in range(-4, 1) for step in _STEPS),
    10.0,
)
EXPORTED_RTT_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Broadcast durations (the call, on this node): 10 µs … 10 s.
BROADCAST_BUCKETS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025,
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# Counters that exist from the start. A name outside this list (a new event) is still counted
# and reported; these are the ones a user can rely on.
COUNTERS: tuple[str, ...] = (
    "connections_accepted",
    "pings",
    "heartbeat_timeouts",
    "broadcasts",
    "resumed",
    "detached",
    "expired",
    "evictions",
    "slow_consumer_drops",
    "send_failures",
    "invalid_control_frames",
    "drained",
    "parked",
    "handed_over",
    "adopted",
)
# Labelled counters kept in the same table under a prefix: `rejected_<reason>` and
# `resume_failed_<reason>`. Their known reasons are present from the start.
REJECT_REASONS: tuple[str, ...] = ("capacity", "per_ip", "draining", "duplicate_client")
RESUME_FAILURES: tuple[str, ...] = ("unknown", "expired", "invalid", "gap", "lost")
# Distinct close codes counted one by one; further codes are counted as "other", so an app that
# closes with arbitrary 4000-4999 codes cannot grow the label set without bound.
MAX_CLOSE_CODES = 64
# Close codes counted (at zero) from the start: the ones the middleware, servers and browsers use.
KNOWN_CLOSE_CODES = (1000, 1001, 1005, 1006, 1008, 1009, 1011, 1012, 1013)
OTHER = "other"
# The recent history kept for the dashboard: one sample every HISTORY_INTERVAL seconds, the last
# HISTORY_SAMPLES of them (ten minutes), so a page opened during an incident shows what led to it.
HISTORY_INTERVAL = 5.0
HISTORY_SAMPLES = 120
HISTORY_FIELDS = ("t", "connections", "connected", "detached", "frames_in", "frames_out")


class Histogram:
    """Observations in fixed buckets: O(log buckets) to observe, percentiles by interpolation."""

    __slots__ = ("bounds", "counts", "count", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds: tuple[float, ...] = tuple(bounds)
        # One count per bound (value <= bound) plus the overflow bucket (+Inf).
        self.counts: list[int] = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self, bounds: Iterable[float] | None = None) -> list[tuple[float, int]]:
        """`(upper bound, observations <= bound)` for `bounds` (each one of ours), then +Inf."""
        wanted = self.bounds if bounds is None else tuple(bounds)
        out: list[tuple[float, int]] = []
        running = 0
        i = 0
        for j, bound in enumerate(self.bounds):
            running += self.counts[j]
            if i < len(wanted) and bound == wanted[i]:
                out.append((bound, running))
                i += 1
        if i != len(wanted):
            raise ValueError("every exported bound must be one of the histogram's bounds")
        out.append((float("inf"), self.count))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimate of the `q` quantile (0..1), linear within a bucket; None when empty.

        Exact to within one bucket: with `RTT_BUCKETS` the estimate is within ~25% of the truth.
        """
        if self.count == 0:
            return None
        rank = q * self.count
        running = 0
        lower = 0.0
        for i, n in enumerate(self.counts):
            if n and running + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]  # above the last bound: all we can say
                upper = self.bounds[i]
                return lower + (upper - lower) * max(0.0, rank - running) / n
            running += n
            lower = self.bounds[i] if i < len(self.bounds) else lower
        return self.bounds[-1]


class Metrics:
    """What one process has seen since it started. Owned by the manager; the connection driver
    bumps the frame and byte totals directly (they are the per-frame cost)."""

    __slots__ = (
        "frames_in",
        "frames_out",
        "bytes_in",
        "bytes_out",
        "counters",
        "closes",
        "rtt",
        "broadcast_duration",
        "detached_sessions",
        "replay_frames",
        "listeners",
    )

    def __init__(self) -> None:
        # Data frames and their payload bytes, through this process, in both directions.
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        for reason in REJECT_REASONS:
            self.counters["rejected_" + reason] = 0
        for reason in RESUME_FAILURES:
            self.counters["resume_failed_" + reason] = 0
        # Connections closed, by close code (str; "other" past MAX_CLOSE_CODES distinct codes).
        self.closes: dict[str, int] = {str(code): 0 for code in KNOWN_CLOSE_CODES}
        self.rtt = Histogram(RTT_BUCKETS)
        self.broadcast_duration = Histogram(BROADCAST_BUCKETS)
        # Gauges kept by the manager at each state change (no walk over sessions to count).
        self.detached_sessions = 0
        self.replay_frames = 0
        # Called with (name, value) for each histogram observation: OpenTelemetry has no
        # observable histogram, so it records as we do. Empty unless enabled.
        self.listeners: list[Callable[[str, float], None]] = []

    def count(self, name: str, n: int = 1) -> None:
        counters = self.counters
        counters[name] = counters.get(name, 0) + n

    def closed(self, code: int | None) -> None:
        """One connection closed with `code` (None: no close frame, reported as 1006)."""
        key = "1006" if code is None else str(code)
        closes = self.closes
        if key not in closes and len(closes) >= MAX_CLOSE_CODES:
            key = OTHER
        closes[key] = closes.get(key, 0) + 1

    def observe_rtt(self, seconds: float) -> None:
        self.rtt.observe(seconds)
        for listener in self.listeners:
            listener("rtt", seconds)

    def observe_broadcast(self, seconds: float) -> None:
        self.broadcast_duration.observe(seconds)
        for listener in self.listeners:
            listener("broadcast", seconds)

    def prefixed(self, prefix: str) -> dict[str, int]:
        """The counters named `prefix<label>`, by label."""
        n = len(prefix)
        return {k[n:]: v for k, v in self.counters.items() if k.startswith(prefix)}

    def rtt_summary(self) -> dict[str, Any]:
        """Count, mean and percentiles of the RTT histogram, in seconds, rounded to 1 µs."""
        rtt = self.rtt
        return {
            "count": rtt.count,
            "mean": seconds(rtt.sum / rtt.count) if rtt.count else None,
            "p50": seconds(rtt.quantile(0.5)),
            "p90": seconds(rtt.quantile(0.9)),
            "p99": seconds(rtt.quantile(0.99)),
        }


class History:
    """A bounded ring of periodic samples (wall time in seconds, then the gauges and totals of
    `HISTORY_FIELDS`); the caller decides when to sample and passes the time."""

    __slots__ = ("samples", "interval", "_next")

    def __init__(self, interval: float = HISTORY_INTERVAL, size: int = HISTORY_SAMPLES) -> None:
        self.samples: deque[tuple[float, ...]] = deque(maxlen=size)
        self.interval = interval
        self._next = 0.0

    def due(self, now: float) -> bool:
        """Whether a sample is due at monotonic time `now` (and schedule the next one)."""
        if now < self._next:
            return False
        self._next = now + self.interval
        return True

    def add(self, sample: tuple[float, ...]) -> None:
        self.samples.append(sample)

    def export(self) -> dict[str, Any]:
        """`{"fields": [...], "samples": [[...], ...]}`, oldest first."""
        return {"fields": list(HISTORY_FIELDS), "samples": [list(s) for s in self.samples]}


def seconds(value: float | None) -> float | None:
    """A duration for people and JSON: seconds rounded to the microsecond (0.005932, not
    0.005932438000058937)."""
    return None if value is None else round(value, 6)

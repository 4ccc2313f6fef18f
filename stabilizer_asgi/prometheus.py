"""Prometheus exposition of the metrics core (extra `stabilizer-asgi[metrics]`).

The middleware serves it at `metrics_path`. To put the same metrics in your own registry (one
scrape for your app's metrics and ours), register a collector::

    from prometheus_client import REGISTRY
    from stabilizer_asgi.prometheus import StabilizerCollector

    REGISTRY.register(StabilizerCollector(manager))   # manager = middleware.manager

Under several worker processes (`uvicorn --workers N`, `stabilizer-asgi serve --workers N`)
each process only knows its own numbers, so prometheus_client's multiprocess mode is used when
`PROMETHEUS_MULTIPROC_DIR` is set (the sidecar sets it for you): every worker copies its
metrics into that directory (every `SYNC_INTERVAL` seconds and before it answers a scrape), the
worker that answers the scrape adds them all up, and the gauges of workers that died are
dropped. There the collector to register is prometheus_client's own
`multiprocess.MultiProcessCollector(registry)`, which reads ours along with yours.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        Counter,
        Gauge,
        Histogram,
        ProcessCollector,
        generate_latest,
        multiprocess,
    )
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by the clean-install check
    raise ImportError(
        "the Prometheus exposition needs prometheus-client: pip install 'stabilizer-asgi[metrics]'"
    ) from exc

from .core.metrics import BROADCAST_BUCKETS, EXPORTED_RTT_BUCKETS
from .core.metrics import Histogram as CoreHistogram

if TYPE_CHECKING:
    from .manager import Stabilizer

__all__ = [
    "CONTENT_TYPE",
    "PrometheusExporter",
    "StabilizerCollector",
    "collect",
    "multiprocess_dir",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds between two copies of a worker's metrics into the multiprocess directory.
SYNC_INTERVAL = 1.0
NAMESPACE = "stabilizer"

# Counters of the core with a metric of their own: counter name -> (metric name, help).
_COUNTERS: dict[str, tuple[str, str]] = {
    "connections_accepted": ("connections_accepted", "WebSocket connections accepted"),
    "pings": ("heartbeat_pings", "Heartbeat pings sent"),
    "heartbeat_timeouts": (
        "heartbeat_timeouts",
        "Connections closed 1011 because no frame came back after a ping",
    ),
    "broadcasts": ("broadcasts", "broadcast() calls"),
    "detached": ("sessions_detached", "Sessions that lost their connection and became resumable"),
    "expired": ("sessions_expired", "Detached sessions whose resume window passed"),
    "evictions": ("evictions", "Sessions evicted for max_total_memory"),
    "slow_consumer_drops": (
        "slow_consumer_drops",
        "Frames refused to a connection whose outbound queue was full",
    ),
    "send_failures": ("send_failures", "Connections whose transport failed under a send"),
    "drained": ("drained_connections", "Connections closed by a drain"),
    "parked": (
        "sessions_parked",
        "Detached sessions this node moved to the cluster store (drain, shutdown, hand-over)",
    ),
    "handed_over": (
        "sessions_handed_over",
        "Sessions this node parked because another node had their client's resume",
    ),
    "adopted": (
        "sessions_adopted",
        "Sessions this node took over from the cluster store for a resume",
    ),
    "invalid_control_frames": (
        "control_frames_invalid",
        "Control frames ignored because they were not valid protocol",
    ),
}
_HANDLED = {*_COUNTERS, "resumed"}
_LABEL_SAFE = re.compile(r"[^a-zA-Z0-9_]")


def _counter(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    family = CounterMetricFamily(f"{NAMESPACE}_{name}", doc, labels=list(labels or ()))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(f"{NAMESPACE}_{name}", doc, value=value)


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: Iterable[tuple[str, float]],
) -> Metric:
    family = kind(f"{NAMESPACE}_{name}", doc, labels=[label])
    for key, value in values:
        family.add_metric([key], value)
    return family


def _histogram(name: str, doc: str, hist: CoreHistogram, bounds: Iterable[float]) -> Metric:
    family = HistogramMetricFamily(f"{NAMESPACE}_{name}", doc)
    buckets = [(_bound(b), float(n)) for b, n in hist.cumulative(bounds)]
    family.add_metric([], buckets, hist.sum)
    return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def collect(manager: Stabilizer) -> list[Metric]:
    """Every metric of `manager`, as Prometheus metric families (no walk over sessions)."""
    m = manager.metrics
    counters = m.counters
    registered = manager.count()
    out: list[Metric] = [
        _gauge(
            "connections",
            "WebSocket connections open (admitted handshakes)",
            manager._limits.total,
        ),
        _labelled(
            GaugeMetricFamily,
            "sessions",
            "Registered sessions by state",
            "state",
            [
                ("connected", registered - m.detached_sessions),
                ("detached", m.detached_sessions),
            ],
        ),
        _gauge("groups", "Groups with at least one member", manager._registry.group_total()),
        _gauge(
            "heartbeat_scheduled",
            "Connections in the heartbeat wheel (checked for liveness)",
            len(manager._wheel),
        ),
        _counter("frames_received", "Data frames received from clients", m.frames_in),
        _counter("frames_sent", "Data frames sent to clients", m.frames_out),
        _counter("bytes_received", "Payload bytes of data frames received", m.bytes_in),
        _counter("bytes_sent", "Payload bytes of data frames sent", m.bytes_out),
        _labelled(
            CounterMetricFamily,
            "connections_closed",
            "Connections closed, by the close code the client saw (1006: no close frame)",
            "code",
            sorted(m.closes.items()),
        ),
        _labelled(
            CounterMetricFamily,
            "connections_rejected",
            "Handshakes denied before the app, by reason",
            "reason",
            sorted(m.prefixed("rejected_").items()),
        ),
    ]
    resumes = CounterMetricFamily(
        f"{NAMESPACE}_resumes",
        "Resume requests, by result and reason (reason none when resumed)",
        labels=["result", "reason"],
    )
    resumes.add_metric(["resumed", "none"], counters.get("resumed", 0))
    for reason, value in sorted(m.prefixed("resume_failed_").items()):
        resumes.add_metric(["failed", reason], value)
    out.append(resumes)
    for key, (name, doc) in _COUNTERS.items():
        out.append(_counter(name, doc, counters.get(key, 0)))
    others = [
        (k, v)
        for k, v in counters.items()
        if k not in _HANDLED and not k.startswith(("rejected_", "resume_failed_"))
    ]
    out.append(
        _labelled(CounterMetricFamily, "events", "Other events counted", "event", sorted(others))
    )
    out.append(
        _histogram(
            "heartbeat_rtt_seconds", "Heartbeat round-trip time", m.rtt, EXPORTED_RTT_BUCKETS
        )
    )
    out.append(
        _histogram(
            "broadcast_duration_seconds",
            "Time a broadcast() call took on this node",
            m.broadcast_duration,
            BROADCAST_BUCKETS,
        )
    )
    out.append(_gauge("replay_frames", "Data frames held for replay", m.replay_frames))
    out.append(
        _gauge("memory_bytes", "Bytes accounted to sessions (data and buffers)", manager.memory)
    )
    limit = manager.config.max_total_memory
    if limit is not None:
        out.append(_gauge("memory_limit_bytes", "max_total_memory", limit))
    out.append(_gauge("draining", "1 while the process drains", 1 if manager.draining else 0))
    out.extend(_cluster(manager))
    return out


def _cluster(manager: Stabilizer) -> list[Metric]:
    """Per-node gauges from the stats document's `cluster` section, when there is one."""
    cluster = manager.stats().get("cluster")
    if not isinstance(cluster, dict):
        return []
    out: list[Metric] = []
    nodes = cluster.get("nodes")
    if isinstance(nodes, list):
        out.append(
            _labelled(
                GaugeMetricFamily,
                "cluster_node_connections",
                "Connections per cluster node, as last reported by each node",
                "node",
                [
                    (str(node.get("id")), float(node.get("connections") or 0))
                    for node in nodes
                    if isinstance(node, dict)
                ],
            )
        )
        sessions = GaugeMetricFamily(
            f"{NAMESPACE}_cluster_node_sessions",
            "Sessions per cluster node by state, as last reported by each node",
            labels=["node", "state"],
        )
        groups = GaugeMetricFamily(
            f"{NAMESPACE}_cluster_node_groups",
            "Groups with members per cluster node, as last reported by each node",
            labels=["node"],
        )
        for node in nodes:
            if not isinstance(node, dict):
                continue
            by_state = node.get("sessions")
            if isinstance(by_state, dict):
                for state, count in sorted(by_state.items()):
                    if _is_number(count):
                        sessions.add_metric([str(node.get("id")), str(state)], float(count))
            if _is_number(node.get("groups")):
                groups.add_metric([str(node.get("id"))], float(node["groups"]))
        out += [sessions, groups]
    for key, value in cluster.items():
        if isinstance(value, bool | int | float):
            safe = _LABEL_SAFE.sub("_", key)
            out.append(_gauge(f"cluster_{safe}", f"cluster: {key}", float(value)))
    counters = cluster.get("counters")
    if isinstance(counters, dict):
        out.append(
            _labelled(
                CounterMetricFamily,
                "cluster_events",
                "Cluster backend events counted by this node (gaps, reconnects, probe failures...)",
                "event",
                sorted((str(k), float(v)) for k, v in counters.items() if _is_number(v)),
            )
        )
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class StabilizerCollector(Collector):
    """A prometheus_client collector of one manager's metrics.

    `REGISTRY.register(StabilizerCollector(manager))` adds them to your own registry.
    """

    def __init__(self, manager: Stabilizer) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        yield from collect(self.manager)


def multiprocess_dir() -> str | None:
    """The multiprocess directory, if prometheus_client's multiprocess mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _MultiprocessSync:
    """Copies one worker's metrics into prometheus_client's multiprocess files.

    prometheus_client metric objects created in multiprocess mode write their values into
    per-process files; they are brought level with the metrics core (counters by the increment
    since the last copy, gauges set, histogram buckets by their increments).
    """

    # Gauges whose per-worker values make sense summed; the others take the largest.
    _MAX_GAUGES = frozenset({"draining", "memory_limit_bytes"})

    def __init__(self, manager: Stabilizer) -> None:
        self.manager = manager
        self._metrics: dict[str, Any] = {}
        self._last: dict[tuple[str, tuple[str, ...]], float] = {}
        self._next = 0.0

    def tick(self, now: float) -> None:
        if now >= self._next:
            self._next = now + SYNC_INTERVAL
            self.sync()

    def sync(self) -> None:
        for family in collect(self.manager):
            self._copy(family)

    def _metric(self, family: Metric, labelnames: tuple[str, ...]) -> Any:
        metric = self._metrics.get(family.name)
        if metric is not None:
            return metric
        base = family.name
        kind = family.type
        if kind == "counter":
            metric = Counter(base, family.documentation, labelnames, registry=None)
        elif kind == "gauge":
            short = base.removeprefix(NAMESPACE + "_")
            summed = short not in self._MAX_GAUGES and not short.startswith("cluster_")
            mode: Literal["livemax", "livesum"] = "livesum" if summed else "livemax"
            metric = Gauge(
                base, family.documentation, labelnames, registry=None, multiprocess_mode=mode
            )
        else:
            bounds = [float(s.labels["le"]) for s in family.samples if s.name.endswith("_bucket")]
            metric = Histogram(
                base, family.documentation, labelnames, registry=None, buckets=bounds
            )
        self._metrics[family.name] = metric
        return metric

    def _copy(self, family: Metric) -> None:
        if family.type == "histogram":
            self._copy_histogram(family)
            return
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labelnames = tuple(sample.labels)
            metric = self._metric(family, labelnames)
            child = metric.labels(*sample.labels.values()) if labelnames else metric
            if family.type == "counter":
                key = (sample.name, tuple(sample.labels.values()))
                delta = sample.value - self._last.get(key, 0.0)
                if delta > 0:
                    child.inc(delta)
                    self._last[key] = sample.value
            else:
                child.set(sample.value)

    def _copy_histogram(self, family: Metric) -> None:
        metric = self._metric(family, ())
        cumulative = [s.value for s in family.samples if s.name.endswith("_bucket")]
        total = next(s.value for s in family.samples if s.name.endswith("_sum"))
        previous = 0.0
        # prometheus_client keeps non-cumulative bucket values: one increment per bucket.
        for i, value in enumerate(cumulative):
            count = value - previous
            previous = value
            key: tuple[str, tuple[str, ...]] = (family.name + "_bucket", (str(i),))
            delta = count - self._last.get(key, 0.0)
            if delta > 0:
                metric._buckets[i].inc(delta)
                self._last[key] = count
        key = (family.name + "_sum", ())
        delta = total - self._last.get(key, 0.0)
        if delta > 0:
            metric._sum.inc(delta)
            self._last[key] = total


def _live(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process: alive
        return True
    return True


def sweep_dead_workers(path: str) -> list[int]:
    """Drop the live-gauge files of worker processes that no longer exist; their pids.

    uvicorn has no hook that runs when a worker dies, so the worker answering a scrape does
    this bookkeeping (prometheus_client's `mark_process_dead`). Counter and histogram files of
    dead workers stay: what they counted still counts.
    """
    dead: set[int] = set()
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid_text = os.path.basename(file).rsplit("_", 1)[-1].removesuffix(".db")
        if pid_text.isdigit() and not _live(int(pid_text)):
            dead.add(int(pid_text))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
    return sorted(dead)


class PrometheusExporter:
    """What the metrics route serves: this process's metrics, or every worker's."""

    def __init__(self, manager: Stabilizer) -> None:
        self.manager = manager
        self.directory = multiprocess_dir()
        self._sync: _MultiprocessSync | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        if self.directory is None:
            self.registry.register(StabilizerCollector(manager))
            # The process's own resident memory, CPU and file descriptors (Linux), as
            # prometheus_client's default registry has them.
            ProcessCollector(registry=self.registry)
        else:
            self._sync = _MultiprocessSync(manager)
            manager._periodic.append(self._sync.tick)

    def render(self) -> bytes:
        """The text exposition (format 0.0.4)."""
        if self._sync is None or self.directory is None:
            return generate_latest(self.registry)
        self._sync.sync()
        sweep_dead_workers(self.directory)
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path=self.directory)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

"""OpenTelemetry (extra `stabilizer-asgi[otel]`, `opentelemetry-api` only): the metrics core
through the OTel metrics API, and one span per connection.

`otel=True` in the config instruments the manager with the global meter and tracer providers
(whatever the app's OpenTelemetry SDK set up; without an SDK the API's no-op providers make it
free). To use other providers, call `instrument(manager, meter_provider=..., tracer_provider=...)`
yourself instead.

Counters and gauges are observed from the metrics core when the SDK collects (no cost per
frame); the RTT and broadcast-duration histograms are recorded as they happen, because OTel has
no observable histogram. The connection span starts when the app accepts and ends when the
connection is over; its attributes say whether it resumed a session, its close code and its
duration.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import SpanKind, TracerProvider
except ImportError as exc:  # pragma: no cover - exercised by the clean-install check
    raise ImportError(
        "OpenTelemetry support needs opentelemetry-api: pip install 'stabilizer-asgi[otel]'"
    ) from exc

from . import __version__

if TYPE_CHECKING:
    from .asgi.connection import Connection
    from .manager import Stabilizer

__all__ = ["Instrumentation", "instrument"]

SCOPE = "stabilizer_asgi"
SPAN_NAME = "stabilizer.connection"
_monotonic = time.monotonic

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Instrumentation:
    """The OTel instruments of one manager, and the spans of its open connections."""

    def __init__(
        self,
        manager: Stabilizer,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        *,
        traces: bool = True,
    ) -> None:
        self.manager = manager
        provider = meter_provider or otel_metrics.get_meter_provider()
        meter = provider.get_meter(SCOPE, __version__)
        m = manager.metrics

        def counter(name: str, unit: str, doc: str, read: Callable[[], float]) -> None:
            meter.create_observable_counter(name, [_one(read)], unit=unit, description=doc)

        def labelled(
            name: str,
            unit: str,
            doc: str,
            read: Callable[[], Iterable[tuple[dict[str, Any], float]]],
        ) -> None:
            meter.create_observable_counter(name, [_many(read)], unit=unit, description=doc)

        def gauge(name: str, unit: str, doc: str, read: Callable[[], float]) -> None:
            meter.create_observable_up_down_counter(name, [_one(read)], unit=unit, description=doc)

        c = m.counters
        gauge(
            "stabilizer.connections",
            "{connection}",
            "WebSocket connections open",
            lambda: manager._limits.total,
        )
        meter.create_observable_up_down_counter(
            "stabilizer.sessions",
            [
                _many(
                    lambda: [
                        ({"state": "connected"}, manager.count() - m.detached_sessions),
                        ({"state": "detached"}, m.detached_sessions),
                    ]
                )
            ],
            unit="{session}",
            description="Registered sessions by state",
        )
        counter(
            "stabilizer.frames.received", "{frame}", "Data frames received", lambda: m.frames_in
        )
        counter("stabilizer.frames.sent", "{frame}", "Data frames sent", lambda: m.frames_out)
        counter("stabilizer.bytes.received", "By", "Payload bytes received", lambda: m.bytes_in)
        counter("stabilizer.bytes.sent", "By", "Payload bytes sent", lambda: m.bytes_out)
        counter(
            "stabilizer.connections.accepted",
            "{connection}",
            "Connections accepted",
            lambda: c["connections_accepted"],
        )
        labelled(
            "stabilizer.connections.closed",
            "{connection}",
            "Connections closed, by close code",
            lambda: [({"code": code}, n) for code, n in m.closes.items()],
        )
        labelled(
            "stabilizer.connections.rejected",
            "{connection}",
            "Handshakes denied, by reason",
            lambda: [({"reason": r}, n) for r, n in m.prefixed("rejected_").items()],
        )
        labelled(
            "stabilizer.resumes",
            "{resume}",
            "Resume requests by result and reason",
            lambda: (
                [({"result": "resumed", "reason": "none"}, c["resumed"])]
                + [
                    ({"result": "failed", "reason": r}, n)
                    for r, n in m.prefixed("resume_failed_").items()
                ]
            ),
        )
        for key, name, doc in (
            ("pings", "stabilizer.heartbeat.pings", "Heartbeat pings sent"),
            ("heartbeat_timeouts", "stabilizer.heartbeat.timeouts", "Heartbeat timeouts"),
            ("broadcasts", "stabilizer.broadcasts", "broadcast() calls"),
            ("slow_consumer_drops", "stabilizer.slow_consumer.drops", "Slow-consumer drops"),
            ("evictions", "stabilizer.evictions", "Sessions evicted for memory"),
            ("expired", "stabilizer.sessions.expired", "Detached sessions expired"),
        ):
            counter(name, "1", doc, lambda key=key: c.get(key, 0))  # type: ignore[misc]
        gauge(
            "stabilizer.replay.frames", "{frame}", "Frames held for replay", lambda: m.replay_frames
        )
        gauge("stabilizer.memory", "By", "Bytes accounted to sessions", lambda: manager.memory)
        gauge("stabilizer.draining", "1", "1 while draining", lambda: int(manager.draining))
        rtt = meter.create_histogram(
            "stabilizer.heartbeat.rtt", unit="s", description="Heartbeat round-trip time"
        )
        broadcast = meter.create_histogram(
            "stabilizer.broadcast.duration", unit="s", description="broadcast() call duration"
        )
        record = {"rtt": rtt.record, "broadcast": broadcast.record}

        def listener(name: str, value: float) -> None:
            record[name](value)

        m.listeners.append(listener)
        self._listener = listener
        self._tracer = (
            (tracer_provider or otel_trace.get_tracer_provider()).get_tracer(SCOPE, __version__)
            if traces
            else None
        )
        # One span per open connection; bounded by the connections themselves.
        self._spans: dict[Connection, tuple[Any, float]] = {}

    def opened(self, conn: Connection, resumed: bool) -> None:
        """The app accepted `conn`: its span starts."""
        if self._tracer is None:
            return
        session = conn.session
        span = self._tracer.start_span(
            SPAN_NAME,
            kind=SpanKind.SERVER,
            attributes={
                "stabilizer.session.id": session.id,
                "stabilizer.opted_in": session.opted_in,
                "stabilizer.resumed": resumed,
            },
        )
        self._spans[conn] = (span, _monotonic())

    def closed(self, conn: Connection, code: int | None) -> None:
        """`conn` is over: its span ends with the close code and the duration."""
        entry = self._spans.pop(conn, None)
        if entry is None:
            return
        span, started = entry
        span.set_attribute("websocket.close.code", 1006 if code is None else code)
        span.set_attribute("stabilizer.duration", round(_monotonic() - started, 6))
        span.end()


def _one(read: Callable[[], float]) -> Callback:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read())]

    return callback


def _many(read: Callable[[], Iterable[tuple[dict[str, Any], float]]]) -> Callback:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for attributes, value in read()]

    return callback


def instrument(
    manager: Stabilizer,
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    traces: bool = True,
) -> Instrumentation:
    """Report `manager`'s metrics through OpenTelemetry and trace its connections.

    Providers default to the global ones. Returns the instrumentation (also kept on the
    manager, which calls it as connections open and close).
    """
    inst = Instrumentation(manager, meter_provider, tracer_provider, traces=traces)
    manager._otel = inst
    return inst

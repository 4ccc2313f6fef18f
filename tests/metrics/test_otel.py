"""OpenTelemetry: the same metrics through the OTel metrics API and a span per connection,
read back with the SDK's in-memory metric reader and span exporter."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.testclient import TestClient, WebSocketDenialResponse

from stabilizer_asgi import ConfigError, StabilizerConfig
from stabilizer_asgi.otel import SPAN_NAME, instrument
from tests.ops.support import LOOPBACK, answer_first_ping, control, stabilized, wait_until

ClientFactory = Callable[..., TestClient]


class Telemetry:
    """SDK providers whose metrics and spans stay in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.exporter = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.exporter))

    def points(self) -> dict[str, list[Any]]:
        """Metric name -> its data points, collected now."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out

    def value(self, name: str, **attributes: Any) -> Any:
        for point in self.points()[name]:
            if dict(point.attributes or {}) == attributes:
                return point.value
        raise KeyError((name, attributes))


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.meters.shutdown()
    t.tracers.shutdown()


def test_metrics_reach_the_otel_reader(client_factory: ClientFactory, telemetry: Telemetry) -> None:
    """Connections, sessions, frames, bytes, closes by code and rejections are observed
    through the OTel metrics API with the same values as the stats route."""
    app = stabilized(max_connections=1)
    instrument(app.manager, meter_provider=telemetry.meters, tracer_provider=telemetry.tracers)
    with client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo") as ws:
            ws.send_text("hello")
            assert ws.receive_text() == "hello"
            assert telemetry.value("stabilizer.connections") == 1
            assert telemetry.value("stabilizer.sessions", state="connected") == 1
            with pytest.raises(WebSocketDenialResponse), client.websocket_connect("/echo"):
                pass  # pragma: no cover - over max_connections: refused
        wait_until(lambda: app.manager.metrics.closes.get("1000") == 1)
        stats = client.get("/_stabilizer/stats").json()
    assert telemetry.value("stabilizer.connections") == 0
    assert telemetry.value("stabilizer.frames.received") == stats["frames"]["in"] == 1
    assert telemetry.value("stabilizer.bytes.sent") == stats["bytes"]["out"] == 5
    assert telemetry.value("stabilizer.connections.closed", code="1000") == 1
    assert telemetry.value("stabilizer.connections.rejected", reason="capacity") == 1
    assert telemetry.value("stabilizer.resumes", result="failed", reason="gap") == 0


def test_rtt_histogram_is_recorded(client_factory: ClientFactory, telemetry: Telemetry) -> None:
    """Each heartbeat round trip is recorded in the OTel RTT histogram, in seconds."""
    app = stabilized(heartbeat_interval=0.02, heartbeat_timeout=2.0)
    instrument(app.manager, meter_provider=telemetry.meters, tracer_provider=telemetry.tracers)
    client = client_factory(app, client=LOOPBACK)
    with client, client.websocket_connect("/echo?stabilizer=1") as ws:
        answer_first_ping(ws)
        wait_until(lambda: app.manager.metrics.rtt.count == 1)
    [point] = telemetry.points()["stabilizer.heartbeat.rtt"]
    assert point.count == 1 and 0 < point.sum < 2.0


def test_one_span_per_connection_with_resume_close_code_and_duration(
    client_factory: ClientFactory, telemetry: Telemetry
) -> None:
    """A connection's span says whether it resumed, its close code and its duration; a
    resumed connection is a second span on the same session."""
    app = stabilized(secret="k" * 32)
    instrument(app.manager, meter_provider=telemetry.meters, tracer_provider=telemetry.tracers)
    with client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?stabilizer=1") as ws:
            hello = control(ws.receive_text())
            assert hello is not None
            ws.close(1006)
        wait_until(lambda: len(telemetry.exporter.get_finished_spans()) == 1)
        url = f"/echo?stabilizer=1&stabilizer_resume={hello['token']}&stabilizer_ack=0"
        with client.websocket_connect(url) as ws:
            again = control(ws.receive_text())
            assert again is not None and again["resumed"] is True
            ws.close(1000)
        wait_until(lambda: len(telemetry.exporter.get_finished_spans()) == 2)
    first, second = telemetry.exporter.get_finished_spans()
    for span in (first, second):
        assert span.name == SPAN_NAME
        assert span.attributes is not None
        assert span.attributes["stabilizer.session.id"] == hello["session"]
        assert 0 <= span.attributes["stabilizer.duration"] < 5
    assert first.attributes is not None and second.attributes is not None
    assert first.attributes["stabilizer.resumed"] is False
    assert first.attributes["websocket.close.code"] == 1006
    assert second.attributes["stabilizer.resumed"] is True
    assert second.attributes["websocket.close.code"] == 1000


def test_otel_setting_uses_the_global_providers(
    client_factory: ClientFactory, telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """otel=True instruments the manager with the global providers; it is off by default."""
    monkeypatch.setattr(otel_metrics, "get_meter_provider", lambda: telemetry.meters)
    monkeypatch.setattr(otel_trace, "get_tracer_provider", lambda: telemetry.tracers)
    assert StabilizerConfig().otel is False
    assert stabilized().manager._otel is None
    app = stabilized(otel=True)
    with client_factory(app, client=LOOPBACK) as client, client.websocket_connect("/echo") as ws:
        ws.send_text("x")
        assert ws.receive_text() == "x"
    wait_until(lambda: len(telemetry.exporter.get_finished_spans()) == 1)
    assert telemetry.value("stabilizer.frames.sent") == 1
    with pytest.raises(ConfigError, match="otel"):
        StabilizerConfig(otel="yes")  # type: ignore[arg-type]

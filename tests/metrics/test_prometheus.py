"""The Prometheus exposition, read by prometheus-client's own parser through real uvicorn,
alone and under `stabilizer-asgi serve --workers 2` (multiprocess mode)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from stabilizer_asgi import logging as slog
from stabilizer_asgi.prometheus import StabilizerCollector, sweep_dead_workers
from tests.ops.support import LOOPBACK, REMOTE, AppCalls, control, stabilized
from tests.ops.test_cli import APP, Sidecar

from ..helpers import await_until

METRICS = "/_stabilizer/metrics"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels), via prometheus-client's parser."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_exposition_through_uvicorn_reads_back_with_the_reference_parser(
    uvicorn_server: Any, anyio_backend: str
) -> None:
    """Through real uvicorn, the exposition parses and reports connections, sessions, frames,
    bytes, closes by code, rejections and the RTT histogram, every counter from zero."""
    server = uvicorn_server(stabilized(max_connections=2, secret="k" * 32))
    first = await scrape(server.http(METRICS))
    assert value(first, "stabilizer_connections") == 0
    assert value(first, "stabilizer_frames_received_total") == 0
    assert value(first, "stabilizer_connections_rejected_total", reason="capacity") == 0
    assert value(first, "stabilizer_resumes_total", result="failed", reason="gap") == 0
    assert value(first, "stabilizer_heartbeat_rtt_seconds_bucket", le="0.0001") == 0
    assert value(first, "stabilizer_heartbeat_rtt_seconds_bucket", le="10.0") == 0
    async with connect(server.url("/echo")) as a, connect(server.url("/echo?stabilizer=1")) as b:
        hello = control(await b.recv())
        assert hello is not None and hello["t"] == "hello"
        for ws in (a, b):
            await ws.send("hello")
            assert await ws.recv() == "hello"
        with pytest.raises(Exception):  # noqa: B017 - the third handshake is refused (503)
            async with connect(server.url("/echo")):
                pass  # pragma: no cover
        during = await scrape(server.http(METRICS))
    assert value(during, "stabilizer_connections") == 2
    assert value(during, "stabilizer_sessions", state="connected") == 2
    assert value(during, "stabilizer_frames_received_total") == 2
    assert value(during, "stabilizer_bytes_sent_total") == 10
    assert value(during, "stabilizer_connections_rejected_total", reason="capacity") == 1
    assert value(during, "stabilizer_connections_accepted_total") == 2

    async def closed() -> bool:
        after = await scrape(server.http(METRICS))
        return after.get(("stabilizer_connections_closed_total", (("code", "1000"),))) == 2

    await await_until(closed, 5, "both closes counted")
    after = await scrape(server.http(METRICS))
    assert value(after, "stabilizer_connections") == 0
    assert value(after, "stabilizer_frames_received_total") == 2  # monotonic


def test_register_into_the_apps_own_registry(client_factory: Callable[..., TestClient]) -> None:
    """A StabilizerCollector puts our metrics next to the app's own in its registry."""
    app = stabilized()
    registry = CollectorRegistry()
    orders = Counter("orders", "the app's own metric", registry=registry)
    registry.register(StabilizerCollector(app.manager))
    with client_factory(app, client=LOOPBACK) as client, client.websocket_connect("/echo") as ws:
        ws.send_text("x")
        assert ws.receive_text() == "x"
        orders.inc()
        samples = parse(generate_latest(registry).decode())
    assert value(samples, "orders_total") == 1
    assert value(samples, "stabilizer_connections") == 1
    assert value(samples, "stabilizer_frames_sent_total") == 1


def test_metrics_route_needs_admin_access_and_can_be_disabled(
    client_factory: Callable[..., TestClient],
) -> None:
    """The metrics route follows the stats route's access rules (no token: direct loopback
    only, never through a proxy; else the bearer token); metrics_path=None hands the path to
    the app."""
    with client_factory(stabilized(), client=REMOTE) as client:
        assert client.get(METRICS).status_code == 403
    with client_factory(stabilized(), client=LOOPBACK) as client:
        assert client.get(METRICS).status_code == 200
        proxied = client.get(METRICS, headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 403
    with client_factory(stabilized(admin_token="t0ken"), client=REMOTE) as client:
        assert client.get(METRICS).status_code == 401
        ok = client.get(METRICS, headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200 and "stabilizer_connections" in ok.text
        assert client.post(METRICS).status_code == 405
    calls = AppCalls()
    with client_factory(stabilized(calls, metrics_path=None), client=LOOPBACK) as client:
        assert client.get(METRICS).text == "app"
    assert calls.paths == [METRICS]


def test_labels_are_bounded() -> None:
    """No label carries a session, client or group id: every label name is one of a fixed
    few, whatever the sessions are called."""
    app = stabilized()
    with TestClient(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?client_id=alice-123") as ws:
            ws.send_text("x")
            ws.receive_text()
        samples = parse(client.get(METRICS).text)
    labels = {name for _, pairs in samples for name, _ in pairs}
    assert labels <= {"state", "code", "reason", "result", "event", "le", "node"}
    assert not any("alice" in v for _, pairs in samples for _, v in pairs)


async def open_until_both_workers(sidecar: Sidecar) -> dict[int, list[ClientConnection]]:
    """Opted-in clients, opened until each of the two workers holds at least two."""
    by_pid: dict[int, list[ClientConnection]] = {}
    for _ in range(100):
        ws = await connect(sidecar.url("/echo?stabilizer=1"), ping_interval=None)
        hello = control(await ws.recv())
        assert hello is not None
        await ws.send("one")
        assert await ws.recv() == "one"

        def connected(session: str = hello["session"]) -> list[dict[str, Any]]:
            return [e for e in sidecar.events(slog.CONNECTED) if e["session"] == session]

        await await_until(connected, 5, "the connected log line")
        by_pid.setdefault(connected()[0]["process"], []).append(ws)
        if len(by_pid) == 2 and all(len(v) >= 2 for v in by_pid.values()):
            return by_pid
    raise AssertionError(f"connections did not reach both workers: {by_pid}")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_two_workers_sum_and_a_killed_worker_leaves_no_stale_gauge(
    anyio_backend: str,
) -> None:
    """Under `serve --workers 2` a scrape sums both workers; after one is killed (-9) its
    connections leave the gauges while its counted frames stay in the counters."""
    sidecar = Sidecar(APP, "--factory", "--workers", "2")
    try:
        for _ in range(1000):
            ready = [x for x in sidecar.lines if x["message"] == "Application startup complete."]
            if len(ready) == 2:
                break
            await asyncio.sleep(0.02)
        by_pid = await open_until_both_workers(sidecar)
        total = sum(len(v) for v in by_pid.values())
        url = sidecar.http(METRICS)

        async def sums(connections: int, frames: int) -> bool:
            samples = await scrape(url)
            return (
                value(samples, "stabilizer_connections") == connections
                and value(samples, "stabilizer_sessions", state="connected") == connections
                and value(samples, "stabilizer_frames_received_total") == frames
            )

        await await_until(lambda: sums(total, total), 10, "both workers summed")
        victim, survivor = sorted(by_pid, key=lambda pid: len(by_pid[pid]))
        os.kill(victim, signal.SIGKILL)
        for ws in by_pid[victim]:
            with pytest.raises(ConnectionClosed):
                with anyio.fail_after(10):
                    while True:  # control frames (acks) may still be in flight
                        await ws.recv()
        remaining = len(by_pid[survivor])
        await await_until(lambda: sums(remaining, total), 10, "the dead worker's gauges gone")
        for ws in by_pid[survivor]:
            await ws.close()
    finally:
        sidecar.stop()


def test_sweep_removes_only_dead_workers_live_gauges(tmp_path: Any) -> None:
    """Live-gauge files of a process that no longer exists are removed; a live process's
    files and every counter file stay."""
    dead = 2**22 + 12345  # above the default pid_max: no such process
    names = [
        f"gauge_livesum_{dead}.db",
        f"gauge_livemax_{dead}.db",
        f"counter_{dead}.db",
        f"gauge_livesum_{os.getpid()}.db",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert sweep_dead_workers(str(tmp_path)) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{dead}.db", f"gauge_livesum_{os.getpid()}.db"]
    )


def test_cluster_section_becomes_per_node_gauges_and_counters() -> None:
    """In cluster mode the stats' cluster section is exposed per node (bounded by the nodes),
    with its health and the backend's counters."""
    app = stabilized()
    manager = app.manager
    plain_stats = manager.stats

    def clustered() -> dict[str, Any]:
        cluster = {
            "node": "a",
            "healthy": False,
            "problem": "probe not answered",
            "connections": 7,
            "nodes": [
                {"id": "a", "connections": 3, "sessions": {"connected": 3, "detached": 2}},
                {"id": "b", "connections": 4, "groups": 6},
            ],
            "counters": {"gaps": 2, "probe_failures": 5},
        }
        return {**plain_stats(), "cluster": cluster}

    manager.stats = clustered  # type: ignore[method-assign]
    with TestClient(app, client=LOOPBACK) as client:
        samples = parse(client.get(METRICS).text)
    assert value(samples, "stabilizer_cluster_node_connections", node="a") == 3
    assert value(samples, "stabilizer_cluster_node_connections", node="b") == 4
    assert value(samples, "stabilizer_cluster_node_sessions", node="a", state="detached") == 2
    assert value(samples, "stabilizer_cluster_node_groups", node="b") == 6
    assert value(samples, "stabilizer_cluster_healthy") == 0
    assert value(samples, "stabilizer_cluster_connections") == 7
    assert value(samples, "stabilizer_cluster_events_total", event="gaps") == 2
    assert value(samples, "stabilizer_cluster_events_total", event="probe_failures") == 5

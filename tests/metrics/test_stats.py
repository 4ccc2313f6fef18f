"""The stats document read from the metrics core: monotonic totals, closes by code, resumes,
detached sessions and replay gauges, RTTs, with no walk over sessions."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

from stabilizer_asgi.core.metrics import History
from stabilizer_asgi.core.registry import Registry
from tests.ops.support import LOOPBACK, answer_first_ping, control, stabilized, wait_until

STATS = "/_stabilizer/stats"
ClientFactory = Callable[..., TestClient]


def stats(client: TestClient) -> dict[str, Any]:
    response = client.get(STATS)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def test_frame_and_byte_totals_do_not_go_back_when_sessions_end(
    client_factory: ClientFactory,
) -> None:
    """Frames and bytes in/out are monotonic totals: they keep counting ended sessions."""
    with client_factory(stabilized(), client=LOOPBACK) as client:
        for _ in range(3):
            with client.websocket_connect("/echo") as ws:
                ws.send_text("hello")
                assert ws.receive_text() == "hello"
        wait_until(lambda: stats(client)["sessions"]["connected"] == 0)
        body = stats(client)
    assert body["frames"] == {"in": 3, "out": 3}
    assert body["bytes"] == {"in": 15, "out": 15}
    assert body["counters"]["connections_accepted"] == 3
    assert {k: v for k, v in body["closes"].items() if v} == {"1000": 3}
    assert body["closes"]["1012"] == 0  # the usual codes are present from the start


def test_closes_are_counted_by_the_code_each_client_saw(client_factory: ClientFactory) -> None:
    """A client's own close, a middleware close (1009) and an app close are counted by code."""
    with client_factory(stabilized(max_message_size=4), client=LOOPBACK) as client:
        with client.websocket_connect("/echo") as ws:
            ws.send_text("too long")
            message = ws.receive()
            assert message["type"] == "websocket.close" and message["code"] == 1009
        with client.websocket_connect("/echo") as ws:
            ws.close(4001)
        wait_until(lambda: sum(stats(client)["closes"].values()) == 2)
        closes = stats(client)["closes"]
        assert {k: v for k, v in closes.items() if v} == {"1009": 1, "4001": 1}


def test_detached_sessions_and_resumes_are_counted(client_factory: ClientFactory) -> None:
    """A dropped opted-in session shows as detached (with its held frames) until it resumes;
    a resume with a bad token counts as failed with its reason."""
    app = stabilized(secret="k" * 32)
    manager = app.manager
    with client_factory(app, client=LOOPBACK) as client:
        with client.websocket_connect("/echo?stabilizer=1") as ws:
            hello = control(ws.receive_text())
            assert hello is not None and hello["t"] == "hello"
            ws.send_text("one")
            assert ws.receive_text() == "one"
            ws.close(1006)
        wait_until(lambda: stats(client)["sessions"]["detached"] == 1)
        body = stats(client)
        assert body["sessions"]["connected"] == 0
        assert body["replay"]["frames"] == 1
        url = f"/echo?stabilizer=1&stabilizer_resume={hello['token']}&stabilizer_ack=1"
        with client.websocket_connect(url) as ws:
            again = control(ws.receive_text())
            assert again is not None and again["resumed"] is True
            wait_until(
                lambda: stats(client)["sessions"] == {"connected": 1, "detached": 0, "closed": 0}
            )
            assert stats(client)["replay"]["frames"] == 0
        with client.websocket_connect(
            "/echo?stabilizer=1&stabilizer_resume=bogus&stabilizer_ack=0"
        ) as ws:
            refused = control(ws.receive_text())
            assert refused is not None and refused["resumed"] is False
        wait_until(lambda: manager.count() == 0)
        body = stats(client)
    assert body["resumes"]["resumed"] == 1
    assert body["resumes"]["failed"]["invalid"] == 1
    assert body["counters"]["detached"] == 1
    assert body["sessions"] == {"connected": 0, "detached": 0, "closed": 0}


def test_stats_never_walks_the_sessions(
    client_factory: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stats() reads the metrics core only: its cost does not grow with the sessions."""

    def no_walk(self: Registry) -> Any:
        raise AssertionError("stats walked the sessions")

    client = client_factory(stabilized(), client=LOOPBACK)
    with client, client.websocket_connect("/echo") as ws:
        ws.send_text("x")
        assert ws.receive_text() == "x"
        monkeypatch.setattr(Registry, "snapshot", no_walk)
        monkeypatch.setattr(Registry, "__iter__", no_walk)
        body = stats(client)
        monkeypatch.undo()
    assert body["sessions"]["connected"] == 1 and body["frames"] == {"in": 1, "out": 1}


def test_rtt_percentiles_are_rounded_seconds(client_factory: ClientFactory) -> None:
    """After a heartbeat round trip the RTT percentiles are seconds rounded to 1 µs."""
    app = stabilized(heartbeat_interval=0.02, heartbeat_timeout=2.0)
    client = client_factory(app, client=LOOPBACK)
    with client, client.websocket_connect("/echo?stabilizer=1") as ws:
        answer_first_ping(ws)
        wait_until(lambda: stats(client)["heartbeat"]["rtt"]["count"] == 1)
        heartbeat = stats(client)["heartbeat"]
    for key in ("rtt_p50", "rtt_p90", "rtt_p99"):
        value = heartbeat[key]
        assert isinstance(value, float) and 0 < value < 2.0
        assert value == round(value, 6) and len(repr(value)) <= 10
    assert heartbeat["pings"] >= 1


def test_broadcast_frames_count_in_the_totals(client_factory: ClientFactory) -> None:
    """Every frame a broadcast hands to a recipient counts once in frames/bytes out."""
    client = client_factory(stabilized(), client=LOOPBACK)
    with client, client.websocket_connect("/echo") as a, client.websocket_connect("/echo") as b:
        assert client.post("/broadcast?n=3&size=10").json() == {"failed": 0}
        for ws in (a, b):
            assert [ws.receive_text() for _ in range(3)] == ["x" * 10] * 3
        body = stats(client)
    assert body["frames"]["out"] == 6 and body["bytes"]["out"] == 60
    assert body["broadcasts"] == 3 and body["broadcast_duration"]["count"] == 3


def test_history_keeps_recent_samples_bounded(client_factory: ClientFactory) -> None:
    """With ?history=1 the stats carry the recent samples (time, connections, sessions,
    totals), taken by the housekeeper, never more than the ring holds."""
    app = stabilized(heartbeat_interval=0.04, heartbeat_timeout=0.04)
    app.manager.history = History(interval=0.01, size=5)
    client = client_factory(app, client=LOOPBACK)
    with client, client.websocket_connect("/echo") as ws:
        ws.send_text("x")
        assert ws.receive_text() == "x"
        wait_until(lambda: len(app.manager.history.samples) == 5)
        body = client.get(STATS + "?history=1").json()
        assert "history" not in stats(client)
    history = body["history"]
    assert history["fields"] == [
        "t",
        "connections",
        "connected",
        "detached",
        "frames_in",
        "frames_out",
    ]
    assert len(history["samples"]) == 5
    last = dict(zip(history["fields"], history["samples"][-1], strict=True))
    assert last["connections"] == 1 and last["connected"] == 1 and last["frames_in"] == 1
    times = [s[0] for s in history["samples"]]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 60

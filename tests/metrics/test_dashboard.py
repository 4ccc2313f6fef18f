"""The live dashboard page in headless Chromium against real uvicorn: it renders, follows the
traffic, and shows every node of a cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from stabilizer_asgi.core.metrics import History
from tests.ops.support import stabilized

from ..helpers import await_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # playwright's async API runs on asyncio


DASHBOARD = "/_stabilizer/"


async def text(page: Any, element_id: str) -> str:
    return str(await page.inner_text(f"#{element_id}"))


async def samples(page: Any) -> int:
    return int(await page.evaluate("window.dashboard.samples"))


async def test_dashboard_renders_and_follows_the_traffic(
    uvicorn_server: Any, page: Any, screenshot: Callable[..., Any]
) -> None:
    """The page loads with no error, charts the minutes before it was opened, polls the
    stats, and shows connections, messages per second, RTT percentiles, closes by code and
    resumes as they happen."""
    app = stabilized(secret="k" * 32, heartbeat_interval=0.05, heartbeat_timeout=2.0)
    app.manager.history = History(interval=0.02, size=100)
    server = uvicorn_server(app)
    await await_until(lambda: len(app.manager.history.samples) >= 10, 5, "some history")
    await page.goto(server.http(DASHBOARD + "?interval=200"))
    await await_until(lambda: samples(page), 5, "a first sample")
    assert await page.evaluate("window.dashboard.preloaded") >= 10
    assert await text(page, "status") == "healthy"
    assert await text(page, "connections") == "0"
    async with connect(server.url("/echo?stabilizer=1")) as a, connect(server.url("/echo")) as b:
        await a.recv()  # hello
        await await_until(
            lambda: page.evaluate("document.getElementById('connections').textContent === '2'"),
            5,
            "two connections shown",
        )
        for _ in range(50):
            await b.send("x")
            assert await b.recv() == "x"
        await await_until(
            lambda: page.evaluate("document.getElementById('frames-in').textContent === '50'"),
            5,
            "fifty frames in",
        )
        # The opted-in client answers pings (the websockets client does not: answer by hand).
        for _ in range(3):
            frame = await a.recv()
            assert isinstance(frame, str) and frame.startswith("\x1e")
            await a.send(frame.replace('"t":"ping"', '"t":"pong"'))
        await await_until(
            lambda: page.evaluate("document.getElementById('rtt-p50').textContent !== '–'"),
            5,
            "an RTT shown",
        )
    await await_until(
        lambda: page.evaluate("document.querySelector('#closes').textContent.includes('1000')"),
        5,
        "the closes by code",
    )
    assert await text(page, "connections") == "0"
    rtt = await text(page, "rtt-p50")
    assert rtt.endswith(("µs", "ms")), rtt
    assert not await page.is_visible("#cluster-kv")  # a single process: no cluster figure
    assert "resumed" in await text(page, "resumes")
    shot = await screenshot(page, "dashboard")
    assert shot.stat().st_size > 10_000


async def test_dashboard_shows_every_cluster_node(
    uvicorn_server: Any, page: Any, screenshot: Callable[..., Any]
) -> None:
    """With a cluster section in the stats, the page lists each node and its connections, a
    node that joins later appears on the next poll, and the status says degraded (with the
    problem) or draining when the stats say so."""
    app = stabilized()
    manager = app.manager
    nodes = [{"id": "node-a", "connections": 3}]
    state: dict[str, Any] = {"healthy": True, "problem": None, "draining": False}
    plain_stats = manager.stats

    def clustered() -> dict[str, Any]:
        cluster = {
            "node": "node-a",
            "healthy": state["healthy"],
            "problem": state["problem"],
            "connections": sum(int(n["connections"]) for n in nodes),
            "nodes": list(nodes),
            "counters": {"gaps": 0, "reconnects": 1},
        }
        return {**plain_stats(), "cluster": cluster, "draining": state["draining"]}

    manager.stats = clustered  # type: ignore[method-assign]
    server = uvicorn_server(app)
    await page.goto(server.http(DASHBOARD + "?interval=200"))
    await await_until(lambda: samples(page), 5, "a first sample")
    assert "node-a" in await text(page, "nodes")
    assert "node-b" not in await text(page, "nodes")
    nodes.append({"id": "node-b", "connections": 5})
    await await_until(
        lambda: page.evaluate("document.querySelector('#nodes').textContent.includes('node-b')"),
        5,
        "the second node",
    )
    rows = await page.evaluate(
        "[...document.querySelectorAll('#nodes tr')].map((tr) => tr.textContent)"
    )
    assert len(rows) == 2
    assert "node-a" in rows[0] and "this node" in rows[0] and rows[0].endswith("3")
    assert "node-b" in rows[1] and rows[1].endswith("5")
    assert await text(page, "cluster-total") == "8 on 2 nodes"
    assert await page.is_visible("#cluster-kv")
    await screenshot(page, "dashboard-cluster")
    state.update(healthy=False, problem="redis unreachable")
    await await_until(
        lambda: page.evaluate("document.getElementById('status').textContent === 'degraded'"),
        5,
        "degraded shown",
    )
    assert await text(page, "error") == "redis unreachable"
    state.update(draining=True)
    await await_until(
        lambda: page.evaluate("document.getElementById('status').textContent === 'draining'"),
        5,
        "draining shown",
    )
    assert await text(page, "drain") == "draining"


async def test_dashboard_needs_admin_access(uvicorn_server: Any) -> None:
    """The page follows the admin rules: without a token only for a direct loopback request
    (not through a proxy), with one only for its bearer."""
    open_server = uvicorn_server(stabilized())
    async with httpx.AsyncClient() as http:
        assert (await http.get(open_server.http(DASHBOARD))).status_code == 200
        proxied = await http.get(open_server.http(DASHBOARD), headers={"Via": "1.1 nginx"})
        assert proxied.status_code == 403
    server = uvicorn_server(stabilized(admin_token="t0ken"))
    async with httpx.AsyncClient() as http:
        assert (await http.get(server.http(DASHBOARD))).status_code == 401
        ok = await http.get(server.http(DASHBOARD), headers={"Authorization": "Bearer t0ken"})
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in ok.headers["content-security-policy"]
    assert "http://" not in ok.text and "https://" not in ok.text  # nothing from a CDN

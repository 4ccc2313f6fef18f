"""The browser client in real headless Chromium, against a real uvicorn server.

Chromium is Debian's (`/usr/bin/chromium`), driven by playwright; no browser is downloaded.
In CI (CI=true) a missing chromium fails these tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require_tool

from ..helpers import await_until
from .support import RECEIVED, SESSIONS, TcpProxy, break_line, make_server_app

pytestmark = pytest.mark.anyio

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAST = {"backoffBase": 20, "backoffCap": 100, "pingInterval": 250, "pingTimeout": 500}

# Page-side harness: one socket, every event recorded on `window`, and a sender that keeps
# numbering its frames until told to stop.
HARNESS = """async ([url, options]) => {
  const sock = new window.StabilizerSocket(url, options);
  Object.assign(window, {
    sock, got: [], sent: [], states: [], resyncs: [], closes: [], stop: false,
  });
  sock.addEventListener("message", (event) => window.got.push(event.data));
  sock.addEventListener("statechange", () => window.states.push(sock.state));
  sock.addEventListener("resync", (event) => window.resyncs.push({
    reason: event.reason, oldSessionId: event.oldSessionId, newSessionId: event.newSessionId,
  }));
  sock.addEventListener("close", (event) => window.closes.push([event.code, event.reason]));
  await new Promise((resolve) => sock.addEventListener("open", resolve, { once: true }));
  return sock.sessionId;
}"""

SENDER = """() => {
  window.sending = (async () => {
    while (!window.stop) {
      const text = "c" + (window.sent.length + 1);
      window.sent.push(text);
      await window.sock.send(text);
      if (window.sent.length % 5 === 0) await new Promise((r) => setTimeout(r, 3));
    }
  })();
}"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def chromium_page(tmp_path: Path, **options: Any) -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium profile (`options`: more of playwright's persistent
    context options); fails the test on any uncaught page error."""
    chromium = require_tool("chromium")
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            tmp_path / "profile",
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            **options,
        )
        try:
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
        finally:
            await context.close()
    assert errors == []


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    """A page in a fresh headless Chromium profile; fails the test on any uncaught page error."""
    async with chromium_page(tmp_path) as page:
        yield page


async def open_page(page: Any, server: Any) -> None:
    await page.goto(server.http("/"))
    await page.wait_for_function("window.moduleLoaded === true")


async def test_browser_unit_suite_in_fake_time(uvicorn_server: Any, page: Any) -> None:
    """The browser client's protocol logic, with a fake clock and a scripted fake WebSocket:
    opt-in, escaping, pong and acks, pinging a silent server, full-jitter backoff and
    max_attempts, resume and resend, resync, reconnect hints, the bounded send buffer, close."""
    server = uvicorn_server(make_server_app())
    await open_page(page, server)
    suite = (Path(__file__).parent / "browser_unit.js").read_text()
    failures = await page.evaluate(suite)
    assert failures == []


async def test_client_js_is_served_as_a_module(uvicorn_server: Any) -> None:
    """The middleware serves the module with a JavaScript content type, exporting the class."""
    server = uvicorn_server(make_server_app())
    async with httpx.AsyncClient() as http:
        response = await http.get(server.http("/_stabilizer/client.js"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "export class StabilizerSocket" in response.text


async def test_browser_every_frame_once_in_order_across_breaks(
    uvicorn_server: Any, page: Any
) -> None:
    """In Chromium, through aborted TCP connections, a black-holed one (found by the page's
    pings) and server 1012 closes, every frame arrives exactly once and in order, both ways,
    on one session."""
    server = uvicorn_server(
        make_server_app(heartbeat_interval=5.0, heartbeat_timeout=5.0, replay_buffer_messages=100)
    )
    rng = random.Random(11)
    pushed: list[str] = []
    await open_page(page, server)
    async with TcpProxy(server.port) as proxy, httpx.AsyncClient() as http:
        sid = await page.evaluate(HARNESS, [proxy.url("/ws"), FAST])

        async def push(count: int) -> None:
            start = len(pushed) + 1
            url = server.http(f"/push?sid={sid}&start={start}&count={count}")
            assert (await http.post(url)).json() == [True] * count
            pushed.extend(f"s{i}" for i in range(start, start + count))

        async def reconnects() -> int:
            script = "window.states.filter((s) => s === 'reconnecting').length"
            return int(await page.evaluate(script))

        async def until_reconnected(before: int) -> None:
            async def dropped() -> bool:
                return await reconnects() > before

            await await_until(dropped, 5, "the page noticed the drop")
            await await_until(
                lambda: page.evaluate("window.sock.state === 'open'"), 5, "the page resumed"
            )

        await page.evaluate(SENDER)
        for round_ in range(6):
            await push(40)
            await asyncio.sleep(rng.uniform(0, 0.02))
            before = await reconnects()
            await break_line(round_, proxy, http, server.http(f"/kick?sid={sid}"))
            await until_reconnected(before)
        await push(40)
        await page.evaluate("window.stop = true; window.sending")
        sent = await page.evaluate("window.sent")

        async def all_pushed() -> bool:
            return int(await page.evaluate("window.got.length")) >= len(pushed)

        await await_until(all_pushed, 10, "every pushed frame in the page")
        await await_until(lambda: len(RECEIVED[sid]) >= len(sent), 10, "every sent frame")
        assert await page.evaluate("window.got") == pushed
        assert RECEIVED[sid] == sent
        assert len(sent) > 100
        assert await page.evaluate("[window.sock.sessionId, window.resyncs]") == [sid, []]
        assert SESSIONS.count((sid, True)) >= 6
        await page.evaluate("window.sock.close()")
        assert await page.evaluate("[window.sock.state, window.closes]") == [
            "closed",
            [[1000, ""]],
        ]


async def test_browser_resync_after_the_server_lost_its_sessions(
    uvicorn_server: Any, page: Any
) -> None:
    """When the page reconnects to a server that does not know its session (a new instance),
    it gets a "resync" event with the reason and a new sessionId, and what it sent while
    reconnecting reaches the new session."""
    first = uvicorn_server(make_server_app())
    second = uvicorn_server(make_server_app())
    await open_page(page, first)
    async with TcpProxy(first.port) as proxy:
        old = await page.evaluate(HARNESS, [proxy.url("/ws"), FAST])
        await page.evaluate("window.sock.send('before')")
        await await_until(lambda: RECEIVED.get(old) == ["before"], 5, "first frame")
        proxy.upstream = second.port
        proxy.held.clear()
        proxy.cut()
        await await_until(
            lambda: page.evaluate("window.sock.state === 'reconnecting'"), 5, "reconnecting"
        )
        await page.evaluate("window.sock.send('while reconnecting')")
        proxy.held.set()
        await await_until(lambda: page.evaluate("window.resyncs.length === 1"), 5, "resync")
        new = await page.evaluate("window.sock.sessionId")
        assert new != old
        assert await page.evaluate("window.resyncs") == [
            {"reason": "unknown", "oldSessionId": old, "newSessionId": new}
        ]
        assert await page.evaluate("window.states") == ["open", "reconnecting", "open"]
        await page.evaluate("window.sock.send('after')")
        await await_until(
            lambda: RECEIVED.get(new) == ["while reconnecting", "after"], 5, "new session"
        )

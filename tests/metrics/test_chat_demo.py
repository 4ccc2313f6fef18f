"""The chat demo (examples/chat.py) in headless Chromium against real uvicorn: state, RTT,
the cut button and the "resumed, N missed messages replayed" notice, the dashboard link."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from examples.chat import MISSED, make_app
from tests.client.support import TcpProxy

from ..helpers import await_until

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # playwright's async API runs on asyncio


async def shown(page: Any, selector: str, text: str) -> bool:
    content = await page.text_content(selector)
    return content is not None and text in content


async def test_cut_button_shows_a_resume_with_the_missed_messages(
    uvicorn_server: Any, page: Any, screenshot: Callable[..., Any]
) -> None:
    """Cutting the connection makes the page reconnect, get the messages sent meanwhile
    replayed, and say "resumed, 3 missed messages replayed" on the same session."""
    server = uvicorn_server(make_app())
    await page.goto(server.http("/?name=ada"))
    await await_until(lambda: shown(page, "#state", "open"), 10, "connected")
    await page.fill("#text", "hello from ada")
    await page.press("#text", "Enter")
    await await_until(lambda: shown(page, "#log", "ada: hello from ada"), 5, "own line echoed")
    await await_until(lambda: shown(page, "#rtt", "ms"), 10, "a round-trip time")
    session = await page.evaluate("window.chat.sessionId")
    await page.click("#cut")
    await await_until(
        lambda: shown(page, "#notice", f"resumed, {MISSED} missed messages replayed"),
        10,
        "the resume notice",
    )
    assert await page.evaluate("window.chat.sessionId") == session
    replayed = await page.locator("#log .replayed").all_text_contents()
    assert replayed == [f"sent while you were cut off ({i}/{MISSED})" for i in range(1, 4)]
    assert await page.get_attribute("#dashboard", "href") == "/_stabilizer/"
    await screenshot(page, "chat-resumed")
    async with httpx.AsyncClient() as http:
        stats = (await http.get(server.http("/_stabilizer/stats"))).json()
    assert stats["resumes"]["resumed"] >= 1


async def test_a_server_that_lost_the_session_shows_resynced(
    uvicorn_server: Any, page: Any, screenshot: Callable[..., Any]
) -> None:
    """When the page comes back to a server that does not know its session (a restart),
    it says it resynced, with the reason, on a new session."""
    first = uvicorn_server(make_app())
    second = uvicorn_server(make_app())
    async with TcpProxy(first.port) as proxy:
        await page.goto(proxy.url("/", "http"))
        await await_until(lambda: shown(page, "#state", "open"), 10, "connected")
        old = await page.evaluate("window.chat.sessionId")
        proxy.upstream = second.port
        proxy.cut()
        await await_until(
            lambda: shown(page, "#notice", "resynced: the server could not resume ("),
            10,
            "the resync notice",
        )
        assert await page.evaluate("window.chat.sessionId") != old
        await await_until(lambda: shown(page, "#state", "open"), 10, "connected again")
        await await_until(
            lambda: page.evaluate(
                "document.querySelector('#log').textContent.split('joined').length === 3"
            ),
            5,
            "joined again on the new session",
        )
        assert await page.locator("#log .replayed").count() == 0
        await screenshot(page, "chat-resynced")

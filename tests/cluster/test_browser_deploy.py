"""The browser client (`StabilizerSocket`, served at client_js_path) in real headless Chromium
behind the round-robin load balancer of benchmarks/_lb.py, in front of `stabilizer-asgi serve`
nodes (real uvicorn) on one real redis-server: a rolling deploy is invisible to the page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks._deploy import Publisher
from benchmarks._nodes import Deployment
from tests.client.test_browser import FAST, HARNESS, chromium_page
from tests.helpers import await_until
from tests.redis_support import RedisServer

pytestmark = pytest.mark.anyio

# The page sends "c1", "c2", ... every 15 ms until told to stop; the nodes' app echoes each one.
PACED_SENDER = """() => {
  window.sending = (async () => {
    while (!window.stop) {
      const text = "c" + (window.sent.length + 1);
      window.sent.push(text);
      await window.sock.send(text);
      await new Promise((r) => setTimeout(r, 15));
    }
  })();
}"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # playwright; the nodes and the balancer are processes and threads


def stream(frames: list[str], prefix: str) -> list[str]:
    return [frame for frame in frames if frame.startswith(prefix)]


async def open_page(page: Any, origin: str) -> None:
    """Open a document at `origin` (the balancer) and import the browser client into it from
    there, as a page of the site would (`/_stabilizer/client.js`, from whichever node the
    balancer picks). The document is the module's own text: the nodes serve no page, and a
    page made up by the test would not be allowed to reach 127.0.0.1."""
    await page.goto(origin + "/_stabilizer/client.js")
    await page.evaluate(
        """async () => {
          window.StabilizerSocket = (await import("/_stabilizer/client.js")).StabilizerSocket;
        }"""
    )


@pytest.mark.parametrize(
    "n", [pytest.param(1, id="one-node-cut"), pytest.param(3, id="rolling-deploy")]
)
async def test_a_rolling_deploy_is_invisible_to_the_browser_client(
    redis_server: RedisServer, tmp_path: Path, n: int
) -> None:
    """While each of 3 nodes behind the balancer is drained by SIGTERM and restarted in turn
    (one-node-cut: its connection is reset by the balancer 3 times instead), the page gets the
    echo of every numbered message it sends, in order, and every numbered server broadcast (from
    whichever node is up), each exactly once and in publish order per publishing node, on one
    session, with no resync event."""
    with Deployment(redis_server.url, n) as deployment:
        lb = deployment.lb
        async with chromium_page(tmp_path) as page:
            await open_page(page, lb.url("", "http"))
            with anyio.fail_after(20):
                sid = await page.evaluate(HARNESS, [lb.url("/ws"), FAST])
            await page.evaluate(PACED_SENDER)
            publisher = Publisher([node.http_url for node in deployment.nodes], rate=25)

            async def publish() -> None:
                await anyio.to_thread.run_sync(publisher.run)

            def redeploy(index: int) -> None:
                publisher.avoid(index)
                deployment.redeploy(index)  # out of the balancer, SIGTERM (drain), restarted
                publisher.allow(index)
                deployment.wait_cluster()

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await anyio.sleep(0.5)
                for index in range(3):
                    if n == 1:
                        assert await anyio.to_thread.run_sync(lb.abort, 0) >= 1
                    else:
                        await anyio.to_thread.run_sync(redeploy, index)
                    await anyio.sleep(0.5)
                publisher.stop()
            await page.evaluate("window.stop = true; window.sending")
            sent = await page.evaluate("window.sent")
            pushed = [f"b{j}" for j in publisher.published]

            async def everything_arrived() -> bool:
                got, resyncs = await page.evaluate("[window.got, window.resyncs]")
                echoes, broadcasts = len(stream(got, "c")), len(stream(got, "b"))
                return bool(resyncs) or (echoes >= len(sent) and broadcasts >= len(pushed))

            await await_until(everything_arrived, 20, "every echo and broadcast in the page")
            assert await page.evaluate("[window.sock.sessionId, window.resyncs]") == [sid, []]
            got = await page.evaluate("window.got")
            assert stream(got, "c") == sent
            broadcasts = stream(got, "b")
            assert sorted(broadcasts) == sorted(pushed)  # each exactly once
            origin_of = dict(zip(pushed, publisher.origins, strict=True))
            for origin in set(publisher.origins):  # in publish order per publishing node
                assert [b for b in broadcasts if origin_of[b] == origin] == [
                    b for b in pushed if origin_of[b] == origin
                ]
            assert len(got) == len(sent) + len(pushed)
            states = await page.evaluate("window.states")
            assert states.count("reconnecting") >= 1 and set(states) == {"open", "reconnecting"}
            assert len(sent) > 100 and len(pushed) > 20 and publisher.uncertain == []
            assert [node.starts for node in deployment.nodes] == [1 if n == 1 else 2] * n
            await page.evaluate("window.sock.close()")

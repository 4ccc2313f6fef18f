"""The browser client (`StabilizerSocket`, served at client_js_path) in real headless Chromium
behind a round-robin TCP load balancer, in front of `stabilizer-asgi serve` nodes (real uvicorn)
on one real redis-server: a rolling deploy is invisible to the page."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks._lb import LoadBalancer
from tests.client.test_browser import FAST, HARNESS, chromium_page
from tests.helpers import await_until
from tests.redis_support import RedisServer

from .support import NodeProcess, nodes, see_each_other

pytestmark = pytest.mark.anyio

# The page sends "c1", "c2", ... every 15 ms until told to stop; the nodes' app (its /ws)
# answers each with "echo:c<n>".
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
    return "asyncio"  # playwright and the balancer; the nodes are processes


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
    "n",
    [pytest.param(1, id="one-node-cut"), pytest.param(3, id="rolling-deploy")],
)
async def test_a_rolling_deploy_is_invisible_to_the_browser_client(
    redis_server: RedisServer, tmp_path: Path, n: int
) -> None:
    """While each of 3 nodes behind the balancer is drained by SIGTERM and restarted in turn
    (one-node-cut: its connection is reset by the balancer 3 times instead), the page gets the
    echo of every numbered message it sends, in order, and every numbered server broadcast (from
    whichever node is up), each exactly once and in publish order per publishing node, on one
    session, with no resync event."""
    with (
        nodes(redis_server.url, n, sidecar=True, STABILIZER_TEST_DRAIN="1.0") as ring,
        LoadBalancer([node.port for node in ring]) as lb,
    ):
        async with chromium_page(tmp_path) as page:
            await open_page(page, lb.url("", "http"))
            with anyio.fail_after(20):
                sid = await page.evaluate(HARNESS, [lb.url("/ws"), FAST])
            await page.evaluate(PACED_SENDER)

            pushed: list[str] = []
            origins: dict[str, int] = {}  # broadcast -> the pid of the node that published it
            publisher = [ring[-1]]  # a node that stays up while another one is drained
            turn = anyio.Lock()
            done = anyio.Event()

            async def publish() -> None:
                while not done.is_set():
                    async with turn:
                        text, node = f"s{len(pushed) + 1}", publisher[0]
                        await anyio.to_thread.run_sync(
                            functools.partial(node.post, "/broadcast", text=text)
                        )
                        pushed.append(text)
                        origins[text] = node.proc.pid
                    await anyio.sleep(0.04)

            async def redeploy(index: int) -> None:
                async with turn:
                    publisher[0] = ring[(index + 1) % n]
                old = ring[index]
                await anyio.to_thread.run_sync(old.stop)  # SIGTERM: the sidecar drains first
                assert old.proc.returncode in (-15, 143), old.proc.returncode
                new: NodeProcess = await anyio.to_thread.run_sync(old.restarted)
                ring[index] = new
                await anyio.to_thread.run_sync(new.wait_ready)
                await anyio.to_thread.run_sync(see_each_other, ring)

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                await anyio.sleep(0.5)
                for index in range(3):
                    if n == 1:
                        assert lb.abort(0) >= 1
                    else:
                        await redeploy(index)
                    await anyio.sleep(0.5)
                done.set()
            await page.evaluate("window.stop = true; window.sending")
            sent = await page.evaluate("window.sent")

            async def everything_arrived() -> bool:
                got, resyncs = await page.evaluate("[window.got, window.resyncs]")
                echoes, broadcasts = len(stream(got, "echo:")), len(stream(got, "s"))
                return bool(resyncs) or (echoes >= len(sent) and broadcasts >= len(pushed))

            await await_until(everything_arrived, 20, "every echo and broadcast in the page")
            assert await page.evaluate("[window.sock.sessionId, window.resyncs]") == [sid, []]
            got = await page.evaluate("window.got")
            assert stream(got, "echo:") == [f"echo:c{i}" for i in range(1, len(sent) + 1)]
            broadcasts = stream(got, "s")
            assert sorted(broadcasts) == sorted(pushed)  # each exactly once
            for origin in set(origins.values()):  # in publish order per publishing node
                assert [b for b in broadcasts if origins[b] == origin] == [
                    b for b in pushed if origins[b] == origin
                ]
            assert len(got) == len(sent) + len(pushed)
            states = await page.evaluate("window.states")
            assert states.count("reconnecting") >= 1 and set(states) == {"open", "reconnecting"}
            assert len(sent) >= 100 and len(pushed) >= 10
            assert all(lb.accepted(i) for i in range(n))  # every node took connections
            await page.evaluate("window.sock.close()")

"""The browser client in real headless Chromium through a rolling deploy: 3 nodes under the
sidecar on one real redis-server, behind a round-robin TCP balancer, each drained by SIGTERM
and restarted in turn while the page and the server exchange numbered messages."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import pytest

from tests.client.test_browser import FAST, HARNESS, chromium_page
from tests.helpers import await_until
from tests.redis_support import RedisServer

from .support import NodeProcess, RoundRobin, nodes, see_each_other

pytestmark = pytest.mark.anyio

# The page sends "c1", "c2", ... every few ms until told to stop; the app echoes "e<n>".
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
    return "asyncio"  # playwright and the balancer; the nodes are separate processes


def stream(frames: list[str], prefix: str) -> list[str]:
    return [frame for frame in frames if frame.startswith(prefix)]


async def test_browser_survives_a_rolling_deploy_of_three_nodes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """While each of 3 nodes is drained by SIGTERM and restarted in turn, the page behind a
    round-robin balancer gets every echo of its numbered messages and every server broadcast
    exactly once and in order, on one session, with no resync event."""
    env = {"STABILIZER_TEST_DRAIN": "0.5"}
    with nodes(redis_server.url, 3, sidecar=True, **env) as ring:
        async with RoundRobin([node.port for node in ring]) as lb, chromium_page(tmp_path) as page:
            await page.goto(lb.url("/", "http"))
            await page.wait_for_function("window.moduleLoaded === true")
            sid = await page.evaluate(HARNESS, [lb.url("/echo"), FAST])
            await page.evaluate(PACED_SENDER)

            pushed: list[str] = []
            publisher = [ring[1]]  # a node that stays up while another one is drained
            turn = anyio.Lock()
            done = anyio.Event()

            async def broadcast() -> None:
                while not done.is_set():
                    async with turn:
                        text = f"s{len(pushed) + 1}"
                        await anyio.to_thread.run_sync(
                            functools.partial(publisher[0].post, "/broadcast", text=text)
                        )
                        pushed.append(text)
                    await anyio.sleep(0.04)

            async def redeploy(i: int) -> None:
                async with turn:
                    publisher[0] = ring[(i + 1) % len(ring)]
                old = ring[i]
                await anyio.to_thread.run_sync(old.stop)  # SIGTERM: the sidecar drains first
                assert old.proc.returncode in (-15, 143), old.proc.returncode
                new: NodeProcess = await anyio.to_thread.run_sync(old.restarted)
                ring[i] = new
                await anyio.to_thread.run_sync(new.wait_ready)
                await anyio.to_thread.run_sync(see_each_other, ring)

            async with anyio.create_task_group() as tg:
                tg.start_soon(broadcast)
                await anyio.sleep(0.5)
                for i in range(len(ring)):
                    await redeploy(i)
                    await anyio.sleep(0.3)
                done.set()
            await page.evaluate("window.stop = true; window.sending")
            sent = await page.evaluate("window.sent")

            async def everything_arrived() -> bool:
                got, resyncs = await page.evaluate("[window.got, window.resyncs]")
                echoes, broadcasts = len(stream(got, "e")), len(stream(got, "s"))
                return bool(resyncs) or (echoes >= len(sent) and broadcasts >= len(pushed))

            await await_until(everything_arrived, 20, "every echo and broadcast in the page")
            assert await page.evaluate("[window.sock.sessionId, window.resyncs]") == [sid, []]
            got = await page.evaluate("window.got")
            assert stream(got, "e") == [f"e{n}" for n in range(1, len(sent) + 1)]
            assert stream(got, "s") == pushed
            assert len(got) == len(sent) + len(pushed)
            states = await page.evaluate("window.states")
            assert "reconnecting" in states and set(states) == {"open", "reconnecting"}
            assert len(sent) > 100 and len(pushed) > 20
            assert sum(1 for count in lb.picked.values() if count) == len(ring)
            await page.evaluate("window.sock.close()")

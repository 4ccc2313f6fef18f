"""Resume anywhere through real uvicorn nodes on a real redis-server, with raw websockets
clients speaking the wire protocol: hand-over between live nodes, parking when a node shuts
down, and the honest "lost" when a node is killed."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import websockets

from tests.helpers import WAIT, control
from tests.redis_support import RedisServer

from .support import NodeProcess, nodes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # websockets clients; the nodes are separate processes


class Peer:
    """One opted-in client session, spoken raw: counts the data frames it got, keeps its
    token, resends what the server had not taken."""

    def __init__(self) -> None:
        self.token = ""
        self.session = ""
        self.received = 0
        self.frames: list[str] = []
        self.sent: list[str] = []
        self.ws: Any = None

    async def open(self, node: NodeProcess, resume: bool = False) -> dict[str, Any]:
        query = "stabilizer=1"
        if resume:
            query += f"&stabilizer_resume={self.token}&stabilizer_ack={self.received}"
        self.ws = await websockets.connect(node.ws(f"/ws?{query}"), ping_interval=None)
        hello = control(await self.ws.recv())
        assert hello is not None and hello["t"] == "hello", hello
        self.token, self.session = hello["token"], hello["session"]
        if hello["resumed"]:
            for text in self.sent[hello["ack"] :]:
                await self.ws.send(text)  # the server never took these: sent again
        return hello

    async def send(self, text: str) -> None:
        self.sent.append(text)
        await self.ws.send(text)

    async def read(self, n: int) -> list[str]:
        """The next `n` data frames (control frames are skipped)."""
        got: list[str] = []
        with pytest.MonkeyPatch.context():
            while len(got) < n:
                frame = await self.ws.recv()
                if control(frame) is None:
                    got.append(str(frame))
        self.received += len(got)
        self.frames += got
        return got

    def drop(self) -> None:
        """Cut the TCP connection without a closing handshake."""
        self.ws.transport.abort()


async def test_a_session_resumes_exactly_on_another_node_both_ways(
    redis_server: RedisServer,
) -> None:
    """A client cut off from node A resumes on node B: what was sent to it meanwhile (a send
    on A, a broadcast on B) arrives once, in order; a frame it sent just before the cut is
    taken by the app exactly once; node A no longer has the session."""
    with nodes(redis_server.url) as (a, b):
        peer = Peer()
        await peer.open(a)
        await peer.send("c1")
        assert await peer.read(1) == ["echo:c1"]
        await peer.send("c2")  # perhaps taken by A's app, perhaps not: the hello says
        peer.drop()
        assert a.post("/send", sid=peer.session, text="s1")["ok"] is True
        b.post("/broadcast", text="s2")
        hello = await peer.open(b, resume=True)
        assert hello["resumed"] is True and hello["session"] == peer.session
        assert hello["ack"] in (1, 2)
        got = await peer.read(3)
        assert sorted(got) == ["echo:c2", "s1", "s2"]
        assert got.index("s1") < got.index("s2")
        await peer.send("c3")
        assert await peer.read(1) == ["echo:c3"]
        assert a.post("/send", sid=peer.session, text="s3")["ok"] is True
        assert await peer.read(1) == ["s3"]
        assert b.stats()["counters"]["adopted"] == 1
        assert a.stats()["counters"]["handed_over"] == 1
        await peer.ws.close()


async def test_a_live_connection_is_closed_when_another_node_resumes_it(
    redis_server: RedisServer,
) -> None:
    """A client whose old connection to node A still looks open resumes on node B: A closes
    the old one (1000) and B serves the session; never two live connections."""
    with nodes(redis_server.url) as (a, b):
        old = Peer()
        await old.open(a)
        await old.send("c1")
        await old.read(1)
        new = Peer()
        new.token, new.received, new.sent = old.token, old.received, list(old.sent)
        hello = await new.open(b, resume=True)
        assert hello["resumed"] is True and hello["session"] == old.session
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await old.ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        await new.send("c2")
        assert await new.read(1) == ["echo:c2"]
        await new.ws.close()


async def test_a_node_that_shuts_down_parks_its_sessions_for_any_node(
    redis_server: RedisServer,
) -> None:
    """Node A stops (SIGTERM: uvicorn closes every websocket with 1012): its sessions are
    parked in Redis; what is sent to them meanwhile from node B waits in their mailbox and is
    replayed once, in order, when each client resumes on B."""
    with nodes(redis_server.url) as (a, b):
        peers = [Peer() for _ in range(3)]
        for peer in peers:
            await peer.open(a)
            await peer.send("hi")
            await peer.read(1)
        a.stop()
        for peer in peers:
            with pytest.raises(websockets.ConnectionClosed):
                while True:  # a ping may come first: only control frames before the close
                    frame = await peer.ws.recv()
                    assert control(frame) is not None, frame
        for n in range(3):
            b.post("/broadcast", text=f"b{n}")
        assert b.post("/send", sid=peers[0].session, text="direct")["ok"] is True
        for i, peer in enumerate(peers):
            hello = await peer.open(b, resume=True)
            assert hello["resumed"] is True, hello
            expected = ["b0", "b1", "b2"] + (["direct"] if i == 0 else [])
            assert await peer.read(len(expected)) == expected
            await peer.send("again")
            assert await peer.read(1) == ["echo:again"]
            await peer.ws.close()
        assert b.stats()["counters"]["adopted"] == 3


async def test_a_killed_node_s_sessions_answer_lost(redis_server: RedisServer) -> None:
    """Node A is killed (SIGKILL, no drain): a resume of its session on node B answers
    resumed:false with reason "lost" within twice cluster_timeout, and a second one at once;
    node B's own client is unaffected."""
    with nodes(redis_server.url) as (a, b):
        on_b = Peer()
        await on_b.open(b)
        victims = [Peer(), Peer()]
        for peer in victims:
            await peer.open(a)
        os.kill(a.proc.pid, signal.SIGKILL)
        a.proc.wait(WAIT)
        started = time.monotonic()
        hello = await victims[0].open(b, resume=True)
        first = time.monotonic() - started
        assert hello["resumed"] is False and hello["reason"] == "lost"
        assert first < 2 * 2.0 + WAIT  # 2 x cluster_timeout, with room for a loaded machine
        hello = await victims[1].open(b, resume=True)
        assert hello["resumed"] is False and hello["reason"] == "lost"
        assert b.stats()["resumes"]["failed"]["lost"] == 2
        await on_b.send("still here")
        assert await on_b.read(1) == ["echo:still here"]

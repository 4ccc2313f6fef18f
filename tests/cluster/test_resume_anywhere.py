"""Resume anywhere (#12) with real parts: `stabilizer-asgi serve` nodes (real uvicorn) on one real
redis-server, behind the round-robin TCP load balancer of benchmarks/_lb.py, with raw
`websockets` clients speaking the wire protocol and Python clients (`stabilizer_asgi.client`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from benchmarks._deploy import Fleet, Publisher, run_deploy
from benchmarks._nodes import FAST, Deployment, SidecarNode
from tests.helpers import WAIT, await_until, control
from tests.redis_support import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the Python client and websockets run on asyncio; the nodes are processes


class RawConnection:
    """One websocket of a :class:`RawSession`: its hello, and whether it is still open."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.frames: list[str] = []
        self.reader: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN


class RawSession:
    """An opted-in client written against the wire protocol by hand (`?stabilizer=1`, RS control
    frames): it counts the data frames it receives, answers pings, resumes with
    `stabilizer_resume`/`stabilizer_ack` and resends what the server's `hello.ack` says it
    lacks."""

    def __init__(self) -> None:
        self.received: list[str] = []  # data frames, over every connection, in arrival order
        self.sent: list[str] = []  # data frames, in send order
        self.session = ""
        self.token = ""
        self.conn: RawConnection | None = None

    async def open(self, base: str, *, resume: bool = False) -> RawConnection:
        """A new connection to `base` (ws://host:port): fresh, or resuming the session."""
        url = f"{base}/ws?stabilizer=1"
        if resume:
            url += f"&stabilizer_resume={self.token}&stabilizer_ack={len(self.received)}"
        ws = await websockets.connect(url, ping_interval=None)
        hello = control(await ws.recv())
        assert hello is not None and hello["t"] == "hello", hello
        return RawConnection(ws, hello)

    def adopt(self, conn: RawConnection) -> None:
        """Make `conn` this session's connection: take its token, start reading it."""
        self.conn = conn
        self.token = conn.hello["token"]
        if not conn.hello["resumed"]:
            self.session = conn.hello["session"]
        conn.reader = asyncio.ensure_future(self._read(conn))

    async def connect(self, base: str, *, resume: bool = False) -> dict[str, Any]:
        conn = await self.open(base, resume=resume)
        self.adopt(conn)
        if resume and conn.hello["resumed"]:
            await self.resend(conn)
        return conn.hello

    async def resend(self, conn: RawConnection) -> None:
        for text in self.sent[conn.hello["ack"] :]:
            await conn.ws.send(text)

    async def _read(self, conn: RawConnection) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in conn.ws:
                assert isinstance(frame, str)
                ctl = control(frame)
                if ctl is None:
                    conn.frames.append(frame)
                    if conn is self.conn:
                        self.received.append(frame)
                elif ctl["t"] == "ping":
                    pong = {"t": "pong", "ts": ctl["ts"], "n": len(self.received)}
                    await conn.ws.send("\x1e" + json.dumps(pong))

    async def send(self, text: str) -> None:
        """Send `text`, or only record it while disconnected (it is resent on resume)."""
        self.sent.append(text)
        if self.conn is not None and self.conn.open:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.conn.ws.send(text)

    def numbers(self, kind: str) -> list[int]:
        return [int(f[1:]) for f in self.received if f[:1] == kind]

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        assert self.conn is not None
        self.conn.ws.transport.abort()


async def publish(node: SidecarNode, *numbers: int) -> None:
    for j in numbers:
        await asyncio.to_thread(node.request, "POST", "/broadcast", text=f"b{j}")


async def exchange_and_cut(
    d: Deployment, count: int, *, move: bool
) -> tuple[list[RawSession], list[dict[str, Any]]]:
    """`count` raw clients through the balancer, all on node 0; numbered frames both ways; the
    balancer resets their TCP connections mid-stream (echoes and broadcasts in flight), more is
    sent both ways while they are away, then they resume through the balancer: on another node
    with `move`. More traffic, and the hellos of the resumes."""
    for k in range(1, len(d.nodes)):
        d.lb.down(k)
    clients = [RawSession() for _ in range(count)]
    for c in clients:
        await c.connect(d.lb.url(""))
    for k in range(1, len(d.nodes)):
        d.lb.up(k)
    publisher = d.nodes[-1]
    for i in range(10):
        for c in clients:
            await c.send(f"u{i}")
    await publish(publisher, 0, 1, 2)
    # Mid-stream: echoes and the last broadcasts in flight. (At least the clients': a link the
    # balancer has not yet seen closed, e.g. a health probe's, may be reset with them.)
    assert d.lb.abort(0) >= count
    await publish(publisher, 3, 4, 5)  # to the detached sessions
    for i in range(10, 15):
        for c in clients:
            await c.send(f"u{i}")  # recorded, resent on resume
    if move:
        d.lb.down(0)
    hellos = [await c.connect(d.lb.url(""), resume=True) for c in clients]
    await publish(publisher, 6, 7)
    for i in range(15, 20):
        for c in clients:
            await c.send(f"u{i}")
    return clients, hellos


@pytest.mark.parametrize(
    "nodes", [pytest.param(1, id="same-node"), pytest.param(2, id="other-node")]
)
async def test_raw_clients_cut_mid_stream_resume_exactly_both_ways(
    redis_server: RedisServer, nodes: int
) -> None:
    """Raw opted-in clients whose TCP connections are reset mid-stream resume through the load
    balancer (on the node that held them, or on another node) exactly: every echo of what
    they sent and every broadcast, once each and in order."""
    with Deployment(redis_server.url, nodes) as d:
        clients, hellos = await exchange_and_cut(d, 4, move=nodes > 1)
        if nodes > 1:
            assert d.lb.open_connections(0) == 0  # they really are elsewhere now
        assert [h["resumed"] for h in hellos] == [True] * 4, hellos
        assert [h["session"] for h in hellos] == [c.session for c in clients]
        await await_until(
            lambda: all(len(c.received) >= 20 + 8 for c in clients), what="every frame"
        )
        await asyncio.sleep(0.2)  # a late duplicate would show here
        for c in clients:
            assert c.numbers("u") == list(range(20))
            assert c.numbers("b") == list(range(8))


async def test_python_clients_cut_by_the_balancer_resume_exactly(
    redis_server: RedisServer,
) -> None:
    """50 Python clients exchanging numbered messages both ways through the load balancer,
    whose connections are all reset mid-stream, resume on the node that holds them: 0 lost,
    0 duplicated, 0 reordered, 0 resyncs (the checker of the rolling-deploy test)."""
    with Deployment(redis_server.url, 1) as d:
        fleet = Fleet()
        assert await fleet.open(d.ws_url(), 50) == 50
        publisher = Publisher([d.nodes[0].http_url], rate=20)

        def cut() -> int:
            time.sleep(0.5)
            return d.lb.abort(0)

        try:
            cut_off, _, _ = await run_deploy(fleet, publisher, cut, send_interval=0.2)
            report = fleet.report(publisher.published, publisher.uncertain)
        finally:
            await fleet.close()
        assert cut_off == 50
        assert len(d.lb.accepted(0)) >= 100  # every client came back through the balancer
        assert report["sent"] >= 100 and len(publisher.published) >= 5
        assert publisher.uncertain == []
        faults = {k: report[k] for k in ("lost", "duplicated", "reordered", "resyncs", "closed")}
        assert faults == {"lost": 0, "duplicated": 0, "reordered": 0, "resyncs": 0, "closed": 0}


def deploy_every_node(d: Deployment, publisher: Publisher, between: Any = None) -> list[Any]:
    """SIGTERM (drain) and restart each node in turn, the publisher kept off it meanwhile."""
    steps = []
    for index in range(len(d.nodes)):
        publisher.avoid(index)
        steps.append(d.redeploy(index))
        publisher.allow(index)
        if between is not None:
            between(index)
    return steps


async def test_a_rolling_deploy_of_3_nodes_under_200_clients_is_invisible(
    redis_server: RedisServer,
) -> None:
    """Rolling deploy of 3 nodes (each drained by SIGTERM through the sidecar and restarted)
    while 200 Python clients exchange numbered messages both ways through the load balancer:
    nothing lost, duplicated or reordered without a resync (each resync says why), no client
    closed, and most clients never resync (all of them did before resume anywhere; none in
    most runs now; on a saturated machine some resumes are not placed in time and are told)."""
    with Deployment(redis_server.url, 3) as d:
        fleet = Fleet()
        assert await fleet.open(d.ws_url(), 200) == 200
        publisher = Publisher([node.http_url for node in d.nodes], rate=10)
        try:
            await run_deploy(
                fleet,
                publisher,
                lambda: deploy_every_node(d, publisher),
                send_interval=1.0,
                idle=5.0,
            )
            report = fleet.report(
                publisher.published, publisher.uncertain, publisher.origins, detail=True
            )
        finally:
            await fleet.close()
        assert [node.starts for node in d.nodes] == [2, 2, 2]
        assert len(publisher.published) >= 10 and publisher.uncertain == []
        assert report["sent"] >= 200
        silent = {k: report[k] for k in ("silent_lost", "silent_duplicated", "silent_reordered")}
        assert silent == {"silent_lost": 0, "silent_duplicated": 0, "silent_reordered": 0}, report[
            "silent_samples"
        ]
        assert report["closed"] == 0
        assert set(report["reasons"]) <= {"gap", "expired", "unknown", "lost"}, report["reasons"]
        assert report["resynced_clients"] <= 100, (
            report["reasons"],
            [c for c in report["per_client"] if c["lost"] or c["resyncs"]][:5],
        )


async def test_kill_9_of_a_node_resyncs_its_clients_with_lost_and_no_one_else(
    redis_server: RedisServer,
) -> None:
    """A node killed with SIGKILL mid-traffic: each of its clients gets a resync with reason
    "lost" (on whichever node it reaches); every client of the other nodes gets every message
    exactly once, in order, without a resync."""
    with Deployment(redis_server.url, 3) as d:
        fleet = Fleet()
        # One at a time: the round robin puts client i on node i % 3.
        assert await fleet.open(d.ws_url(), 45, sequential=True) == 45
        assert [d.lb.open_connections(k) for k in range(3)] == [15, 15, 15]
        publisher = Publisher([node.http_url for node in d.nodes], rate=10)
        publisher.avoid(0)

        def kill() -> None:
            d.nodes[0].kill()
            # Traffic goes on meanwhile, until every client of the dead node has been answered
            # (the promise: within 2 x cluster_timeout of reaching another node).
            victims = [c for c in fleet.clients if c.index % 3 == 0]
            deadline = time.monotonic() + 4 * FAST["cluster_timeout"] + WAIT
            while not all(c.resyncs for c in victims) and time.monotonic() < deadline:
                time.sleep(0.05)

        try:
            await run_deploy(fleet, publisher, kill, send_interval=0.3, idle=5.0)
            report = fleet.report(
                publisher.published, publisher.uncertain, publisher.origins, detail=True
            )
        finally:
            await fleet.close()
        victims = [c for c in report["per_client"] if c["index"] % 3 == 0]
        others = [c for c in report["per_client"] if c["index"] % 3 != 0]
        assert all(c["resyncs"] and set(c["resyncs"]) == {"lost"} for c in victims), victims
        for c in others:
            assert (c["lost"], c["duplicated"], c["reordered"], c["resyncs"]) == (0, 0, 0, []), c


async def test_redis_restarted_empty_during_a_deploy_gives_honest_resyncs_only(
    redis_server: RedisServer,
) -> None:
    """Redis SIGKILLed and restarted empty on its port between two steps of a rolling deploy:
    every resync a client sees says "lost", "gap" or "unknown", a client without a resync got
    every message exactly once and in order (nothing silent), and the sessions the live nodes
    held (most clients) still resume without a resync."""
    with Deployment(redis_server.url, 3) as d:
        fleet = Fleet()
        assert await fleet.open(d.ws_url(), 60) == 60
        publisher = Publisher([node.http_url for node in d.nodes], rate=10)

        def redis_restart(step: int) -> None:
            if step == 0:
                redis_server.kill()
                time.sleep(0.5)
                redis_server.start()
                d.wait_healthy()  # the deploy goes on once the nodes are back on Redis

        try:
            await run_deploy(
                fleet,
                publisher,
                lambda: deploy_every_node(d, publisher, redis_restart),
                send_interval=0.5,
                idle=5.0,
            )
            report = fleet.report(
                publisher.published, publisher.uncertain, publisher.origins, detail=True
            )
        finally:
            await fleet.close()
        assert set(report["reasons"]) <= {"lost", "gap", "unknown"}, report["reasons"]
        assert report["silent_lost"] == 0
        quiet = [c for c in report["per_client"] if not c["resyncs"]]
        for c in quiet:
            assert (c["lost"], c["duplicated"], c["reordered"]) == (0, 0, 0), c
        assert len(quiet) >= 30, report["reasons"]


async def test_two_racing_resumes_on_two_nodes_leave_one_live_connection_and_lose_nothing(
    redis_server: RedisServer,
) -> None:
    """The same token presented at once on two nodes that do not hold the session: never two
    live connections with it. Either one connection ends up with the session and gets every
    frame exactly once, in order, both ways (the usual outcome), or the client is told: the
    connection it still has says resumed:false (a resync), never a silent loss."""
    with Deployment(redis_server.url, 3) as d:
        a, b, c = d.nodes
        client = RawSession()
        await client.connect(a.ws_url)
        for i in range(5):
            await client.send(f"u{i}")
        await publish(a, 0, 1, 2)
        await await_until(lambda: len(client.received) >= 8, what="the first frames")
        for i in range(5, 8):
            await client.send(f"u{i}")
        client.abort()
        await publish(b, 3, 4)
        both = await asyncio.gather(
            client.open(b.ws_url, resume=True), client.open(c.ws_url, resume=True)
        )

        def live() -> list[RawConnection]:
            return [x for x in both if x.open and x.hello["session"] == client.session]

        for conn in both:
            conn.reader = asyncio.ensure_future(client._read(conn))

        def states() -> list[Any]:
            return [(x.hello, x.open, x.ws.close_code, x.ws.close_reason) for x in both]

        def told() -> bool:
            return not live() and any(x.open and x.hello["resumed"] is False for x in both)

        await await_until(
            lambda: len(live()) == 1 or told(), timeout=WAIT * 2, what=f"an outcome: {states()}"
        )
        await asyncio.sleep(1.0)  # and it stays so
        assert len(live()) <= 1, states()
        if told():
            return  # the racing resumes took the session from each other: a resync, said so
        assert len(live()) == 1, states()
        (winner,) = live()
        assert winner.hello["resumed"] is True
        client.conn = winner
        client.received.extend(winner.frames)
        await client.resend(winner)
        await publish(c, 5, 6)
        for i in range(8, 10):
            await client.send(f"u{i}")
        await await_until(lambda: len(client.received) >= 10 + 7, what="every frame")
        await asyncio.sleep(0.2)
        assert client.numbers("u") == list(range(10))
        assert client.numbers("b") == list(range(7))

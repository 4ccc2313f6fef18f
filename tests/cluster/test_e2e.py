"""Cluster mode end to end: 2 real uvicorn processes on one real redis-server, real clients."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import websockets

from tests.helpers import WAIT, await_until, control
from tests.redis_support import RedisServer

from .support import Client, NodeProcess, nodes

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # websockets clients; the nodes are separate processes


async def connect(tg: anyio.abc.TaskGroup, node: NodeProcess, n: int) -> list[Client]:
    clients = [Client(node.ws()) for _ in range(n)]
    for client in clients:
        await tg.start(client.run)
    return clients


async def test_broadcasts_reach_every_client_on_every_node_once_in_order(
    redis_server: RedisServer,
) -> None:
    """Broadcasts published on one node reach 100 % of the clients of both nodes, each
    exactly once and in publish order; a group broadcast reaches exactly the group (members
    joined from either node) minus the excluded session."""
    with nodes(redis_server.url) as (a, b):
        async with anyio.create_task_group() as tg:
            on_a = await connect(tg, a, 10)
            on_b = await connect(tg, b, 10)
            everyone = on_a + on_b
            for i in range(30):
                result = await anyio.to_thread.run_sync(
                    lambda i=i: a.post("/broadcast", text=f"m{i}")
                )
                assert result["total"] == 10  # this node's sessions
            expected = [f"m{i}" for i in range(30)]
            await await_until(
                lambda: all(len(c.frames) >= 30 for c in everyone), what="30 frames everywhere"
            )
            assert all(c.frames == expected for c in everyone)

            members = on_a[:5] + on_b[:5]
            for client in members:  # joined through node b, wherever the session is
                reply = await anyio.to_thread.run_sync(
                    lambda c=client: b.post("/join", sid=c.session, group="half")
                )
                assert reply["ok"] is True
            skip = on_b[0].session
            await anyio.to_thread.run_sync(
                lambda: a.post("/broadcast", text="g", group="half", exclude=[skip])
            )
            await anyio.to_thread.run_sync(lambda: a.post("/broadcast", text="end"))
            await await_until(lambda: all(c.frames[-1:] == ["end"] for c in everyone), what="end")
            got_group = {c.session for c in everyone if "g" in c.frames}
            assert got_group == {c.session for c in members} - {skip}
            tg.cancel_scope.cancel()


async def test_send_close_join_reach_a_session_on_another_node(
    redis_server: RedisServer,
) -> None:
    """`send`, `join` and `close` called on node A act on a session held by node B and
    return True once done; for a session no node has they return False."""
    with nodes(redis_server.url) as (a, b):
        async with anyio.create_task_group() as tg:
            (client,) = await connect(tg, b, 1)
            post = a.post
            assert (
                await anyio.to_thread.run_sync(
                    lambda: post("/send", sid=client.session, text="direct")
                )
            )["ok"]
            await await_until(lambda: client.frames == ["direct"], what="the direct send")
            assert (
                await anyio.to_thread.run_sync(lambda: post("/join", sid=client.session, group="g"))
            )["ok"]
            await anyio.to_thread.run_sync(lambda: post("/broadcast", text="to g", group="g"))
            await await_until(lambda: client.frames == ["direct", "to g"], what="the group frame")
            assert (
                await anyio.to_thread.run_sync(
                    lambda: post("/leave", sid=client.session, group="g")
                )
            )["ok"]
            assert (
                await anyio.to_thread.run_sync(
                    lambda: post("/close", sid=client.session, code=4001, reason="bye")
                )
            )["ok"]
            await await_until(lambda: client.close_code == 4001, what="the close")
            for path in ("/send", "/close", "/join"):
                reply = await anyio.to_thread.run_sync(
                    lambda path=path: post(path, sid="nobody", text="x", group="g")
                )
                assert reply["ok"] is False
            tg.cancel_scope.cancel()


async def test_stats_show_every_node_and_the_cluster_total(redis_server: RedisServer) -> None:
    """Each node's stats list every live node with its connections and the cluster total."""
    with nodes(redis_server.url) as (a, b):
        async with anyio.create_task_group() as tg:
            await connect(tg, a, 2)
            await connect(tg, b, 3)

            def total(node: NodeProcess) -> int:
                return int(node.stats()["cluster"]["connections"])

            await await_until(lambda: total(a) == 5 and total(b) == 5, what="totals of 5")
            cluster = a.stats()["cluster"]
            assert sorted(n["connections"] for n in cluster["nodes"]) == [2, 3]
            assert cluster["healthy"] is True
            tg.cancel_scope.cancel()


async def test_redis_killed_and_restarted_mid_stream_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """Redis SIGKILLed while node A broadcasts and restarted a second later (empty): every
    client on both nodes still gets every frame once, in order; health says degraded (200)
    while Redis is away and ok after."""
    with nodes(redis_server.url, STABILIZER_TEST_PROBE="0.4") as (a, b):
        async with anyio.create_task_group() as tg:
            everyone = await connect(tg, a, 5) + await connect(tg, b, 5)
            for i in range(60):
                await anyio.to_thread.run_sync(lambda i=i: a.post("/broadcast", text=f"m{i}"))
                if i == 20:
                    redis_server.kill()
                    await await_until(
                        lambda: b.get("/_stabilizer/health")[1]["status"] == "degraded",
                        what="b degraded",
                    )
                    status, _ = b.get("/_stabilizer/health")
                    assert status == 200
                    assert b.stats()["cluster"]["problem"]  # stats say why
                if i == 40:
                    redis_server.start()
                await anyio.sleep(0.02)
            expected = [f"m{i}" for i in range(60)]
            await await_until(
                lambda: all(len(c.frames) >= 60 for c in everyone), timeout=WAIT * 2, what="all"
            )
            assert all(c.frames == expected for c in everyone)
            for node in (a, b):
                await await_until(
                    lambda node=node: node.get("/_stabilizer/health")[1]["status"] == "ok",
                    what="healthy again",
                )
            tg.cancel_scope.cancel()


async def test_a_killed_subscription_is_healed_without_loss(redis_server: RedisServer) -> None:
    """`CLIENT KILL TYPE pubsub` mid-stream: both nodes resubscribe and catch up; every client
    gets every frame once, in order."""
    with nodes(redis_server.url) as (a, b):
        async with anyio.create_task_group() as tg:
            everyone = await connect(tg, a, 3) + await connect(tg, b, 3)
            for i in range(40):
                await anyio.to_thread.run_sync(lambda i=i: a.post("/broadcast", text=f"m{i}"))
                if i == 15:
                    redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
            expected = [f"m{i}" for i in range(40)]
            await await_until(lambda: all(len(c.frames) >= 40 for c in everyone), what="all")
            assert all(c.frames == expected for c in everyone)
            assert b.stats()["cluster"]["counters"]["reconnects"] >= 1
            tg.cancel_scope.cancel()


async def test_duplicate_client_reject_holds_across_nodes(redis_server: RedisServer) -> None:
    """With duplicate_client="reject", a client id connected on node A is refused on node B."""
    with nodes(redis_server.url, STABILIZER_TEST_DUPLICATE="reject") as (a, b):
        async with websockets.connect(a.ws("/ws?client_id=alice")) as first:
            await first.recv()
            with pytest.raises(websockets.InvalidStatus) as info:
                async with websockets.connect(b.ws("/ws?client_id=alice")):
                    pass
            assert info.value.response.status_code == 409

        # Once it left node A, node B takes it.
        async def admitted() -> bool:
            try:
                async with websockets.connect(b.ws("/ws?client_id=alice")) as ws:
                    await ws.recv()
                    return True
            except websockets.InvalidStatus:
                return False

        await await_until(admitted, what="alice admitted on b")


async def test_a_token_is_single_use_across_nodes(redis_server: RedisServer) -> None:
    """A token spent resuming on node A is answered "invalid" on node B; a token of a session
    B does not hold, never spent, is "unknown" there."""
    with nodes(redis_server.url) as (a, b):
        ws = await websockets.connect(a.ws("/ws?stabilizer=1"), ping_interval=None)
        first = control(await ws.recv())
        assert first is not None
        ws.transport.abort()  # dropped: the session stays resumable on A
        resume = f"/ws?stabilizer=1&stabilizer_resume={first['token']}&stabilizer_ack=0"

        async def resumed_on_a() -> dict[str, Any] | None:
            async with websockets.connect(a.ws(resume), ping_interval=None) as again:
                return control(await again.recv())

        hello = await resumed_on_a()
        assert hello is not None and hello["resumed"] is True
        async with websockets.connect(b.ws(resume), ping_interval=None) as other:
            reply = control(await other.recv())
        assert reply is not None and reply["reason"] == "invalid"
        fresh = f"/ws?stabilizer=1&stabilizer_resume={hello['token']}&stabilizer_ack=0"
        async with websockets.connect(b.ws(fresh), ping_interval=None) as other:
            reply = control(await other.recv())
        assert reply is not None and reply["reason"] == "unknown"


async def test_duplicate_client_replace_closes_the_other_nodes_session(
    redis_server: RedisServer,
) -> None:
    """With duplicate_client="replace", connecting as alice on node B closes alice's
    session on node A with 1000 "replaced"."""
    with nodes(redis_server.url, STABILIZER_TEST_DUPLICATE="replace") as (a, b):
        async with anyio.create_task_group() as tg:
            old = Client(a.ws("/ws?client_id=alice"))
            await tg.start(old.run)
            new = Client(b.ws("/ws?client_id=alice"))
            await tg.start(new.run)
            await await_until(lambda: old.close_code == 1000, what="the old session replaced")
            assert new.close_code is None
            tg.cancel_scope.cancel()


async def test_publications_of_a_node_shutting_down_go_out_before_it_exits(
    redis_server: RedisServer,
) -> None:
    """Broadcasts a node made while Redis was away are sent when Redis returns during its
    graceful shutdown (within cluster_timeout), before the process exits."""
    with nodes(redis_server.url) as (a, b):
        async with anyio.create_task_group() as tg:
            on_b = await connect(tg, b, 3)
            redis_server.kill()
            for i in range(5):
                await anyio.to_thread.run_sync(lambda i=i: a.post("/broadcast", text=f"m{i}"))
            stopping = anyio.Event()

            async def stop_a() -> None:
                await anyio.to_thread.run_sync(a.stop)
                stopping.set()

            tg.start_soon(stop_a)
            await anyio.sleep(1.0)
            assert a.proc.poll() is None  # still flushing its outbox
            redis_server.start()
            await await_until(
                lambda: all(c.frames == [f"m{i}" for i in range(5)] for c in on_b),
                timeout=WAIT * 2,
                what="b's clients got a's last broadcasts",
            )
            await stopping.wait()
            tg.cancel_scope.cancel()


async def test_a_killed_node_leaves_every_view_within_3_probe_intervals(
    redis_server: RedisServer,
) -> None:
    """A node killed with SIGKILL (no goodbye) is dropped from the other node's stats within
    3 × probe_interval, with its connections."""
    with nodes(redis_server.url, STABILIZER_TEST_PROBE="0.4") as (a, b):
        async with anyio.create_task_group() as tg:
            await connect(tg, b, 2)
            await await_until(lambda: a.stats()["cluster"]["connections"] == 2, what="2 on b")
            b.proc.kill()
            b.proc.wait(5)
            killed = anyio.current_time()
            await await_until(
                lambda: len(a.stats()["cluster"]["nodes"]) == 1, what="b gone from a's view"
            )
            assert anyio.current_time() - killed <= 3 * 0.4 + 2.0  # + generous polling slack
            assert a.stats()["cluster"]["connections"] == 0
            tg.cancel_scope.cancel()

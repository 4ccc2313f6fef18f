"""The cluster contract: every backend's test module subclasses `ClusterContract`.

A subclass provides the `new_backend` fixture: a callable making a fresh, not yet started
backend of one cluster (every call, another node of the same cluster). Nodes are driven by a
`FakeNode` (a stand-in for the manager, which records what the backend hands it), so these tests
pin the seam itself; the manager's use of it is tested in tests/cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import anyio
import pytest

from stabilizer_asgi.backends import (
    Backend,
    Broker,
    Command,
    Presence,
    Publication,
    SessionStore,
)
from tests.helpers import WAIT, await_until

NewBackend = Callable[[], Backend]


class FakeNode:
    """What a backend sees of a node: sessions by id, what was delivered and lost."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.got: list[Publication] = []
        self.sessions: dict[str, list[Command]] = {}
        self.lost_groups: list[str | None] = []
        self.open = 0

    def deliver(self, publication: Publication) -> None:
        self.got.append(publication)

    async def execute(self, command: Command) -> bool | None:
        if command.target not in self.sessions:
            return None
        if command.action == "join":
            assert command.group is not None
            await self.backend.broker.subscribe(command.group)
        self.sessions[command.target].append(command)
        return True

    def lost(self, group: str | None) -> None:
        self.lost_groups.append(group)

    def connections(self) -> int:
        return self.open

    def payloads(self) -> list[object]:
        return [p.payload for p in self.got]


@contextlib.asynccontextmanager
async def cluster(new_backend: NewBackend, n: int) -> AsyncIterator[list[FakeNode]]:
    """`n` started nodes of one cluster, each seeing the others; stopped afterwards."""
    nodes = [FakeNode(new_backend()) for _ in range(n)]
    async with anyio.create_task_group() as tg:
        for node in nodes:
            await tg.start(node.backend.run, node)
        for node in nodes:
            await await_until(
                lambda node=node: len(node.backend.presence.nodes()) == n,  # type: ignore[misc]
                what="every node sees the others",
            )
        try:
            yield nodes
        finally:
            for node in nodes:
                await node.backend.stop()
            tg.cancel_scope.cancel()


class ClusterContract:
    """Behaviour every backend must have."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    async def test_has_the_three_facets(self, new_backend: NewBackend) -> None:
        """A backend is a Broker, a Presence and a SessionStore, with a node id."""
        backend = new_backend()
        assert isinstance(backend, Backend)
        assert isinstance(backend.broker, Broker)
        assert isinstance(backend.presence, Presence)
        assert isinstance(backend.store, SessionStore)
        assert backend.node_id and backend.node_id != new_backend().node_id

    async def test_publications_reach_every_other_node_once(self, new_backend: NewBackend) -> None:
        """A publication reaches every other node exactly once, payload and metadata intact,
        and never comes back to its publisher."""
        async with cluster(new_backend, 3) as (a, b, c):
            a.backend.broker.publish(Publication("text é \x1e", None, frozenset({"s1", "s2"})))
            a.backend.broker.publish(Publication(b"\x00\xffbin"))
            for node in (b, c):
                await await_until(lambda node=node: len(node.got) == 2, what="both publications")
            assert (
                b.got
                == c.got
                == [
                    Publication("text é \x1e", None, frozenset({"s1", "s2"})),
                    Publication(b"\x00\xffbin"),
                ]
            )
            await anyio.sleep(0.05)
            assert a.got == [] and len(b.got) == 2

    async def test_publications_keep_each_publishers_order(self, new_backend: NewBackend) -> None:
        """Publications of one node arrive at every other node in the order they were made."""
        async with cluster(new_backend, 3) as (a, b, c):
            for i in range(200):
                a.backend.broker.publish(Publication(f"a{i}"))
                b.backend.broker.publish(Publication(f"b{i}"))
            await await_until(lambda: len(c.got) == 400, what="400 publications at c")
            got = c.payloads()
            assert [p for p in got if str(p)[0] == "a"] == [f"a{i}" for i in range(200)]
            assert [p for p in got if str(p)[0] == "b"] == [f"b{i}" for i in range(200)]

    async def test_group_publications_reach_only_subscribed_nodes(
        self, new_backend: NewBackend
    ) -> None:
        """A group's publications reach the nodes subscribed to it, from the moment
        `subscribe` returns until `unsubscribe`, and no other node."""
        async with cluster(new_backend, 3) as (a, b, c):
            await b.backend.broker.subscribe("room")
            a.backend.broker.publish(Publication("one", "room"))
            a.backend.broker.publish(Publication("all"))
            await await_until(lambda: len(b.got) == 2 and len(c.got) == 1, what="deliveries")
            assert b.payloads() == ["one", "all"]
            assert c.payloads() == ["all"]
            assert b.got[0].group == "room"
            b.backend.broker.unsubscribe("room")
            a.backend.broker.publish(Publication("two", "room"))
            a.backend.broker.publish(Publication("marker"))
            await await_until(lambda: len(b.got) == 3, what="the marker")
            assert b.payloads()[-1] == "marker"

    async def test_a_command_reaches_the_node_holding_the_session(
        self, new_backend: NewBackend
    ) -> None:
        """`request` returns True once the node holding the target carried the command out."""
        async with cluster(new_backend, 3) as (a, _b, c):
            c.sessions["s-on-c"] = []
            command = Command("send", "s-on-c", payload="hi")
            assert await a.backend.broker.request(command) is True
            assert c.sessions["s-on-c"] == [command]

    async def test_a_command_for_a_session_nobody_holds_is_false(
        self, new_backend: NewBackend
    ) -> None:
        """`request` returns False when no node holds the target (every node said so)."""
        async with cluster(new_backend, 2) as (a, _b):
            with anyio.fail_after(WAIT):
                assert await a.backend.broker.request(Command("close", "nobody")) is False

    async def test_a_join_command_returns_once_the_node_receives_the_group(
        self, new_backend: NewBackend
    ) -> None:
        """After a join carried out on another node returns, that node gets the group's
        publications (the subscription is in place before the answer)."""
        async with cluster(new_backend, 2) as (a, b):
            b.sessions["s"] = []
            assert await a.backend.broker.request(Command("join", "s", group="late")) is True
            a.backend.broker.publish(Publication("x", "late"))
            await await_until(lambda: b.payloads() == ["x"], what="the group publication")

    async def test_presence_lists_live_nodes_with_their_connections(
        self, new_backend: NewBackend
    ) -> None:
        """Every node sees every live node with its reported connections; a stopped node
        leaves every view."""
        async with cluster(new_backend, 3) as (a, b, c):
            b.open = 7
            ids = {n.backend.node_id for n in (a, b, c)}

            def view_of_b(node: FakeNode) -> int | None:
                for info in node.backend.presence.nodes():
                    if info.id == b.backend.node_id:
                        return info.connections
                return None

            await await_until(lambda: view_of_b(a) == 7 and view_of_b(c) == 7, what="counts")
            assert {n.id for n in a.backend.presence.nodes()} == ids
            await c.backend.stop()
            await await_until(
                lambda: {n.id for n in a.backend.presence.nodes()} == ids - {c.backend.node_id},
                what="c leaves a's view",
            )

    async def test_client_claims_see_other_nodes(self, new_backend: NewBackend) -> None:
        """A client id claimed on one node is seen by the others until released; an exclusive
        claim registers nothing when another node holds the client."""
        async with cluster(new_backend, 2) as (a, b):
            pa, pb = a.backend.presence, b.backend.presence
            assert await pa.claim_client("alice", exclusive=True) == ()
            assert await pb.claim_client("alice", exclusive=True) == (a.backend.node_id,)
            assert await pa.claim_client("alice", exclusive=False) == ()  # a's second session
            pa.release_client("alice")
            assert await pb.claim_client("alice", exclusive=True) == (a.backend.node_id,)
            pa.release_client("alice")

            async def free() -> bool:
                return await pb.claim_client("alice", exclusive=True) == ()

            await await_until(free, what="alice released")
            # b holds alice now (the claim above registered it): a sees b.
            assert await pa.claim_client("alice", exclusive=True) == (b.backend.node_id,)

    async def test_a_token_is_claimed_once_across_the_cluster(
        self, new_backend: NewBackend
    ) -> None:
        """Of concurrent claims of one token on several nodes exactly one wins; the next
        generation's token can be claimed; `generation` tells which tokens are used."""
        async with cluster(new_backend, 3) as nodes:
            results: list[bool] = []

            async def claim(node: FakeNode) -> None:
                results.append(await node.backend.store.claim_token("sess", 0, 60))

            async with anyio.create_task_group() as tg:
                for node in nodes:
                    for _ in range(3):
                        tg.start_soon(claim, node)
            assert sorted(results) == [False] * 8 + [True]
            a, b, _c = nodes
            assert await b.backend.store.generation("sess") == 1
            assert await b.backend.store.generation("other") is None
            assert await b.backend.store.claim_token("sess", 1, 60) is True
            assert await a.backend.store.claim_token("sess", 1, 60) is False
            assert await a.backend.store.claim_token("sess", 0, 60) is False

    async def test_status_is_healthy_with_every_node(self, new_backend: NewBackend) -> None:
        """A started, connected node reports healthy status with the live nodes."""
        async with cluster(new_backend, 2) as (a, b):
            await await_until(lambda: a.backend.status().healthy, what="healthy")
            status = a.backend.status()
            assert status.problem is None
            assert {n.id for n in status.nodes} == {a.backend.node_id, b.backend.node_id}


def node_factory(make: Callable[..., Any], **kwargs: Any) -> NewBackend:
    return lambda: make(**kwargs)

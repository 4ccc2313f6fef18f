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
    Handover,
    Parcel,
    ParkRequest,
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
        # Detached sessions it may park (id → parcel), and what the store handed back.
        self.detached: dict[str, Parcel] = {}
        self.ended_snapshots: list[bytes] = []
        self.adopted: list[Handover] = []

    def take(self, session_ids: Any) -> dict[str, Parcel]:
        return {sid: self.detached.pop(sid) for sid in session_ids if sid in self.detached}

    async def hand_over(self, session_id: str, generation: int) -> str:
        parcel = self.detached.get(session_id)
        if parcel is None:
            return "unknown"
        if generation != parcel.generation:
            return "invalid"
        parked = await self.backend.store.park([request(session_id)])
        return "parked" if session_id in parked else "lost"

    def ended(self, snapshot: bytes) -> None:
        self.ended_snapshots.append(snapshot)

    def lost_session(self, session_id: str) -> None:
        self.lost_groups.append("session:" + session_id)

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

    def census(self) -> tuple[int, int, int]:
        return (self.open, 0, 0)

    def payloads(self) -> list[object]:
        return [p.payload for p in self.got]


def request(
    session_id: str, groups: tuple[str, ...] = (), ttl: float = 60.0, messages: int = 100
) -> ParkRequest:
    return ParkRequest(session_id, groups, ttl, messages, 1 << 20)


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

    async def test_a_parked_session_collects_its_mail_and_is_claimed_once(
        self, new_backend: NewBackend
    ) -> None:
        """A parked session gets, in order, the publications for it (everyone's and its
        groups', not those excluding it) and the frames appended to it; of racing claims on
        two nodes one adopts it with all of that, the other is refused; then it is theirs."""
        async with cluster(new_backend, 3) as (a, b, c):
            a.detached["s1"] = Parcel(b"snapshot-1", 4, True)
            assert await a.backend.store.park([request("s1", ("room",))]) == {"s1"}
            assert "s1" not in a.detached
            where = await c.backend.store.locate("s1")
            assert where.state == "parked" and where.groups == ("room",)
            broker = b.backend.broker
            broker.publish(Publication("to all"))
            broker.publish(Publication("to room", "room"))
            broker.publish(Publication("to other", "other"))
            broker.publish(Publication("not to s1", None, frozenset({"s1"})))
            broker.publish(Publication(b"\x00bin", "room"))
            broker.publish(Publication("end", None, frozenset({"s1"})))
            await await_until(lambda: len(a.got) == 3, what="the publications reached a")
            assert await c.backend.store.append("s1", "direct") is True
            assert await c.backend.store.append("nobody", "x") is False
            results: dict[str, str | None] = {}

            async def claim(node: FakeNode) -> None:
                results[node.backend.node_id] = await node.backend.store.claim(
                    "s1", 4, 60, node.adopted.append
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(claim, b)
                tg.start_soon(claim, c)
            winners = [n for n in (b, c) if results[n.backend.node_id] is None]
            assert len(winners) == 1, results
            loser = c if winners[0] is b else b
            assert results[loser.backend.node_id] in ("moved", "invalid")
            assert loser.adopted == []
            (handover,) = winners[0].adopted
            assert handover.snapshot == b"snapshot-1" and handover.gap is False
            assert list(handover.mailbox) == ["to all", "to room", b"\x00bin", "direct"]
            where = await a.backend.store.locate("s1")
            assert where.state == "" and where.owner == winners[0].backend.node_id
            assert await a.backend.store.append("s1", "late") is False

    async def test_a_claim_checks_the_token_generation(self, new_backend: NewBackend) -> None:
        """A claim with a used token is refused ("invalid"); with the previous one it is
        accepted only while the client has not confirmed the current one."""
        async with cluster(new_backend, 2) as (a, b):
            a.detached["s2"] = Parcel(b"x", 5, True)
            a.detached["s3"] = Parcel(b"y", 5, False)
            assert await a.backend.store.park([request("s2"), request("s3")]) == {"s2", "s3"}
            assert await b.backend.store.claim("s2", 4, 60, b.adopted.append) == "invalid"
            assert await b.backend.store.claim("s3", 4, 60, b.adopted.append) is None
            assert await b.backend.store.claim("s2", 5, 60, b.adopted.append) is None
            assert [h.snapshot for h in b.adopted] == [b"y", b"x"]

    async def test_a_mailbox_that_overflows_is_a_gap(self, new_backend: NewBackend) -> None:
        """More frames for a parked session than its bound: the claim says gap, with none of
        them (never a partial mailbox)."""
        async with cluster(new_backend, 2) as (a, b):
            a.detached["s4"] = Parcel(b"z", 0, True)
            assert await a.backend.store.park([request("s4", messages=3)]) == {"s4"}
            for i in range(4):
                assert await b.backend.store.append("s4", f"m{i}") is True
            assert await b.backend.store.claim("s4", 0, 60, b.adopted.append) is None
            assert b.adopted[0].gap is True and b.adopted[0].mailbox == ()

    async def test_hand_over_asks_the_node_holding_the_session(
        self, new_backend: NewBackend
    ) -> None:
        """`hand_over` reaches the named node, which parks the session for the asker; a node
        that is not there answers "gone", and `fate` says what became of its sessions."""
        async with cluster(new_backend, 3) as (a, b, c):
            c.detached["s5"] = Parcel(b"w", 2, True)
            broker = a.backend.broker
            with anyio.fail_after(WAIT * 2):
                assert await broker.hand_over(c.backend.node_id, "s5", 1) == "invalid"
                assert await broker.hand_over(c.backend.node_id, "s5", 2) == "parked"
            assert (await a.backend.store.locate("s5")).state == "parked"
            gone = b.backend.node_id
            await b.backend.stop()
            with anyio.fail_after(WAIT * 4):
                assert await broker.hand_over(gone, "s6", 0) == "gone"
            assert await a.backend.store.fate(gone, 60) == "expired"  # it left cleanly

    async def test_a_parked_session_whose_window_passes_ends_once(
        self, new_backend: NewBackend
    ) -> None:
        """A parked session nobody claims is ended when its window passes, by exactly one
        node of the cluster (the `ended` callback with its snapshot)."""
        async with cluster(new_backend, 3) as nodes:
            a = nodes[0]
            a.detached["s7"] = Parcel(b"bye", 0, True)
            assert await a.backend.store.park([request("s7", ttl=0.2)]) == {"s7"}
            await await_until(
                lambda: sum(len(n.ended_snapshots) for n in nodes) == 1, what="the end"
            )
            await anyio.sleep(0.5)
            assert [s for n in nodes for s in n.ended_snapshots] == [b"bye"]
            assert (await a.backend.store.locate("s7")).state == ""

    async def test_status_is_healthy_with_every_node(self, new_backend: NewBackend) -> None:
        """A started, connected node reports healthy status with the live nodes."""
        async with cluster(new_backend, 2) as (a, b):
            await await_until(lambda: a.backend.status().healthy, what="healthy")
            status = a.backend.status()
            assert status.problem is None
            assert {n.id for n in status.nodes} == {a.backend.node_id, b.backend.node_id}


def node_factory(make: Callable[..., Any], **kwargs: Any) -> NewBackend:
    return lambda: make(**kwargs)

"""The cluster seam: what one node (one `Stabilizer`) needs from the other nodes of its cluster.

A backend connects its node to the cluster through three facets, split by job:

- `Broker`: publications (broadcasts to everyone or to one group) and commands addressed to
  whichever node holds a session. A node receives a group's publications only while it has
  subscribed to the group (the manager subscribes on a group's first local member).
- `Presence`: the live nodes and their connection counts, and the cluster-wide client-id
  index behind `duplicate_client`.
- `SessionStore`: the cluster-wide record of reconnect tokens, so a token is used once.
  (Resume on another node adds parking, the mailbox of a parked session and the hand-over
  claim here; see docs/cluster.md, "What comes next".)

The backend calls back into its node through `Node`. Nothing crosses the seam as an ASGI
event: payloads are `str` (a text frame) or `bytes` (a binary frame), with their metadata.

Lifecycle: `await task_group.start(backend.run, node)` connects (or, if the cluster store is
unreachable, starts degraded and keeps trying: a node serves its own sessions without it) and
returns once the node is part of the cluster; `await backend.stop()` sends what is still
queued (bounded by its timeout), leaves the cluster and makes `run` return.

Every method is called from the node's event loop; the synchronous ones never block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio.abc

Payload = str | bytes


@dataclass(frozen=True, slots=True)
class Publication:
    """A broadcast: its payload, its group (None = every session) and the sessions it skips."""

    payload: Payload
    group: str | None = None
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Command:
    """An action on a session (or, for "kick_client", a client id) held by another node.

    `action` is "send" (`payload`), "close" (`code`, `reason`), "join" / "leave" (`group`) or
    "kick_client" (`target` is a client id: close its sessions with `code`, `reason`).
    """

    action: str
    target: str
    payload: Payload | None = None
    group: str | None = None
    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One live node as the cluster sees it."""

    id: str
    connections: int


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What `stats()["cluster"]` and the health route report about the backend.

    `healthy` is False while the node cannot prove it is part of the cluster (store
    unreachable, subscription not confirmed by the probe); `problem` then says why.
    `nodes` is the last view of the live nodes, this one included.
    """

    healthy: bool
    problem: str | None
    nodes: tuple[NodeInfo, ...]
    counters: Mapping[str, int] = field(default_factory=dict)


class Node(Protocol):
    """What a backend calls on its node. All but `execute` are synchronous and quick."""

    def deliver(self, publication: Publication) -> None:
        """A publication of another node: fan it out to the matching local sessions."""

    async def execute(self, command: Command) -> bool | None:
        """Carry out a command on a local session: True done, False refused, None: not here."""

    def lost(self, group: str | None) -> None:
        """Publications for `group` (None: for everyone) were lost before this node read them."""

    def connections(self) -> int:
        """This node's open connections, reported to the cluster."""


@runtime_checkable
class Broker(Protocol):
    def publish(self, publication: Publication) -> None:
        """Queue a publication for every other node, in order; never waits, never raises on an
        outage (it waits in a bounded outbox; overflow is counted and makes receivers see a
        gap). The publishing node delivers to its own sessions itself."""

    async def subscribe(self, group: str) -> None:
        """Receive `group`'s publications from now on; returns once that holds (or after the
        backend's timeout when the cluster is unreachable: it is then caught up later)."""

    def unsubscribe(self, group: str) -> None:
        """Stop receiving `group`'s publications."""

    async def request(self, command: Command) -> bool:
        """Ask the other nodes to carry out `command`: True once one did, False when none
        holds the target or none answered within the backend's timeout."""


@runtime_checkable
class Presence(Protocol):
    def nodes(self) -> tuple[NodeInfo, ...]:
        """The live nodes (this one included), as of the last presence round."""

    async def claim_client(self, client_id: str, *, exclusive: bool) -> tuple[str, ...]:
        """Register a session of `client_id` on this node, atomically with looking it up: the
        other live nodes that hold sessions of it. With `exclusive`, nothing is registered
        when there are any."""

    def release_client(self, client_id: str) -> None:
        """A session of `client_id` registered by `claim_client` ended on this node."""


@runtime_checkable
class SessionStore(Protocol):
    async def claim_token(self, session_id: str, generation: int, ttl: float) -> bool:
        """Use the token of generation `generation` of `session_id`, atomically across the
        cluster: True for the first claim, False when it (or a later one) was used already.
        The record lasts `ttl` seconds."""

    async def generation(self, session_id: str) -> int | None:
        """The generation the session's last claim moved it to (tokens below it are used), or
        None when no claim is on record."""


@runtime_checkable
class Backend(Protocol):
    """A node's connection to its cluster; see the module docstring for the lifecycle."""

    @property
    def node_id(self) -> str: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def presence(self) -> Presence: ...

    @property
    def store(self) -> SessionStore: ...

    async def run(
        self, node: Node, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None: ...

    async def stop(self, timeout: float = 5.0) -> None: ...

    def status(self) -> BackendStatus: ...

"""The cluster seam: what one node (one `Stabilizer`) needs from the other nodes of its cluster.

A backend connects its node to the cluster through three facets, split by job:

- `Broker`: publications (broadcasts to everyone or to one group) and commands addressed to
  whichever node holds a session. A node receives a group's publications only while it has
  subscribed to the group (the manager subscribes on a group's first local member).
- `Presence`: the live nodes and their connection counts, and the cluster-wide client-id
  index behind `duplicate_client`.
- `SessionStore`: the cluster-wide record of reconnect tokens, so a token is used once; and
  the sessions that move between nodes. A node parks a detached session (its snapshot) when it
  drains or when another node asks for it; frames sent to a parked session wait in a bounded
  mailbox next to it; a node that resumes the session claims it atomically (the only place
  the token generation moves) and carries on with the snapshot and the mailbox.

Moving a session loses and repeats nothing because every step is ordered against the
publications: a park and a claim each take effect at one point of the cluster's publication
order, and the node's reader reaches that point (`Node.take`, the `adopt` callback) before it
delivers anything published after it. Publications before the point reach the session where it
was; publications after it reach its mailbox (parked) or its new node (claimed).

The backend calls back into its node through `Node`. Nothing crosses the seam as an ASGI
event: payloads are `str` (a text frame) or `bytes` (a binary frame), with their metadata.

Lifecycle: `await task_group.start(backend.run, node)` connects (or, if the cluster store is
unreachable, starts degraded and keeps trying: a node serves its own sessions without it) and
returns once the node is part of the cluster; `await backend.stop()` sends what is still
queued (bounded by its timeout), leaves the cluster and makes `run` return.

Every method is called from the node's event loop; the synchronous ones never block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
class Handover:
    """A claimed session: its snapshot (`core.snapshot`), the frames its mailbox held (in the
    order they were sent), and whether the mailbox overflowed (a resume must answer "gap")."""

    snapshot: bytes
    mailbox: tuple[Payload, ...] = ()
    gap: bool = False


@dataclass(frozen=True, slots=True)
class Parcel:
    """A session taken for parking: its snapshot and its token generation (with whether the
    client confirmed it), which the store checks a claim against."""

    snapshot: bytes
    generation: int
    confirmed: bool


@dataclass(frozen=True, slots=True)
class Whereabouts:
    """What the cluster store knows of a session: `state` is "parked" (claimable), "parking"
    (its node is parking it right now) or "" (not parked); `owner` the node that last claimed
    it, or that is parking it (None: no record, the token's node is the best guess); `groups`
    its groups while parked."""

    state: str = ""
    owner: str | None = None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParkRequest:
    """Park `session_id` (a member of `groups`) for `ttl` seconds, its mailbox bounded by
    `max_messages` and `max_bytes`."""

    session_id: str
    groups: tuple[str, ...]
    ttl: float
    max_messages: int
    max_bytes: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One live node as the cluster sees it: its connections, its sessions by state
    (connected, detached) and how many groups have members there."""

    id: str
    connections: int
    connected: int = 0
    detached: int = 0
    groups: int = 0


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

    def census(self) -> tuple[int, int, int]:
        """This node's sessions connected and detached, and its groups with members."""

    def take(self, session_ids: Sequence[str]) -> dict[str, Parcel]:
        """Parking: snapshot these sessions and let go of them, now (called at the park's point
        in the publication order). Returns the snapshots of those that could be taken (detached,
        no connection); the others stay."""

    async def hand_over(self, session_id: str, generation: int) -> str:
        """Another node has a resume of `session_id` with a token of `generation`: park the
        session for it. "parked", or why not ("invalid", "expired", "unknown", "lost")."""

    def lost_session(self, session_id: str) -> None:
        """Publications for this session may have been lost (a claim's point in the
        publication order could not be found): its next resume must answer "gap"."""

    def ended(self, snapshot: bytes) -> None:
        """A parked session's resume window passed (this node is the one that noticed): it is
        over, cluster-wide."""


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

    async def hand_over(self, node_id: str, session_id: str, generation: int) -> str:
        """Ask node `node_id` to park `session_id` for a resume (its `Node.hand_over` answer),
        "gone" if no such node is listening (it died or left), "timeout" if it did not answer
        within the backend's timeout."""


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

    async def park(self, requests: Sequence[ParkRequest]) -> set[str]:
        """Park these sessions of this node: returns the ids parked (their snapshots written,
        their mailboxes open), once that holds. `Node.take` is called for them on the way."""

    async def locate(self, session_id: str) -> Whereabouts:
        """Where the cluster store says the session is."""

    async def claim(
        self,
        session_id: str,
        generation: int,
        ttl: float,
        adopt: Callable[[Handover], None],
    ) -> str | None:
        """Take a parked session over for a resume with a token of `generation`: None once
        `adopt` has been called with it, or why not: "invalid" (token used), "moved"
        (claimed by another node meanwhile), "missing" (not parked), "unreachable".

        The claim takes its place in this node's publication order at the call: what this
        node publishes from the call until `adopt` is neither in the mailbox nor delivered
        to the session by the backend (the caller hands it over); publications of other
        nodes are, exactly once (the backend delivers those made after the claim to the
        adopted session, and none made before it)."""

    async def append(self, session_id: str, payload: Payload) -> bool:
        """Put a frame in a parked session's mailbox: False if it is not parked."""

    async def fate(self, node_id: str, window: float) -> str:
        """The answer for a session of node `node_id`, which is gone and did not park it:
        "expired" if the node left cleanly or died more than `window` seconds ago, else
        "lost" (the first node to ask records the death)."""


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

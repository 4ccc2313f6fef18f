"""The in-memory backend: nodes in one process, joined through a `MemoryHub`.

`backend="memory"` gives each manager a hub of its own (a cluster of one node). Managers given
backends on one shared hub form a cluster inside one process, which is how the cluster
behaviour is tested without Redis:

    hub = MemoryHub()
    a = Stabilizer(backend=MemoryBackend(hub))
    b = Stabilizer(backend=MemoryBackend(hub))

Publications and commands are handed to the other nodes directly (synchronously, in order);
nothing is ever lost, so nothing is ever a gap.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.abc

from .base import (
    BackendStatus,
    Command,
    Handover,
    Node,
    NodeInfo,
    ParkRequest,
    Payload,
    Publication,
    Whereabouts,
)

# Token records kept by a hub at most (the oldest are forgotten first).
MAX_TOKEN_RECORDS = 100_000
# Seconds between two looks for parked sessions whose window passed.
EXPIRY_PERIOD = 0.25


@dataclass
class _Parked:
    """A parked session on the hub: its snapshot and its bounded mailbox."""

    snapshot: bytes
    groups: frozenset[str]
    expires: float
    max_messages: int
    max_bytes: int
    generation: int
    confirmed: bool
    mailbox: deque[Payload] = field(default_factory=deque)
    nbytes: int = 0
    gap: bool = False

    def put(self, payload: Payload) -> None:
        if self.gap:
            return
        size = len(payload)
        if len(self.mailbox) + 1 > self.max_messages or self.nbytes + size > self.max_bytes:
            self.gap = True  # overflow: the resume answers "gap"; nothing more is kept
            self.mailbox.clear()
            self.nbytes = 0
            return
        self.mailbox.append(payload)
        self.nbytes += size


class MemoryHub:
    """The shared state of the in-memory nodes of one cluster."""

    def __init__(self) -> None:
        self.members: dict[str, MemoryBackend] = {}
        self._tokens: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # Moving sessions: parked ones, who last claimed each (for as long as its token
        # record), nodes that left cleanly. Bounded by the sessions parked (each has a window)
        # and MAX_TOKEN_RECORDS.
        self.parked: dict[str, _Parked] = {}
        self.owners: OrderedDict[str, str] = OrderedDict()
        self.left: OrderedDict[str, None] = OrderedDict()

    def mail(self, publication: Publication) -> None:
        """A publication reaches the parked sessions it is for."""
        group = publication.group
        for session_id, parked in self.parked.items():
            if session_id in publication.exclude:
                continue
            if group is None or group in parked.groups:
                parked.put(publication.payload)

    def expire(self, now: float) -> list[bytes]:
        """Forget the parked sessions whose window passed; their snapshots."""
        done = [sid for sid, parked in self.parked.items() if parked.expires <= now]
        return [self.parked.pop(sid).snapshot for sid in done]

    def live(self) -> list[MemoryBackend]:
        return [m for m in self.members.values() if m._node is not None]

    def claim_token(self, session_id: str, generation: int, ttl: float) -> bool:
        now = time.monotonic()
        current = self.generation(session_id, now)
        if current is not None and current > generation:
            return False
        tokens = self._tokens
        tokens[session_id] = (generation + 1, now + ttl)
        tokens.move_to_end(session_id)
        while len(tokens) > MAX_TOKEN_RECORDS:
            tokens.popitem(last=False)
        return True

    def generation(self, session_id: str, now: float | None = None) -> int | None:
        entry = self._tokens.get(session_id)
        if entry is None:
            return None
        if entry[1] <= (time.monotonic() if now is None else now):
            del self._tokens[session_id]
            return None
        return entry[0]


class MemoryBackend:
    """One node on a `MemoryHub` (a hub of its own when none is given)."""

    def __init__(
        self, hub: MemoryHub | None = None, *, node_id: str | None = None, timeout: float = 5.0
    ) -> None:
        self.hub = hub if hub is not None else MemoryHub()
        self._node_id = node_id or secrets.token_hex(6)
        self._timeout = timeout
        self._node: Node | None = None
        self._groups: set[str] = set()
        self._clients: dict[str, int] = {}
        self._stopped: anyio.Event | None = None
        self._published = 0

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def broker(self) -> MemoryBackend:
        return self

    @property
    def presence(self) -> MemoryBackend:
        return self

    @property
    def store(self) -> MemoryBackend:
        return self

    @property
    def alone(self) -> bool:
        """No other node is on this hub (a publication would reach nobody)."""
        return len(self.hub.members) <= 1

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, node: Node, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        if self._node is not None:
            raise RuntimeError("this backend is already running")
        self._stopped = stopped = anyio.Event()
        self._node = node
        self.hub.members[self._node_id] = self
        try:
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._expiry, node)
                await stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            self._leave()

    async def _expiry(self, node: Node) -> None:
        """End the hub's parked sessions whose window passed (whichever node looks first)."""
        while True:
            await anyio.sleep(EXPIRY_PERIOD)
            for snapshot in self.hub.expire(time.monotonic()):
                node.ended(snapshot)

    async def stop(self, timeout: float = 5.0) -> None:
        self._leave()

    def _leave(self) -> None:
        if self._node is not None:
            left = self.hub.left
            left[self._node_id] = None
            while len(left) > MAX_TOKEN_RECORDS:
                left.popitem(last=False)
        self._node = None
        self._groups.clear()
        self._clients.clear()
        if self.hub.members.get(self._node_id) is self:
            del self.hub.members[self._node_id]
        if self._stopped is not None:
            self._stopped.set()

    def status(self) -> BackendStatus:
        running = self._node is not None
        return BackendStatus(
            healthy=running,
            problem=None if running else "not started",
            nodes=self.nodes(),
            counters={"published": self._published},
        )

    # ------------------------------------------------------------------ broker

    def publish(self, publication: Publication) -> None:
        if self._node is None:
            return  # not part of a cluster (yet): there is no other node to reach
        self._published += 1
        group = publication.group
        for member in self.hub.live():
            if member is self or (group is not None and group not in member._groups):
                continue
            node = member._node
            if node is not None:
                node.deliver(publication)
        if self.hub.parked:
            self.hub.mail(publication)

    async def subscribe(self, group: str) -> None:
        if self._node is not None:
            self._groups.add(group)

    def unsubscribe(self, group: str) -> None:
        self._groups.discard(group)

    async def request(self, command: Command) -> bool:
        with anyio.move_on_after(self._timeout):
            for member in self.hub.live():
                node = member._node
                if member is self or node is None:
                    continue
                if await node.execute(command):
                    return True
        return False

    # ------------------------------------------------------------------ presence

    def nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(
            NodeInfo(m._node_id, m._node.connections(), *m._node.census())
            for m in self.hub.live()
            if m._node is not None
        )

    async def claim_client(self, client_id: str, *, exclusive: bool) -> tuple[str, ...]:
        holders = tuple(
            m._node_id
            for m in self.hub.live()
            if m is not self and m._clients.get(client_id, 0) > 0
        )
        if not (exclusive and holders):
            self._clients[client_id] = self._clients.get(client_id, 0) + 1
        return holders

    def release_client(self, client_id: str) -> None:
        n = self._clients.get(client_id, 0) - 1
        if n > 0:
            self._clients[client_id] = n
        else:
            self._clients.pop(client_id, None)

    # ------------------------------------------------------------------ session store

    async def claim_token(self, session_id: str, generation: int, ttl: float) -> bool:
        return self.hub.claim_token(session_id, generation, ttl)

    async def generation(self, session_id: str) -> int | None:
        return self.hub.generation(session_id)

    # -- moving sessions between nodes (synchronous on a hub: every step is in order)

    async def park(self, requests: Sequence[ParkRequest]) -> set[str]:
        node = self._node
        if node is None or not requests:
            return set()
        wanted = {r.session_id: r for r in requests if r.session_id not in self.hub.parked}
        taken = node.take(list(wanted))
        now = time.monotonic()
        for session_id, parcel in taken.items():
            r = wanted[session_id]
            self.hub.parked[session_id] = _Parked(
                parcel.snapshot,
                frozenset(r.groups),
                now + r.ttl,
                r.max_messages,
                r.max_bytes,
                parcel.generation,
                parcel.confirmed,
            )
        return set(taken)

    async def locate(self, session_id: str) -> Whereabouts:
        parked = self.hub.parked.get(session_id)
        if parked is not None:
            return Whereabouts("parked", None, tuple(sorted(parked.groups)))
        return Whereabouts("", self.hub.owners.get(session_id))

    async def claim(
        self,
        session_id: str,
        generation: int,
        ttl: float,
        adopt: Callable[[Handover], None],
    ) -> str | None:
        hub = self.hub
        parked = hub.parked.get(session_id)
        if parked is None:
            current = hub.generation(session_id)
            if current is not None and current > generation + 1:
                return "invalid"
            return "moved" if session_id in hub.owners else "missing"
        current_gen = parked.generation
        if not (
            generation == current_gen or (not parked.confirmed and generation == current_gen - 1)
        ):
            return "invalid"
        del hub.parked[session_id]
        hub.claim_token(session_id, generation, ttl)
        hub.owners[session_id] = self._node_id
        hub.owners.move_to_end(session_id)
        while len(hub.owners) > MAX_TOKEN_RECORDS:
            hub.owners.popitem(last=False)
        adopt(Handover(parked.snapshot, tuple(parked.mailbox), parked.gap))
        return None

    async def append(self, session_id: str, payload: Payload) -> bool:
        parked = self.hub.parked.get(session_id)
        if parked is None:
            return False
        parked.put(payload)
        return True

    async def fate(self, node_id: str, window: float) -> str:
        # Nodes on a hub leave only cleanly (one process: a crash takes the hub with it).
        return "expired" if node_id in self.hub.left else "lost"

    async def hand_over(self, node_id: str, session_id: str, generation: int) -> str:
        member = self.hub.members.get(node_id)
        node = None if member is None else member._node
        if node is None:
            return "gone"
        with anyio.move_on_after(2 * self._timeout):
            return await node.hand_over(session_id, generation)
        return "timeout"

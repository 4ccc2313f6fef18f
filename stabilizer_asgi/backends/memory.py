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
from collections import OrderedDict

import anyio
import anyio.abc

from .base import BackendStatus, Command, Node, NodeInfo, Publication

# Token records kept by a hub at most (the oldest are forgotten first).
MAX_TOKEN_RECORDS = 100_000


class MemoryHub:
    """The shared state of the in-memory nodes of one cluster."""

    def __init__(self) -> None:
        self.members: dict[str, MemoryBackend] = {}
        self._tokens: OrderedDict[str, tuple[int, float]] = OrderedDict()

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
            await stopped.wait()
        finally:
            self._leave()

    async def stop(self, timeout: float = 5.0) -> None:
        self._leave()

    def _leave(self) -> None:
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
            NodeInfo(m._node_id, m._node.connections())
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
